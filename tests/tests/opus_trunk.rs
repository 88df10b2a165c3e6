//! A trunk that speaks Opus: the browser's Opus is relayed to it as is and back, without
//! the gateway decoding or encoding a frame (RFC 7587 on the trunk, SRTP ⇄ RTP only).

use gateway::config::Config;
use gateway_tests::client::{CallOptions, CallReport, run_call, spawn_call};
use gateway_tests::{
    CodecTrunkCall, MediaServerLog, Sipp, call_through_a_media_server, call_through_codec_trunk,
    http_get, out_dir, write_config,
};

/// The `codecs` of a trunk that may speak Opus, and G.711 otherwise.
const OPUS_FIRST: &str = "\"opus\", \"PCMU\"";

#[tokio::test(flavor = "multi_thread")]
async fn an_opus_trunk_gets_the_browsers_opus_untranscoded() {
    let options = CallOptions {
        seconds: 3.0,
        dtmf: Some("42".into()),
        ..CallOptions::new("echo")
    };
    let CodecTrunkCall {
        report,
        sipp,
        gateway,
        cdr,
    } = call_through_codec_trunk("opus_trunk", "echo_opus.xml", OPUS_FIRST, &options).await;
    assert!(report.media_connected);
    // The trunk takes Opus as the browser codes it: its band is not capped.
    assert_eq!(report.far_end_playback_hz, Some(48000), "{report:?}");
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the browser hears its own Opus back: {report:?}"
    );
    assert_eq!(
        report.dtmf_received, "42",
        "browser digits → RFC 4733 at 48 kHz → sipp echo → back"
    );
    assert_eq!(report.ended.unwrap()["reason"], "hangup");
    assert!(sipp.finished().await, "sipp saw no Opus offer, or no BYE");
    let record = gateway_tests::cdr_record(&cdr).await;
    assert_eq!(record["trunk_codec"], "opus", "{record}");
    assert!(
        record["frames_relayed"].as_u64().unwrap() > 200,
        "3 s both ways is ~300 frames: {record}"
    );
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert!(
        metrics.contains("gateway_frames_transcoded_total 0\n"),
        "not one frame decoded or encoded: {metrics}"
    );
    assert!(
        !metrics.contains("gateway_frames_relayed_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_from_an_opus_trunk_is_answered_in_opus_and_relayed() {
    // The browser's audio goes to the trunk as it is coded: its band is not capped.
    relayed_from_opus_trunk("opus_trunk_inbound", "uac_call_echo_opus.xml", 48000).await;
}

/// A call from an Opus trunk that renders no wider than 16 kHz, wants constant bitrate and
/// no in-band FEC: the browser's offer says so from the start, so nothing needs
/// renegotiating.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_from_an_opus_trunk_with_limits_offers_the_browser_no_more() {
    let scenario = "uac_call_echo_opus_limits.xml";
    let report = relayed_from_opus_trunk("opus_trunk_inbound_limits", scenario, 16000).await;
    assert_eq!(modes_told(&report), ["cbr"], "{report:?}");
}

/// A call from an Opus trunk by sipp's `scenario`, answered in Opus and relayed, the browser
/// offered audio up to `hz` from the start.
async fn relayed_from_opus_trunk(test: &str, scenario: &str, hz: u32) -> CallReport {
    let (report, metrics) = call_from_opus_trunk(test, scenario).await;
    assert_eq!(report.far_end_playback_hz, Some(hz), "{report:?}");
    assert!(report.count("renegotiation_needed") == 0, "{report:?}");
    assert!(
        metrics.contains("gateway_frames_transcoded_total 0\n"),
        "{metrics}"
    );
    report
}

/// The Opus modes (RFC 7587 §6.1) the gateway's last description to the browser prefers,
/// from the report: which of `useinbandfec`, `usedtx`, `cbr` and `stereo` are `1`.
fn modes_told(report: &CallReport) -> Vec<&'static str> {
    let fmtp = report.far_end_opus_fmtp.as_deref().unwrap_or("");
    ["useinbandfec", "usedtx", "cbr", "stereo"]
        .into_iter()
        .filter(|m| fmtp.split(';').any(|p| p.trim() == format!("{m}=1")))
        .collect()
}

/// A trunk that may speak Opus but offers G.711 only: the call is transcoded, and the
/// browser is asked for no wider audio than G.711 carries.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_from_an_opus_trunk_that_offers_g711_asks_the_browser_for_narrowband() {
    let (report, metrics) =
        call_from_opus_trunk("opus_trunk_inbound_g711", "uac_call_echo.xml").await;
    assert_eq!(report.far_end_playback_hz, Some(8000), "{report:?}");
    assert!(
        !metrics.contains("gateway_frames_transcoded_total 0\n"),
        "{metrics}"
    );
}

