//! The trunk leg against a real SIP peer: each test runs a sipp scenario as the trunk and
//! `gateway dial` as the caller, and checks the SIP outcome and the audio.

use std::time::Duration;

use gateway::config::Config;
use gateway::dial::{DialOptions, DialReport, dial};
use gateway_tests::{Sipp, out_dir, write_config};

/// Returned tone must be at least this far above everything else (G.711 round trip ≈ 35 dB).
const MIN_SNR_DB: f64 = 20.0;

fn options(trunk: &str, seconds: f64) -> DialOptions {
    DialOptions {
        trunk: trunk.into(),
        to: "+15550100".into(),
        from: None,
        seconds,
        tone_hz: 1004.0,
        dtmf: None,
        answer_timeout: Duration::from_secs(20),
    }
}

async fn run(config: &std::path::Path, options: DialOptions) -> DialReport {
    let config = Config::load(config).expect("test config is valid");
    let report = dial(&config, &options).await.expect("dial starts");
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    report
}

fn assert_tone_back(report: &DialReport) {
    assert!(report.tone_detected, "tone not returned: {report:?}");
    assert!(
        report.tone_snr_db.unwrap() >= MIN_SNR_DB,
        "tone SNR too low: {report:?}"
    );
    assert!(report.rtp_received > 50, "{report:?}");
}

fn assert_silence(report: &DialReport) {
    assert_eq!(report.rtp_received, 0, "{report:?}");
    assert!(!report.tone_detected);
}

