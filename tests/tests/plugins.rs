//! The plugin chain on real calls: plugins built from source to wasm (Rust and JavaScript),
//! loaded by the gateway, routing, rejecting and recording calls, hostile ones contained
//! while another call keeps its audio, and a reload during a live call.

use gateway::config::Config;
use gateway::media::tone::ToneDetector;
use gateway_tests::client::{CallOptions, run_call};
use gateway_tests::{Sipp, build_plugin, out_dir, plugin_in, plugins_config, ports, write_config};

fn options() -> CallOptions {
    CallOptions::new("sales")
}

/// A gateway configured by [`plugins_config`].
async fn gateway_with(
    dir: &std::path::Path,
    sipp_port: u16,
    plugins: &str,
) -> gateway::run::Gateway {
    let path = plugins_config(dir, sipp_port, plugins);
    gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap()
}

/// Waits until the plugins' snapshots after `init` were taken or given up on.
async fn settled(gateway: &gateway::run::Gateway) {
    let chain = gateway.calls.plugins.current();
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        chain.snapshots_settled(),
    )
    .await
    .expect("the plugins' snapshots settle within two minutes");
}

fn plugin(name: &str, file: &std::path::Path, policy: &str, config: &str) -> String {
    plugin_in(name, file, policy, "", config)
}

fn counters(gateway: &gateway::run::Gateway) -> Vec<(String, String, u64)> {
    gateway.calls.plugins.current().counters()
}

