//! Signaling misuse: bad tokens, wrong origins, malformed and unknown messages each get the
//! documented error, and a call already running on the same gateway keeps its audio.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway::config::Config;
use gateway::token::{Claims, sign};
use gateway_tests::client::{CallOptions, run_call};
use gateway_tests::{Sipp, out_dir, write_config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

async fn next_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a reply")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn misuse_gets_documented_errors_and_other_calls_keep_their_audio() {
    let dir = out_dir("signaling");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let path = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let mut text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("anonymous = true", "anonymous = false");
    text = text.replace(
        "[http]\n",
        &format!(
            "[http]\nallowed_origins = [\"https://shop.example\"]\ntoken_secret_file = \"{}\"\n",
            dir.join("secret").display()
        ),
    );
    text.push_str("\n[targets.echo]\ntrunk = \"carrier\"\nnumber = \"100\"\n\n[targets.sales]\ntrunk = \"carrier\"\nnumber = \"200\"\n");
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::write(&path, text).unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", gateway.http_addr);

    // A wrong origin is refused at the upgrade.
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");

    // A good call runs meanwhile (the test client sends no Origin: non-browser clients may
    // connect, as browsers always send one).
    let token = sign(
        &Claims {
            sub: "alice".into(),
            exp: now() + 60,
            targets: vec!["echo".into()],
            numbers: false,
        },
        SECRET.as_bytes(),
    );
    let good = tokio::spawn({
        let url = url.clone();
        async move {
            run_call(
                &url,
                &CallOptions {
                    token: Some(token),
                    seconds: 4.0,
                    ..CallOptions::new("echo")
                },
            )
            .await
            .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://shop.example".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "hello", "version": 1, "auth_required": true})
    );
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "bad_json"),
        (r#"{"no":"type"}"#.into(), "bad_json"),
        (r#"{"type":"teleport"}"#.into(), "unknown_type"),
        (r#"{"type":"call","to":"echo"}"#.into(), "bad_message"),
        (json!({"type": "call", "to": "echo", "sdp": "v=0"}).to_string(), "unauthorized"),
        (json!({"type": "auth", "token": "a.b.c"}).to_string(), "unauthorized"),
        (json!({"type": "auth", "token": sign(&Claims { sub: "x".into(), exp: now() - 1, targets: vec![], numbers: false }, SECRET.as_bytes())}).to_string(), "unauthorized"),
        (json!({"type": "auth", "token": sign(&Claims { sub: "x".into(), exp: now() + 60, targets: vec![], numbers: true }, b"not the secret at all")}).to_string(), "unauthorized"),
        (json!({"type": "hangup", "call_id": "c-nope"}).to_string(), "no_such_call"),
        (json!({"type": "renegotiate", "call_id": "c-nope", "sdp": "v=0"}).to_string(), "no_such_call"),
        (json!({"type": "dtmf", "call_id": "c-nope", "digits": "1x"}).to_string(), "bad_message"),
    ];
    for (message, code) in cases {
        ws.send(Message::Text(message.clone().into()))
            .await
            .unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "error", "{message}: {reply}");
        assert_eq!(reply["code"], code, "{message}: {reply}");
        assert!(!reply["message"].as_str().unwrap().is_empty());
    }
    // A valid token for `echo` only: `sales` and raw numbers are forbidden.
    let token = sign(
        &Claims {
            sub: "bob".into(),
            exp: now() + 60,
            targets: vec!["echo".into()],
            numbers: false,
        },
        SECRET.as_bytes(),
    );
    ws.send(Message::Text(
        json!({"type": "auth", "token": token}).to_string().into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "authenticated", "subject": "bob"})
    );
    for to in ["sales", "+4930123456"] {
        ws.send(Message::Text(
            json!({"type": "call", "to": to, "sdp": "v=0"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        assert_eq!(next_json(&mut ws).await["code"], "forbidden", "{to}");
    }
    ws.send(Message::Text(
        json!({"type": "call", "to": "echo", "sdp": "not sdp"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "bad_sdp");

    // Even a token that allows numbers cannot dial one unless the operator named a trunk.
    let agent = sign(
        &Claims {
            sub: "agent".into(),
            exp: now() + 60,
            targets: vec![],
            numbers: true,
        },
        SECRET.as_bytes(),
    );
    ws.send(Message::Text(
        json!({"type": "auth", "token": agent}).to_string().into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "authenticated");
    ws.send(Message::Text(
        json!({"type": "call", "to": "+4930123456", "sdp": "v=0"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["code"], "forbidden");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("numbers_trunk"),
        "{refused}"
    );

    // A message over the 64 KiB limit ends that connection, and only that one.
    let (mut big, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    assert_eq!(next_json(&mut big).await["type"], "hello");
    let _ = big.send(Message::Text("x".repeat(100 * 1024).into())).await;
    let _how = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match big.next().await {
                Some(Ok(Message::Close(frame))) => break format!("close {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break format!("error {e}"),
                None => break "end".to_string(),
            }
        }
    })
    .await
    .expect("the oversized message's connection ends");
    ws.send(Message::Text(
        json!({"type": "hangup", "call_id": "c-nope"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "no_such_call");

    let report = good.await.unwrap();
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the other call kept its audio: {report:?}"
    );
    assert_eq!(report.ended.unwrap()["reason"], "hangup");
    assert!(sipp.finished().await);
}

/// A gateway taking calls to `echo` with tokens signed by [`SECRET`] (and, with
/// `anonymous`, without); `[inbound]` routes +15550100 to `agent-7`.
async fn token_gateway(dir: &std::path::Path, anonymous: bool) -> gateway::run::Gateway {
    let (trunk_port, _) = gateway_tests::ports();
    let path = write_config(dir, &[("carrier", trunk_port, "udp", &[])]);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("anonymous = true", &format!("anonymous = {anonymous}"))
        .replace(
            "[http]\n",
            &format!(
                "[http]\ntoken_secret_file = \"{}\"\n",
                dir.join("secret").display()
            ),
        );
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[targets.echo]\ntrunk = \"carrier\"\nnumber = \"100\"\n\n[inbound]\n\"+15550100\" = \"agent-7\"\n"),
    )
    .unwrap();
    gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap()
}

fn token(sub: &str, exp: u64) -> String {
    sign(
        &Claims {
            sub: sub.into(),
            exp,
            targets: vec!["echo".into()],
            numbers: false,
        },
        SECRET.as_bytes(),
    )
}

/// Sends `message` and returns the next reply.
async fn ask(ws: &mut Ws, message: Value) -> Value {
    ws.send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
    next_json(ws).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_cannot_place_a_call_on_a_live_socket() {
    let dir = out_dir("signaling_expiry");
    let gateway = token_gateway(&dir, false).await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    let mut ws = connect(&url, None).await;
    let short_lived = json!({"type": "auth", "token": token("alice", now() + 2)});
    // The SDP is what fails while the token is good: `bad_sdp` means the token passed.
    let bad_call = || json!({"type": "call", "to": "echo", "sdp": "not sdp"});
    assert_eq!(ask(&mut ws, short_lived).await["type"], "authenticated");
    // Accepted while it is valid (the SDP is what fails here)...
    assert_eq!(ask(&mut ws, bad_call()).await["code"], "bad_sdp");
    // ...and refused on the same socket once `exp` has passed.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let refused = ask(&mut ws, bad_call()).await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("expired"),
        "{refused}"
    );
    // The token is gone with it: a second try does not get further.
    assert_eq!(
        ask(&mut ws, json!({"type": "register", "identity": "alice"})).await["code"],
        "unauthorized"
    );
    // A fresh `auth` carries on.
    assert_eq!(
        ask(
            &mut ws,
            json!({"type": "auth", "token": token("alice", now() + 60)})
        )
        .await["type"],
        "authenticated"
    );
    assert_eq!(ask(&mut ws, bad_call()).await["code"], "bad_sdp");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A signaling connection past its `hello`, authenticated as `sub` when given.
async fn connect(url: &str, sub: Option<&str>) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    if let Some(sub) = sub {
        let auth = json!({"type": "auth", "token": token(sub, now() + 60)});
        assert_eq!(ask(&mut ws, auth).await["type"], "authenticated");
    }
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn registering_needs_a_token_even_in_anonymous_mode_and_a_takeover_is_announced() {
    let dir = out_dir("signaling_register");
    let gateway = token_gateway(&dir, true).await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    let register = || json!({"type": "register", "identity": "agent-7"});
    // Anonymous mode lets anyone call demo targets, not take an agent's calls.
    let mut stranger = connect(&url, None).await;
    assert_eq!(ask(&mut stranger, register()).await["code"], "unauthorized");
    // With a token, only its own subject.
    let mut mallory = connect(&url, Some("mallory")).await;
    assert_eq!(ask(&mut mallory, register()).await["code"], "forbidden");

    let mut first = connect(&url, Some("agent-7")).await;
    assert_eq!(ask(&mut first, register()).await["type"], "registered");
    let mut second = connect(&url, Some("agent-7")).await;
    assert_eq!(ask(&mut second, register()).await["type"], "registered");
    let told = next_json(&mut first).await;
    assert_eq!(told["type"], "unregistered", "{told}");
    assert_eq!(told["identity"], "agent-7");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_admin_can_listen_apart_from_the_public_side() {
    let dir = out_dir("signaling_admin_listen");
    let (trunk_port, _) = gateway_tests::ports();
    let path = write_config(&dir, &[("carrier", trunk_port, "udp", &[])]);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[http]\n", "[http]\nadmin_listen = \"127.0.0.1:0\"\n");
    std::fs::write(&path, text).unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let admin = gateway.admin_addr.expect("admin listener bound");
    let public = gateway_tests::http_get(gateway.http_addr, "/metrics").await;
    assert!(public.starts_with("HTTP/1.0 404"), "{public}");
    let reload =
        gateway_tests::http_request(gateway.http_addr, "POST /admin/plugins/reload", &[]).await;
    assert!(
        reload.starts_with("HTTP/1.0 404") || reload.starts_with("HTTP/1.0 405"),
        "{reload}"
    );
    let metrics = gateway_tests::http_get(admin, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.0 200"), "{metrics}");
    assert!(metrics.contains("gateway_active_calls 0"), "{metrics}");
    assert!(
        gateway_tests::http_get(gateway.http_addr, "/healthz")
            .await
            .starts_with("HTTP/1.0 200"),
        "load balancers still probe the public side"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_closed_and_others_are_served() {
    let dir = out_dir("signaling_slow_reader");
    let gateway = token_gateway(&dir, true).await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    // A client that sends requests and never reads the answers: a small receive window, so
    // the gateway's socket fills after some tens of thousands of answers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.http_addr).await.unwrap();
    let (mut mute, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .unwrap();
    let ask_for_error = json!({"type": "hangup", "call_id": "c-nope"}).to_string();
    let mut sent = 0u32;
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        while sent < 1_000_000 {
            if mute
                .send(Message::Text(ask_for_error.clone().into()))
                .await
                .is_err()
            {
                return true;
            }
            sent += 1;
        }
        false
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the gateway closed the connection of a client that stopped reading ({sent} requests sent)"
    );
    // The gateway goes on serving everyone else.
    let mut other = connect(&url, None).await;
    let answer = ask(&mut other, json!({"type": "hangup", "call_id": "c-nope"})).await;
    assert_eq!(answer["code"], "no_such_call");
}
