//! The web demo and its widget in real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm): a visitor opens the page the gateway serves, clicks Call, and
//! hears the fake microphone's tone come back through the built-in demo trunk and through
//! sipp; keypad digits travel as RFC 4733 and come back; hanging up writes the CDR.
//! Screenshots of each state land in `tests/out/web_demo/<target>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway::config::Config;
use gateway_tests::{Sipp, out_dir};

/// `npm ci` for the browser driver, once.
fn driver() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    gateway_tests::npm_ci(&dir, "playwright-core");
    dir.join("demo.mjs")
}

/// A 48 kHz mono WAV of a 1004 Hz tone, for Chromium's fake microphone (it loops the file).
fn tone_wav(path: &Path) {
    let rate = 48_000u32;
    let samples: Vec<i16> = (0..rate * 2)
        .map(|i| {
            let t = i as f64 / rate as f64;
            (8000.0 * (2.0 * std::f64::consts::PI * 1004.0 * t).sin()) as i16
        })
        .collect();
    gateway_tests::write_wav(path, rate, &samples);
}

/// Runs the visitor in Chromium against `url`; returns what the driver saw.
/// For a call the widget could not start: it says "Call ended"; returns the line under it.
fn ended_detail(seen: &serde_json::Value) -> &str {
    assert_eq!(seen["statusEnded"].as_str(), Some("Call ended"), "{seen}");
    seen["detailEnded"].as_str().unwrap_or("")
}

async fn visit(url: String, out: PathBuf, tone: &Path, digits: &str) -> serde_json::Value {
    visit_with(url, out, tone, digits, None).await
}

/// [`visit`], with the driver's optional last argument (`--drop-connection`).
async fn visit_with(
    url: String,
    out: PathBuf,
    tone: &Path,
    digits: &str,
    extra: Option<&str>,
) -> serde_json::Value {
    std::fs::create_dir_all(&out).unwrap();
    let mut args = vec![
        url,
        out.display().to_string(),
        tone.display().to_string(),
        "1004".into(),
        digits.into(),
    ];
    args.extend(extra.map(str::to_owned));
    run_driver(driver(), args).await
}

/// Runs a browser driver (`tests/web/*.mjs`) with `args`: the JSON line it printed last.
async fn run_driver(script: PathBuf, args: Vec<String>) -> serde_json::Value {
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .args(args)
            .output()
            .expect("run node (the README's test command installs Node.js)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!("the browser driver printed no result ({e}); stdout: {stdout}\nstderr: {stderr}")
    })
}

/// What Chromium is asked to code on a call, and so codes.
struct Coding {
    /// Parameters the answer's Opus `a=fmtp` line carries.
    fmtp: &'static [&'static str],
    /// The most bytes of Opus a packet it may code on average.
    max_bytes_per_packet: f64,
}

/// A G.711 trunk: 8 kHz audio at 24 kb/s (RFC 7587 §6.1), ~60 bytes of Opus a packet,
/// where Chromium's full-band default (32 kb/s) is ~83.
const G711: Coding = Coding {
    fmtp: &["maxplaybackrate=8000", "maxaveragebitrate=24000"],
    max_bytes_per_packet: 70.0,
};

fn check(target: &str, seen: &serde_json::Value, digits: &str) {
    check_coding(target, seen, digits, &G711);
}

