//! Load shedding end to end: a gateway configured so that every media tick counts as late
//! (a capacity of nothing) economises, then refuses new calls with `limit_reached` (the
//! trunk's with 503 and Retry-After) and reports itself overloaded on `/healthz`, while the
//! call it carries keeps its audio; and
//! it recovers once the load is gone. The same with media workers configured nearly full:
//! their calls economise first, and new calls are refused before running ones run late.

use std::path::Path;
use std::time::{Duration, Instant};

use gateway::config::Config;
use gateway::run::Gateway;
use gateway_tests::client::{CallOptions, CallReport, run_call, spawn_call};
use gateway_tests::{Sipp, http_get, out_dir, wait_for_metric, write_config};
use tokio::task::JoinHandle;

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// A gateway with one trunk, `carrier` (sipp at `port`), a target `echo` on it, and `extra`
/// configuration.
async fn start(dir: &Path, port: u16, extra: &str) -> Gateway {
    let path = write_config(dir, &[("carrier", port, "udp", &[])]);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[targets.echo]\ntrunk = \"carrier\"\nnumber = \"100\"\n\n{extra}"),
    )
    .unwrap();
    gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn late_media_sheds_new_calls_and_keeps_the_running_one() {
    let dir = out_dir("load_shedding");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let gateway = start(
        &dir,
        sipp.port,
        "[limits]\nlate_tick_ms = 0\nshed_late_pct = 1\n\n[inbound]\n\"+15550100\" = \"agent-7\"\n",
    )
    .await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    let running = spawn_call(
        &url,
        CallOptions {
            seconds: 8.0,
            ..CallOptions::new("echo")
        },
    );
    // Economy after the first late second, shedding after three.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut levels = Vec::new();
    loop {
        let metrics = http_get(gateway.http_addr, "/metrics").await;
        let level = gauge(&metrics, "gateway_load_level").unwrap();
        if levels.last() != Some(&level) {
            levels.push(level);
        }
        if level == 2.0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(levels, [0.0, 1.0, 2.0], "normal, economy, shedding");
    let health = http_get(gateway.http_addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.0 503"), "{health}");
    assert!(health.contains("overloaded"), "{health}");
    let refused = run_call(&url, &CallOptions::new("echo")).await.unwrap();
    assert_eq!(
        refused.errors.first().map(|e| e["code"].clone()),
        Some("limit_reached".into()),
        "{refused:?}"
    );
    assert!(!refused.messages.contains(&"answer".to_string()));
    // The trunk's new call is refused too, and told when to try again, so that it sends its
    // calls to another gateway meanwhile (RFC 3261 §21.5.4).
    let inbound_dir = out_dir("load_shedding_inbound");
    let target = gateway.endpoint.udp_addr();
    let mut from_trunk = Sipp::uac("uac_invite.xml", "127.0.0.1", None, target, &inbound_dir);
    let from_trunk = tokio::task::spawn_blocking(move || (from_trunk.wait(), from_trunk))
        .await
        .unwrap();
    let seen = from_trunk.1.messages();
    assert!(from_trunk.0, "{seen}");
    assert!(seen.contains("SIP/2.0 503"), "{seen}");
    assert!(seen.contains("Retry-After: 5\r\n"), "{seen}");
    let report = running.await.unwrap();
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the running call keeps its audio at complexity 0: {report:?}"
    );
    assert_eq!(report.ended.unwrap()["reason"], "hangup");
    assert!(sipp.finished().await);
    // No calls, no late ticks: one level down every three calm seconds.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let health = http_get(gateway.http_addr, "/healthz").await;
        if health.starts_with("HTTP/1.0 200") {
            break;
        }
        assert!(Instant::now() < deadline, "still overloaded: {health}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert_eq!(
        gauge(&metrics, "gateway_calls_shed_total"),
        Some(2.0),
        "the browser's call and the trunk's"
    );
    // Every tick the running call made is in the lateness histogram, whatever counted it late.
    let ticks = gauge(&metrics, "gateway_media_tick_lateness_seconds_count").unwrap();
    assert!(ticks >= 200.0, "8 s of a call ticking every 20 ms: {ticks}");
    assert_eq!(
        gauge(
            &metrics,
            "gateway_media_tick_lateness_seconds_bucket{le=\"+Inf\"}"
        ),
        Some(ticks),
        "{metrics}"
    );
}

/// Starts eight 6 s calls to `echo` on the gateway at `url` (one whose tone is checked,
/// seven light ones) and waits until they are up: a worker gates calls from eight on.
async fn eight_calls(url: &str, http: std::net::SocketAddr) -> Vec<JoinHandle<CallReport>> {
    let running = (0..8)
        .map(|i| {
            let options = CallOptions {
                seconds: 6.0,
                light: i > 0,
                ..CallOptions::new("echo")
            };
            spawn_call(url, options)
        })
        .collect();
    wait_for_metric(http, "gateway_active_calls 8", 20).await;
    running
}

/// Waits for the calls of [`eight_calls`]: each ended by its hangup, without errors, and the
/// first with its tone intact.
async fn ended_clean(running: Vec<JoinHandle<CallReport>>) {
    for (i, call) in running.into_iter().enumerate() {
        let report = call.await.unwrap();
        assert!(report.errors.is_empty(), "{report:?}");
        if i == 0 {
            assert!(
                report.tone_snr_db.unwrap_or(0.0) >= 20.0,
                "the running calls keep their audio: {report:?}"
            );
        }
        assert_eq!(report.ended.unwrap()["reason"], "hangup");
    }
}

/// The gate in front of the media workers: with one worker allowed 1 % of a core, the worker
/// running eight calls (fewer are always taken) has no room for a ninth (a call is taken to
/// want 1 % until its worker has been measured, and never much less after), so the ninth is
/// refused with `limit_reached` and `/healthz` says the gateway is full, while the running
/// calls keep their audio; once they have ended, the idle worker takes a call again.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_media_worker_refuses_new_calls_before_its_calls_run_late() {
    let dir = out_dir("media_load_gate");
    let sipp = Sipp::uas_calls("echo.xml", "u1", &dir, 9);
    let gateway = start(
        &dir,
        sipp.port,
        "[limits]\nmedia_load_pct = 1\n\n[media]\nworkers = 1\n",
    )
    .await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    let health = http_get(gateway.http_addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.0 200"), "idle: {health}");
    let running = eight_calls(&url, gateway.http_addr).await;
    let health = http_get(gateway.http_addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.0 503"), "{health}");
    assert!(health.contains("media workers are busy"), "{health}");
    let refused = run_call(&url, &CallOptions::new("echo")).await.unwrap();
    let error = refused.errors.first().cloned().unwrap_or_default();
    assert_eq!(error["code"], "limit_reached", "{refused:?}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("media workers are busy")),
        "{refused:?}"
    );
    assert!(!refused.messages.contains(&"answer".to_string()));
    // Economy's line is the gate's here (never later than `media_load_pct`): the calls
    // economise, for their demand and not for late ticks (that would be 2, shedding).
    wait_for_metric(gateway.http_addr, "gateway_load_level 1", 5).await;

    ended_clean(running).await;
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert_ne!(
        gauge(&metrics, "gateway_load_level"),
        Some(2.0),
        "refused by the gate, not for late ticks"
    );
    assert_eq!(gauge(&metrics, "gateway_calls_shed_total"), Some(1.0));
    assert!(
        metrics.contains("gateway_media_worker_demand{worker=\"0\"} "),
        "{metrics}"
    );

    // The worker is idle again: it takes a call.
    wait_for_metric(gateway.http_addr, "gateway_active_calls 0", 10).await;
    let again = run_call(
        &url,
        &CallOptions {
            seconds: 1.0,
            ..CallOptions::new("echo")
        },
    )
    .await
    .unwrap();
    assert!(again.errors.is_empty(), "{again:?}");
    assert_eq!(again.ended.unwrap()["reason"], "hangup");
    assert!(sipp.finished().await);
}

/// Economy before refusals: one worker whose calls economise from 1 % of a core
/// (`economy_load_pct`) but may fill it (`media_load_pct` 100). Eight calls put the gateway in
/// economy (every call codes Opus at complexity 0), a ninth call is still taken and keeps its
/// tone, and three calm seconds after the calls end, economy ends.
/// Lateness is not judged here (`late_tick_ms` a second): a tick the busy test box runs late
/// would close the worker to the ninth call for two seconds (`call::workers`), and the late
/// media's own path is the first test's.
#[tokio::test(flavor = "multi_thread")]
async fn busy_media_workers_economise_before_they_refuse_calls() {
    let dir = out_dir("media_load_economy");
    let sipp = Sipp::uas_calls("echo.xml", "u1", &dir, 9);
    let gateway = start(
        &dir,
        sipp.port,
        "[limits]\neconomy_load_pct = 1\nmedia_load_pct = 100\nlate_tick_ms = 1000\n\n[media]\nworkers = 1\n",
    )
    .await;
    let url = format!("ws://{}/ws", gateway.http_addr);
    let running = eight_calls(&url, gateway.http_addr).await;
    wait_for_metric(gateway.http_addr, "gateway_load_level 1", 5).await;
    let health = http_get(gateway.http_addr, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.0 200"),
        "economy still takes calls: {health}"
    );
    let ninth = run_call(
        &url,
        &CallOptions {
            seconds: 2.0,
            ..CallOptions::new("echo")
        },
    )
    .await
    .unwrap();
    assert!(ninth.errors.is_empty(), "{ninth:?}");
    assert!(
        ninth.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "a call coded at complexity 0 keeps its tone: {ninth:?}"
    );
    assert_eq!(ninth.ended.unwrap()["reason"], "hangup");
    ended_clean(running).await;
    wait_for_metric(gateway.http_addr, "gateway_load_level 0", 10).await;
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert_eq!(gauge(&metrics, "gateway_calls_shed_total"), Some(0.0));
    assert!(sipp.finished().await);
}
