//! `rtpengine-ws`: the gateway's `/ws` call protocol in front of rtpengine, so the same
//! `loadgen` drives both in `scripts/peer_compare.py`.
//!
//! A `call` becomes an ng `offer` (the browser's WebRTC offer, turned by rtpengine into plain
//! RTP with PCMU only: Opus is masked, so every call is transcoded) and an ng `answer` whose
//! SDP is a trunk that answers PCMU at the `--echo` address (sipp `-rtp_echo`, which returns
//! every packet to its sender). rtpengine's answer goes back as `answer` (its Opus line capped
//! at 8 kHz as the gateway's is, [`as_the_gateway_answers`]), then `answered`;
//! `hangup` (or a closed WebSocket) is an ng `delete`. No SIP: the SIP leg costs rtpengine
//! nothing (its SIP proxy would), so the comparison does not flatter the gateway.
//!
//! ng protocol: bencoded dictionaries over UDP, each prefixed by a cookie that the reply
//! repeats (rtpengine's docs, "ng control protocol").

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use gateway_tests::browser_opus;
use serde_json::{Value, json};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Mutex, oneshot};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(
    name = "rtpengine-ws",
    about = "The gateway's /ws call protocol in front of rtpengine (ng), for side-by-side load"
)]
struct Args {
    /// Where to accept WebSocket connections (any path).
    #[arg(long)]
    listen: SocketAddr,
    /// rtpengine's ng control address (its `--listen-ng`).
    #[arg(long)]
    ng: SocketAddr,
    /// The trunk's media address: an RTP echo (sipp -rtp_echo -mp PORT).
    #[arg(long)]
    echo: SocketAddr,
}

/// A bencoded value (BEP 3): the four types ng uses.
#[derive(Debug, Clone, PartialEq)]
enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bencode>),
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::List(items) => {
                out.push(b'l');
                items.iter().for_each(|i| i.encode(out));
                out.push(b'e');
            }
            Bencode::Dict(entries) => {
                out.push(b'd');
                for (k, v) in entries {
                    Bencode::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value from the front of `input`; returns it and the rest.
    fn decode(input: &[u8]) -> anyhow::Result<(Bencode, &[u8])> {
        match input.first() {
            Some(b'i') => {
                let end = input
                    .iter()
                    .position(|&b| b == b'e')
                    .context("bencode: open integer")?;
                let n = std::str::from_utf8(&input[1..end])?.parse()?;
                Ok((Bencode::Int(n), &input[end + 1..]))
            }
            Some(b'l') => {
                let (mut items, mut rest) = (Vec::new(), &input[1..]);
                while rest.first() != Some(&b'e') {
                    let (item, r) = Bencode::decode(rest)?;
                    items.push(item);
                    rest = r;
                }
                Ok((Bencode::List(items), &rest[1..]))
            }
            Some(b'd') => {
                let (mut entries, mut rest) = (BTreeMap::new(), &input[1..]);
                while rest.first() != Some(&b'e') {
                    let (Bencode::Bytes(key), r) = Bencode::decode(rest)? else {
                        bail!("bencode: a dictionary key that is not a string");
                    };
                    let (value, r) = Bencode::decode(r)?;
                    entries.insert(key, value);
                    rest = r;
                }
                Ok((Bencode::Dict(entries), &rest[1..]))
            }
            Some(b'0'..=b'9') => {
                let colon = input
                    .iter()
                    .position(|&b| b == b':')
                    .context("bencode: no colon")?;
                let len: usize = std::str::from_utf8(&input[..colon])?.parse()?;
                let body = input
                    .get(colon + 1..colon + 1 + len)
                    .context("bencode: string runs past the end")?;
                Ok((Bencode::Bytes(body.to_vec()), &input[colon + 1 + len..]))
            }
            _ => bail!("bencode: unexpected input"),
        }
    }

    /// A JSON value as bencode: objects, arrays, strings and integers, as ng takes them.
    fn from_json(v: &Value) -> Bencode {
        match v {
            Value::Object(m) => Bencode::Dict(
                m.iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), Bencode::from_json(v)))
                    .collect(),
            ),
            Value::Array(a) => Bencode::List(a.iter().map(Bencode::from_json).collect()),
            Value::Number(n) => Bencode::Int(n.as_i64().unwrap_or(0)),
            Value::String(s) => Bencode::Bytes(s.as_bytes().to_vec()),
            Value::Bool(b) => Bencode::Bytes(if *b { b"yes".to_vec() } else { b"no".to_vec() }),
            Value::Null => Bencode::Bytes(Vec::new()),
        }
    }

    fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(m) => m.get(key.as_bytes()),
            _ => None,
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Bencode::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// One ng control socket shared by all calls; replies are matched to requests by cookie.
struct Ng {
    socket: UdpSocket,
    rtpengine: SocketAddr,
    next: AtomicU64,
    waiting: Mutex<HashMap<String, oneshot::Sender<Bencode>>>,
}

