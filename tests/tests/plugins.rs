//! The plugin chain on real calls: plugins built from source to wasm, loaded by the gateway,
//! routing and rejecting calls, and hostile ones contained while calls keep their audio.

use gateway::config::Config;
use gateway_tests::client::{CallOptions, run_call};
use gateway_tests::{Sipp, build_plugin, out_dir, ports, write_config};

fn options() -> CallOptions {
    CallOptions {
        to: "sales".into(),
        token: None,
        seconds: 2.0,
        tone_hz: 1004.0,
        dtmf: None,
        close_instead_of_hangup: false,
        answer_as: None,
        dtmf_message: None,
        hold_after: None,
    }
}

/// A gateway whose target `sales` dials 030 1234 on `carrier` (which nothing answers), plus
/// a trunk `berlin` at sipp, and the given `[[plugins]]` entries.
async fn gateway_with(
    dir: &std::path::Path,
    sipp_port: u16,
    plugins: &str,
) -> gateway::run::Gateway {
    let (dead, _) = ports();
    let path = write_config(
        dir,
        &[
            ("carrier", dead, "udp", &[]),
            ("berlin", sipp_port, "udp", &[]),
        ],
    );
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[targets.sales]\ntrunk = \"carrier\"\nnumber = \"030 1234\"\n");
    text.push_str(plugins);
    std::fs::write(&path, text).unwrap();
    gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap()
}

fn plugin(name: &str, file: &std::path::Path, policy: &str, config: &str) -> String {
    format!(
        "\n[[plugins]]\nname = \"{name}\"\npath = \"{}\"\npolicy = \"{policy}\"\nreject_code = 503\n[plugins.config]\n{config}\n",
        file.display()
    )
}

fn router_config() -> &'static str {
    "country_code = \"49\"\nroutes = [{ prefix = \"+4930\", trunk = \"berlin\" }]"
}

#[tokio::test(flavor = "multi_thread")]
async fn the_router_moves_the_call_to_another_trunk_and_number() {
    let router = build_plugin("router");
    let dir = out_dir("plugin_route");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let gateway = gateway_with(
        &dir,
        sipp.port,
        &plugin("router", &router, "fail-open", router_config()),
    )
    .await;
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options())
        .await
        .unwrap();
    assert!(report.tone_snr_db.unwrap_or(0.0) >= 20.0, "{report:?}");
    let log = sipp.messages();
    assert!(
        log.contains("INVITE sip:+49301234@"),
        "sipp sees the E.164 number on the routed trunk: {log}"
    );
    assert!(
        gateway
            .calls
            .plugins
            .counters()
            .contains(&("router".into(), "routed".into(), 1))
    );
    assert!(
        tokio::task::spawn_blocking(move || sipp.finish())
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejecting_plugin_stops_the_call_before_any_invite() {
    let hostile = build_plugin("hostile");
    let dir = out_dir("plugin_reject");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let gateway = gateway_with(
        &dir,
        sipp.port,
        &plugin("gate", &hostile, "fail-closed", "mode = \"reject\""),
    )
    .await;
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options())
        .await
        .unwrap();
    let ended = report.ended.expect("ended");
    assert_eq!(ended["sip_code"], 403);
    assert_eq!(ended["reason"], "rejected");
    assert!(
        !sipp.messages().contains("INVITE"),
        "no INVITE reached the trunk"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_are_contained_and_the_call_keeps_its_audio() {
    let hostile = build_plugin("hostile");
    let router = build_plugin("router");
    let dir = out_dir("plugin_hostile");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let mut chain = String::new();
    for mode in ["loop", "trap", "memory", "escape"] {
        chain.push_str(&plugin(
            mode,
            &hostile,
            "fail-open",
            &format!("mode = \"{mode}\""),
        ));
    }
    chain.push_str(&plugin("router", &router, "fail-open", router_config()));
    let gateway = gateway_with(&dir, sipp.port, &chain).await;
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options())
        .await
        .unwrap();
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the call went through with audio: {report:?}"
    );
    let counters = gateway.calls.plugins.counters();
    for mode in ["loop", "trap", "memory"] {
        assert!(
            counters.contains(&(mode.into(), "failures".into(), 1)),
            "{mode} was contained and counted: {counters:?}"
        );
    }
    assert!(
        !counters
            .iter()
            .any(|(p, n, _)| p == "escape" && n == "failures"),
        "reading /etc/passwd failed inside the plugin, it did not trap: {counters:?}"
    );
    assert!(
        tokio::task::spawn_blocking(move || sipp.finish())
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_fail_closed_plugin_rejects_with_its_code() {
    let hostile = build_plugin("hostile");
    let dir = out_dir("plugin_fail_closed");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let gateway = gateway_with(
        &dir,
        sipp.port,
        &plugin("compliance", &hostile, "fail-closed", "mode = \"trap\""),
    )
    .await;
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options())
        .await
        .unwrap();
    assert_eq!(report.ended.expect("ended")["sip_code"], 503);
    assert!(!sipp.messages().contains("INVITE"));
}
