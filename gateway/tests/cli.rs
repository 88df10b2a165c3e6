//! The `gateway` command as an operator uses it: exit codes, messages, JSON.

use std::process::Command;

use gateway_tests::{Sipp, out_dir, write_config};

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

#[test]
fn check_config_names_file_line_and_field_and_exits_2() {
    let dir = out_dir("cli_check");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[sip]\nudp = \"not-an-address\"\n\n[trunks.x]\naddresses = [\"pbx\"]\ncodecs = [\"G729\"]\n").unwrap();
    let out = gateway().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:7: sip.udp:", bad.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(":6:10: trunks.x.codecs: unknown codec `G729`"),
        "{stderr}"
    );

    let good = write_config(&dir, &[("carrier", 5060, "udp", &[])]);
    let out = gateway().arg("check-config").arg(&good).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (1 trunks, 0 targets)"));
}

#[test]
fn dial_rejects_usage_mistakes_before_calling() {
    let dir = out_dir("cli_usage");
    let config = write_config(&dir, &[("carrier", 5060, "udp", &[])]);
    let out = gateway()
        .args(["dial", "--trunk", "nope", "--to", "1"])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no trunk named `nope`; configured trunks: carrier")
    );
    let out = gateway()
        .args(["dial", "--trunk", "carrier", "--to", "1", "--dtmf", "12x"])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`x` is not a DTMF digit"));
}

#[test]
fn dial_json_reports_and_exit_status_follows_the_call() {
    let dir = out_dir("cli_dial");
    let echo = Sipp::uas("echo.xml", "u1", &dir);
    let config = write_config(&dir, &[("carrier", echo.port, "udp", &[])]);
    let out = gateway()
        .args([
            "dial",
            "--trunk",
            "carrier",
            "--to",
            "100",
            "--seconds",
            "1.5",
            "--json",
        ])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sip_code"], 200);
    assert_eq!(report["trunk_used"], "carrier");
    assert_eq!(report["tone_detected"], true);
    for field in ["setup_ms", "rtp_sent", "rtp_received", "tone_snr_db"] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }
    assert!(echo.finish());

    let busy = Sipp::uas("busy.xml", "u1", &dir);
    let config = write_config(&dir, &[("carrier", busy.port, "udp", &[])]);
    let out = gateway()
        .args(["dial", "--trunk", "carrier", "--to", "100", "--json"])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a call that did not connect exits 1"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sip_code"], 486);
    assert_eq!(report["connected"], false);
    assert!(busy.finish());
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_json_lines_on_request() {
    let dir = out_dir("cli_logs");
    let run = |json: bool| {
        let busy = Sipp::uas("busy.xml", "u1", &dir);
        let config = write_config(&dir, &[("carrier", busy.port, "udp", &[])]);
        let mut command = gateway();
        command
            .args(["dial", "--trunk", "carrier", "--to", "100", "--json"])
            .arg("--config")
            .arg(&config)
            .env("GATEWAY_LOG", "info");
        if json {
            command.env("GATEWAY_LOG_FORMAT", "json");
        }
        let out = command.output().unwrap();
        assert!(busy.finish());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let plain = run(false);
    assert!(plain.contains("call attempt failed"), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "no terminal colours in a file: {plain:?}"
    );
    let json = run(true);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "call attempt failed"),
        "{json}"
    );
}