impl Ng {
    async fn new(rtpengine: SocketAddr) -> anyhow::Result<Arc<Ng>> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let ng = Arc::new(Ng {
            socket,
            rtpengine,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        });
        let reader = ng.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = reader.socket.recv(&mut buf).await {
                let Some(space) = buf[..n].iter().position(|&b| b == b' ') else {
                    continue;
                };
                let cookie = String::from_utf8_lossy(&buf[..space]).into_owned();
                if let Ok((reply, _)) = Bencode::decode(&buf[space + 1..n])
                    && let Some(tx) = reader.waiting.lock().await.remove(&cookie)
                {
                    let _ = tx.send(reply);
                }
            }
        });
        ng.socket.connect(rtpengine).await?;
        Ok(ng)
    }

    /// Sends `command` and waits for its reply (resent once a second, up to five times, as ng
    /// runs over UDP); an error reply becomes an error naming rtpengine's reason.
    async fn request(&self, command: Value) -> anyhow::Result<Bencode> {
        let cookie = format!("c{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mut datagram = format!("{cookie} ").into_bytes();
        Bencode::from_json(&command).encode(&mut datagram);
        let (tx, mut rx) = oneshot::channel();
        self.waiting.lock().await.insert(cookie.clone(), tx);
        for _ in 0..5 {
            self.socket.send(&datagram).await?;
            if let Ok(reply) = tokio::time::timeout(Duration::from_secs(1), &mut rx).await {
                let reply = reply?;
                return match reply.get("result").and_then(Bencode::text).as_deref() {
                    Some("ok" | "pong") => Ok(reply),
                    _ => Err(anyhow!(
                        "rtpengine refused {}: {}",
                        command["command"],
                        reply
                            .get("error-reason")
                            .and_then(Bencode::text)
                            .unwrap_or_else(|| format!("{reply:?}"))
                    )),
                };
            }
        }
        self.waiting.lock().await.remove(&cookie);
        bail!("rtpengine at {} did not answer", self.rtpengine)
    }
}

/// The trunk's answer: PCMU and telephone-event at the echo address.
fn trunk_answer(echo: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n",
        ip = echo.ip(),
        port = echo.port()
    )
}

/// Places one call through rtpengine; returns the SDP answer for the browser.
async fn place(ng: &Ng, echo: SocketAddr, call_id: &str, offer: &str) -> anyhow::Result<String> {
    ng.request(json!({
        "command": "offer",
        "call-id": call_id,
        "from-tag": "browser",
        "sdp": offer,
        "ICE": "remove",
        "DTLS": "off",
        "transport-protocol": "RTP/AVP",
        "rtcp-mux": ["demux"],
        "replace": ["origin", "session-connection"],
        "codec": { "mask": ["opus"], "transcode": ["PCMU"] },
    }))
    .await?;
    let reply = ng
        .request(json!({
            "command": "answer",
            "call-id": call_id,
            "from-tag": "browser",
            "to-tag": "trunk",
            "sdp": trunk_answer(echo),
            "ICE": "force",
            "transport-protocol": "UDP/TLS/RTP/SAVPF",
            "rtcp-mux": ["require"],
            "replace": ["origin", "session-connection"],
        }))
        .await?;
    let sdp = reply
        .get("sdp")
        .and_then(Bencode::text)
        .context("rtpengine's answer has no SDP")?;
    Ok(as_the_gateway_answers(&sdp))
}

