//! A trunk that speaks Opus: the browser's Opus is relayed to it as is and back, without
//! the gateway decoding or encoding a frame (RFC 7587 on the trunk, SRTP ⇄ RTP only).

use gateway::config::Config;
use gateway_tests::client::{CallOptions, run_call};
use gateway_tests::{Sipp, http_get, out_dir, write_config};

#[tokio::test(flavor = "multi_thread")]
async fn an_opus_trunk_gets_the_browsers_opus_untranscoded() {
    let dir = out_dir("opus_trunk");
    let sipp = Sipp::uas("echo_opus.xml", "u1", &dir);
    let path = write_config(&dir, &[("carrier", sipp.port, "udp", &[])]);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[trunks.carrier]\n",
        "[trunks.carrier]\ncodecs = [\"opus\", \"PCMU\"]\n",
    );
    let cdr = dir.join("cdr.jsonl");
    std::fs::write(
        &path,
        format!(
            "{text}\n[targets.echo]\ntrunk = \"carrier\"\nnumber = \"100\"\n\n[cdr]\npath = \"{}\"\n",
            cdr.display()
        ),
    )
    .unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let options = CallOptions {
        seconds: 3.0,
        dtmf: Some("42".into()),
        ..CallOptions::new("echo")
    };
    let report = run_call(&format!("ws://{}/ws", gateway.http_addr), &options)
        .await
        .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.media_connected);
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
    let record: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&cdr)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
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
