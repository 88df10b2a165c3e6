//! HD voice: a trunk that answers G.722 gets 16 kHz audio (browser Opus decoded at 16 kHz,
//! coded G.722 on the 8 kHz RTP clock of RFC 3551 §4.5.2) and its audio comes back to the
//! browser the same way.

use gateway_tests::client::CallOptions;
use gateway_tests::{CodecTrunkCall, call_through_codec_trunk};

#[tokio::test(flavor = "multi_thread")]
async fn a_g722_trunk_carries_the_tone_both_ways_and_digits() {
    let options = CallOptions {
        seconds: 3.0,
        dtmf: Some("7".into()),
        ..CallOptions::new("echo")
    };
    let CodecTrunkCall {
        report, sipp, cdr, ..
    } = call_through_codec_trunk(
        "g722_trunk",
        "echo_g722.xml",
        "\"G722\", \"PCMU\"",
        &options,
    )
    .await;
    // The trunk side carries 16 kHz at most: the browser is asked for no wider (RFC 7587
    // §6.1), and codes wideband.
    assert_eq!(report.far_end_playback_hz, Some(16000), "{report:?}");
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "browser → Opus 16 kHz → G.722 → sipp echo → G.722 → Opus → browser: {report:?}"
    );
    assert_eq!(report.dtmf_received, "7");
    assert_eq!(report.ended.unwrap()["reason"], "hangup");
    assert!(sipp.finished().await, "sipp saw no G.722 offer, or no BYE");
    let record = gateway_tests::cdr_records(&cdr, 1).await.remove(0);
    assert_eq!(record["trunk_codec"], "G722", "{record}");
    assert!(
        record["trunk_packets_in"].as_u64().unwrap() > 100,
        "{record}"
    );
}
