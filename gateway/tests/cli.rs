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

/// Each thread of process `pid` named `media-N` (a media worker), and every other thread's
/// nice values, from `/proc`.
fn thread_nices(pid: u32) -> (Vec<i64>, Vec<i64>) {
    let (mut media, mut others) = (vec![], vec![]);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // proc_pid_stat(5): the fields after the command's closing parenthesis start at the
        // third (state); the nice value is the nineteenth.
        let Some(nice) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(16))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let comm = comm.trim();
        let worker = comm
            .strip_prefix("media-")
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if worker {
            media.push(nice)
        } else {
            others.push(nice)
        }
    }
    (media, others)
}

/// `gateway run` with `[media] nice`, as launched by `launcher` (empty: directly), until its
/// log has a line with `wanted`; the log so far, and the threads' nice values then.
fn run_with_nice(
    dir: &std::path::Path,
    nice: i8,
    launcher: &[&str],
    wanted: &[&str],
) -> (String, Vec<i64>, Vec<i64>) {
    use std::io::BufRead;
    let config = write_config(dir, &[("carrier", 5060, "udp", &[])]);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[media]\nworkers = 2\nnice = {nice}\n"),
    )
    .unwrap();
    let mut command = match launcher.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_gateway"));
            c
        }
        None => gateway(),
    };
    let mut child = command
        .args(["run", "--config"])
        .arg(&config)
        .env("GATEWAY_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !wanted.iter().any(|w| log.contains(w)) && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            log.push_str(&line);
            log.push('\n');
        }
    }
    let (media, others) = thread_nices(child.id());
    let _ = child.kill();
    let _ = child.wait();
    (log, media, others)
}

#[test]
fn run_puts_the_media_workers_at_their_nice_and_says_what_to_grant_where_it_may_not() {
    let dir = out_dir("cli_nice");
    // This process's own nice, which the gateway starts with.
    let own = thread_nices(std::process::id()).1[0];
    // A lower priority needs no privilege.
    let (log, media, others) = run_with_nice(&dir, 3, &[], &["media workers run at nice 3"]);
    assert!(log.contains("media workers run at nice 3"), "{log}");
    assert_eq!(media, [own + 3, own + 3], "{log}");
    assert!(others.iter().all(|&n| n == own), "{others:?}");
    // A higher one without CAP_SYS_NICE (dropped here where this process has it, as for
    // root): refused, said so, and the workers run at the gateway's own nice; unless
    // RLIMIT_NICE allows it after all.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_NICE: u32 = 23;
    let launcher: &[&str] = if effective & (1 << CAP_SYS_NICE) != 0 {
        &[
            "setpriv",
            "--bounding-set",
            "-sys_nice",
            "--inh-caps",
            "-sys_nice",
            "--",
        ]
    } else {
        &[]
    };
    let (log, media, _) = run_with_nice(
        &dir,
        -5,
        launcher,
        &["media workers run at nice -5", "cannot run at nice -5"],
    );
    if log.contains("media workers run at nice -5") {
        assert_eq!(media, [own - 5, own - 5], "{log}");
    } else {
        assert!(
            log.contains("WARN") && log.contains("RLIMIT_NICE of 25") && log.contains("nice = 0"),
            "{log}"
        );
        assert_eq!(media, [own, own], "{log}");
    }
}
