//! What finding the browser's node costs a trunk's call in a cluster: the trunk's INVITE to
//! the first 180, timed by a small UDP trunk in this bench, sent to the node the browser is
//! connected to, and to the other node, which looks the identity up in Redis and forwards
//! the INVITE. Both nodes run in this process and share a real `redis-server`; the browser
//! stays registered and never answers (the trunk cancels each call at its 180). The two targets
//! alternate for three rounds.
//!
//! Run: `cargo bench -p gateway-tests --bench cluster_inbound [-- CALLS_PER_RUN]` (100).

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gateway::config::Config;
use gateway_tests::cluster::{SECRET, node_config, wait_for_registration};
use gateway_tests::redis::Redis;
use gateway_tests::{out_dir, ports};
use tokio_tungstenite::tungstenite::Message;

async fn node(
    dir: &Path,
    id: &str,
    ip: &str,
    rtp: u16,
    redis: &Redis,
    trunk: u16,
) -> gateway::run::Gateway {
    let inbound = "\n[inbound]\n\"+15550100\" = \"agent\"\n";
    let path = node_config(dir, id, ip, rtp, &redis.url(), trunk, inbound);
    gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap()
}

/// The trunk: `calls` calls to `target` one after another from 127.0.0.1:`trunk_port`, each
/// timed from its INVITE to the first 180, then cancelled (CANCEL, 200, 487, ACK), in µs
/// resolution (sipp's own response times come in whole milliseconds).
fn ring_times(trunk_port: u16, target: std::net::SocketAddr, calls: u32) -> Vec<f64> {
    let socket = std::net::UdpSocket::bind(("127.0.0.1", trunk_port)).expect("the trunk's port");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let local = socket.local_addr().unwrap();
    let mut buf = vec![0u8; 65536];
    let mut times = Vec::new();
    for n in 0..calls {
        // Three requests a call: paced well under the edge's 200 requests a second per source.
        std::thread::sleep(Duration::from_millis(25));
        // Unique across runs: a reused branch would be taken for a retransmission.
        static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (call_id, branch) = (
            format!("bench-{seq}-{}", std::process::id()),
            format!("z9hG4bKb{seq}"),
        );
        let head = |method: &str, cseq: &str, to_tag: &str| {
            format!(
                "{method} sip:+15550100@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\n\
                 From: <sip:+4930999@{local}>;tag=t{n}\r\nTo: <sip:+15550100@{target}>{to_tag}\r\n\
                 Call-ID: {call_id}\r\nCSeq: 1 {cseq}\r\nMax-Forwards: 70\r\n"
            )
        };
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
            trunk_port + 2
        );
        let invite = format!(
            "{}Contact: <sip:caller@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            head("INVITE", "INVITE", ""),
            sdp.len()
        );
        let sent = Instant::now();
        socket.send_to(invite.as_bytes(), target).unwrap();
        let mut to_tag = String::new();
        let mut ringing = false;
        // Until the 487 that ends the cancelled INVITE (or a final the gateway gave instead).
        loop {
            let (len, _) = socket
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("call {n}: the gateway did not answer ({e})"));
            if std::env::var("BENCH_DEBUG").is_ok() {
                eprintln!(
                    "{n}: {}",
                    String::from_utf8_lossy(&buf[..len])
                        .lines()
                        .next()
                        .unwrap_or("")
                );
            }
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            if !text.contains(&call_id) {
                continue;
            }
            let code: u16 = text.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0);
            if code == 180 && !ringing {
                ringing = true;
                times.push(sent.elapsed().as_secs_f64() * 1000.0);
                let cancel = format!("{}Content-Length: 0\r\n\r\n", head("CANCEL", "CANCEL", ""));
                socket.send_to(cancel.as_bytes(), target).unwrap();
            }
            if code >= 300 && text.contains("CSeq: 1 INVITE") {
                if let Some(tag) = text
                    .split("To: ")
                    .nth(1)
                    .and_then(|t| t.lines().next())
                    .and_then(|t| t.split(";tag=").nth(1))
                {
                    to_tag = format!(";tag={tag}");
                }
                let ack = format!("{}Content-Length: 0\r\n\r\n", head("ACK", "ACK", &to_tag));
                socket.send_to(ack.as_bytes(), target).unwrap();
                assert!(ringing, "call {n} ended before it rang: {text}");
                break;
            }
        }
    }
    times
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let calls: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let dir = out_dir("bench_cluster_inbound");
    let redis = Redis::start(&dir);
    let (trunk_port, _) = ports();
    let a = node(&dir, "a", "127.0.0.2", 40000, &redis, trunk_port).await;
    let b = node(&dir, "b", "127.0.0.3", 40500, &redis, trunk_port).await;
    // The browser: registered on b for the whole run, ignoring every offer.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", b.http_addr))
        .await
        .unwrap();
    let token = gateway_tests::client::token("agent", SECRET);
    for m in [
        serde_json::json!({"type": "auth", "token": token}),
        serde_json::json!({"type": "register", "identity": "agent"}),
    ] {
        ws.send(Message::Text(m.to_string().into())).await.unwrap();
    }
    let browser = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    wait_for_registration(&redis, "agent", "b", 10).await;
    let commands = |redis: &Redis| -> u64 {
        redis
            .command(&["INFO", "commandstats"])
            .lines()
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    // Both nodes' background refresh, counted over an idle window and taken out below.
    let idle_before = commands(&redis);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_per_second = (commands(&redis) - idle_before) as f64 / 5.0;
    println!("trunk INVITE → first 180, ms ({calls} calls per run, one after another)");
    println!(
        "{:<42} {:>8} {:>8} {:>14}",
        "browser's node", "p50", "p99", "redis cmds/call"
    );
    let (a_sip, b_sip) = (a.endpoint.udp_addr(), b.endpoint.udp_addr());
    for round in 1..=3 {
        for (name, target) in [("same node (b)", b_sip), ("other node (a → b)", a_sip)] {
            let before = commands(&redis);
            let started = Instant::now();
            let mut times =
                tokio::task::spawn_blocking(move || ring_times(trunk_port, target, calls))
                    .await
                    .unwrap();
            let background = started.elapsed().as_secs_f64() * idle_per_second;
            let per_call = (commands(&redis) - before) as f64 - background;
            times.sort_by(f64::total_cmp);
            println!(
                "{:<42} {:>8.2} {:>8.2} {:>14.1}",
                format!("round {round}: {name}"),
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                per_call / calls as f64
            );
        }
    }
    println!("idle: {idle_per_second:.1} Redis commands a second for the two nodes");
    browser.abort();
}
