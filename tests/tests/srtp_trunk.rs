//! SRTP toward the trunk (SDES, RFC 4568) over SIP on TLS, against baresip — an independent
//! SIP stack and libsrtp — answering with its echo module; and a trunk that must not fall
//! back to plain RTP, against sipp.

use gateway_tests::baresip::{Baresip, MediaEncryption};
use gateway_tests::client::{CallOptions, CallReport, run_call};
use gateway_tests::{Sipp, gateway_to, out_dir};

/// A browser call of three seconds (with DTMF) to baresip over TLS, the trunk's table
/// extended with `settings`; returns the report and the call's CDR.
async fn call_baresip(
    peer: &Baresip,
    dir: &std::path::Path,
    settings: &str,
) -> (CallReport, serde_json::Value) {
    let settings = format!("ca_file = \"{}\"\n{settings}", peer.ca_file.display());
    let (gateway, cdr) = gateway_to(dir, (peer.tls_port, "tls"), &settings, |t| t).await;
    let opts = CallOptions {
        seconds: 3.0,
        dtmf: Some("42".into()),
        ..CallOptions::new("echo")
    };
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &opts)
        .await
        .unwrap();
    let record = gateway_tests::cdr_record(&cdr).await;
    (report, record)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_call_over_tls_with_srtp_carries_the_tone_and_digits_both_ways() {
    let dir = out_dir("srtp_tls_echo");
    // baresip refuses any call without SRTP: the call can only work encrypted.
    let peer = Baresip::echo(&dir, MediaEncryption::SrtpMandatory);
    let (report, cdr) = call_baresip(&peer, &dir, "srtp = \"required\"\n").await;
    let log = peer.wait_for_hangup().await;
    eprintln!("{}\n{log}", serde_json::to_string_pretty(&report).unwrap());
    assert!(
        report.tone_snr_db.unwrap_or(f64::NEG_INFINITY) >= 20.0,
        "browser tone → Opus/PCMU → SRTP → baresip decrypts, echoes, encrypts → back: {report:?}"
    );
    assert_eq!(
        report.dtmf_received, "42",
        "RFC 4733 events over SRTP, both ways"
    );
    assert_eq!(report.ended.as_ref().unwrap()["reason"], "hangup");
    assert!(
        log.contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)"),
        "{log}"
    );
    assert_eq!(cdr["trunk_srtp"], "AES_CM_128_HMAC_SHA1_80", "{cdr}");
    assert!(cdr["trunk_packets_in"].as_u64().unwrap() > 100, "{cdr}");
    assert_eq!(cdr["trunk_packets_lost"], 0, "{cdr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_srtp_is_used_when_the_peer_takes_it_and_plain_rtp_when_it_does_not() {
    // A best-effort peer takes the crypto lines of our RTP/AVP offer.
    let dir = out_dir("srtp_optional_taken");
    let peer = Baresip::echo(&dir, MediaEncryption::SrtpBestEffort);
    let (report, cdr) = call_baresip(&peer, &dir, "srtp = \"optional\"\n").await;
    let log = peer.wait_for_hangup().await;
    assert!(report.tone_snr_db.unwrap_or(0.0) >= 20.0, "{report:?}");
    assert!(log.contains("SRTP is Enabled"), "{log}");
    assert_eq!(cdr["trunk_srtp"], "AES_CM_128_HMAC_SHA1_80", "{cdr}");

    // A peer without SRTP ignores them: the call goes on in plain RTP.
    let dir = out_dir("srtp_optional_plain");
    let peer = Baresip::echo(&dir, MediaEncryption::None);
    let (report, cdr) = call_baresip(&peer, &dir, "srtp = \"optional\"\n").await;
    let log = peer.wait_for_hangup().await;
    assert!(report.tone_snr_db.unwrap_or(0.0) >= 20.0, "{report:?}");
    assert!(!log.contains("SRTP is Enabled"), "{log}");
    assert_eq!(cdr["trunk_srtp"], serde_json::Value::Null, "{cdr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_requiring_srtp_that_answers_plain_rtp_is_hung_up_without_sending_it_any() {
    let dir = out_dir("srtp_required_plain_answer");
    // sipp answers RTP/AVP without a=crypto, whatever we offered.
    let sipp = Sipp::uas("echo.xml", "u1", &dir);
    let settings = "srtp = \"required\"\nsrtp_without_tls = true\n";
    let (gateway, cdr) = gateway_to(&dir, (sipp.port, "udp"), settings, |t| t).await;
    let opts = CallOptions {
        seconds: 3.0,
        ..CallOptions::new("echo")
    };
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &opts)
        .await
        .unwrap();
    let ended = report.ended.clone().expect("ended");
    assert_eq!(ended["reason"], "media_refused", "{report:?}");
    assert_eq!(ended["sip_code"], 488, "{report:?}");
    assert!(sipp.finished().await, "sipp got ACK and then BYE");
    let cdr = gateway_tests::cdr_record(&cdr).await;
    assert_eq!(cdr["trunk_packets_out"], 0, "no plain RTP ever left: {cdr}");
    assert_eq!(cdr["end_reason"], "media_refused", "{cdr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inbound_srtp_call_over_tls_is_answered_with_our_key_and_carries_the_tone_both_ways() {
    let dir = out_dir("srtp_tls_inbound");
    let peer = Baresip::caller(&dir, MediaEncryption::SrtpMandatory);
    let settings = format!(
        "ca_file = \"{}\"\nsrtp = \"required\"\n",
        peer.ca_file.display()
    );
    let (gateway, cdr) = peer.gateway_taking_calls(&dir, &settings).await;
    let (report, log) = peer.call_in(&gateway, 3.0).await;
    assert!(
        report.messages.contains(&"incoming".to_string()),
        "{report:?}"
    );
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "baresip's tone → SRTP → the gateway decrypts → Opus → the browser: {report:?}"
    );
    let (heard, _) = peer.received_tone().expect("baresip recorded the call");
    eprintln!("baresip heard: {heard:?}");
    assert!(
        heard.snr_db >= 20.0 && heard.voiced_blocks >= 20,
        "the browser's tone → the gateway encrypts → baresip decrypts: {heard:?}"
    );
    assert!(log.contains("SRTP is Enabled"), "{log}");
    let cdr = gateway_tests::cdr_record(&cdr).await;
    assert_eq!(cdr["trunk_srtp"], "AES_CM_128_HMAC_SHA1_80", "{cdr}");
}