fn check_coding(target: &str, seen: &serde_json::Value, digits: &str, coding: &Coding) {
    let states = states(seen);
    assert!(
        seen["errors"].as_array().is_some_and(|e| e.is_empty()),
        "{target}: no errors: {seen}"
    );
    assert!(
        states.starts_with(&["connecting"]) && states.contains(&"in-call"),
        "{target}: connecting, then in call: {seen}"
    );
    assert_eq!(states.last(), Some(&"ended"), "{target}: {seen}");
    let peak = seen["peakHz"].as_f64().unwrap_or(0.0);
    assert!(
        (peak - 1004.0).abs() <= 25.0,
        "{target}: the page's analyser hears the tone come back: {seen}"
    );
    assert!(
        seen["statusInCall"]
            .as_str()
            .unwrap_or("")
            .starts_with("In call"),
        "{seen}"
    );
    assert_eq!(
        seen["digits"].as_str(),
        Some(digits),
        "{target}: keypad digits went out as RFC 4733 and came back: {seen}"
    );
    assert!(
        seen["mutedLevelDb"].as_f64().unwrap_or(0.0) < -45.0,
        "{target}: muted, the echo goes quiet: {seen}"
    );
    assert_eq!(
        seen["mutedDetail"].as_str(),
        Some("Your microphone is muted"),
        "{seen}"
    );
    assert!(
        (seen["unmutedPeakHz"].as_f64().unwrap_or(0.0) - 1004.0).abs() <= 25.0,
        "{target}: unmuted, the tone is back: {seen}"
    );
    // The trunks here may speak Opus, so the call's first answer left the band open; when the
    // trunk answered (PCMU, or Opus with limits of its own) the gateway asked the widget for
    // a new offer (`renegotiation_needed`), and this is the answer to it.
    let sending = &seen["sending"];
    eprintln!("{target}: Chromium sending {sending}");
    let fmtp = sending["fmtp"].as_str().unwrap_or("");
    assert!(
        coding.fmtp.iter().all(|p| fmtp.split(';').any(|q| q == *p)),
        "{target}: the answer asks Chromium for {:?}: {seen}",
        coding.fmtp
    );
    assert!(
        sending["packets"].as_u64().unwrap_or(0) >= 25
            && sending["bytesPerPacket"].as_f64().unwrap_or(f64::MAX) < coding.max_bytes_per_packet,
        "{target}: Chromium codes as asked: {sending}"
    );
    assert_eq!(seen["statusEnded"].as_str(), Some("Call ended"), "{seen}");
    assert!(
        seen["detailEnded"]
            .as_str()
            .unwrap_or("")
            .starts_with("You hung up after 0:"),
        "{seen}"
    );
    assert_eq!(
        seen["screenshots"].as_array().map(Vec::len),
        Some(5),
        "{target}: a screenshot per state: {seen}"
    );
}

/// A gateway whose targets are the built-in demo trunk's echo (`echo`), a PBX that may speak
/// Opus but answers PCMU (`sales`, sipp's `echo.xml`) and an Opus carrier with limits of its
/// own (`hd`, `echo_opus_limits.xml`), its RTP on the thousand ports from `rtp_min`.
struct Trunks {
    gateway: gateway::run::Gateway,
    pbx: Sipp,
    carrier: Sipp,
    cdr: PathBuf,
}

