//! What finding the browser's node costs a trunk's call in a cluster: the trunk's INVITE to
//! the first 180, as sipp measures it (`-trace_rtt`), sent to the node the browser is
//! connected to, and to the other node, which looks the identity up in Redis and forwards
//! the INVITE. Both nodes run in this process and share a real `redis-server`; the browser
//! stays registered and never answers (sipp cancels each call at its 180). The two targets
//! alternate for three rounds.
//!
//! Run: `cargo bench -p gateway-tests --bench cluster_inbound [-- CALLS_PER_RUN]` (100).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gateway::config::Config;
use gateway_tests::cluster::{SECRET, node_config};
use gateway_tests::redis::Redis;
use gateway_tests::{out_dir, ports, scenarios};
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

/// sipp as the trunk: `calls` calls to `target`, 10 a second, at most two at once; returns
/// each call's INVITE → 180 in ms.
fn ring_times(dir: &Path, trunk_port: u16, target: std::net::SocketAddr, calls: u32) -> Vec<f64> {
    let (_, media) = ports();
    let status = Command::new("sipp")
        .arg(target.to_string())
        .arg("-sf")
        .arg(scenarios().join("uac_ring_cancel.xml"))
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &trunk_port.to_string(),
            "-mp",
            &media.to_string(),
        ])
        .args([
            "-s",
            "+15550100",
            "-m",
            &calls.to_string(),
            "-r",
            "10",
            "-l",
            "2",
        ])
        .args([
            "-trace_rtt",
            "-rtt_freq",
            "1",
            "-nostdin",
            "-timeout",
            "120s",
            "-timeout_error",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run sipp (Debian package sip-tester)");
    assert!(
        status.success(),
        "sipp's calls failed; see {}",
        dir.display()
    );
    let mut times = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with("_rtt.csv") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            // `date_ms;response_time_ms;rtd_no`, a header line first.
            times.extend(
                text.lines()
                    .skip(1)
                    .filter_map(|l| l.split(';').nth(1)?.trim().parse::<f64>().ok()),
            );
        }
        let _ = std::fs::remove_file(entry.path());
    }
    assert_eq!(times.len(), calls as usize, "one ring time per call");
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
    let until = Instant::now() + Duration::from_secs(10);
    while redis.command(&["GET", "gateway:registration:agent"]) != "b" {
        assert!(Instant::now() < until, "b registered `agent`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    println!("trunk INVITE → first 180, ms ({calls} calls per run, sipp -rtt_freq 1)");
    println!(
        "{:<42} {:>8} {:>8} {:>14}",
        "browser's node", "p50", "p99", "redis cmds/call"
    );
    let (a_sip, b_sip) = (a.endpoint.udp_addr(), b.endpoint.udp_addr());
    for round in 1..=3 {
        for (name, target) in [("same node (b)", b_sip), ("other node (a → b)", a_sip)] {
            let before = commands(&redis);
            let started = Instant::now();
            let mut times = tokio::task::spawn_blocking(move || {
                ring_times(&out_dir_of(round, target), trunk_port, target, calls)
            })
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

fn out_dir_of(round: u32, target: std::net::SocketAddr) -> std::path::PathBuf {
    out_dir(&format!("bench_cluster_inbound_{round}_{}", target.port()))
}