/// The router, then the recorder writing into `recordings` (with extra `settings` and its
/// `config`).
fn router_then_recorder(
    recorder: &std::path::Path,
    recordings: &std::path::Path,
    settings: &str,
    config: &str,
) -> String {
    let mut chain = plugin(
        "router",
        &build_plugin("router"),
        "fail-open",
        router_config(),
    );
    chain.push_str(&plugin_in(
        "recorder",
        recorder,
        "fail-open",
        &format!("data_dir = \"{}\"\n{settings}", recordings.display()),
        config,
    ));
    chain
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
    // The router's `init` (parsing its routes) asks nothing of the host: once its snapshot
    // is taken, calls start from it and the routes come from the snapshot's memory.
    settled(&gateway).await;
    let metrics = gateway_tests::http_get(gateway.http_addr, "/metrics").await;
    assert!(
        metrics.contains("gateway_plugin_preinitialised{plugin=\"router\"} 1"),
        "{metrics}"
    );
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options())
        .await
        .unwrap();
    assert!(report.tone_snr_db.unwrap_or(0.0) >= 20.0, "{report:?}");
    let log = sipp.messages();
    assert!(
        log.contains("INVITE sip:+49301234@"),
        "sipp sees the E.164 number on the routed trunk: {log}"
    );
    assert!(counters(&gateway).contains(&("router".into(), "routed".into(), 1)));
    assert!(sipp.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compliance_reject_ends_the_call_before_any_invite() {
    let router = build_plugin("router");
    let compliance = build_plugin("compliance");
    let dir = out_dir("plugin_reject");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let mut chain = plugin("router", &router, "fail-open", router_config());
    chain.push_str(&plugin(
        "compliance",
        &compliance,
        "fail-closed",
        "deny = [\"+4930123\"]\npremium = [\"+49900\"]\nemergency = [\"112\"]",
    ));
    let gateway = gateway_with(&dir, sipp.port, &chain).await;
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options())
        .await
        .unwrap();
    let ended = report.ended.expect("ended");
    // docs/protocol.md: a plugin's refusal ends the call with reason `rejected` and its code.
    assert_eq!(ended["sip_code"], 403);
    assert_eq!(ended["reason"], "rejected");
    assert!(
        !sipp.messages().contains("INVITE"),
        "no INVITE reached the trunk"
    );
    assert!(counters(&gateway).contains(&("compliance".into(), "rejected".into(), 1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn compliance_refuses_a_trunk_transfer_to_a_premium_number_and_the_call_goes_on() {
    let router = build_plugin("router");
    let compliance = build_plugin("compliance");
    let dir = out_dir("plugin_transfer_refused");
    // The PBX REFERs the call to +49900123 on itself, then expects NOTIFY 403 and our BYE.
    let sipp = Sipp::uas("trunk_refer_refused.xml", "u1", &dir);
    let mut chain = plugin("router", &router, "fail-open", router_config());
    chain.push_str(&plugin(
        "compliance",
        &compliance,
        "fail-closed",
        "premium = [\"+49900\"]",
    ));
    let gateway = gateway_with(&dir, sipp.port, &chain).await;
    let opts = CallOptions {
        seconds: 4.0,
        ..options()
    };
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &opts)
        .await
        .unwrap();
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the call keeps its audio: {report:?}"
    );
    assert_eq!(
        report.ended.as_ref().unwrap()["reason"],
        "hangup",
        "{report:?}"
    );
    let log = sipp.messages();
    assert!(
        !log.contains("INVITE sip:+49900"),
        "the premium target was never dialled: {log}"
    );
    assert!(
        sipp.finished().await,
        "sipp saw 202, NOTIFY 100, NOTIFY 403 (terminated) and the browser's BYE"
    );
    assert!(counters(&gateway).contains(&("compliance".into(), "transfers_refused".into(), 1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_are_contained_while_another_call_keeps_its_audio() {
    let hostile = build_plugin("hostile");
    let router = build_plugin("router");
    let dir = out_dir("plugin_hostile");
    let sipp = Sipp::uas_calls("echo.xml", "u1", &dir, 2);
    // Each hostile plugin misbehaves only on calls to `bad`; calls to `sales` are normal.
    let mut chain = String::new();
    for mode in ["loop", "trap", "memory", "escape"] {
        chain.push_str(&plugin_in(
            mode,
            &hostile,
            "fail-open",
            &format!("data_dir = \"{}\"", dir.join(mode).display()),
            &format!("mode = \"{mode}\"\nwhen_to = \"bad\""),
        ));
    }
    // Plugins whose `init` asks the host for something (our log, WASI's clock or random
    // seed) cannot be snapshotted after it: they run `init` for every call, and must work.
    for asks in ["log", "clock", "random"] {
        chain.push_str(&plugin_in(
            &format!("init-{asks}"),
            &hostile,
            "fail-closed",
            &format!("data_dir = \"{}\"", dir.join(asks).display()),
            &format!("mode = \"continue\"\ninit_host = \"{asks}\""),
        ));
    }
    chain.push_str(&plugin("router", &router, "fail-open", router_config()));
    let gateway = gateway_with(&dir, sipp.port, &chain).await;
    settled(&gateway).await;
    let snapshots = gateway.calls.plugins.current().preinitialised();
    assert_eq!(snapshots.len(), 8);
    for (plugin, snapshot) in &snapshots {
        assert_eq!(*snapshot, !plugin.starts_with("init-"), "{snapshots:?}");
    }
    let ws = format!("ws://{}/ws", gateway.http_addr);
    let normal = tokio::spawn({
        let ws = ws.clone();
        async move {
            let mut o = options();
            o.seconds = 4.0;
            run_call(&ws, &o).await.unwrap()
        }
    });
    // The poisoned call comes while the normal one is answered and running.
    gateway_tests::wait_for_answered(gateway.http_addr, 1).await;
    let mut o = options();
    o.to = "bad".into();
    let poisoned = run_call(&ws, &o).await.unwrap();
    let normal = normal.await.unwrap();
    assert!(
        normal.tone_snr_db.unwrap_or(0.0) >= 20.0 && normal.packets_lost == 0,
        "the concurrent normal call kept its audio: {normal:?}"
    );
    assert!(
        poisoned.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "fail-open: the poisoned call went through too: {poisoned:?}"
    );
    let counters = counters(&gateway);
    for mode in ["loop", "trap", "memory"] {
        assert!(
            counters.contains(&(mode.into(), "failures".into(), 1)),
            "{mode} was contained and counted once: {counters:?}"
        );
    }
    assert!(
        !counters
            .iter()
            .any(|(p, n, _)| p == "escape" && n == "failures"),
        "reading outside /data failed inside the plugin, it did not trap: {counters:?}"
    );
    assert!(sipp.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_fail_closed_plugin_rejects_with_its_code() {
    let hostile = build_plugin("hostile");
    let dir = out_dir("plugin_fail_closed");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let gateway = gateway_with(
        &dir,
        sipp.port,
        &plugin_in(
            "compliance",
            &hostile,
            "fail-closed",
            &format!("data_dir = \"{}\"", dir.join("data").display()),
            "mode = \"trap\"",
        ),
    )
    .await;
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options())
        .await
        .unwrap();
    let ended = report.ended.expect("ended");
    assert_eq!(ended["sip_code"], 503);
    assert_eq!(ended["reason"], "rejected");
    assert!(!sipp.messages().contains("INVITE"));
}

/// Samples of a 16-bit stereo WAV file: (left, right).
fn read_wav(path: &std::path::Path) -> Option<(Vec<i16>, Vec<i16>)> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 44 || &bytes[..4] != b"RIFF" || u16::from_le_bytes([bytes[22], bytes[23]]) != 2
    {
        return None;
    }
    let data = u32::from_le_bytes(bytes[40..44].try_into().ok()?) as usize;
    if data == 0 || bytes.len() < 44 + data {
        return None;
    }
    let samples: Vec<i16> = bytes[44..44 + data]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Some((
        samples.iter().step_by(2).copied().collect(),
        samples.iter().skip(1).step_by(2).copied().collect(),
    ))
}

fn tone_snr(pcm: &[i16]) -> f64 {
    let mut d = ToneDetector::new(1004.0, 8000, 800);
    d.push(pcm);
    d.report().snr_db
}

#[tokio::test(flavor = "multi_thread")]
async fn the_recorder_writes_the_call_and_pauses_on_dtmf() {
    let recorder = build_plugin("recorder");
    let dir = out_dir("plugin_recorder");
    let recordings = dir.join("recordings");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let chain = router_then_recorder(
        &recorder,
        &recordings,
        "",
        "record = \"all\"\npause_key = \"*\"\nresume_key = \"#\"",
    );
    let gateway = gateway_with(&dir, sipp.port, &chain).await;
    let mut o = options();
    o.seconds = 5.0;
    // Pause for about two seconds in the middle of the call.
    o.dtmf_later = vec![(1.5, "*".into()), (3.5, "#".into())];
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &o)
        .await
        .unwrap();
    assert!(report.tone_snr_db.unwrap_or(0.0) >= 20.0, "{report:?}");
    let call_id = report.call_id.clone().expect("call id");
    let path = recordings.join(format!("{call_id}.wav"));
    // The recorder closes the file as the call ends, just after the browser hears `ended`.
    let mut wav = None;
    for _ in 0..100 {
        wav = read_wav(&path);
        if wav.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (left, right) =
        wav.unwrap_or_else(|| panic!("no finished recording at {}", path.display()));
    let seconds = left.len() as f64 / 8000.0;
    assert!((4.0..7.0).contains(&seconds), "recorded {seconds} s");
    // The pause: the longest run where both channels are exactly zero.
    let (mut best, mut run_start, mut best_start) = (0, 0, 0);
    for i in 0..left.len() {
        if left[i] != 0 || right[i] != 0 {
            run_start = i + 1;
        } else if i + 1 - run_start > best {
            best = i + 1 - run_start;
            best_start = run_start;
        }
    }
    let paused = best as f64 / 8000.0;
    assert!(
        (1.5..2.5).contains(&paused),
        "about 2 s of silence while paused, found {paused} s at {} s",
        best_start as f64 / 8000.0
    );
    let before = &right[..best_start.saturating_sub(1600)];
    let after = &right[(best_start + best + 2400).min(right.len())..];
    assert!(
        tone_snr(&before[before.len().saturating_sub(4000)..]) >= 15.0,
        "the callee's tone on the right channel before the pause"
    );
    assert!(
        tone_snr(&after[..after.len().min(4000)]) >= 15.0,
        "the callee's tone on the right channel after the pause"
    );
    // The recorder counts the recording once `finish` returns, which is after the file
    // is complete: a file read in between is finished and not yet counted.
    let recorded = ("recorder".to_string(), "recordings".to_string(), 1);
    for _ in 0..100 {
        if counters(&gateway).contains(&recorded) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let counters = counters(&gateway);
    assert!(
        counters.contains(&("recorder".into(), "recordings".into(), 1)),
        "{counters:?}"
    );
    assert!(
        counters.contains(&("recorder".into(), "pauses".into(), 1)),
        "{counters:?}"
    );
}

async fn admin_reload(addr: std::net::SocketAddr, token: &str) -> String {
    let bearer = format!("Bearer {token}");
    gateway_tests::http_request(
        addr,
        "POST /admin/plugins/reload",
        &[("Authorization", &bearer), ("Content-Length", "0")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_during_a_live_call_keeps_the_call_and_applies_to_the_next() {
    // The plugin here is the JavaScript one: the WIT interface beyond Rust.
    let screen = build_plugin("screen-js");
    let dir = out_dir("plugin_reload");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let token = "admin-token-0123456789abcdef";
    std::fs::write(dir.join("admin-token"), token).unwrap();
    let settings = "memory_mb = 256\ndeadline_ms = 200\n";
    let chain = |block: &str| {
        let mut c = plugin(
            "router",
            &build_plugin("router"),
            "fail-open",
            router_config(),
        );
        c.push_str(&plugin_in(
            "screen",
            &screen,
            "fail-closed",
            settings,
            &format!("block = [{block}]\nheader = \"X-Screened\""),
        ));
        c
    };
    let path = plugins_config(&dir, sipp.port, &chain(""));
    let with_admin = std::fs::read_to_string(&path).unwrap().replace(
        "anonymous = true\n",
        &format!(
            "anonymous = true\nadmin_token_file = \"{}\"\n",
            dir.join("admin-token").display()
        ),
    );
    std::fs::write(&path, &with_admin).unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let ws = format!("ws://{}/ws", gateway.http_addr);
    let live = tokio::spawn({
        let ws = ws.clone();
        async move {
            let mut o = options();
            o.seconds = 6.0;
            run_call(&ws, &o).await.unwrap()
        }
    });
    // The reloads come while the call is answered and running.
    gateway_tests::wait_for_answered(gateway.http_addr, 1).await;
    // Wrong token: refused, nothing changes.
    assert!(
        admin_reload(gateway.http_addr, "wrong-token-wrong-token")
            .await
            .starts_with("HTTP/1.0 401")
    );
    // The new configuration blocks anonymous callers.
    std::fs::write(
        &path,
        with_admin.replace("block = []", "block = [\"anonymous\"]"),
    )
    .unwrap();
    let reply = admin_reload(gateway.http_addr, token).await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.contains("\"screen\""), "{reply}");
    // A configuration whose plugin does not load is refused; the new chain stays.
    let broken = with_admin.replace(&screen.display().to_string(), "/nonexistent/screen.wasm");
    std::fs::write(&path, broken).unwrap();
    let reply = admin_reload(gateway.http_addr, token).await;
    assert!(reply.starts_with("HTTP/1.0 422"), "{reply}");
    assert!(
        reply.contains("nonexistent"),
        "the error names the problem: {reply}"
    );
    let live = live.await.unwrap();
    assert!(
        live.tone_snr_db.unwrap_or(0.0) >= 20.0 && live.packets_lost == 0,
        "the call running during the reload kept its audio: {live:?}"
    );
    assert_eq!(
        live.ended.as_ref().expect("ended")["reason"],
        "hangup",
        "{live:?}"
    );
    let next = run_call(&ws, &options()).await.unwrap();
    let ended = next.ended.expect("ended");
    assert_eq!(
        ended["sip_code"], 603,
        "the reloaded plugin blocks anonymous callers"
    );
    assert_eq!(ended["reason"], "rejected");
    let log = sipp.messages();
    assert_eq!(
        log.matches("INVITE sip:").count(),
        1,
        "only the first call reached the trunk: {log}"
    );
    assert!(
        log.contains("X-Screened: passed"),
        "the JavaScript plugin's header reached the trunk: {log}"
    );
    assert!(counters(&gateway).contains(&("screen".into(), "blocked".into(), 1)));
    assert!(sipp.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_calls_pass_through_the_chain_too() {
    let screen = build_plugin("screen-js");
    let dir = out_dir("plugin_inbound");
    let (trunk_port, _) = ports();
    let (gateway_port, _) = ports();
    let path = write_config(&dir, &[("carrier", trunk_port, "udp", &[])]);
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "udp = \"127.0.0.1:0\"",
        &format!("udp = \"127.0.0.1:{gateway_port}\""),
        1,
    );
    // sipp calls from the trunk's address as `caller`, asserted (P-Asserted-Identity) as
    // +4930999, the identity the screening plugin blocks: `call-info.asserted` reached it.
    let plugins = plugin_in(
        "screen",
        &screen,
        "fail-closed",
        "memory_mb = 256\ndeadline_ms = 200",
        "block = [\"+4930999\"]\ncode = 603",
    );
    std::fs::write(
        &path,
        format!("{text}\n[inbound]\n\"+15550100\" = \"agent-7\"\n{plugins}"),
    )
    .unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let target = gateway.endpoint.udp_addr();
    let mut sipp = Sipp::uac(
        "uac_invite.xml",
        "127.0.0.1",
        Some(trunk_port),
        target,
        &dir,
    );
    let (ok, sipp) = tokio::task::spawn_blocking(move || (sipp.wait(), sipp))
        .await
        .unwrap();
    assert!(ok, "sipp got a final response");
    assert!(
        sipp.messages().contains("SIP/2.0 603"),
        "the plugin declined the inbound call before any browser rang: {}",
        sipp.messages()
    );
    assert!(counters(&gateway).contains(&("screen".into(), "blocked".into(), 1)));
}

/// A call through the router and then a plugin (`crm`, with `policy`) whose route puts CR/LF
/// into the number, the caller ID and a header; returns the call and what sipp saw.
async fn call_through_an_injecting_plugin(
    policy: &str,
) -> (
    gateway_tests::client::CallReport,
    Sipp,
    gateway::run::Gateway,
) {
    let dir = out_dir(&format!("plugin_inject_{policy}"));
    // Built before the SIP peer starts: its clock (40 s) must not run during a compile.
    let (router, hostile) = (build_plugin("router"), build_plugin("hostile"));
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let mut chain = plugin("router", &router, "fail-open", router_config());
    chain.push_str(&plugin_in(
        "crm",
        &hostile,
        policy,
        &format!("data_dir = \"{}\"", dir.join("data").display()),
        "mode = \"inject\"",
    ));
    let gateway = gateway_with(&dir, sipp.port, &chain).await;
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options())
        .await
        .unwrap();
    (report, sipp, gateway)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_with_line_breaks_is_a_plugin_failure_and_never_reaches_the_trunk() {
    // Fail-open: the injecting plugin's route is ignored, the router's stands, and the call
    // is placed with clean values.
    let (report, sipp, gateway) = call_through_an_injecting_plugin("fail-open").await;
    assert!(report.tone_snr_db.unwrap_or(0.0) >= 20.0, "{report:?}");
    let log = sipp.messages();
    assert!(log.contains("INVITE sip:+49301234@"), "{log}");
    assert!(
        !log.contains("X-Injected"),
        "an injected header reached the trunk: {log}"
    );
    assert!(counters(&gateway).contains(&("crm".into(), "failures".into(), 1)));
    assert!(sipp.finished().await);

    // Fail-closed: the call is refused with the plugin's code, and no INVITE goes out.
    let (report, sipp, _gateway) = call_through_an_injecting_plugin("fail-closed").await;
    let ended = report.ended.expect("ended");
    assert_eq!(ended["sip_code"], 503, "{ended}");
    assert!(
        !sipp.messages().contains("INVITE"),
        "no INVITE reached the trunk"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_directory_over_its_quota_is_read_only_for_new_calls() {
    let recorder = build_plugin("recorder");
    let dir = out_dir("plugin_quota");
    let recordings = dir.join("recordings");
    std::fs::create_dir_all(&recordings).unwrap();
    // Already over a 1 MB quota before the call.
    std::fs::write(recordings.join("old.wav"), vec![0u8; 2 * 1024 * 1024]).unwrap();
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let chain = router_then_recorder(
        &recorder,
        &recordings,
        "data_quota_mb = 1",
        "record = \"all\"",
    );
    let gateway = gateway_with(&dir, sipp.port, &chain).await;
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options())
        .await
        .unwrap();
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the call itself is unaffected: {report:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let files: Vec<_> = std::fs::read_dir(&recordings)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["old.wav"], "nothing new was written");
    let counters = counters(&gateway);
    assert!(
        counters
            .iter()
            .any(|(p, n, v)| p == "recorder" && n == "data_quota_reached" && *v >= 1),
        "{counters:?}"
    );
    assert!(
        counters.contains(&("recorder".into(), "errors".into(), 1)),
        "the recorder saw its write fail: {counters:?}"
    );
    assert!(sipp.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_runs_an_init_that_overran_its_deadline_again_and_refuses_one_that_always_does() {
    use gateway::plugin::PluginChain;
    let hostile = build_plugin("hostile");
    let dir = out_dir("plugin_init_stalls");
    // The hostile plugin's `init` never returns on its first `stalls` runs, as a plugin whose
    // thread a busy machine preempted for longer than its deadline would seem to.
    let config = |stalls: u32| gateway::config::PluginConfig {
        name: format!("stalls-{stalls}"),
        path: hostile.clone(),
        config_json: format!(r#"{{"mode":"continue","init_stalls":{stalls}}}"#),
        policy: gateway::config::FailurePolicy::FailClosed,
        reject_code: 503,
        memory_bytes: 16 << 20,
        deadline: std::time::Duration::from_millis(20),
        max_instances: 10,
        data_dir: Some(dir.join(format!("stalls-{stalls}"))),
        data_quota_bytes: u64::MAX,
        http: Default::default(),
    };
    let runs = |stalls: u32| {
        std::fs::read(dir.join(format!("stalls-{stalls}")).join("init-runs"))
            .unwrap_or_default()
            .len()
    };
    // Two overruns: loaded on the third run.
    PluginChain::load(&[config(2)], None)
        .await
        .expect("loads on the third run of init");
    assert_eq!(runs(2), 3);
    // An overrun on every run: refused, saying what to change.
    let refused = PluginChain::load(&[config(3)], None)
        .await
        .map(|_| ())
        .expect_err("three overruns refuse the plugin")
        .to_string();
    assert!(
        refused.contains("stalls-3")
            && refused.contains("ran past its deadline (20 ms), on each of 3 tries")
            && refused.contains("deadline_ms"),
        "{refused}"
    );
    assert_eq!(runs(3), 3, "no run after the third");
}
