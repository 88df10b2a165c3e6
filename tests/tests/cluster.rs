//! Several gateways sharing state through a real `redis-server` (`[cluster]`), in this
//! process on 127.0.0.1 to 127.0.0.3 (loopback): a trunk's channel limit holds across nodes, a
//! trunk that cancels reaches the browser ringing on another node, a node keeps its calls and
//! takes new ones while Redis is away and rejoins when it returns, a draining node sends its
//! browsers to another, and a plugin's rate limit counts calls on every node. Nodes as
//! processes of their own (a call across nodes, `kill -9`) are in
//! `gateway/tests/cluster_nodes.rs`.

use std::path::Path;
use std::time::Duration;

use gateway::config::Config;
use gateway_tests::client::{CallOptions, CallReport, run_call, spawn_call};
use gateway_tests::cluster::{SECRET, node_config, wait_for_redis, wait_for_registration};
use gateway_tests::redis::Redis;
use gateway_tests::{Sipp, out_dir, wait_for_metric};

/// Node `id` of the cluster on `redis_url`, in this process (see
/// [`gateway_tests::cluster::node_config`]).
async fn node(
    dir: &Path,
    id: &str,
    ip: &str,
    rtp: u16,
    redis_url: &str,
    sipp_port: u16,
    extra: &str,
) -> gateway::run::Gateway {
    let path = node_config(dir, id, ip, rtp, redis_url, sipp_port, extra);
    gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap()
}

/// Waits up to `seconds` for the node's `/metrics` to contain `line`.
async fn metric(node: &gateway::run::Gateway, line: &str, seconds: u64) {
    wait_for_metric(node.http_addr, line, seconds).await;
}

fn call(node: &gateway::run::Gateway, seconds: f64) -> tokio::task::JoinHandle<CallReport> {
    let url = format!("ws://{}/ws", node.http_addr);
    let options = CallOptions {
        seconds,
        measure_window: Some((1.0, seconds - 0.5)),
        ..CallOptions::new("echo")
    };
    spawn_call(&url, options)
}

