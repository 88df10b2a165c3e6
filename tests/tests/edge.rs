//! The gateway as the edge between the internet and a trunk, attacked as a hostile host
//! would: 127.0.0.2 plays the stranger (loopback, but no trunk lives there), while a real
//! WebRTC call runs through to a sipp trunk that echoes its audio.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway::config::Config;
use gateway_tests::client::{CallOptions, CallReport, spawn_call};
use gateway_tests::{Sipp, http_get, out_dir, write_config};
use tokio::net::UdpSocket;

const STRANGER: &str = "127.0.0.2";
/// Where the gateway's RTP and SIP listen in these tests.
const GATEWAY_IP: &str = "127.0.0.1";
/// Where the gateways of these tests take SIP (see [`gateway`]).
const GATEWAY_SIP: &str = "127.0.9.1";

/// A gateway with the `echo` target on a sipp trunk, browser-trunk RTP on `rtp_range`, and
/// `extra` appended to its configuration.
async fn gateway(
    dir: &std::path::Path,
    sipp: &Sipp,
    rtp_range: (u16, u16),
    extra: &str,
) -> gateway::run::Gateway {
    let path = write_config(dir, &[("carrier", sipp.port, "udp", &[])]);
    // SIP on a loopback address no other test uses: the suite's other binaries run at the
    // same time, and a peer of theirs at 127.0.0.2 still sending to a port their gateway
    // had, which this one now has, would be counted here as the stranger (a suite run saw
    // 2048 requests from it where the flood sent 2000, and 3 of the 200 403s go elsewhere).
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "udp = \"127.0.0.1:0\"",
            &format!("udp = \"{GATEWAY_SIP}:0\""),
        )
        .replace(
            "port_min = 40000\nport_max = 44999",
            &format!("port_min = {}\nport_max = {}", rtp_range.0, rtp_range.1),
        )
        .replace("[sip]\n", &format!("[sip]\n{extra}"));
    let text = format!("{text}\n[targets.echo]\ntrunk = \"carrier\"\nnumber = \"100\"\n");
    std::fs::write(&path, text).unwrap();
    gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap()
}

fn call(gateway: &gateway::run::Gateway, seconds: f64) -> tokio::task::JoinHandle<CallReport> {
    let url = format!("ws://{}/ws", gateway.http_addr);
    let options = CallOptions {
        seconds,
        ..CallOptions::new("echo")
    };
    spawn_call(&url, options)
}

fn assert_clean_tone(report: &CallReport) {
    eprintln!("{}", serde_json::to_string_pretty(report).unwrap());
    assert!(
        report.tone_snr_db.unwrap_or(f64::NEG_INFINITY) >= 20.0,
        "the call kept its tone: {report:?}"
    );
    assert_eq!(report.packets_lost, 0, "and lost nothing: {report:?}");
    assert_eq!(report.ended.as_ref().unwrap()["reason"], "hangup");
}

