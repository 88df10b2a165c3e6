//! Hostile and broken SIP straight at the endpoint's sockets: every message gets a 400 or
//! is dropped, nothing panics, and the endpoint keeps answering well-formed requests.

use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway::sip::endpoint::{Endpoint, EndpointConfig};
use gateway::sip::transaction::Timers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn options(branch: &str, extra: &str) -> String {
    format!(
        "OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{branch}\r\nFrom: <sip:t@127.0.0.1>;tag=a\r\nTo: <sip:gw@127.0.0.1>\r\nCall-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

fn invite(branch: &str) -> String {
    options(branch, "")
        .replace("OPTIONS sip", "INVITE sip")
        .replace("1 OPTIONS", "1 INVITE")
}

/// The next datagram on `socket`, as text, within two seconds; else a panic saying `what`.
async fn next_reply(socket: &UdpSocket, what: &str) -> String {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no {what} within 2 s"))
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

async fn start() -> Endpoint {
    // The inbound receiver is dropped: out-of-dialog INVITEs must then get 503, not vanish.
    start_taking().await.0
}

/// An endpoint, and what it hands its transaction users.
async fn start_taking() -> (Endpoint, gateway::sip::endpoint::RequestReceiver) {
    Endpoint::start(EndpointConfig {
        udp: "127.0.0.1:0".parse().unwrap(),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        tls: None,
        public_ip: None,
        user_agent: "gateway-test".into(),
        timers: Timers::default(),
        edge: Default::default(),
    })
    .await
    .unwrap()
}

async fn exchange(socket: &UdpSocket, to: std::net::SocketAddr, message: &[u8]) -> Option<String> {
    socket.send_to(message, to).await.unwrap();
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(400), socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        _ => None,
    }
}

fn status(reply: &Option<String>) -> Option<&str> {
    reply.as_deref().and_then(|r| r.split(' ').nth(1))
}

#[tokio::test]
async fn udp_garbage_gets_400_or_silence_and_the_endpoint_survives() {
    let endpoint = start().await;
    let to = endpoint.udp_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let good = options("good1", "");
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("body shorter than Content-Length", good.replace("Content-Length: 0\r\n\r\n", "Content-Length: 99\r\n\r\nshort").into_bytes(), Some("400")),
        ("Content-Length not a number", good.replace("Content-Length: 0", "Content-Length: many").into_bytes(), Some("400")),
        ("bad Request-URI", good.replace("OPTIONS sip:gw@127.0.0.1 SIP/2.0", "OPTIONS not a uri SIP/2.0").into_bytes(), Some("400")),
        ("unreadable CSeq", good.replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS").into_bytes(), Some("400")),
        ("missing Call-ID", good.replace("Call-ID: good1@test\r\n", "").into_bytes(), None),
        ("truncated", good.as_bytes()[..70].to_vec(), None),
        ("binary noise", (0..=255u8).cycle().take(900).collect(), None),
        ("empty datagram", vec![], None),
        ("only CRLF", b"\r\n\r\n".to_vec(), None),
        ("ACK with bad CSeq", good.replace("OPTIONS sip", "ACK sip").replace("CSeq: 1 OPTIONS", "CSeq: x ACK").into_bytes(), None),
        ("response to nothing", b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: z\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".to_vec(), None),
        ("in-dialog request for an unknown dialog", good.replace("To: <sip:gw@127.0.0.1>", "To: <sip:gw@127.0.0.1>;tag=nope").into_bytes(), Some("481")),
    ];
    for (what, bytes, expected) in cases {
        let reply = exchange(&socket, to, &bytes).await;
        assert_eq!(status(&reply), expected, "{what}: {reply:?}");
        if expected == Some("400") {
            assert!(
                reply.as_deref().unwrap().contains("Warning: 399"),
                "{what}: the 400 says why"
            );
        }
    }
    // Compact forms are fine, and the endpoint still answers.
    let compact = options("good2", "")
        .replace("Call-ID:", "i:")
        .replace("Via:", "v:");
    assert_eq!(
        status(&exchange(&socket, to, compact.as_bytes()).await),
        Some("200")
    );
    // An INVITE nobody takes (no transaction user) gets 100 then 503, never silence.
    let invite = invite("inv1");
    assert_eq!(
        status(&exchange(&socket, to, invite.as_bytes()).await),
        Some("100")
    );
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 503"));
}

#[tokio::test]
async fn a_fault_on_one_message_drops_that_message_alone_and_the_endpoint_goes_on() {
    let endpoint = start().await;
    let to = endpoint.udp_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = endpoint.tcp_addr().unwrap();
    let mut stream = TcpStream::connect(tcp_addr).await.unwrap();
    // A Call-ID no other test sends: the endpoint panics on its first message, once.
    gateway::fault::injection::panic_on_sip_call_id("fault1@test");
    let faulty = options("fault1", "");
    assert_eq!(exchange(&socket, to, faulty.as_bytes()).await, None);
    assert_eq!(endpoint.edge_counters().faults.load(Ordering::Relaxed), 1);
    // Its retransmission, other messages, over UDP and over the TCP connection opened before
    // the fault, are all served.
    assert_eq!(
        status(&exchange(&socket, to, faulty.as_bytes()).await),
        Some("200")
    );
    assert_eq!(
        status(&exchange(&socket, to, options("after1", "").as_bytes()).await),
        Some("200")
    );
    let over_tcp = options("after2", "").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    stream.write_all(over_tcp.as_bytes()).await.unwrap();
    assert_eq!(
        status(&tcp_reply(&mut stream).await),
        Some("200"),
        "the TCP connection carries on"
    );
    // The same fault over TCP is dropped alike.
    gateway::fault::injection::panic_on_sip_call_id("fault2@test");
    let faulty = options("fault2", "").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    stream.write_all(faulty.as_bytes()).await.unwrap();
    stream
        .write_all(over_tcp.replace("after2", "after3").as_bytes())
        .await
        .unwrap();
    let reply = tcp_reply(&mut stream).await.unwrap_or_default();
    assert!(
        reply.starts_with("SIP/2.0 200") && reply.contains("after3@test"),
        "only the message after the faulty one is answered: {reply}"
    );
    assert_eq!(endpoint.edge_counters().faults.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_request_its_taker_drops_unanswered_gets_500_and_an_answered_one_its_answer_alone() {
    let (endpoint, mut inbound) = start_taking().await;
    let to = endpoint.udp_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut take = async || {
        tokio::time::timeout(Duration::from_secs(2), inbound.recv())
            .await
            .expect("the request reaches its transaction user")
            .unwrap()
    };
    // An INVITE whose taker drops it, as a call's task that faulted would: 100, then 500.
    let invite = invite("dropped1");
    assert_eq!(
        status(&exchange(&socket, to, invite.as_bytes()).await),
        Some("100")
    );
    let taken = take().await;
    assert!(taken.responder.is_some());
    // A clone kept elsewhere (a call keeps one to answer provisionally) holds it open.
    let kept = taken.responder.clone();
    drop(taken);
    let mut buf = [0u8; 2048];
    let quiet = tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf)).await;
    assert!(quiet.is_err(), "no answer while a clone is held");
    drop(kept);
    let reply = next_reply(&socket, "answer to the dropped INVITE").await;
    assert!(reply.starts_with("SIP/2.0 500"), "{reply}");
    assert!(reply.contains("CSeq: 1 INVITE") && reply.contains("dropped1@test"));
    assert_eq!(
        endpoint.edge_counters().unanswered.load(Ordering::Relaxed),
        1
    );
    // Its retransmission gets the 500 again, as §17.2.1 has it.
    assert_eq!(
        status(&exchange(&socket, to, invite.as_bytes()).await),
        Some("500")
    );
    // A request answered before its taker drops it gets that answer alone.
    let message = options("answered1", "")
        .replace("OPTIONS sip", "MESSAGE sip")
        .replace("1 OPTIONS", "1 MESSAGE");
    socket.send_to(message.as_bytes(), to).await.unwrap();
    let taken = take().await;
    let responder = taken.responder.clone().unwrap();
    responder.respond(gateway::sip::message::response_to(
        &taken.request,
        202,
        Some("t1"),
    ));
    drop((taken, responder));
    let reply = next_reply(&socket, "answer").await;
    assert!(reply.starts_with("SIP/2.0 202"), "{reply}");
    let after = tokio::time::timeout(Duration::from_millis(400), socket.recv(&mut buf)).await;
    assert!(after.is_err(), "nothing after the answer: {after:?}");
    assert_eq!(
        endpoint.edge_counters().unanswered.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_fault_on_a_request_a_call_sends_drops_that_request_alone() {
    let endpoint = start().await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = gateway::sip::transport::Target {
        addr: peer.local_addr().unwrap(),
        transport: gateway::sip::transport::Transport::Udp,
        host: "127.0.0.1".into(),
        tls: None,
    };
    let request = |call_id: &str| {
        let text = options(call_id, "").replace(&format!("{call_id}@test"), call_id);
        match gateway::sip::message::parse(text.as_bytes()).unwrap() {
            rsip::SipMessage::Request(r) => r,
            other => panic!("{other:?}"),
        }
    };
    // A Call-ID no other test sends: the endpoint panics as it takes this request, once.
    gateway::fault::injection::panic_on_sip_call_id("fault3");
    let mut dropped = endpoint.request(request("fault3"), target.clone());
    let ended = tokio::time::timeout(Duration::from_secs(2), dropped.recv()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the faulty request's caller hears its end: {ended:?}"
    );
    assert_eq!(endpoint.edge_counters().faults.load(Ordering::Relaxed), 1);
    // The next request goes out, and the endpoint still answers.
    let _sent = endpoint.request(request("after4"), target);
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(2), peer.recv(&mut buf))
        .await
        .expect("the next request reaches the peer")
        .unwrap();
    let got = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(got.contains("Call-ID: after4"), "{got}");
    assert!(!got.contains("fault3"), "{got}");
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let reply = exchange(
        &socket,
        endpoint.udp_addr(),
        options("after5", "").as_bytes(),
    )
    .await;
    assert_eq!(status(&reply), Some("200"));
}

async fn tcp_reply(stream: &mut TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(String::new()),
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn tcp_streams_are_framed_and_hostile_ones_closed() {
    let endpoint = start().await;
    let addr = endpoint.tcp_addr().unwrap();

    // Two messages in one write, with keep-alive CRLFs between: both answered, in order.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let both = format!("{}\r\n\r\n{}", options("t1", ""), options("t2", ""));
    s.write_all(both.as_bytes()).await.unwrap();
    let mut got = String::new();
    while got.matches("SIP/2.0 200").count() < 2 {
        match tcp_reply(&mut s).await {
            Some(r) if !r.is_empty() => got.push_str(&r),
            other => panic!("missing answers: {got:?} then {other:?}"),
        }
    }
    assert!(got.find("t1@test").unwrap() < got.find("t2@test").unwrap());

    // One message split across writes is reassembled.
    let msg = options("t3", "");
    s.write_all(&msg.as_bytes()[..30]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&msg.as_bytes()[30..]).await.unwrap();
    assert!(tcp_reply(&mut s).await.unwrap().starts_with("SIP/2.0 200"));

    // A bad Content-Length cannot be framed: the connection is closed, nothing else happens.
    let mut bad = TcpStream::connect(addr).await.unwrap();
    bad.write_all(
        options("t4", "")
            .replace("Content-Length: 0", "Content-Length: lots")
            .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(tcp_reply(&mut bad).await.as_deref(), Some(""), "closed");

    // Endless headers: closed at the 64 KiB limit instead of buffering forever.
    let mut flood = TcpStream::connect(addr).await.unwrap();
    let junk = vec![b'A'; 70 * 1024];
    let _ = flood.write_all(&junk).await;
    assert_eq!(tcp_reply(&mut flood).await.as_deref(), Some(""), "closed");

    // The first connection is unaffected.
    s.write_all(options("t5", "").as_bytes()).await.unwrap();
    assert!(tcp_reply(&mut s).await.unwrap().starts_with("SIP/2.0 200"));
}

#[tokio::test]
async fn cancel_ends_a_pending_inbound_invite_with_487() {
    let (endpoint, mut inbound) = Endpoint::start(EndpointConfig {
        udp: "127.0.0.1:0".parse().unwrap(),
        tcp: None,
        tls: None,
        public_ip: None,
        user_agent: "gateway-test".into(),
        timers: Timers::default(),
        edge: Default::default(),
    })
    .await
    .unwrap();
    let to = endpoint.udp_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let invite = invite("c1");
    assert_eq!(
        status(&exchange(&socket, to, invite.as_bytes()).await),
        Some("100")
    );
    let offered = inbound.recv().await.unwrap();
    assert_eq!(offered.request.method, rsip::Method::Invite);
    // The transaction user sits on it (a browser ringing); the caller gives up (§9.2).
    let cancel = invite
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    let mut replies = vec![exchange(&socket, to, cancel.as_bytes()).await.unwrap()];
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    replies.push(String::from_utf8_lossy(&buf[..n]).to_string());
    assert!(
        replies
            .iter()
            .any(|r| r.starts_with("SIP/2.0 200") && r.contains("CSeq: 1 CANCEL")),
        "{replies:?}"
    );
    assert!(
        replies
            .iter()
            .any(|r| r.starts_with("SIP/2.0 487") && r.contains("CSeq: 1 INVITE")),
        "{replies:?}"
    );
    let notice = inbound.recv().await.unwrap();
    assert_eq!(
        notice.request.method,
        rsip::Method::Cancel,
        "the TU learns the call is gone"
    );
    // Answering the INVITE now is too late: nothing more goes out.
    offered
        .responder
        .unwrap()
        .respond(gateway::sip::message::response_to(
            &offered.request,
            200,
            Some("late"),
        ));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf))
            .await
            .is_err()
    );
}

/// Messages modelled on RFC 4475 (`gateway/fuzz/seeds/rfc4475`, also the fuzzers' seeds):
/// `v-*` are well-formed and parse; `x-*` are not, and are refused with an error (never a
/// panic). Then each goes to a live endpoint over UDP, which answers with a status or stays
/// silent, and still answers an OPTIONS afterwards.
///
/// One valid one is answered rather than parsed: an extension method gets 501 Not
/// Implemented (what RFC 4475 §3.1.1.5 expects of an element that does not implement it).
#[tokio::test]
async fn rfc4475_torture_messages_parse_or_are_refused_and_the_endpoint_survives() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/fuzz/seeds/rfc4475");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the RFC 4475 seeds")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 25, "{files:?}");
    let endpoint = start().await;
    let to = endpoint.udp_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut outcomes = Vec::new();
    let mut wrong = Vec::new();
    for path in &files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(path).unwrap();
        let parsed = gateway::sip::message::parse(&bytes);
        let beyond_the_parser = ["v-esc02"].contains(&name.as_str());
        if name.starts_with("v-") != parsed.is_ok() && !beyond_the_parser {
            wrong.push(format!("{name}: {parsed:?}"));
        }
        // Every reply to this message (an INVITE gets 100, then its final answer), on a
        // socket of its own: unACKed INVITE answers are retransmitted (Timer G).
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut replies = Vec::new();
        let mut reply = exchange(&socket, to, &bytes).await;
        while let Some(r) = reply {
            replies.push(status(&Some(r)).unwrap_or("?").to_string());
            let mut buf = [0u8; 4096];
            reply = match tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf))
                .await
            {
                Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
                _ => None,
            };
        }
        if beyond_the_parser {
            assert_eq!(replies, ["501"], "{name}");
        }
        outcomes.push(format!("{name}: {replies:?}"));
    }
    eprintln!("{}", outcomes.join("\n"));
    assert!(
        wrong.is_empty(),
        "valid ones (v-) must parse, invalid ones (x-) must not:\n{}",
        wrong.join("\n")
    );
    let reply = exchange(&socket, to, options("after", "").as_bytes()).await;
    assert_eq!(status(&reply), Some("200"), "the endpoint still answers");
}