fn assert_tone(report: &CallReport) {
    assert!(
        report.messages.iter().any(|m| m == "answered")
            && report.window_tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the call's tone came back: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trunks_channel_limit_counts_the_calls_of_every_node() {
    let dir = out_dir("cluster_channels");
    let redis = Redis::start(&dir);
    let sipp = Sipp::uas_calls("echo.xml", "u1", &dir, 2);
    let a = node(&dir, "a", "127.0.0.1", 46000, &redis.url(), sipp.port, "").await;
    let b = node(&dir, "b", "127.0.0.2", 46500, &redis.url(), sipp.port, "").await;
    metric(&a, "gateway_cluster_nodes 2", 5).await;
    metric(&b, "gateway_cluster_nodes 2", 5).await;

    // One call on each node fills the trunk's two channels; they last long enough for the
    // refused calls to come and go even on a loaded machine.
    let first = call(&a, 15.0);
    metric(&b, "gateway_cluster_calls 1", 10).await;
    let second = call(&b, 13.0);
    metric(&a, "gateway_cluster_calls 2", 10).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (name, node) in [("a", &a), ("b", &b)] {
        let third = run_call(
            &format!("ws://{}/ws", node.http_addr),
            &CallOptions::new("echo"),
        )
        .await
        .unwrap();
        let ended = third.ended.clone().unwrap_or_default();

        assert_eq!(
            (ended["reason"].as_str(), ended["sip_code"].as_u64()),
            (Some("trunk_unavailable"), Some(503)),
            "a third call on node {name} finds both channels taken: {third:?}"
        );
    }
    assert_tone(&first.await.unwrap());
    assert_tone(&second.await.unwrap());
    let messages = sipp.messages();
    assert!(sipp.finished().await);
    assert_eq!(
        messages.matches("INVITE sip:").count(),
        2,
        "the third calls sent no INVITE: {messages}"
    );
    // The channels come back to the cluster with the calls.
    metric(&a, "gateway_cluster_calls 0", 5).await;
    for node in ["a", "b"] {
        wait_for_redis(&redis, &["HGET", "gateway:channels:carrier", node], "0", 5).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_a_node_keeps_its_calls_takes_new_ones_and_rejoins_when_it_returns() {
    let dir = out_dir("cluster_redis_outage");
    let mut redis = Redis::start(&dir);
    let sipp = Sipp::uas_calls("echo.xml", "u1", &dir, 2);
    let a = node(&dir, "a", "127.0.0.1", 47000, &redis.url(), sipp.port, "").await;
    // Node b has a browser registered as `agent`.
    let b = node(&dir, "b", "127.0.0.2", 47500, &redis.url(), sipp.port, "").await;
    let mut agent = CallOptions::answering("agent", SECRET, 60.0);
    agent.ignore_incoming = true;
    let b_url = format!("ws://{}/ws", b.http_addr);
    let browser = tokio::spawn(async move { run_call(&b_url, &agent).await });
    metric(&b, "gateway_registered_identities 1", 5).await;
    metric(&a, "gateway_cluster_nodes 2", 5).await;
    let running = call(&a, 9.0);
    metric(&a, "gateway_active_calls 1", 5).await;
    redis.stop();
    metric(&a, "gateway_cluster_connected 0", 5).await;
    // Local limits only: a new call goes through.
    let during = run_call(
        &format!("ws://{}/ws", a.http_addr),
        &CallOptions {
            measure_window: Some((0.8, 1.8)),
            ..CallOptions::new("echo")
        },
    )
    .await
    .unwrap();
    assert_tone(&during);
    // Redis comes back empty: each node writes its whole state again, and a sees b and
    // its registration once more.
    redis.restart();
    metric(&a, "gateway_cluster_connected 1", 5).await;
    metric(&a, "gateway_cluster_nodes 2", 5).await;
    wait_for_registration(&redis, "agent", "b", 5).await;
    wait_for_redis(&redis, &["HGET", "gateway:calls", "a"], "1", 5).await;
    assert!(
        redis
            .command(&["GET", "gateway:node:a"])
            .contains(&format!("\"sip\":\"{}\"", a.endpoint.udp_addr())),
        "the node's lease is back"
    );
    assert_tone(&running.await.unwrap());
    assert!(sipp.finished().await);
    browser.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_node_sends_its_registered_browsers_to_another_node() {
    let dir = out_dir("cluster_drain");
    let redis = Redis::start(&dir);
    let a = node(&dir, "a", "127.0.0.1", 48000, &redis.url(), 9, "").await;
    let b = std::sync::Arc::new(node(&dir, "b", "127.0.0.2", 48500, &redis.url(), 9, "").await);
    let mut agent = CallOptions::answering("agent", SECRET, 1.0);
    agent.ignore_incoming = true;
    agent.reconnect_to = Some(format!("ws://{}/ws", a.http_addr));
    let b_url = format!("ws://{}/ws", b.http_addr);
    let browser = tokio::spawn(async move { run_call(&b_url, &agent).await });
    let registered_on = |node: &'static str| wait_for_registration(&redis, "agent", node, 5);
    registered_on("b").await;
    metric(&b, "gateway_registered_identities 1", 5).await;

    // SIGTERM on b: its browser hears `reconnect` and registers on a.
    let draining = b.clone();
    tokio::spawn(async move { draining.drain(Duration::from_secs(5)).await });
    registered_on("a").await;
    metric(&a, "gateway_registered_identities 1", 5).await;
    metric(&b, "gateway_registered_identities 0", 5).await;
    let lease: serde_json::Value =
        serde_json::from_str(&redis.command(&["GET", "gateway:node:b"])).unwrap();
    assert_eq!(lease["draining"], true, "{lease}");
    assert_eq!(
        lease["sip"],
        b.endpoint.udp_addr().to_string(),
        "without `sip_address` the lease names the node's SIP as bound: {lease}"
    );

    // b takes no new registration meanwhile.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", b.http_addr))
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    let token = gateway_tests::client::token("other", SECRET);
    for message in [
        serde_json::json!({"type": "auth", "token": token}),
        serde_json::json!({"type": "register", "identity": "other"}),
    ] {
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            message.to_string().into(),
        ))
        .await
        .unwrap();
    }
    let mut codes = Vec::new();
    while codes.len() < 3 {
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = ws.next().await else {
            break;
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        codes.push(
            v["code"]
                .as_str()
                .unwrap_or(v["type"].as_str().unwrap_or(""))
                .to_string(),
        );
    }
    assert_eq!(codes, ["hello", "authenticated", "draining"]);
    browser.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compliance_rate_limit_counts_a_callers_calls_on_every_node() {
    let dir = out_dir("cluster_plugin_kv");
    // Built first: on a fresh tree this compiles every example plugin.
    let compliance = gateway_tests::build_plugin("compliance");
    let redis = Redis::start(&dir);
    let sipp = Sipp::uas_calls("echo.xml", "u1", &dir, 2);
    // Two calls a day per caller (a window that turns at midnight UTC only).
    let plugin = format!(
        "\n[[plugins]]\nname = \"compliance\"\npath = \"{}\"\npolicy = \"fail-closed\"\n\
         [plugins.config]\nrate_limit = {{ calls = 2, per_seconds = 86400 }}\n",
        compliance.display()
    );
    let a = node(
        &dir,
        "a",
        "127.0.0.1",
        45000,
        &redis.url(),
        sipp.port,
        &plugin,
    )
    .await;
    let b = node(
        &dir,
        "b",
        "127.0.0.2",
        45500,
        &redis.url(),
        sipp.port,
        &plugin,
    )
    .await;
    metric(&a, "gateway_cluster_connected 1", 5).await;
    metric(&b, "gateway_cluster_connected 1", 5).await;
    let place = |node: &gateway::run::Gateway| {
        let url = format!("ws://{}/ws", node.http_addr);
        async move {
            let report = run_call(&url, &CallOptions::new("echo")).await.unwrap();
            report.ended.unwrap_or_default()
        }
    };
    for (n, node) in [(1, &a), (2, &b)] {
        let ended = place(node).await;
        assert_eq!(
            ended["reason"], "hangup",
            "call {n} is within the limit: {ended}"
        );
    }
    // The third of the day, on the node that saw only one: refused by the shared count.
    let ended = place(&a).await;
    assert_eq!(
        (ended["reason"].as_str(), ended["sip_code"].as_u64()),
        (Some("rejected"), Some(403)),
        "{ended}"
    );
    let keys = redis.command(&["KEYS", "gateway:kv:compliance:rate:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    assert_eq!(redis.command(&["GET", keys.trim()]), "3");
    let messages = sipp.messages();
    assert!(sipp.finished().await);
    assert_eq!(messages.matches("INVITE sip:").count(), 2, "{messages}");
}

/// Nodes a (127.0.0.2) and b (127.0.0.3) with the trunk (sipp, 127.0.0.1 on `trunk_port`)
/// calling `+15550100` and `+15550108` for the identity `agent`, whose browser is on b.
async fn inbound_pair(
    dir: &Path,
    rtp: u16,
    trunk_port: u16,
    answer: bool,
) -> (
    Redis,
    gateway::run::Gateway,
    gateway::run::Gateway,
    tokio::task::JoinHandle<CallReport>,
) {
    let redis = Redis::start(dir);
    let inbound = "\n[inbound]\n\"+15550100\" = \"agent\"\n\"+15550108\" = \"agent\"\n";
    let a = node(
        dir,
        "a",
        "127.0.0.2",
        rtp,
        &redis.url(),
        trunk_port,
        inbound,
    )
    .await;
    let b = node(
        dir,
        "b",
        "127.0.0.3",
        rtp + 500,
        &redis.url(),
        trunk_port,
        inbound,
    )
    .await;
    let url = format!("ws://{}/ws", b.http_addr);
    let mut agent = CallOptions::answering("agent", SECRET, 3.0);
    agent.ignore_incoming = !answer;
    let browser = spawn_call(&url, agent);
    wait_for_registration(&redis, "agent", "b", 5).await;
    metric(&a, "gateway_cluster_nodes 2", 5).await;
    (redis, a, b, browser)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_that_gives_up_cancels_the_ringing_browser_on_the_other_node() {
    let dir = out_dir("cluster_inbound_cancel");
    let (trunk_port, _) = gateway_tests::ports();
    let (_redis, a, b, browser) = inbound_pair(&dir, 43000, trunk_port, false).await;
    // sipp cancels at the first 180 (relayed from b): 200 for the CANCEL, 487, ACK.
    let sipp = Sipp::uac(
        "uac_cancel.xml",
        "127.0.0.1",
        Some(trunk_port),
        a.endpoint.udp_addr(),
        &dir,
    );
    let report = browser.await.unwrap();
    assert!(
        report.incoming.is_none() && report.call_id.is_some(),
        "b rang its browser: {report:?}"
    );
    assert_eq!(
        report.ended.as_ref().map(|e| e["reason"].clone()),
        Some("remote_hangup".into()),
        "the CANCEL reached node b, which ended the call: {report:?}"
    );
    assert!(sipp.finished().await, "sipp got 200 for its CANCEL and 487");
    metric(&a, "gateway_cluster_forwarded_total 1", 2).await;
    // Neither node keeps anything of the call: a stopped routing its Call-ID, b ended it.
    metric(&a, "gateway_sip_dialogs 0", 5).await;
    metric(&b, "gateway_sip_dialogs 0", 5).await;
}
