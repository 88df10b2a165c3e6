//! The call engine's timers and clean-up, end to end: a real WebRTC client on the browser
//! side, sipp as the trunk, `gateway run` in between. A trunk that rings forever, a re-INVITE
//! answered slowly, an ACK that never comes, a burst of every kind of call after which
//! the gateway's tables must be empty again, and a media worker busy enough to pace itself.

use std::path::Path;
use std::time::Duration;

use gateway::config::Config;
use gateway_tests::client::{CallOptions, CallReport, run_call, spawn_call};
use gateway_tests::{Sipp, http_get, out_dir, write_config};

const SECRET: &str = "engine-secret-0123456789abcdef";

/// Appends `extra` to the configuration at `path`, and a token secret for `register`.
fn extend(dir: &Path, path: &Path, extra: &str) {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let text = std::fs::read_to_string(path).unwrap().replace(
        "[http]\n",
        &format!(
            "[http]\ntoken_secret_file = \"{}\"\n",
            dir.join("secret").display()
        ),
    );
    std::fs::write(path, format!("{text}\n{extra}\n")).unwrap();
}

fn token(identity: &str) -> String {
    gateway_tests::client::token(identity, SECRET)
}

/// A browser that registers `identity` and answers (or, `ignore`, lets it ring).
fn agent(identity: &str, seconds: f64, ignore: bool) -> CallOptions {
    CallOptions {
        answer_as: Some(identity.into()),
        token: Some(token(identity)),
        ignore_incoming: ignore,
        seconds,
        ..CallOptions::new("")
    }
}

fn reason(report: &CallReport) -> (String, u64) {
    let ended = report.ended.clone().unwrap_or_default();
    (
        ended["reason"].as_str().unwrap_or("").to_string(),
        ended["sip_code"].as_u64().unwrap_or(0),
    )
}