/// A call whose task falls behind (its worker stuck, or a peer outpacing it) holds at most
/// `CALL_QUEUE` of its requests: the ones beyond are answered 503 with Retry-After on the
/// wire, the queued ones reach the call intact and in order, and the loss is counted.
#[tokio::test]
async fn a_dialog_whose_call_falls_behind_gets_503_with_retry_after_beyond_its_queue() {
    use gateway::sip::endpoint::CALL_QUEUE;
    let endpoint = start().await;
    let to = endpoint.udp_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The call's queue, never read while the requests arrive.
    let mut call = endpoint.register_dialog("behind@test");
    // A round trip: the endpoint has taken the dialog's route before the requests come.
    assert_eq!(
        status(&exchange(&socket, to, options("r1", "").as_bytes()).await),
        Some("200")
    );
    let info = |seq: usize| {
        format!(
            "INFO sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKq{seq}\r\nFrom: <sip:t@127.0.0.1>;tag=a\r\nTo: <sip:gw@127.0.0.1>;tag=b\r\nCall-ID: behind@test\r\nCSeq: {seq} INFO\r\nContent-Length: 0\r\n\r\n"
        )
    };
    for seq in 1..=CALL_QUEUE + 3 {
        socket.send_to(info(seq).as_bytes(), to).await.unwrap();
    }
    let mut refused = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
    {
        let reply = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(reply.starts_with("SIP/2.0 503"), "{reply}");
        assert!(reply.contains("Retry-After: 1\r\n"), "{reply}");
        let cseq = reply
            .split("CSeq: ")
            .nth(1)
            .and_then(|s| s.split(' ').next());
        refused.push(cseq.unwrap().parse::<usize>().unwrap());
    }
    assert_eq!(refused, [CALL_QUEUE + 1, CALL_QUEUE + 2, CALL_QUEUE + 3]);
    for seq in 1..=CALL_QUEUE {
        let queued = call.try_recv().expect("a queued request");
        let text = queued.request.to_string();
        assert!(text.contains(&format!("CSeq: {seq} INFO\r\n")), "{text}");
        let ok = gateway::sip::message::response_to(&queued.request, 200, None);
        queued.responder.as_ref().unwrap().respond(ok);
    }
    assert!(call.try_recv().is_err());
    // The call answers what it took, each once.
    let mut answered = Vec::new();
    for _ in 1..=CALL_QUEUE {
        let reply = next_reply(&socket, "answer to a queued request").await;
        assert!(reply.starts_with("SIP/2.0 200"), "{reply}");
        answered.push(reply.split("CSeq: ").nth(1).unwrap().to_string());
    }
    answered.sort();
    answered.dedup();
    assert_eq!(answered.len(), CALL_QUEUE);
    assert_eq!(
        endpoint
            .tables()
            .queue_full
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    // The endpoint goes on serving.
    assert_eq!(
        status(&exchange(&socket, to, options("r2", "").as_bytes()).await),
        Some("200")
    );
}
