//! Plugins that try to exhaust the host: a key-value store filled with megabytes, and a log
//! flooded with lines, one of them forging a log line of its own. Its own test binary: it
//! measures the process's memory and captures the log, which other tests would disturb.

use std::io::Write;
use std::sync::{Arc, Mutex};

use gateway::config::Config;
use gateway_tests::client::{CallOptions, run_call};
use gateway_tests::{Sipp, build_plugin, http_get, out_dir, plugin_in, plugins_config};

/// Everything the gateway logs in this process, as the plain-text format writes it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
    .clone()
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS in /proc/self/status")
}

const ROUTER: &str = "country_code = \"49\"\nroutes = [{ prefix = \"+4930\", trunk = \"berlin\" }]";

/// A gateway whose chain holds the hostile plugin in `mode`, and the SIP peer `sipp` starts.
/// The plugins are built first: the peer's clock (40 s) must not run during a compile.
async fn gateway(
    dir: &std::path::Path,
    mode: &str,
    sipp: impl FnOnce() -> Sipp,
) -> (gateway::run::Gateway, Sipp) {
    let hostile = build_plugin("hostile");
    let router = build_plugin("router");
    let sipp = sipp();
    let mut chain = plugin_in("router", &router, "fail-open", "", ROUTER);
    // A long deadline: the plugin is to hit the host's limits, not its time limit.
    chain.push_str(&plugin_in(
        "greedy",
        &hostile,
        "fail-open",
        &format!(
            "deadline_ms = 20000\nmemory_mb = 64\ndata_dir = \"{}\"",
            dir.join("data").display()
        ),
        &format!("mode = \"{mode}\""),
    ));
    let path = plugins_config(dir, sipp.port, &chain);
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    (gateway, sipp)
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_filling_its_store_hits_the_limit_and_memory_stays_bounded() {
    let dir = out_dir("plugin_kv_flood");
    let (gateway, sipp) = gateway(&dir, "kv-flood", || {
        Sipp::uas_calls("echo.xml", "u1", &dir, 2)
    })
    .await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    let before = resident_kib();
    for _ in 0..2 {
        let report = run_call(&url, &CallOptions::new("sales")).await.unwrap();
        assert!(report.tone_snr_db.unwrap_or(0.0) >= 20.0, "{report:?}");
    }
    let grown_mib = resident_kib().saturating_sub(before) / 1024;
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    eprintln!("grew {grown_mib} MiB\n{metrics}");
    // Each call offered 200 values of 1 MB (refused for size) and 10,000 of 4 KiB (taken
    // until the plugin's 8 MiB were full).
    let counter = |name: &str| {
        metric(
            &metrics,
            &format!("gateway_plugin_counter{{plugin=\"greedy\",name=\"{name}\"}}"),
        )
    };
    assert_eq!(counter("kv_refused_too_large"), 400, "{metrics}");
    assert!(counter("kv_refused_full") > 10_000, "{metrics}");
    let held = metric(&metrics, "gateway_plugin_kv_bytes{plugin=\"greedy\"}");
    assert!(held > 7 * 1024 * 1024 && held <= 8 * 1024 * 1024, "{held}");
    assert!(
        grown_mib < 64,
        "the gateway grew {grown_mib} MiB for two calls (210 MB before the limits)"
    );
    assert!(sipp.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_log_lines_stay_escaped_single_lines_and_are_rate_limited() {
    let logs = capture_logs();
    let dir = out_dir("plugin_log_flood");
    let (gateway, sipp) = gateway(&dir, "log-flood", || Sipp::uas("echo.xml", "u1", &dir)).await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    let report = run_call(&url, &CallOptions::new("sales")).await.unwrap();
    assert!(report.tone_snr_db.unwrap_or(0.0) >= 20.0, "{report:?}");
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let plugin_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("plugin=greedy"))
        .collect();
    assert!(
        !text.lines().any(|l| l.starts_with("FAKE LOG LINE")),
        "a plugin forged a log line:\n{text}"
    );
    assert!(
        plugin_lines
            .iter()
            .any(|l| l.contains("caller looked up\\nFAKE LOG LINE")),
        "the line break is written as an escape: {plugin_lines:?}"
    );
    assert!(
        plugin_lines.len() <= 100,
        "{} of 20,001 lines were logged",
        plugin_lines.len()
    );
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    let dropped = metric(
        &metrics,
        "gateway_plugin_counter{plugin=\"greedy\",name=\"log_lines_dropped\"}",
    );
    assert!(dropped >= 19_900, "{metrics}");
    assert!(sipp.finished().await);
}