/// The value of the unlabelled metric `name`.
fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbound_call_that_rings_forever_ends_no_answer_with_a_cancel() {
    let dir = out_dir("engine_ring_forever");
    let sipp = Sipp::uas("ring_forever.xml", "u1", &dir);
    let path = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    extend(
        &dir,
        &path,
        "[limits]\nring_seconds = 2\n\n[targets.ring]\ntrunk = \"carrier\"\nnumber = \"100\"\n",
    );
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let report = run_call(
        &format!("ws://{}/ws", gateway.http_addr),
        &CallOptions::new("ring"),
    )
    .await
    .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.messages.contains(&"ringing".to_string()));
    assert_eq!(reason(&report), ("no_answer".into(), 408), "{report:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the ring timeout"
    );
    assert!(sipp.finished().await, "sipp did not see the CANCEL");
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert!(
        metrics.contains("gateway_calls_ended_total{reason=\"no_answer\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn media_keeps_flowing_while_a_hold_reinvite_waits_for_the_trunk() {
    let dir = out_dir("engine_hold_slow");
    let sipp = Sipp::uas("hold_slow.xml", "u1", &dir);
    let path = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    extend(
        &dir,
        &path,
        "[targets.echo]\ntrunk = \"carrier\"\nnumber = \"100\"\n",
    );
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    // Hold at 1 s; the trunk answers the re-INVITE at about 4 s. From 1.3 s to 3.7 s the
    // call is waiting for that answer and must go on as it was: the echo comes back.
    let options = CallOptions {
        seconds: 5.5,
        hold_after: Some(1.0),
        hold_only: true,
        measure_window: Some((1.3, 3.7)),
        ..CallOptions::new("echo")
    };
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options)
        .await
        .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        report.window_packets >= 100,
        "2.4 s of audio is 120 packets: {report:?}"
    );
    assert!(
        report.window_tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the tone comes back while the re-INVITE waits: {report:?}"
    );
    assert_eq!(reason(&report), ("hangup".into(), 200));
    assert!(sipp.finished().await, "sipp expected the hold and the BYE");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_ack_ends_the_call_with_bye() {
    let dir = out_dir("engine_no_ack");
    let (trunk_port, _) = gateway_tests::ports();
    let path = write_config(&dir, &[("carrier", trunk_port, "udp", &[])]);
    extend(&dir, &path, "[inbound]\n\"+15550100\" = \"agent-1\"\n");
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", gateway.http_addr);
    let browser = tokio::spawn(async move { run_call(&url, &agent("agent-1", 60.0, false)).await });
    // sipp calls only once the browser is registered, not after a fixed pause.
    gateway_tests::wait_for_registered(gateway.http_addr, 1).await;
    let mut sipp = Sipp::uac(
        "uac_no_ack.xml",
        "127.0.0.1",
        Some(trunk_port),
        gateway.endpoint.udp_addr(),
        &dir,
    );
    let report = browser.await.unwrap().unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.messages.contains(&"answered".to_string()));
    assert_eq!(reason(&report), ("no_ack".into(), 408), "{report:?}");
    assert!(
        tokio::task::spawn_blocking(move || sipp.wait())
            .await
            .unwrap(),
        "sipp did not get the BYE"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_burst_of_calls_every_table_is_empty_again() {
    let dir = out_dir("engine_burst");
    for sub in ["echo", "busy", "ring"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let echo = Sipp::uas_calls("echo.xml", "u1", &dir.join("echo"), 2);
    let busy = Sipp::uas("busy.xml", "u1", &dir.join("busy"));
    let ring = Sipp::uas_calls("ring_forever.xml", "u1", &dir.join("ring"), 2);
    let (inbound_port, _) = gateway_tests::ports();
    let path = write_config(
        &dir,
        &[
            ("echo", echo.port, "udp", &[]),
            ("busy", busy.port, "udp", &[]),
            ("ring", ring.port, "udp", &[]),
            ("carrier", inbound_port, "udp", &[]),
        ],
    );
    let mut extra = String::from("[limits]\nring_seconds = 2\n");
    for t in ["echo", "busy", "ring"] {
        extra.push_str(&format!(
            "\n[targets.{t}]\ntrunk = \"{t}\"\nnumber = \"100\"\n"
        ));
    }
    extra.push_str("\n[inbound]\n\"+15550100\" = \"agent-a\"\n\"+15550108\" = \"agent-c\"\n\"+15550109\" = \"agent-n\"\n");
    extend(&dir, &path, &extra);
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", gateway.http_addr);
    let call = |options: CallOptions| spawn_call(&url, options);
    // Browsers: two answered, one busy, one given up while ringing, one rung out; three
    // agents waiting for inbound calls.
    let outbound = vec![
        ("answered", call(CallOptions::new("echo"))),
        ("answered", call(CallOptions::new("echo"))),
        ("busy", call(CallOptions::new("busy"))),
        (
            "hangup",
            call(CallOptions {
                give_up_after: Some(1.0),
                ..CallOptions::new("ring")
            }),
        ),
        ("no_answer", call(CallOptions::new("ring"))),
    ];
    let answering = call(agent("agent-a", 30.0, false));
    let cancelled_agent = call(agent("agent-c", 30.0, true));
    let unanswered_agent = call(agent("agent-n", 30.0, true));
    // The trunk calls only once the three agents are registered (not after a fixed pause).
    gateway_tests::wait_for_registered(gateway.http_addr, 3).await;
    let trunk = gateway.endpoint.udp_addr();
    let uac = |scenario: &str, sub: &str| {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let mut sipp = Sipp::uac(scenario, "127.0.0.1", None, trunk, &d);
        tokio::task::spawn_blocking(move || sipp.wait())
    };
    let inbound = vec![
        ("answered", uac("uac_call_echo.xml", "in_answered")),
        ("rejected", uac("uac_rejected.xml", "in_rejected")),
        ("cancelled", uac("uac_cancel.xml", "in_cancelled")),
        ("unanswered", uac("uac_unanswered.xml", "in_unanswered")),
    ];
    for (expected, handle) in outbound {
        let report = handle.await.unwrap();
        let (reason, _) = reason(&report);
        match expected {
            "answered" => assert_eq!(reason, "hangup", "{report:?}"),
            other => assert_eq!(reason, other, "{report:?}"),
        }
    }
    for (name, handle) in inbound {
        assert!(handle.await.unwrap(), "inbound sipp `{name}` failed");
    }
    let a = answering.await.unwrap();
    assert_eq!(reason(&a).0, "remote_hangup", "{a:?}");
    let c = cancelled_agent.await.unwrap();
    assert_eq!(reason(&c), ("remote_hangup".into(), 487), "{c:?}");
    let n = unanswered_agent.await.unwrap();
    assert_eq!(reason(&n), ("no_answer".into(), 480), "{n:?}");
    for sipp in [echo, busy, ring] {
        assert!(sipp.finished().await);
    }
    // Transactions linger up to 64·T1 (32 s) after their last message to absorb
    // retransmissions (§17); after that everything is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let mut metrics;
    loop {
        metrics = http_get(gateway.http_addr, "/metrics").await;
        let empty = [
            "gateway_active_calls",
            "gateway_sip_transactions",
            "gateway_sip_dialogs",
            "gateway_media_routes",
            "gateway_registered_identities",
        ]
        .iter()
        .all(|name| gauge(&metrics, name) == Some(0));
        if empty || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for name in [
        "gateway_active_calls",
        "gateway_sip_transactions",
        "gateway_sip_dialogs",
        "gateway_media_routes",
        "gateway_registered_identities",
    ] {
        assert_eq!(
            gauge(&metrics, name),
            Some(0),
            "{name} is not empty: {metrics}"
        );
    }
    // These calls' media went through io_uring wherever this kernel lets a process have a
    // ring and says it sends datagrams through it (`IORING_OP_SENDMSG`).
    let offered = io_uring::IoUring::new(8).is_ok_and(|ring| {
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(io_uring::opcode::SendMsg::CODE)
    });
    let workers: Vec<u64> = (0..)
        .map_while(|w| {
            gauge(
                &metrics,
                &format!("gateway_media_worker_io_uring{{worker=\"{w}\"}}"),
            )
        })
        .collect();
    assert!(!workers.is_empty(), "{metrics}");
    assert!(
        workers.iter().all(|&w| w == u64::from(offered)),
        "io_uring offered: {offered}; the workers: {workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_media_worker_wakes_once_a_turn_naps_when_asked_and_its_calls_keep_their_audio() {
    const CALLS: usize = 20;
    let dir = out_dir("engine_paced");
    let echo = Sipp::uas_calls("echo.xml", "u1", &dir, CALLS as u32);
    let path = write_config(&dir, &[("echo", echo.port, "udp", &[])]);
    // One worker carries every call: more than PACED_FROM_CALLS, so it paces its 2 ms turns,
    // and waits them out in naps of 100 µs. It sends with sendmmsg and sendto, not io_uring:
    // every other call test here takes the defaults (io_uring, one sleep a turn), so both ways
    // of sending and of waiting carry calls end to end. Lateness is not judged (`late_tick_ms`
    // a second): a tick the busy test box runs late would close the only worker to calls past
    // the eighth for two seconds (`call::workers`); tests/load_shedding.rs judges it.
    extend(
        &dir,
        &path,
        "[limits]\nlate_tick_ms = 1000\n\n[media]\nworkers = 1\nturn_ms = 2\nnap_us = 100\nio_uring = false\n\n[targets.echo]\ntrunk = \"echo\"\nnumber = \"100\"\n",
    );
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", gateway.http_addr);
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let options = CallOptions {
                seconds: 6.0,
                ..CallOptions::new("echo")
            };
            spawn_call(&url, options)
        })
        .collect();
    let wakeups = "gateway_media_worker_wakeups_total{worker=\"0\"}";
    let sleeps = "gateway_media_worker_sleeps_total{worker=\"0\"}";
    gateway_tests::wait_for_answered(gateway.http_addr, CALLS).await;
    // Media flows both ways on every call: ~1,000 trunk packets, as many browser packets and
    // ticks a second. Woken per event the worker would wake well over 1,000 times a second;
    // paced, at most once a turn.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = http_get(gateway.http_addr, "/metrics").await;
    let start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    let (turns, woke, slept) = (
        start.elapsed().as_secs_f64() / 0.002,
        gauge(&metrics, wakeups).unwrap() - gauge(&before, wakeups).unwrap(),
        gauge(&metrics, sleeps).unwrap() - gauge(&before, sleeps).unwrap(),
    );
    assert_eq!(
        gauge(&metrics, "gateway_media_worker_calls{worker=\"0\"}"),
        Some(CALLS as u64)
    );
    assert_eq!(
        gauge(&metrics, "gateway_media_worker_io_uring{worker=\"0\"}"),
        Some(0),
        "told not to, the worker sends without io_uring"
    );
    assert!(
        woke as f64 <= turns * 1.1 + 5.0,
        "the worker woke {woke} times in {turns:.0} turns"
    );
    // A turn's rest is most of 2 ms: in naps of 100 µs, several a turn however late each
    // ends; in one sleep, one.
    assert!(
        slept >= 2 * woke,
        "the worker slept {slept} times over {woke} turns: it did not nap"
    );
    for call in calls {
        let report = call.await.unwrap();
        assert_eq!(reason(&report).0, "hangup", "{report:?}");
        assert!(
            report.tone_snr_db.unwrap_or(0.0) >= 20.0,
            "a call on the paced worker lost its audio: {report:?}"
        );
    }
    assert!(echo.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_strangers_flood_on_a_trunk_port_wakes_no_worker_and_crowds_out_no_packet() {
    let dir = out_dir("engine_trunk_at_tick");
    let echo = Sipp::uas("echo.xml", "u1", &dir);
    let path = write_config(&dir, &[("echo", echo.port, "udp", &[])]);
    // One worker, and one call: fewer than a paced worker's, so its thread wakes for anything
    // its reactor hears.
    extend(
        &dir,
        &path,
        "[media]\nworkers = 1\n\n[targets.echo]\ntrunk = \"echo\"\nnumber = \"100\"\n",
    );
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", gateway.http_addr);
    let options = CallOptions {
        seconds: 5.0,
        ..CallOptions::new("echo")
    };
    let call = spawn_call(&url, options);
    gateway_tests::wait_for_answered(gateway.http_addr, 1).await;
    // The call's RTP port, from the SDP of the gateway's INVITE.
    let port: u16 = echo
        .messages()
        .lines()
        .find_map(|l| l.strip_prefix("m=audio ")?.split(' ').next()?.parse().ok())
        .expect("the INVITE's SDP names the call's RTP port");
    let wakeups = "gateway_media_worker_wakeups_total{worker=\"0\"}";
    let count = |metrics: &str, name: &str| gauge(metrics, name).unwrap_or(0);
    let dropped = |metrics: &str, reason: &str| {
        count(
            metrics,
            &format!("gateway_media_dropped_total{{leg=\"trunk\",reason=\"{reason}\"}}"),
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A second of the call alone: its browser's packets, the trunk's echo and its ticks.
    let before = http_get(gateway.http_addr, "/metrics").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet = http_get(gateway.http_addr, "/metrics").await;
    let alone = count(&quiet, wakeups) - count(&before, wakeups);

    // A second in which a stranger also sends 2,000 datagrams to the call's RTP port, then a
    // burst of 20,000 as fast as it can: far more than the socket holds between two ticks.
    const STRANGER: u64 = 2_000;
    const BURST: u64 = 20_000;
    let flood = tokio::task::spawn_blocking(move || {
        let stranger = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let send = |i: u64| {
            // Refused sends (the port's unreachable answers) do not stop the flood.
            let _ = stranger.send_to(
                &[0x80, 0, (i >> 8) as u8, i as u8, 0, 0, 0, 0, 0, 0, 0, 1],
                ("127.0.0.1", port),
            );
        };
        for i in 0..STRANGER {
            send(i);
            std::thread::sleep(Duration::from_micros(500));
        }
        (0..BURST).for_each(send);
    });
    flood.await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let flooded = http_get(gateway.http_addr, "/metrics").await;
    let with_stranger = count(&flooded, wakeups) - count(&quiet, wakeups);
    assert!(
        with_stranger < alone + STRANGER / 4,
        "the worker woke {with_stranger} times while a stranger sent {STRANGER} datagrams, \
         {alone} in a second without: the call's trunk socket wakes it"
    );
    // The call's socket, connected to its trunk once it heard it, is handed none of them, and
    // none of the trunk's own packets is lost among them.
    assert_eq!(
        dropped(&flooded, "source") - dropped(&quiet, "source"),
        0,
        "the stranger's datagrams reached the call"
    );
    assert_eq!(
        dropped(&flooded, "overflow") - dropped(&quiet, "overflow"),
        0,
        "the flood filled the call's socket: the kernel dropped datagrams there"
    );
    let report = call.await.unwrap();
    assert_eq!(reason(&report).0, "hangup", "{report:?}");
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the call kept its audio: {report:?}"
    );
    assert!(echo.finished().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fault_in_one_calls_task_ends_that_call_with_bye_and_a_cdr_while_the_other_keeps_its_audio()
 {
    let dir = out_dir("engine_fault");
    let sipp = Sipp::uas_calls("echo.xml", "u1", &dir, 2);
    let (path, cdr) = gateway_tests::codec_trunk_config(&dir, sipp.port, "\"PCMU\"");
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", gateway.http_addr);
    // Digits no other test sends: only this test's first call panics, on its media worker,
    // half a second after the answer. Two calls fill the first worker before the next takes
    // any, so the other call runs on the same thread.
    gateway::fault::injection::panic_on_dtmf("D9D9");
    let faulty = spawn_call(
        &url,
        CallOptions {
            seconds: 6.0,
            dtmf_message: Some("D9D9".into()),
            ..CallOptions::new("echo")
        },
    );
    let healthy = spawn_call(
        &url,
        CallOptions {
            seconds: 6.0,
            measure_window: Some((1.5, 5.0)),
            ..CallOptions::new("echo")
        },
    );
    let (faulty, healthy) = (faulty.await.unwrap(), healthy.await.unwrap());
    eprintln!("{}", serde_json::to_string_pretty(&faulty).unwrap());
    eprintln!("{}", serde_json::to_string_pretty(&healthy).unwrap());
    assert_eq!(
        reason(&faulty),
        ("internal_error".into(), 500),
        "{faulty:?}"
    );
    assert_eq!(reason(&healthy), ("hangup".into(), 200), "{healthy:?}");
    assert!(
        healthy.window_packets >= 150 && healthy.window_tone_snr_db.unwrap_or(0.0) >= 20.0,
        "3.5 s after the other call's fault, 175 packets of the tone: {healthy:?}"
    );
    // The trunk saw both calls end with BYE, the faulty one's saying why (RFC 3326).
    let mut sipp = sipp;
    let (finished, messages) = tokio::task::spawn_blocking(move || (sipp.wait(), sipp.messages()))
        .await
        .unwrap();
    assert!(finished, "sipp expected a BYE for each call");
    assert!(
        messages.contains("Reason: Q.850;cause=41;text=\"internal_error\""),
        "{messages}"
    );
    let mut reasons: Vec<String> = gateway_tests::cdr_records(&cdr, 2)
        .await
        .iter()
        .map(|r| r["end_reason"].as_str().unwrap_or("").to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["hangup", "internal_error"]);
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert!(
        metrics.contains("gateway_calls_ended_total{reason=\"internal_error\"} 1"),
        "{metrics}"
    );
    gateway_tests::wait_for_metric(gateway.http_addr, "gateway_active_calls 0", 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fault_as_a_call_is_set_up_on_its_worker_ends_it_told_to_its_browser_trunk_plugins_and_cdr()
 {
    let dir = out_dir("engine_setup_fault");
    let sipp = Sipp::uas_calls("echo.xml", "u1", &dir, 1);
    let (inbound_port, _) = gateway_tests::ports();
    let path = write_config(
        &dir,
        &[
            ("echo", sipp.port, "udp", &[]),
            ("carrier", inbound_port, "udp", &[]),
        ],
    );
    // A plugin that counts the ends it hears of, by reason; and a CDR log.
    let cdr = dir.join("cdr.jsonl");
    extend(
        &dir,
        &path,
        &format!(
            "[targets.setup-fault]\ntrunk = \"echo\"\nnumber = \"100\"\n\n\
             [inbound]\n\"+15550177\" = \"agent-f\"\n\n[cdr]\npath = \"{}\"\n{}",
            cdr.display(),
            gateway_tests::plugin_in(
                "ledger",
                &gateway_tests::build_plugin("hostile"),
                "fail-open",
                &format!("data_dir = \"{}\"", dir.join("ledger").display()),
                "mode = \"continue\""
            )
        ),
    );
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", gateway.http_addr);
    // Cues no other test uses: the first call to each panics on its media worker as it is set
    // up there, before its driver runs.
    gateway::fault::injection::panic_on_call_to("setup-fault");
    gateway::fault::injection::panic_on_call_to("+15550177");
    // The browser that placed the call hears its end at once (it waited 30 s before).
    let options = CallOptions {
        seconds: 2.0,
        ..CallOptions::new("setup-fault")
    };
    let faulty = tokio::time::timeout(Duration::from_secs(10), run_call(&url, &options))
        .await
        .expect("the browser hears the call's end")
        .unwrap();
    assert_eq!(
        reason(&faulty),
        ("internal_error".into(), 500),
        "{faulty:?}"
    );
    // The next call to the same place is set up, answered and carries its audio.
    let next = run_call(&url, &options).await.unwrap();
    assert_eq!(reason(&next), ("hangup".into(), 200), "{next:?}");
    assert!(
        next.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the next call's audio: {next:?}"
    );
    assert!(sipp.finished().await, "the trunk took the next call alone");
    // A trunk's call whose set-up faults is answered 500, not left ringing nowhere.
    let waiting = spawn_call(&url, agent("agent-f", 30.0, false));
    gateway_tests::wait_for_registered(gateway.http_addr, 1).await;
    let trunk = gateway.endpoint.udp_addr();
    let from_dir = dir.join("from_trunk");
    std::fs::create_dir_all(&from_dir).unwrap();
    let mut from_trunk = Sipp::uac_dialling(
        "uac_invite.xml",
        "+15550177",
        "127.0.0.1",
        None,
        trunk,
        &from_dir,
    );
    let (completed, seen) =
        tokio::task::spawn_blocking(move || (from_trunk.wait(), from_trunk.messages()))
            .await
            .unwrap();
    assert!(completed, "{seen}");
    assert!(seen.contains("SIP/2.0 500"), "{seen}");
    waiting.abort();
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    for line in [
        "gateway_calls_ended_total{reason=\"internal_error\"} 2",
        "gateway_sip_unanswered_total 1",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    gateway_tests::wait_for_metric(gateway.http_addr, "gateway_active_calls 0", 5).await;
    // Each call has its record: the two that faulted say so, with who called whom.
    let records = gateway_tests::cdr_records(&cdr, 3).await;
    let summary: Vec<(String, String, String, u64)> = records
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (
                text("direction"),
                text("to"),
                text("end_reason"),
                r["sip_code"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let fault = |direction: &str, to: &str| {
        (
            direction.to_string(),
            to.to_string(),
            "internal_error".to_string(),
            500,
        )
    };
    assert_eq!(
        summary,
        [
            fault("outbound", "setup-fault"),
            (
                "outbound".into(),
                "setup-fault".into(),
                "hangup".into(),
                200
            ),
            fault("inbound", "+15550177"),
        ],
        "{records:?}"
    );
    let from_trunk = &records[2];
    assert!(
        from_trunk["sip_call_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
            && from_trunk["from"].as_str().is_some_and(|f| !f.is_empty())
            && from_trunk["started_ms"]
                .as_u64()
                .is_some_and(|at| at > 0 && Some(at) <= from_trunk["ended_ms"].as_u64()),
        "{from_trunk}"
    );
    // The trunk's call had been offered to the plugins before its set-up faulted: they hear
    // of its end. The browser's faulted before its plugins were asked, so they never saw it.
    let ledger = |name: &str| gateway_tests::plugin_counter(&gateway, "ledger", name);
    for _ in 0..50 {
        if ledger("ended_internal_error") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (ledger("ended_internal_error"), ledger("ended_hangup")),
        (1, 1),
        "{:?}",
        gateway.calls.plugins.current().counters()
    );
}