/// A late offer (an INVITE without SDP) from a trunk that may speak Opus: the answering
/// browser is offered full band, the widest the trunk lists; once the trunk's answer in the
/// ACK settles on PCMU, the browser is asked for a new offer and capped at narrowband.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_offer_answered_in_g711_narrows_the_answering_browsers_band() {
    let (report, metrics) =
        call_from_opus_trunk("opus_trunk_late_offer", "uac_call_late_offer.xml").await;
    assert_renegotiated(&report, 1);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.far_end_playback_hz, Some(8000), "{report:?}");
    assert!(
        !metrics.contains("gateway_frames_transcoded_total 0\n"),
        "{metrics}"
    );
}

/// A call from a trunk whose `codecs` are Opus then PCMU, placed by sipp's `scenario`, to a
/// registered browser that answers it; the browser's report and the metrics after it.
async fn call_from_opus_trunk(
    test: &str,
    scenario: &str,
) -> (gateway_tests::client::CallReport, String) {
    let dir = out_dir(test);
    let (trunk_port, _) = gateway_tests::ports();
    let path = write_config(&dir, &[("carrier", trunk_port, "udp", &[])]);
    let secret = "opus-agent-secret-0123456789abcd";
    std::fs::write(dir.join("secret"), secret).unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "[trunks.carrier]\n",
            "[trunks.carrier]\ncodecs = [\"opus\", \"PCMU\"]\n",
        )
        .replace(
            "[http]\n",
            &format!(
                "[http]\ntoken_secret_file = \"{}\"\n",
                dir.join("secret").display()
            ),
        );
    std::fs::write(
        &path,
        format!("{text}\n[inbound]\n\"+15550100\" = \"agent-o\"\n"),
    )
    .unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let options = CallOptions::answering("agent-o", secret, 30.0);
    let url = format!("ws://{}/ws", gateway.http_addr);
    let browser = spawn_call(&url, options);
    // sipp calls only once the browser is registered, not after a fixed pause.
    gateway_tests::wait_for_registered(gateway.http_addr, 1).await;
    let mut sipp = Sipp::uac(
        scenario,
        "127.0.0.1",
        Some(trunk_port),
        gateway.endpoint.udp_addr(),
        &dir,
    );
    let report = browser.await.unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "browser Opus → sipp echo → back: {report:?}"
    );
    assert_eq!(report.ended.as_ref().unwrap()["reason"], "remote_hangup");
    assert!(
        tokio::task::spawn_blocking(move || sipp.wait())
            .await
            .unwrap(),
        "sipp's call did not complete"
    );
    (report, http_get(gateway.http_addr, "/metrics").await)
}

/// An Opus trunk beside a G.711 one: a call dialled to the G.711 trunk asks the browser for
/// narrowband as if the Opus trunk were not there (it was asked for full band, the widest of
/// all trunks), and one dialled to the Opus trunk leaves the browser's band open.
#[tokio::test(flavor = "multi_thread")]
async fn the_browsers_band_follows_the_dialled_trunk() {
    let dir = out_dir("band_follows_trunk");
    let opus_dir = dir.join("opus");
    std::fs::create_dir_all(&opus_dir).unwrap();
    let pbx = Sipp::uas("echo.xml", "u1", &dir);
    let carrier = Sipp::uas("echo_opus.xml", "u1", &opus_dir);
    let path = write_config(
        &dir,
        &[
            ("pbx", pbx.port, "udp", &[]),
            ("carrier", carrier.port, "udp", &[]),
        ],
    );
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[trunks.carrier]\n",
        "[trunks.carrier]\ncodecs = [\"opus\", \"PCMU\"]\n",
    );
    std::fs::write(
        &path,
        format!(
            "{text}\n[targets.echo]\ntrunk = \"pbx\"\nnumber = \"100\"\n\n\
             [targets.hd]\ntrunk = \"carrier\"\nnumber = \"100\"\n"
        ),
    )
    .unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}/ws", gateway.http_addr);
    for (target, hz) in [("echo", 8000), ("hd", 48000)] {
        let options = CallOptions {
            seconds: 2.0,
            ..CallOptions::new(target)
        };
        let report = run_call(&url, &options).await.unwrap();
        eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
        assert_eq!(report.far_end_playback_hz, Some(hz), "{target}: {report:?}");
        assert!(
            report.count("renegotiation_needed") == 0,
            "{target}: the trunk answered as wide as the browser was told: {report:?}"
        );
        assert!(
            report.tone_snr_db.unwrap_or(0.0) >= 20.0,
            "{target}: the tone comes back: {report:?}"
        );
        assert_eq!(report.ended.unwrap()["reason"], "hangup", "{target}");
    }
    assert!(pbx.finished().await, "the G.711 trunk's sipp saw no call");
    assert!(
        carrier.finished().await,
        "the Opus trunk's sipp saw no call"
    );
}