async fn three_trunks(dir: &Path, rtp_min: u16) -> Trunks {
    let demo_trunk = gateway::demo::start().await.expect("demo trunk");
    let pbx = Sipp::uas("echo.xml", "u1", dir);
    let carrier_dir = dir.join("carrier");
    std::fs::create_dir_all(&carrier_dir).unwrap();
    let carrier = Sipp::uas("echo_opus_limits.xml", "u1", &carrier_dir);
    let cdr = dir.join("cdr.jsonl");
    let text = format!(
        "[sip]\nudp = \"127.0.0.1:0\"\n\n[rtp]\nip = \"127.0.0.1\"\nport_min = {rtp_min}\nport_max = {}\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\nanonymous = true\n\n[webrtc]\nudp = \"127.0.0.1:0\"\n\n\
         [cdr]\npath = \"{}\"\n\n\
         [trunks.demo]\naddresses = [\"{demo_trunk}\"]\noptions_interval = 0\n\n\
         [trunks.pbx]\naddresses = [\"127.0.0.1:{}\"]\noptions_interval = 0\ncodecs = [\"opus\", \"PCMU\"]\n\n\
         [trunks.carrier]\naddresses = [\"127.0.0.1:{}\"]\noptions_interval = 0\ncodecs = [\"opus\"]\n\n\
         [targets.echo]\ntrunk = \"demo\"\nnumber = \"echo\"\n\n\
         [targets.sales]\ntrunk = \"pbx\"\nnumber = \"100\"\n\n\
         [targets.hd]\ntrunk = \"carrier\"\nnumber = \"100\"\n",
        rtp_min + 999,
        cdr.display(),
        pbx.port,
        carrier.port
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    Trunks {
        gateway,
        pbx,
        carrier,
        cdr,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_calls_from_the_demo_page_through_the_demo_trunk_and_sipp() {
    let dir = out_dir("web_demo");
    let tone = dir.join("tone-1004.wav");
    tone_wav(&tone);
    let Trunks {
        gateway,
        pbx: sipp,
        carrier,
        cdr,
    } = three_trunks(&dir, 45000).await;
    let base = format!("http://{}", gateway.http_addr);

    // The built-in demo trunk: audio and digits echoed.
    let seen = visit(
        format!("{base}/?target=echo"),
        dir.join("echo"),
        &tone,
        "42",
    )
    .await;
    check("echo", &seen, "42");

    // sipp as the PBX, echoing RTP (and the RFC 4733 digits with it).
    let seen = visit(
        format!("{base}/?target=sales"),
        dir.join("sales"),
        &tone,
        "7#",
    )
    .await;
    check("sales", &seen, "7#");
    assert!(sipp.finished().await, "sipp saw the call through");

    // sipp as a carrier that speaks Opus but renders no wider than 16 kHz, takes at most
    // 20 kb/s and prefers DTX and constant bitrate: Chromium's Opus goes to it untouched,
    // coded as the carrier asks (50 bytes a packet at 20 kb/s: Chromium read exactly 50.0 over
    // 61 packets, constant bitrate), and comes back untouched.
    let seen = visit(format!("{base}/?target=hd"), dir.join("hd"), &tone, "5").await;
    let opus_trunk = Coding {
        fmtp: &[
            "maxplaybackrate=16000",
            "maxaveragebitrate=20000",
            "useinbandfec=1",
            "usedtx=1",
            "cbr=1",
        ],
        max_bytes_per_packet: 55.0,
    };
    check_coding("hd", &seen, "5", &opus_trunk);
    assert!(
        carrier.finished().await,
        "the carrier's sipp saw the call through"
    );

    // A gateway that cannot be reached is reported in plain words, not a stack trace.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let seen = visit(
        format!("{base}/?target=echo&gateway=ws://{closed}/ws"),
        dir.join("unreachable"),
        &tone,
        "--unreachable",
    )
    .await;
    assert_eq!(
        ended_detail(&seen),
        "Cannot reach the call service. Check your connection and try again.",
        "{seen}"
    );

    // A visitor who refuses the microphone is told what to do.
    let seen = visit(
        format!("{base}/?target=echo"),
        dir.join("no-microphone"),
        &tone,
        "--no-mic",
    )
    .await;
    assert!(
        ended_detail(&seen).starts_with("Microphone access is blocked."),
        "{seen}"
    );

    // The CDR: one line per call, the second the PBX's, the third the carrier's.
    let records = gateway_tests::cdr_records(&cdr, 3).await;
    assert_eq!(records.len(), 3, "{records:?}");
    let hd = &records[2];
    assert_eq!(hd["trunk"], "carrier", "{hd}");
    assert_eq!(hd["trunk_codec"], "opus", "{hd}");
    assert!(
        hd["frames_relayed"].as_u64().unwrap_or(0) > 50,
        "Chromium's Opus relayed, not transcoded: {hd}"
    );
    let sales = &records[1];
    assert_eq!(sales["to"], "sales", "{sales}");
    assert_eq!(sales["trunk"], "pbx", "{sales}");
    assert_eq!(sales["trunk_codec"], "PCMU", "{sales}");
    assert_eq!(sales["end_reason"], "hangup", "{sales}");
    assert_eq!(sales["sip_code"], 200, "{sales}");
    assert!(sales["sip_call_id"].is_string(), "{sales}");
    assert!(sales["duration_s"].as_f64().unwrap_or(0.0) > 1.0, "{sales}");
    assert!(
        sales["browser_packets_in"].as_u64().unwrap_or(0) > 50,
        "{sales}"
    );
    // Chromium's RTCP reports on our audio reach the call (they steer in-band FEC); nothing
    // is lost on loopback.
    for record in &records {
        assert!(
            record["browser_reports"].as_u64().unwrap_or(0) >= 1,
            "{record}"
        );
        assert_eq!(record["browser_reported_loss_pct"], 0.0, "{record}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_allowed_only_relayed_media_calls_through_coturn_with_minted_credentials() {
    let dir = out_dir("web_demo_turn");
    let tone = dir.join("tone-1004.wav");
    tone_wav(&tone);
    let secret = "turn-shared-secret-0123456789";
    let coturn = gateway_tests::coturn::Coturn::start(&dir, secret);
    std::fs::write(dir.join("turn-secret"), secret).unwrap();
    let demo_trunk = gateway::demo::start().await.expect("demo trunk");
    let cdr = dir.join("cdr.jsonl");
    let text = format!(
        "[sip]\nudp = \"127.0.0.1:0\"\n\n[rtp]\nip = \"127.0.0.1\"\nport_min = 46000\nport_max = 46999\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\nanonymous = true\n\n\
         [webrtc]\nudp = \"127.0.0.1:0\"\nice_servers = [\"turn:127.0.0.1:{}?transport=udp\"]\n\
         turn_secret_file = \"{}\"\nturn_credential_seconds = 600\n\n\
         [cdr]\npath = \"{}\"\n\n\
         [trunks.demo]\naddresses = [\"{demo_trunk}\"]\noptions_interval = 0\n\n\
         [targets.echo]\ntrunk = \"demo\"\nnumber = \"echo\"\n",
        coturn.port,
        dir.join("turn-secret").display(),
        cdr.display(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    // `relay=1`: the page's peer connection may use relay candidates only, as behind a
    // firewall that lets nothing but the TURN server through.
    let seen = visit(
        format!("http://{}/?target=echo&relay=1", gateway.http_addr),
        dir.join("relay"),
        &tone,
        "42",
    )
    .await;
    check("relay", &seen, "42");
    let record = gateway_tests::cdr_record(&cdr).await;
    assert_eq!(
        record["browser_relayed"], true,
        "the media came through coturn: {record}"
    );
    let log = coturn.log();
    assert!(
        log.contains("ALLOCATE") && log.contains("success"),
        "coturn accepted the minted credentials and allocated a relay: {log}"
    );
}

/// A visitor's call to the built-in demo trunk's echo, the driver given `flag`; returns what
/// it saw (the gateway is returned to keep it up until the test's checks are done).
async fn demo_call(
    test: &str,
    name: &str,
    flag: &str,
    rtp_ports: u16,
) -> (serde_json::Value, gateway::run::Gateway) {
    let dir = out_dir(test);
    let tone = dir.join("tone-1004.wav");
    tone_wav(&tone);
    let demo_trunk = gateway::demo::start().await.expect("demo trunk");
    let text = format!(
        "[sip]\nudp = \"127.0.0.1:0\"\n\n[rtp]\nip = \"127.0.0.1\"\nport_min = {rtp_ports}\nport_max = {}\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\nanonymous = true\nresume_seconds = 20\n\n\
         [webrtc]\nudp = \"127.0.0.1:0\"\n\n\
         [trunks.demo]\naddresses = [\"{demo_trunk}\"]\noptions_interval = 0\n\n\
         [targets.echo]\ntrunk = \"demo\"\nnumber = \"echo\"\n",
        rtp_ports + 999,
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let seen = visit_with(
        format!("http://{}/?target=echo", gateway.http_addr),
        dir.join(name),
        &tone,
        "5",
        Some(flag),
    )
    .await;
    (seen, gateway)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_whose_network_changes_restarts_ice_and_keeps_the_call() {
    let (seen, _gateway) =
        demo_call("web_demo_ice_restart", "restart", "--restart-ice", 43000).await;
    check("restart", &seen, "5");
    assert_ice_restarted(&seen);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_checks_the_line_before_calling_and_sees_the_calls_quality() {
    let (seen, gateway) = demo_call("web_demo_preflight", "preflight", "--preflight", 44000).await;
    check("preflight", &seen, "5");
    eprintln!(
        "preflight: {}\nquality: {}",
        seen["preflight"], seen["quality"]
    );
    assert_line_good(&seen);
    let metrics = gateway_tests::http_get(gateway.http_addr, "/metrics").await;
    assert!(metrics.contains("gateway_preflights_total 1"), "{metrics}");
    assert_quality_good(&seen);
}

/// A driver run with `--preflight`: the widget's `preflight()` found everything ready and
/// measured loopback as a good line.
fn assert_line_good(seen: &serde_json::Value) {
    let preflight = &seen["preflight"];
    for part in ["ok", "microphone", "gateway", "media"] {
        assert_eq!(preflight[part], true, "{part}: {seen}");
    }
    assert_eq!(preflight["message"], "Ready to call.", "{seen}");
    assert!(
        preflight["mos"].as_f64().unwrap_or(0.0) >= 4.0
            && preflight["lossPercent"].as_f64().is_some_and(|l| l < 5.0)
            && preflight["rttMs"].as_f64().is_some_and(|r| r >= 0.0),
        "loopback measures as a good line: {seen}"
    );
}

/// The widget's `quality` events during the call, from the browser's own statistics: some,
/// and all good on loopback.
fn assert_quality_good(seen: &serde_json::Value) {
    let quality = seen["quality"].as_array().cloned().unwrap_or_default();
    assert!(
        !quality.is_empty()
            && quality
                .iter()
                .all(|q| { q["level"] == "good" && q["mos"].as_f64().is_some_and(|m| m >= 4.0) }),
        "`quality` events during the call, all good on loopback: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_whose_connection_drops_mid_call_is_reconnected_and_keeps_the_call() {
    let (seen, _gateway) = demo_call("web_demo_resume", "drop", "--drop-connection", 47000).await;
    check("drop", &seen, "5");
    assert_resumed(&seen);
    assert_eq!(
        seen["statusReconnecting"].as_str(),
        Some("Reconnecting…"),
        "{seen}"
    );
    assert!(
        seen["statusResumed"]
            .as_str()
            .unwrap_or("")
            .starts_with("In call"),
        "{seen}"
    );
}

/// What a driver saw: the widget's states in order.
fn states(seen: &serde_json::Value) -> Vec<&str> {
    seen["states"]
        .as_array()
        .map(|s| s.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

/// A driver run with `--drop-connection`: the call went on after its page reconnected.
fn assert_resumed(seen: &serde_json::Value) {
    let states = states(seen);
    let reconnecting = states.iter().position(|s| *s == "reconnecting");
    assert!(
        reconnecting.is_some_and(|i| states[i + 1..].contains(&"in-call")),
        "in call, reconnecting, in call again: {seen}"
    );
    assert!(
        (seen["resumedPeakHz"].as_f64().unwrap_or(0.0) - 1004.0).abs() <= 25.0,
        "the tone is heard again after the reconnection: {seen}"
    );
}

/// A driver run with `--restart-ice`: the call went on over the restarted path.
fn assert_ice_restarted(seen: &serde_json::Value) {
    let (before, after) = (&seen["gatewayUfragBefore"], &seen["gatewayUfragAfter"]);
    assert!(
        before.is_string() && after.is_string() && before != after,
        "the gateway answered the restart with new ICE credentials (RFC 8839 §4.4.1.1.2): {seen}"
    );
    assert!(
        (seen["restartedPeakHz"].as_f64().unwrap_or(0.0) - 1004.0).abs() <= 25.0,
        "the tone is heard again over the restarted path: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_serves_the_page_and_the_widget() {
    let dir = out_dir("web_demo_serve");
    let path = gateway_tests::write_config(&dir, &[]);
    let gateway = gateway::run::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let page = gateway_tests::http_get(gateway.http_addr, "/").await;
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    assert!(page.contains("text/html"), "{page}");
    assert!(page.contains("src=\"/widget.js\""), "{page}");
    let widget = gateway_tests::http_get(gateway.http_addr, "/widget.js").await;
    assert!(widget.contains("text/javascript"), "{widget}");
    assert!(
        widget
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: *")
    );
    assert!(widget.contains("GatewayCall"), "{widget}");
}

/// Firefox (`tests/web/firefox.mjs`, over WebDriver BiDi) against `url`, its fake microphone
/// at `hz`, pressing `digits`, with the driver's `flag` (`--restart-ice`, `--drop-connection`,
/// `--preflight`): what the driver saw.
async fn visit_in_firefox(url: String, hz: u32, digits: &str, flag: &str) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    gateway_tests::npm_ci(&dir, "puppeteer-core");
    let args = vec![url, hz.to_string(), digits.into(), flag.into()];
    run_driver(dir.join("firefox.mjs"), args).await
}

/// A second browser stack: Firefox calls the demo trunk's echo (restarting ICE mid-call), a
/// PBX that may speak Opus but answers PCMU (the gateway asks it to renegotiate to narrowband;
/// the page's signaling connection drops mid-call and resumes), and, after the widget's
/// preflight, an Opus carrier whose limits and modes its encoder then follows, relayed
/// untouched. Its SDP is not
/// Chromium's (no `minptime`, `stereo=1`), nor are its ICE agent, DTLS and encoder.
#[tokio::test(flavor = "multi_thread")]
async fn a_firefox_visitor_calls_the_echo_a_g711_pbx_and_an_opus_carrier() {
    let dir = out_dir("web_demo_firefox");
    let Trunks {
        gateway,
        pbx,
        carrier,
        cdr,
    } = three_trunks(&dir, 41000).await;
    let base = format!("http://{}", gateway.http_addr);
    let calls: [(&str, &str, &[&str], f64); 3] = [
        (
            "echo",
            "42",
            &["maxplaybackrate=8000", "maxaveragebitrate=24000"],
            70.0,
        ),
        (
            "sales",
            "7",
            &["maxplaybackrate=8000", "maxaveragebitrate=24000"],
            70.0,
        ),
        // Firefox keeps no `cbr` of a description it is given (`remoteDescription` is its
        // own rewrite of ours, without it): only Chromium is asked for constant bitrate.
        (
            "hd",
            "5",
            &[
                "maxplaybackrate=16000",
                "maxaveragebitrate=20000",
                "usedtx=1",
            ],
            55.0,
        ),
    ];
    for (target, digits, fmtp, max_bytes) in calls {
        // The echo call also restarts ICE mid-call, as on a network change; the PBX's loses
        // its signaling connection mid-call and resumes; the carrier's checks the line first
        // (`preflight()`).
        let flag = match target {
            "echo" => "--restart-ice",
            "sales" => "--drop-connection",
            _ => "--preflight",
        };
        let seen = visit_in_firefox(format!("{base}/?target={target}"), 1004, digits, flag).await;
        eprintln!("firefox {target}: {seen}");
        assert!(
            seen["errors"].as_array().is_some_and(|e| e.is_empty()),
            "{target}: no errors: {seen}"
        );
        let states = states(&seen);
        assert!(
            states.contains(&"in-call") && states.last() == Some(&"ended"),
            "{target}: in call, then ended: {seen}"
        );
        assert!(
            (seen["peakHz"].as_f64().unwrap_or(0.0) - 1004.0).abs() <= 25.0,
            "{target}: the page hears Firefox's tone come back: {seen}"
        );
        assert_eq!(seen["digits"].as_str(), Some(digits), "{target}: {seen}");
        let sending = &seen["sending"];
        let given = sending["fmtp"].as_str().unwrap_or("");
        assert!(
            fmtp.iter().all(|p| given.split(';').any(|q| q == *p)),
            "{target}: the answer asks Firefox for {fmtp:?}: {seen}"
        );
        // Firefox offers `stereo=1`; neither the gateway's decoder nor these trunks want it.
        assert!(
            !given.split(';').any(|q| q == "stereo=1"),
            "{target}: Firefox is asked for mono: {seen}"
        );
        assert!(
            sending["packets"].as_u64().unwrap_or(0) >= 25
                && sending["bytesPerPacket"].as_f64().unwrap_or(f64::MAX) < max_bytes,
            "{target}: Firefox codes as asked: {sending}"
        );
        // Its stats make the widget's `quality` events, all good on loopback.
        assert_quality_good(&seen);
        match flag {
            "--restart-ice" => assert_ice_restarted(&seen),
            "--drop-connection" => assert_resumed(&seen),
            _ => assert_line_good(&seen),
        }
    }
    assert!(pbx.finished().await, "the PBX's sipp saw the call through");
    assert!(
        carrier.finished().await,
        "the carrier's sipp saw the call through"
    );
    let records = gateway_tests::cdr_records(&cdr, 3).await;
    let codecs: Vec<&str> = records
        .iter()
        .map(|r| r["trunk_codec"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(codecs, ["PCMU", "PCMU", "opus"], "{records:?}");
    assert!(
        records[2]["frames_relayed"].as_u64().unwrap_or(0) > 50,
        "Firefox's Opus relayed untouched: {:?}",
        records[2]
    );
}
