//! Load shedding end to end: a gateway configured so that every media tick counts as late
//! (a capacity of nothing) economises, then refuses new calls with `limit_reached` and
//! reports itself overloaded on `/healthz`, while the call it carries keeps its audio; and
//! it recovers once the load is gone.

use std::time::{Duration, Instant};

use gateway::config::Config;
use gateway_tests::client::{CallOptions, run_call};
use gateway_tests::{Sipp, http_get, out_dir, write_config};

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn late_media_sheds_new_calls_and_keeps_the_running_one() {
    let dir = out_dir("load_shedding");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let path = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{text}\n[targets.echo]\ntrunk = \"carrier\"\nnumber = \"100\"\n\n[limits]\nlate_tick_ms = 0\nshed_late_pct = 1\n"
        ),
    )
    .unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", gateway.http_addr);
    let running = {
        let url = url.clone();
        tokio::spawn(async move {
            run_call(
                &url,
                &CallOptions {
                    seconds: 8.0,
                    ..CallOptions::new("echo")
                },
            )
            .await
            .unwrap()
        })
    };
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
    assert_eq!(gauge(&metrics, "gateway_calls_shed_total"), Some(1.0));
}