/// A trunk that may speak Opus but answers G.711: the call's answer let the browser code
/// full band, since the trunk had not chosen yet; once it has, the gateway asks the browser
/// for a new offer and caps it at narrowband in the answer, and the call goes on through it.
#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_that_may_speak_opus_but_answers_g711_narrows_the_browsers_band() {
    let (report, record, _) = renegotiated_call("opus_trunk_answers_g711", "echo.xml").await;
    assert_eq!(report.far_end_playback_hz, Some(8000), "{report:?}");
    assert_eq!(record["trunk_codec"], "PCMU", "{record}");
}

/// An Opus trunk that renders no wider than 16 kHz, takes at most 20 kb/s and prefers DTX
/// and constant bitrate: the browser, whose Opus goes to it untouched, is asked for no more,
/// in the trunk's modes, once the trunk has answered.
#[tokio::test(flavor = "multi_thread")]
async fn an_opus_trunks_own_limits_reach_the_browser() {
    let (report, record, metrics) =
        renegotiated_call("opus_trunk_limits", "echo_opus_limits.xml").await;
    assert_eq!(report.far_end_playback_hz, Some(16000), "{report:?}");
    assert_eq!(
        modes_told(&report),
        ["useinbandfec", "usedtx", "cbr"],
        "the trunk's modes, not the browser's own: {report:?}"
    );
    assert_eq!(record["trunk_codec"], "opus", "{record}");
    assert!(
        metrics.contains("gateway_frames_transcoded_total 0\n"),
        "relayed, not transcoded: {metrics}"
    );
}

/// A relayed call that the trunk moves to PCMU by re-INVITE two seconds in: the gateway asks
/// the browser for narrowband, and the call goes on transcoded. The browser had sent ten
/// renegotiations of its own (bad ones, refused) before: the one the gateway asked for is
/// not the browser's doing and goes ahead all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_that_moves_the_call_to_g711_narrows_the_band_whatever_the_browser_spent() {
    let options = CallOptions {
        seconds: 5.0,
        bad_renegotiation_after: Some((0.5, 10)),
        measure_window: Some((3.5, 4.8)),
        ..CallOptions::new("echo")
    };
    let CodecTrunkCall {
        report,
        sipp,
        gateway,
        ..
    } = call_through_codec_trunk(
        "opus_trunk_reinvite_g711",
        "echo_opus_then_pcmu.xml",
        OPUS_FIRST,
        &options,
    )
    .await;
    assert_eq!(report.errors.len(), 10, "{report:?}");
    assert!(
        report.errors.iter().all(|e| e["code"] == "bad_sdp"),
        "the browser's ten were refused as bad, and none after them for the limit: {report:?}"
    );
    assert_renegotiated(&report, 1);
    assert_eq!(report.far_end_playback_hz, Some(8000), "{report:?}");
    assert!(
        report.window_tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the tone comes back through PCMU: {report:?}"
    );
    assert_hung_up(
        &report,
        sipp,
        "sipp saw no call, or the re-INVITE's answer did not take PCMU",
    )
    .await;
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert!(
        !metrics.contains("gateway_frames_transcoded_total 0\n"),
        "transcoded once on PCMU: {metrics}"
    );
}

/// A trunk that flips its codec between PCMU and Opus twelve times by UPDATE: the gateway
/// asks the browser for its band ten times, then stops asking for the rest of the minute, and
/// the call goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_that_keeps_changing_its_codec_gets_ten_renegotiations_a_minute() {
    let options = CallOptions {
        seconds: 5.5,
        measure_window: Some((4.3, 5.3)),
        ..CallOptions::new("echo")
    };
    let CodecTrunkCall {
        report,
        sipp,
        gateway,
        ..
    } = call_through_codec_trunk(
        "opus_trunk_flapping",
        "echo_opus_flapping.xml",
        OPUS_FIRST,
        &options,
    )
    .await;
    assert_renegotiated(&report, 10);
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        report.window_tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the tone comes back once the trunk settles on Opus: {report:?}"
    );
    assert_hung_up(
        &report,
        sipp,
        "sipp saw no call, or an answer did not take the codec it offered",
    )
    .await;
    let metrics = http_get(gateway.http_addr, "/metrics").await;
    assert!(
        metrics.contains("gateway_renegotiations_asked_total 10\n")
            && metrics.contains("gateway_renegotiations_withheld_total 2\n"),
        "{metrics}"
    );
}