/// rtpengine's answer with its Opus line capped at 8 kHz, as the gateway caps its own for a
/// G.711 trunk (`gateway::rtc::cap_audio`): the browser then codes narrowband for both,
/// and the comparison sets the two engines against the same packets. The line as rtpengine
/// wrote it is printed once.
fn as_the_gateway_answers(sdp: &str) -> String {
    static SHOWN: std::sync::Once = std::sync::Once::new();
    let Some(pt) = browser_opus::opus_payload_type(sdp) else {
        return sdp.to_owned();
    };
    SHOWN.call_once(|| match browser_opus::opus_parameters(sdp) {
        Some(parameters) => eprintln!("rtpengine's Opus parameters: a=fmtp:{pt} {parameters}"),
        None => eprintln!("rtpengine's Opus parameters: none"),
    });
    gateway::rtc::cap_audio(sdp, pt, gateway::rtc::AudioCaps::up_to(8000))
}

async fn connection(
    stream: tokio::net::TcpStream,
    ng: Arc<Ng>,
    echo: SocketAddr,
    calls: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(
        json!({"type": "hello", "version": 1, "auth_required": false}),
    ))
    .await?;
    let mut live: Vec<String> = Vec::new();
    while let Some(message) = ws.next().await {
        let Ok(Message::Text(text)) = message else {
            if matches!(message, Ok(Message::Close(_)) | Err(_)) {
                break;
            }
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        match v["type"].as_str() {
            Some("call") => {
                let call_id = format!("rtpe-{}", calls.fetch_add(1, Ordering::Relaxed));
                let offer = v["sdp"].as_str().unwrap_or_default();
                match place(&ng, echo, &call_id, offer).await {
                    Ok(sdp) => {
                        live.push(call_id.clone());
                        ws.send(send(
                            json!({"type": "answer", "call_id": call_id, "sdp": sdp}),
                        ))
                        .await?;
                        ws.send(send(json!({"type": "answered", "call_id": call_id})))
                            .await?;
                    }
                    Err(e) => {
                        eprintln!("{call_id}: {e:#}");
                        ws.send(send(json!({"type": "error", "code": "trunk_unavailable", "message": format!("{e:#}")})))
                            .await?;
                    }
                }
            }
            Some("hangup") => {
                let call_id = v["call_id"].as_str().unwrap_or_default().to_string();
                live.retain(|c| *c != call_id);
                let _ = ng
                    .request(
                        json!({"command": "delete", "call-id": call_id, "from-tag": "browser"}),
                    )
                    .await;
                ws.send(send(
                    json!({"type": "ended", "call_id": call_id, "reason": "hangup"}),
                ))
                .await?;
            }
            _ => {}
        }
    }
    for call_id in live {
        let _ = ng
            .request(json!({"command": "delete", "call-id": call_id, "from-tag": "browser"}))
            .await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ng = Ng::new(args.ng).await?;
    ng.request(json!({"command": "ping"}))
        .await
        .with_context(|| format!("no rtpengine on ng {}", args.ng))?;
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("rtpengine-ws on {} → ng {}", args.listen, args.ng);
    let calls = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, _) = listener.accept().await?;
        let (ng, calls) = (ng.clone(), calls.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, ng, args.echo, calls).await {
                eprintln!("connection: {e:#}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_round_trips_an_ng_command() {
        let command = Bencode::from_json(&json!({
            "command": "offer", "flags": ["a", "b"], "n": 3, "codec": {"mask": ["opus"]}
        }));
        let mut out = Vec::new();
        command.encode(&mut out);
        assert_eq!(
            out,
            b"d5:codecd4:maskl4:opusee7:command5:offer5:flagsl1:a1:be1:ni3ee".to_vec()
        );
        let (back, rest) = Bencode::decode(&out).unwrap();
        assert_eq!(back, command);
        assert!(rest.is_empty());
        assert!(Bencode::decode(b"5:ab").is_err());
        assert!(Bencode::decode(b"d3:keyi1e").is_err());
    }
}
