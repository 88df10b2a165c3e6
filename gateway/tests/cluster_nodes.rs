//! Gateway nodes as processes of their own (`gateway run`), sharing a real `redis-server`:
//! a trunk's call sent to one node rings the browser connected to the other, with the dialog
//! and media that node's; a node killed with SIGKILL leaves its registration for no longer
//! than its lease, after which the other node answers the trunk 480 for that identity; a node
//! given SIGTERM sends its browser to the other node and exits.

use std::path::Path;
use std::time::{Duration, Instant};

use gateway_tests::client::{CallOptions, CallReport, run_call};
use gateway_tests::cluster::{NodeProcess, SECRET, node_config, wait_for_registration};
use gateway_tests::redis::Redis;
use gateway_tests::{Sipp, out_dir, wait_for_metric};

const INBOUND: &str = "\n[inbound]\n\"+15550100\" = \"agent\"\n";

fn node(dir: &Path, id: &str, ip: &str, rtp: u16, redis: &Redis, trunk_port: u16) -> NodeProcess {
    let config = node_config(dir, id, ip, rtp, &redis.url(), trunk_port, INBOUND);
    NodeProcess::start(Path::new(env!("CARGO_BIN_EXE_gateway")), &config)
}

/// A browser answering calls for `agent` on `node` for `seconds` after its answer; returns
/// once Redis says the identity is on `node_id`.
async fn agent_on(
    node: &NodeProcess,
    node_id: &str,
    redis: &Redis,
    seconds: f64,
) -> tokio::task::JoinHandle<CallReport> {
    let url = format!("ws://{}/ws", node.http);
    let agent = CallOptions::answering("agent", SECRET, seconds);
    let browser = tokio::spawn(async move { run_call(&url, &agent).await.unwrap() });
    wait_for_registration(redis, "agent", node_id, 10).await;
    browser
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_call_for_a_browser_on_another_node_rings_it_there_and_the_dialog_and_media_are_that_nodes()
 {
    let dir = out_dir("cluster_nodes_inbound");
    let redis = Redis::start(&dir);
    let (trunk_port, _) = gateway_tests::ports();
    let a = node(&dir, "a", "127.0.0.2", 41000, &redis, trunk_port);
    let b = node(&dir, "b", "127.0.0.3", 41500, &redis, trunk_port);
    // Up longer than sipp keeps the call: the trunk hangs up (BYE) first.
    let browser = agent_on(&b, "b", &redis, 30.0).await;
    wait_for_metric(a.http, "gateway_cluster_nodes 2", 5).await;
    // The trunk calls node a; sipp sends its ACK and BYE where the 200's Contact says.
    let mut sipp = Sipp::uac(
        "uac_call_cluster.xml",
        "127.0.0.1",
        Some(trunk_port),
        a.sip,
        &dir,
    );
    let report = browser.await.unwrap();
    assert_eq!(
        &report.messages[..4],
        ["hello", "authenticated", "registered", "incoming"],
        "{report:?}"
    );
    assert!(
        report.messages.iter().any(|m| m == "answered")
            && report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "browser tone → node b → sipp echo → back: {report:?}"
    );
    assert_eq!(
        report.ended.as_ref().unwrap()["reason"],
        "remote_hangup",
        "the trunk's BYE reached node b: {report:?}"
    );
    let (finished, log) = tokio::task::spawn_blocking(move || (sipp.wait(), sipp.messages()))
        .await
        .unwrap();
    assert!(finished, "sipp's call completed: {log}");
    let ok = log
        .split("SIP/2.0 200 OK")
        .nth(1)
        .expect("sipp logged the 200");
    assert!(
        ok.contains(&format!("Contact: <sip:gw@{}>", b.sip)) && ok.contains("c=IN IP4 127.0.0.3"),
        "the 200 names node b's SIP and media, so nothing of the call passes through a: {ok}"
    );
    assert!(
        log.contains(&format!("BYE sip:gw@{} SIP/2.0", b.sip)),
        "the BYE went to b: {log}"
    );
    wait_for_metric(a.http, "gateway_cluster_forwarded_total 1", 2).await;
    wait_for_metric(a.http, "gateway_calls_total 0", 2).await;
    wait_for_metric(b.http, "gateway_calls_total 1", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_a_nodes_registration_is_gone_within_its_lease_and_the_trunk_hears_480() {
    let dir = out_dir("cluster_nodes_kill");
    let redis = Redis::start(&dir);
    let (trunk_port, _) = gateway_tests::ports();
    let a = node(&dir, "a", "127.0.0.2", 42000, &redis, trunk_port);
    let mut b = node(&dir, "b", "127.0.0.3", 42500, &redis, trunk_port);
    let browser = agent_on(&b, "b", &redis, 60.0).await;
    wait_for_metric(a.http, "gateway_cluster_nodes 2", 5).await;
    // A count b left behind, as if it had a call up when it died.
    redis.command(&["HSET", "gateway:calls", "b", "1"]);
    let killed = Instant::now();
    b.kill();
    while redis.command(&["EXISTS", "gateway:registration:agent"]) != "0" {
        assert!(
            killed.elapsed() < Duration::from_secs(4),
            "the registration outlived b's 3 s lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_metric(a.http, "gateway_cluster_nodes 1", 5).await;
    wait_for_metric(a.http, "gateway_cluster_calls 0", 2).await;
    assert_eq!(
        redis.command(&["HEXISTS", "gateway:calls", "b"]),
        "0",
        "the dead node's count is gone"
    );
    // The identity is registered nowhere now: a's answer to the trunk is 480.
    let mut sipp = Sipp::uac("uac_invite.xml", "127.0.0.1", Some(trunk_port), a.sip, &dir);
    let (finished, log) = tokio::task::spawn_blocking(move || (sipp.wait(), sipp.messages()))
        .await
        .unwrap();
    assert!(finished && log.contains("SIP/2.0 480"), "{log}");
    wait_for_metric(a.http, "gateway_cluster_forwarded_total 0", 2).await;
    browser.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_sends_the_nodes_browser_to_the_other_node_and_the_node_exits() {
    let dir = out_dir("cluster_nodes_sigterm");
    let redis = Redis::start(&dir);
    let (trunk_port, _) = gateway_tests::ports();
    let a = node(&dir, "a", "127.0.0.2", 43000, &redis, trunk_port);
    let mut b = node(&dir, "b", "127.0.0.3", 43500, &redis, trunk_port);
    // The browser reconnects "through the load balancer", here straight to a.
    let url = format!("ws://{}/ws", b.http);
    let mut agent = CallOptions::answering("agent", SECRET, 60.0);
    agent.ignore_incoming = true;
    agent.reconnect_to = Some(format!("ws://{}/ws", a.http));
    let browser = tokio::spawn(async move { run_call(&url, &agent).await });
    let registered_on = |node: &'static str| wait_for_registration(&redis, "agent", node, 10);
    registered_on("b").await;
    b.terminate();
    registered_on("a").await;
    wait_for_metric(a.http, "gateway_registered_identities 1", 5).await;
    let exited = tokio::task::spawn_blocking(move || b.exited(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(exited, "b drained (no calls) and exited with status 0");
    browser.abort();
}