/// The gateway asked the browser for a new offer `times` times, and each renegotiation went
/// through.
fn assert_renegotiated(report: &CallReport, times: usize) {
    assert_eq!(report.count("renegotiation_needed"), times, "{report:?}");
    assert_eq!(report.count("renegotiated"), times, "{report:?}");
}

/// The browser hung up, and sipp's scenario ran to its end (`why_not` says what it failed on).
async fn assert_hung_up(report: &CallReport, sipp: Sipp, why_not: &str) {
    assert_eq!(report.ended.as_ref().unwrap()["reason"], "hangup");
    assert!(sipp.finished().await, "{why_not}");
}

/// A 3 s browser call through a trunk whose `codecs` are Opus then PCMU, answered by sipp's
/// `scenario`, in which the gateway asks the browser to renegotiate once and the tone comes
/// back through the new answer; the browser's report, the call's CDR record and the metrics.
async fn renegotiated_call(test: &str, scenario: &str) -> (CallReport, serde_json::Value, String) {
    let options = CallOptions {
        seconds: 3.0,
        ..CallOptions::new("echo")
    };
    let CodecTrunkCall {
        report,
        sipp,
        gateway,
        cdr,
    } = call_through_codec_trunk(test, scenario, OPUS_FIRST, &options).await;
    assert_renegotiated(&report, 1);
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0,
        "the tone, coded anew after the new answer, comes back: {report:?}"
    );
    assert_hung_up(&report, sipp, "sipp saw no call, or no BYE").await;
    let record = gateway_tests::cdr_record(&cdr).await;
    (
        report,
        record,
        http_get(gateway.http_addr, "/metrics").await,
    )
}

/// A browser call with `options` to an Opus trunk whose media a media server beside it
/// returns, changing source 1.5 s in, its clock half a second (on Opus's 48 kHz clock)
/// behind.
async fn relayed_through_a_media_server(
    test: &str,
    options: CallOptions,
) -> (CallReport, MediaServerLog, serde_json::Value) {
    let opus = (OPUS_FIRST, "96 opus/48000/2");
    let (report, media, record) = call_through_a_media_server(test, opus, 24_000, &options).await;
    assert_eq!(record["trunk_codec"], "opus", "{record}");
    (report, media, record)
}

#[tokio::test(flavor = "multi_thread")]
async fn relayed_opus_reaches_the_trunk_with_the_gaps_of_a_lossy_uplink() {
    // The browser's uplink loses every tenth frame. What reaches the trunk has the browser's
    // timing: each lost frame a gap of one frame, and the packet after it starts a talkspurt
    // (RFC 3551 §4.1), so the trunk's decoder conceals the frame (or takes it from the next
    // packet's in-band FEC) rather than play the next one early.
    let options = CallOptions {
        seconds: 3.0,
        uplink_loss_every: Some(10),
        ..CallOptions::new("echo")
    };
    let (report, media, _) = relayed_through_a_media_server("opus_uplink_loss", options).await;
    let steps = media.steps();
    assert!(
        steps
            .iter()
            .all(|&step| step == (960, false) || step == (1920, true)),
        "{steps:?}"
    );
    let gaps = steps.iter().filter(|&&(step, _)| step == 1920).count();
    assert!(gaps >= 10, "3 s lose some 15 frames: {steps:?}");
    assert!(report.packets_received > 100, "{report:?}");
    // The trunk returned the gaps, and the gateway relayed them to the browser as gaps too,
    // each packet after one starting a talkspurt.
    assert!(
        report.gaps >= 10 && report.unmarked_gaps == 0 && report.late_packets == 0,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relayed_opus_from_a_trunks_new_source_plays_on_in_the_browser() {
    // The trunk's media moves to a new source 1.5 s in, its clock half a second behind: the
    // gateway continues its stream's clock, so the browser's jitter buffer plays the new
    // source's frames rather than drop them as late, and the tone goes on.
    let options = CallOptions {
        seconds: 3.0,
        measure_window: Some((1.5, 2.4)),
        ..CallOptions::new("echo")
    };
    let (report, media, record) =
        relayed_through_a_media_server("opus_trunk_new_source", options).await;
    assert!(media.second > 30, "the new source sent: {media:?}");
    assert_eq!(report.late_packets, 0, "{report:?}");
    assert!(
        report.tone_snr_db.unwrap_or(0.0) >= 20.0
            && report.window_packets > 30
            && report.window_tone_snr_db.unwrap_or(0.0) >= 20.0,
        "{report:?}"
    );
    assert_eq!(
        record["trunk_packets_lost"], 0,
        "the new source's sequence numbers are its own: {record}"
    );
    // Nothing was lost toward the trunk either: one frame after another, no talkspurt.
    let steps = media.steps();
    assert!(steps.iter().all(|&step| step == (960, false)), "{steps:?}");
}