/// Receives datagrams on `socket` until `until`, counting them and keeping the first few.
async fn drain(socket: &UdpSocket, until: Instant) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut first = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(Ok(n)) = tokio::time::timeout_at(until.into(), socket.recv_from(&mut buf)).await {
        count += 1;
        if first.len() < 5 {
            first.push(String::from_utf8_lossy(&buf[..n.0]).into_owned());
        }
    }
    (count, first)
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in {metrics}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_spraying_the_rtp_range_hears_nothing_and_the_call_keeps_its_tone() {
    let dir = out_dir("edge_rtp_bleed");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let range = (45000, 45998);
    let gateway = gateway(&dir, &sipp, range, "").await;
    let running = call(&gateway, 4.0);
    gateway_tests::wait_for_answered(gateway.http_addr, 1).await;

    // PCMU with the payload type the trunk negotiated, to every even port, for 2 s; and
    // forged SRTP-looking datagrams at the browser media port.
    let stranger = UdpSocket::bind((STRANGER, 0)).await.unwrap();
    let mut packet = vec![0x80u8, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    packet.extend_from_slice(&[0xff; 160]);
    let mux = gateway.calls.mux.local_addr();
    let spray_until = Instant::now() + Duration::from_secs(2);
    let mut sequence: u16 = 0;
    let mut sent = 0u64;
    while Instant::now() < spray_until {
        sequence = sequence.wrapping_add(1);
        packet[2..4].copy_from_slice(&sequence.to_be_bytes());
        for port in (range.0..=range.1).step_by(2) {
            let _ = stranger.send_to(&packet, (GATEWAY_IP, port)).await;
            sent += 1;
        }
        let _ = stranger.send_to(&packet, mux).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let (heard, first) = drain(&stranger, Instant::now() + Duration::from_millis(500)).await;
    assert_eq!(heard, 0, "the stranger received call audio: {first:?}");

    let report = running.await.unwrap();
    assert_clean_tone(&report);
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    let dropped = metric(
        &metrics,
        "gateway_media_dropped_total{leg=\"trunk\",reason=\"source\"}",
    );
    eprintln!(
        "the stranger sent {sent} RTP packets and heard {heard}; {dropped} were dropped for their source"
    );
    assert!(
        dropped > 0 && dropped <= sent,
        "{dropped} of {sent}: {metrics}"
    );
    assert!(sipp.finished().await);
}

/// The trunk leg's Call-ID and both tags, from what sipp logged of the INVITE and its 200.
async fn dialog_ids(sipp: &Sipp) -> (String, String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = sipp.messages();
        let header = |name: &str, after: &str| {
            log.split(after)
                .nth(1)?
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let call_id = header("Call-ID:", "INVITE sip:");
        let gw_tag =
            header("From:", "INVITE sip:").and_then(|f| f.split(";tag=").nth(1).map(str::to_owned));
        let trunk_tag = header("To:", "SIP/2.0 200 OK")
            .and_then(|t| t.split(";tag=").nth(1).map(str::to_owned));
        if let (Some(c), Some(g), Some(t)) = (call_id, gw_tag, trunk_tag) {
            return (c, g, t);
        }
        assert!(Instant::now() < deadline, "sipp logged no dialog: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn in_dialog(method: &str, ids: &(String, String, String), from: SocketAddr, body: &str) -> String {
    let (call_id, gw_tag, trunk_tag) = ids;
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{}\r\nFrom: <sip:trunk@127.0.0.1>;tag={trunk_tag}\r\nTo: <sip:gw@127.0.0.1>;tag={gw_tag}\r\nCall-ID: {call_id}\r\nCSeq: 900 {method}\r\nContact: <sip:evil@{from}>\r\nMax-Forwards: 70\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        rand_branch(),
        body.len()
    )
}

fn rand_branch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_strangers_bye_and_reinvite_with_the_right_call_id_change_nothing() {
    let dir = out_dir("edge_dialog");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let gateway = gateway(
        &dir,
        &sipp,
        (46000, 46998),
        "unknown_sources = \"reject\"\n",
    )
    .await;
    let sip = gateway.endpoint.udp_addr();
    let running = call(&gateway, 4.0);
    let ids = dialog_ids(&sipp).await;

    // From the stranger's address: one stateless 403 each, and the call is untouched.
    let stranger = UdpSocket::bind((STRANGER, 0)).await.unwrap();
    let from = stranger.local_addr().unwrap();
    let sdp = "v=0\r\no=x 1 2 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 9000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    for request in [
        in_dialog("INVITE", &ids, from, sdp),
        in_dialog("BYE", &ids, from, ""),
    ] {
        stranger.send_to(request.as_bytes(), sip).await.unwrap();
    }
    let (replies, first) = drain(&stranger, Instant::now() + Duration::from_secs(1)).await;
    assert_eq!(replies, 2, "{first:?}");
    assert!(
        first.iter().all(|r| r.starts_with("SIP/2.0 403")),
        "{first:?}"
    );

    // From the trunk's own IP but not naming the dialog's tags: 481, nothing ends.
    let spoofer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let from = spoofer.local_addr().unwrap();
    let wrong_tag = (ids.0.clone(), "not-ours".to_string(), ids.2.clone());
    spoofer
        .send_to(in_dialog("BYE", &wrong_tag, from, "").as_bytes(), sip)
        .await
        .unwrap();
    let (_, first) = drain(&spoofer, Instant::now() + Duration::from_secs(1)).await;
    assert!(
        first.first().is_some_and(|r| r.starts_with("SIP/2.0 481")),
        "{first:?}"
    );

    let report = running.await.unwrap();
    assert_clean_tone(&report);
    assert!(sipp.finished().await, "the real trunk got the real BYE");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_bye_with_cseq_1_gets_200_and_ends_the_call() {
    let dir = out_dir("edge_bye_cseq1");
    let sipp = Sipp::uas("trunk_bye_cseq1.xml", "u1", &dir);
    let gateway = gateway(&dir, &sipp, (47000, 47998), "").await;
    let report = call(&gateway, 30.0).await.unwrap();
    assert_eq!(
        report.ended.as_ref().unwrap()["reason"],
        "remote_hangup",
        "{report:?}"
    );
    assert!(
        sipp.finished().await,
        "sipp's BYE with CSeq 1 was answered 200"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_bye_crossing_ours_gets_200_while_ours_is_pending() {
    let dir = out_dir("edge_bye_crossing");
    let sipp = Sipp::uas("bye_crossing.xml", "u1", &dir);
    let gateway = gateway(&dir, &sipp, (49000, 49998), "").await;
    let report = call(&gateway, 1.5).await.unwrap();
    assert_eq!(
        report.ended.as_ref().unwrap()["reason"],
        "hangup",
        "{report:?}"
    );
    assert!(
        sipp.finished().await,
        "the trunk's BYE got its 200 while the gateway waited for its own"
    );
}

/// What came back to the stranger during a flood.
struct FloodReplies {
    /// Datagrams received within two seconds of the last INVITE.
    count: usize,
    /// The first few, as text.
    first: Vec<String>,
    /// UDP datagrams the kernel dropped for a full receive buffer meanwhile (anywhere on
    /// this host, so an upper bound on what the stranger lost).
    kernel_dropped: u64,
}

/// The host's `Udp: RcvbufErrors` counter (RFC 4113 udpInErrors' receive-buffer part).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// INVITEs from the stranger, `count` of them over about two seconds; returns the replies
/// that came back within two seconds of the last.
async fn invite_flood(sip: SocketAddr, count: usize) -> FloodReplies {
    let stranger = std::net::UdpSocket::bind((STRANGER, 0)).unwrap();
    let from = stranger.local_addr().unwrap();
    let listening = stranger.try_clone().unwrap();
    listening
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let dropped_before = udp_rcvbuf_errors();
    // The replies are read on an OS thread of their own, not a task: the gateway under test
    // shares this process's runtime, and a starved reader would lose datagrams to its
    // socket's receive buffer. Counted until two seconds after the last INVITE went out
    // (however long the sending took on a loaded machine).
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
    let receiver = std::thread::spawn(move || {
        let mut count = 0;
        let mut first = Vec::new();
        let mut buf = [0u8; 2048];
        let mut until: Option<Instant> = None;
        while until.is_none_or(|u| Instant::now() < u) {
            if until.is_none() && sent_rx.try_recv().is_ok() {
                until = Some(Instant::now() + Duration::from_secs(2));
            }
            match listening.recv_from(&mut buf) {
                Ok((n, _)) => {
                    count += 1;
                    if first.len() < 5 {
                        first.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("the stranger's socket failed: {e}"),
            }
        }
        (count, first)
    });
    for i in 0..count {
        let invite = format!(
            "INVITE sip:+4930123@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKflood{i}\r\nFrom: <sip:scan@{from}>;tag=f{i}\r\nTo: <sip:+4930123@127.0.0.1>\r\nCall-ID: flood-{i}@scanner\r\nCSeq: 1 INVITE\r\nContact: <sip:scan@{from}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = stranger.send_to(invite.as_bytes(), sip);
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    let _ = sent_tx.send(());
    let (count, first) = tokio::task::spawn_blocking(move || receiver.join().unwrap())
        .await
        .unwrap();
    FloodReplies {
        count,
        first,
        kernel_dropped: udp_rcvbuf_errors().saturating_sub(dropped_before),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_stranger_invites_gets_at_most_one_reply_each_and_the_call_loses_nothing() {
    const FLOOD: usize = 2000;
    // Refusing: one stateless 403 per INVITE at most (never a 100 Trying, never a
    // retransmission), and fewer once the source is over its rate.
    let dir = out_dir("edge_flood_reject");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let gateway = gateway(
        &dir,
        &sipp,
        (48000, 48998),
        "unknown_sources = \"reject\"\n",
    )
    .await;
    let running = call(&gateway, 5.0);
    gateway_tests::wait_for_answered(gateway.http_addr, 1).await;
    let flood = invite_flood(gateway.endpoint.udp_addr(), FLOOD).await;
    let replies = flood.count;
    assert!((1..=FLOOD).contains(&replies), "{replies} replies");
    assert!(
        flood.first.iter().all(|r| r.starts_with("SIP/2.0 403")),
        "{:?}",
        flood.first
    );
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    let refused = metric(
        &metrics,
        "gateway_sip_refused_total{reason=\"unknown_source_403\"}",
    );
    let limited = metric(
        &metrics,
        "gateway_sip_refused_total{reason=\"rate_limited\"}",
    );
    eprintln!(
        "reject mode: {FLOOD} INVITEs, {replies} replies (all 403), {limited} ignored over the rate, {} datagrams dropped by the kernel",
        flood.kernel_dropped
    );
    // Every 403 the gateway counted reached the stranger, save what the kernel itself
    // dropped for a full receive buffer (UDP guarantees no more on a loaded host); never
    // more replies than refusals.
    assert!(replies as u64 <= refused, "{replies} replies: {metrics}");
    assert!(
        replies as u64 + flood.kernel_dropped >= refused,
        "{replies} replies, {} dropped by the kernel: {metrics}",
        flood.kernel_dropped
    );
    assert!(limited > 0, "the flood went over 200/s: {metrics}");
    assert_clean_tone(&running.await.unwrap());
    assert!(sipp.finished().await);

    // Dropping (the default): nothing at all comes back.
    let dir = out_dir("edge_flood_drop");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let gateway = self::gateway(&dir, &sipp, (48000, 48998), "").await;
    let running = call(&gateway, 5.0);
    gateway_tests::wait_for_answered(gateway.http_addr, 1).await;
    let flood = invite_flood(gateway.endpoint.udp_addr(), FLOOD).await;
    assert_eq!(flood.count, 0, "{:?}", flood.first);
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "gateway_sip_refused_total{reason=\"unknown_source_dropped\"}"
        ),
        FLOOD as u64
    );
    assert_clean_tone(&running.await.unwrap());
    assert!(sipp.finished().await);
}
