//! HD voice: a trunk that answers G.722 gets 16 kHz audio (browser Opus decoded at 16 kHz,
//! coded G.722 on the 8 kHz RTP clock of RFC 3551 §4.5.2) and its audio comes back to the
//! browser the same way; and G.722 from a stack that is not the gateway's (baresip, whose
//! coder is SpanDSP's) is heard, and hears, each way on its own.

use gateway_tests::baresip::{Baresip, MediaEncryption, PeerCodec};
use gateway_tests::client::CallOptions;
use gateway_tests::{CodecTrunkCall, call_through_codec_trunk, out_dir};

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
    let record = gateway_tests::cdr_record(&cdr).await;
    assert_eq!(record["trunk_codec"], "G722", "{record}");
    assert!(
        record["trunk_packets_in"].as_u64().unwrap() > 100,
        "{record}"
    );
}

/// sipp echoes the gateway's own G.722 back to it, so a coder wrong the same way in both
/// directions would pass above. Here each direction is coded by one side and decoded by the
/// other: baresip calls in over G.722 alone, playing a tone, and records what it decodes.
#[tokio::test(flavor = "multi_thread")]
async fn an_independent_g722_stack_hears_the_browser_and_is_heard_each_way_on_its_own() {
    let dir = out_dir("g722_inbound_baresip");
    let peer = Baresip::caller_speaking(&dir, MediaEncryption::None, PeerCodec::G722);
    let settings = format!(
        "ca_file = \"{}\"\ncodecs = [\"G722\", \"PCMU\"]\n",
        peer.ca_file.display()
    );
    let (gateway, cdr) = peer.gateway_taking_calls(&dir, &settings).await;
    let (report, _) = peer.call_in(&gateway, 3.0).await;
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "baresip's tone → SpanDSP's G.722 → the gateway decodes → Opus 16 kHz → the browser: \
         {report:?}"
    );
    let (heard, rate) = peer.received_tone().expect("baresip recorded the call");
    eprintln!("baresip heard at {rate} Hz: {heard:?}");
    assert_eq!(rate, 16_000, "baresip decoded G.722 to 16 kHz");
    assert!(
        heard.snr_db >= 20.0 && heard.voiced_blocks >= 20,
        "the browser's tone → Opus → the gateway's G.722 → SpanDSP decodes: {heard:?}"
    );
    let record = gateway_tests::cdr_record(&cdr).await;
    assert_eq!(record["trunk_codec"], "G722", "{record}");
}