#[tokio::test(flavor = "multi_thread")]
async fn answered_call_echoes_the_tone_and_carries_dtmf() {
    let dir = out_dir("echo");
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let config = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let mut opts = options("carrier", 3.0);
    opts.dtmf = Some("123#".into());
    let report = run(&config, opts).await;
    assert_eq!(report.sip_code, 200);
    assert_eq!(report.provisional, vec![180]);
    assert_eq!(report.trunk_used.as_deref(), Some("carrier"));
    assert_eq!(report.ended_by, "gateway");
    assert_tone_back(&report);
    // sipp -rtp_echo returns our RFC 4733 packets too: the digits come back as events.
    assert_eq!(report.dtmf_received, "123#");
    assert!(
        sipp.finish(),
        "sipp saw an unexpected message (BYE missing?)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn call_over_tcp_works_like_udp() {
    let dir = out_dir("tcp");
    let sipp = Sipp::uas("echo.xml", "t1", &dir);
    let config = write_config(&dir, &[("pbx", sipp.port, "tcp", &[])]);
    let report = run(&config, options("pbx", 2.0)).await;
    assert_eq!(report.sip_code, 200);
    assert_tone_back(&report);
    assert!(sipp.finish());
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_and_server_challenges_are_answered_with_digest() {
    let dir = out_dir("auth");
    let sipp = Sipp::uas("auth.xml", "u1", &dir);
    let config = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let report = run(&config, options("carrier", 2.0)).await;
    assert_eq!(
        report.sip_code, 200,
        "sipp answers 403 to a wrong digest: {report:?}"
    );
    assert_tone_back(&report);
    assert!(sipp.finish());
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_is_final_and_does_not_fail_over() {
    let dir = out_dir("busy");
    let busy = Sipp::uas("busy.xml", "u1", &dir);
    // The backup would answer; it must never be tried after a 486.
    let backup = Sipp::uas("echo.xml", "u1", &dir);
    let config = write_config(
        &dir,
        &[
            ("carrier", busy.port, "udp", &["backup"]),
            ("backup", backup.port, "udp", &[]),
        ],
    );
    let report = run(&config, options("carrier", 1.0)).await;
    assert_eq!(report.sip_code, 486);
    assert!(!report.connected);
    assert_eq!(report.trunk_used.as_deref(), Some("carrier"));
    assert_silence(&report);
    assert!(busy.finish());
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_first_trunk_fails_over_to_the_second() {
    let dir = out_dir("failover");
    let down = Sipp::uas("unavailable.xml", "u1", &dir);
    let backup = Sipp::uas("echo.xml", "u1", &dir);
    let config = write_config(
        &dir,
        &[
            ("carrier", down.port, "udp", &["backup"]),
            ("backup", backup.port, "udp", &[]),
        ],
    );
    let report = run(&config, options("carrier", 2.0)).await;
    assert_eq!(report.sip_code, 200);
    assert_eq!(report.trunk_used.as_deref(), Some("backup"));
    assert_tone_back(&report);
    assert!(down.finish());
    assert!(backup.finish());
}

#[tokio::test(flavor = "multi_thread")]
async fn trunk_hangup_ends_the_call() {
    let dir = out_dir("trunk_bye");
    let sipp = Sipp::uas("trunk_hangs_up.xml", "u1", &dir);
    let config = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    // We would stay 10 s; the trunk's BYE after 1.5 s ends it.
    let report = run(&config, options("carrier", 10.0)).await;
    assert_eq!(report.sip_code, 200);
    assert_eq!(report.ended_by, "trunk");
    assert_tone_back(&report);
    assert!(
        report.rtp_sent < 200,
        "stopped sending after the BYE: {report:?}"
    );
    assert!(sipp.finish(), "sipp did not get 200 for its BYE");
}

#[tokio::test(flavor = "multi_thread")]
async fn hold_reinvite_is_answered_recvonly_and_resume_restores_audio() {
    let dir = out_dir("hold");
    let sipp = Sipp::uas("hold.xml", "u1", &dir);
    let config = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let report = run(&config, options("carrier", 4.0)).await;
    assert_eq!(report.sip_code, 200);
    assert_eq!(report.reinvites, 2);
    // About one second on hold: we must not have sent during it.
    assert!(report.frames_held >= 30, "{report:?}");
    assert_tone_back(&report);
    assert!(
        sipp.finish(),
        "an answer had the wrong direction (sipp checks a=recvonly / a=sendrecv)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn early_media_is_heard_before_the_answer() {
    let dir = out_dir("early");
    let sipp = Sipp::uas("early_media.xml", "u1", &dir);
    let config = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let report = run(&config, options("carrier", 2.0)).await;
    assert_eq!(report.sip_code, 200);
    assert_eq!(report.provisional, vec![183]);
    assert!(report.early_rtp_received > 50, "{report:?}");
    assert!(report.early_tone_detected, "{report:?}");
    assert!(
        report.setup_ms.unwrap() >= 1900.0,
        "answered after the 2 s of early media"
    );
    assert_tone_back(&report);
    assert!(sipp.finish());
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_giving_up_while_ringing_sends_cancel() {
    let dir = out_dir("cancel");
    let sipp = Sipp::uas("ring_forever.xml", "u1", &dir);
    let config = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let mut opts = options("carrier", 2.0);
    opts.answer_timeout = Duration::from_secs(1);
    let report = run(&config, opts).await;
    assert_eq!(report.sip_code, 487);
    assert!(!report.connected);
    assert_eq!(report.provisional, vec![180]);
    assert_silence(&report);
    assert!(sipp.finish(), "sipp did not see CANCEL and ACK for the 487");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_sip_mid_call_gets_400_and_the_call_survives() {
    let dir = out_dir("malformed");
    let sipp = Sipp::uas("malformed.xml", "u1", &dir);
    let config = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let report = run(&config, options("carrier", 3.0)).await;
    assert_eq!(report.sip_code, 200);
    assert_eq!(report.ended_by, "gateway");
    assert_eq!(
        report.dtmf_received, "9",
        "only the well-formed INFO counts"
    );
    assert_tone_back(&report);
    assert!(sipp.finish(), "sipp expected 400 for the broken messages");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_trunk_times_out_with_408() {
    let dir = out_dir("timeout");
    // Nothing listens on this port: Timer B (32 s) would be slow, so a TCP trunk whose
    // connection is refused fails at once and must report 408.
    let (port, _) = gateway_tests::ports();
    let config = write_config(&dir, &[("carrier", port, "tcp", &[])]);
    let report = run(&config, options("carrier", 1.0)).await;
    assert_eq!(report.sip_code, 408);
    assert!(!report.connected);
}
