//! Harness for end-to-end tests against real SIP peers: runs `sipp` scenarios from
//! `tests/sipp/` on loopback and writes gateway configurations pointing at them.

pub mod baresip;
pub mod browser_opus;
pub mod client;
pub mod cluster;
pub mod coturn;
pub mod floor;
pub mod fuzzing;
pub mod redis;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Hands out distinct loopback ports so tests can run in parallel: each call returns a
/// SIP port and an RTP port for one sipp instance. sipp's `-rtp_echo` binds the RTP port
/// and the one two above it (video echo), with RTCP beside each: four ports per instance.
pub fn ports() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 40;
    // Per-process offset so two test binaries running at once do not collide.
    // Below 32,768, where Linux's ephemeral ports start (`ip_local_port_range`), so no socket
    // bound to port 0 by this or another test can hold one of them.
    let base = 20_000 + (std::process::id() % 60) as u16 * 200;
    (base + n, base + 40 + 4 * n)
}

/// The folder of sipp scenario files.
pub fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp")
}

/// A folder for this test's files (configs, sipp logs), emptied first.
pub fn out_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("out").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test output folder");
    dir
}

/// A running sipp playing the trunk side of one scenario.
pub struct Sipp {
    child: Child,
    /// SIP port sipp listens on.
    pub port: u16,
    /// RTP port sipp echoes on.
    pub media_port: u16,
    log_dir: PathBuf,
    name: String,
}

impl Sipp {
    /// Starts `sipp -sf SCENARIO` as a UAS on 127.0.0.1 with RTP echo, for one call.
    /// `transport` is sipp's `-t` value (`u1` or `t1`).
    pub fn uas(scenario: &str, transport: &str, log_dir: &Path) -> Sipp {
        Self::uas_calls(scenario, transport, log_dir, 1)
    }

    /// Like [`Sipp::uas`], answering `calls` calls (concurrent ones too) before it exits.
    pub fn uas_calls(scenario: &str, transport: &str, log_dir: &Path, calls: u32) -> Sipp {
        Self::uas_keyed(scenario, transport, log_dir, calls, &[])
    }

    /// Like [`Sipp::uas_calls`], with `[keyword]`s for the scenario (sipp's `-key`).
    pub fn uas_keyed(
        scenario: &str,
        transport: &str,
        log_dir: &Path,
        calls: u32,
        keys: &[(&str, String)],
    ) -> Sipp {
        let (port, media_port) = ports();
        let file = scenarios().join(scenario);
        let mut command = Command::new("sipp");
        for (key, value) in keys {
            command.args(["-key", key, value]);
        }
        // sipp's `-timeout` counts from its start, and a test may first build plugins and wait
        // for their snapshots: under a loaded CI box that took more than 40 s, and the call
        // then met a sipp that had quit (Timer B, 408). It is only a backstop: `Drop` ends
        // sipp with its test, and `wait` gives up 45 s after the test starts waiting.
        let child = command
            .args(["-sf"])
            .arg(&file)
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-mp", &media_port.to_string(), "-rtp_echo"])
            .args(["-t", transport, "-m", &calls.to_string(), "-nostdin", "-timeout", "300s", "-timeout_error", "-trace_err", "-trace_msg"])
            .current_dir(log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sipp ({e}): install the Debian package sip-tester (the README's test command does)"));
        // sipp binds quickly; give it a moment so the first INVITE is not lost to an unbound port.
        std::thread::sleep(Duration::from_millis(300));
        Sipp {
            child,
            port,
            media_port,
            log_dir: log_dir.to_path_buf(),
            name: scenario.to_string(),
        }
    }

    /// sipp as a trunk whose answer sends the media to `media_port` on 127.0.0.1 (a media
    /// server beside its PBX, played by the test) in the one codec `rtpmap` names
    /// (`"0 PCMU/8000"`, `"96 opus/48000/2"`).
    pub fn media_server(media_port: u16, rtpmap: &str, log_dir: &Path) -> Sipp {
        let format = rtpmap.split(' ').next().unwrap_or_default().to_string();
        Self::uas_keyed(
            "media_server.xml",
            "u1",
            log_dir,
            1,
            &[
                ("media_server_port", media_port.to_string()),
                ("media_server_format", format),
                ("media_server_rtpmap", rtpmap.to_string()),
            ],
        )
    }

    /// Starts `sipp -sf SCENARIO` as a UAC from `local_ip` (and `port`, else a fresh one),
    /// placing one call to `target`, dialling +15550100.
    pub fn uac(
        scenario: &str,
        local_ip: &str,
        port: Option<u16>,
        target: std::net::SocketAddr,
        log_dir: &Path,
    ) -> Sipp {
        Sipp::uac_dialling(scenario, "+15550100", local_ip, port, target, log_dir)
    }

    /// [`Sipp::uac`], dialling `number` (the scenario's `[service]`).
    pub fn uac_dialling(
        scenario: &str,
        number: &str,
        local_ip: &str,
        port: Option<u16>,
        target: std::net::SocketAddr,
        log_dir: &Path,
    ) -> Sipp {
        let (fresh, media_port) = ports();
        let port = port.unwrap_or(fresh);
        let file = scenarios().join(scenario);
        let child = Command::new("sipp")
            .arg(target.to_string())
            .args(["-sf"])
            .arg(&file)
            .args(["-i", local_ip, "-p", &port.to_string(), "-mp", &media_port.to_string(), "-rtp_echo", "-s", number])
            .args(["-m", "1", "-nostdin", "-timeout", "44s", "-timeout_error", "-trace_err", "-trace_msg"])
            .current_dir(log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sipp ({e}): install the Debian package sip-tester (the README's test command does)"));
        Sipp {
            child,
            port,
            media_port,
            log_dir: log_dir.to_path_buf(),
            name: scenario.to_string(),
        }
    }

    /// Everything sipp logged with `-trace_msg` so far.
    pub fn messages(&self) -> String {
        std::fs::read_dir(&self.log_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().to_string_lossy().ends_with("messages.log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect()
    }

    /// Waits for sipp to finish its one call; true when the scenario completed as written.
    pub fn finish(mut self) -> bool {
        self.wait()
    }

    /// [`Self::finish`] from async tests, off the runtime's threads (it polls and sleeps).
    pub async fn finished(self) -> bool {
        tokio::task::spawn_blocking(move || self.finish())
            .await
            .expect("the sipp waiter panicked")
    }

    /// Like [`Self::finish`], keeping the handle (for [`Self::messages`]).
    pub fn wait(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!(
                            "sipp {} failed ({status}); logs in {}",
                            self.name,
                            self.log_dir.display()
                        );
                        for entry in std::fs::read_dir(&self.log_dir)
                            .into_iter()
                            .flatten()
                            .flatten()
                        {
                            let path = entry.path();
                            if path.to_string_lossy().ends_with("errors.log") {
                                eprintln!("{}", std::fs::read_to_string(&path).unwrap_or_default());
                            }
                        }
                    }
                    return status.success();
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    eprintln!("sipp {} did not finish in time", self.name);
                    return false;
                }
            }
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration file with one trunk per `(name, port, transport, failover)` entry, all on
/// 127.0.0.1, credentials gw / trunk-secret (from the environment variable the file names).
pub fn write_config(dir: &Path, trunks: &[(&str, u16, &str, &[&str])]) -> PathBuf {
    let mut text = String::from(
        "[sip]\nudp = \"127.0.0.1:0\"\n\n[rtp]\nip = \"127.0.0.1\"\nport_min = 40000\nport_max = 44999\n\n[http]\nlisten = \"127.0.0.1:0\"\nanonymous = true\n\n[webrtc]\nudp = \"127.0.0.1:0\"\n",
    );
    for (name, port, transport, failover) in trunks {
        let failover: Vec<String> = failover.iter().map(|f| format!("\"{f}\"")).collect();
        text.push_str(&format!(
            "\n[trunks.{name}]\naddresses = [\"127.0.0.1:{port}\"]\ntransport = \"{transport}\"\nusername = \"gw\"\npassword_file = \"{}\"\nfailover = [{}]\noptions_interval = 0\n",
            dir.join("password").display(),
            failover.join(", ")
        ));
    }
    std::fs::write(dir.join("password"), "trunk-secret\n").expect("write password file");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A configuration with one trunk `carrier` at `port` listing `codecs` (e.g. `"opus", "PCMU"`),
/// the target `echo` on it, and a CDR file; returns the configuration and the CDR path.
pub fn codec_trunk_config(dir: &Path, port: u16, codecs: &str) -> (PathBuf, PathBuf) {
    carrier_config(dir, (port, "udp"), &format!("codecs = [{codecs}]\n"), "100")
}

/// A configuration with one trunk `carrier` at 127.0.0.1:`port` over `transport`, its table
/// extended with `settings`, the target `echo` dialling `number` on it, and CDRs in
/// `dir/cdr.jsonl`; returns the configuration's path and the CDR path.
fn carrier_config(
    dir: &Path,
    (port, transport): (u16, &str),
    settings: &str,
    number: &str,
) -> (PathBuf, PathBuf) {
    let path = write_config(dir, &[("carrier", port, transport, &[])]);
    let text = std::fs::read_to_string(&path)
        .expect("read the config just written")
        .replace(
            "[trunks.carrier]\n",
            &format!("[trunks.carrier]\n{settings}"),
        );
    let cdr = dir.join("cdr.jsonl");
    std::fs::write(
        &path,
        format!(
            "{text}\n[targets.echo]\ntrunk = \"carrier\"\nnumber = \"{number}\"\n\n[cdr]\npath = \"{}\"\n",
            cdr.display()
        ),
    )
    .expect("write config");
    (path, cdr)
}

/// A browser's call through a trunk listing some codecs, and what it leaves to check.
pub struct CodecTrunkCall {
    /// The browser's report.
    pub report: client::CallReport,
    /// The trunk, to ask whether it saw the call through.
    pub sipp: Sipp,
    /// The gateway, still up for its metrics.
    pub gateway: gateway::run::Gateway,
    /// The gateway's CDR file.
    pub cdr: PathBuf,
}

/// A browser call with `options` to the target `echo` on a trunk listing `codecs` (as
/// [`codec_trunk_config`]) that sipp's UAS `scenario` plays.
pub async fn call_through_codec_trunk(
    test: &str,
    scenario: &str,
    codecs: &str,
    options: &client::CallOptions,
) -> CodecTrunkCall {
    let dir = out_dir(test);
    let sipp = Sipp::uas(scenario, "u1", &dir);
    let (path, cdr) = codec_trunk_config(&dir, sipp.port, codecs);
    let config = gateway::config::Config::load(&path).expect("the test's configuration");
    let gateway = gateway::run::start(&config)
        .await
        .expect("the gateway starts");
    let url = format!("ws://{}/ws", gateway.http_addr);
    let report = client::run_call(&url, options)
        .await
        .expect("the call runs");
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    CodecTrunkCall {
        report,
        sipp,
        gateway,
        cdr,
    }
}

/// A configuration for plugin tests: targets `sales` and `bad` dial 030-1234 on `carrier`
/// (where nothing answers), a trunk `berlin` at `sipp_port`, and the `[[plugins]]` entries.
pub fn plugins_config(dir: &Path, sipp_port: u16, plugins: &str) -> PathBuf {
    let (dead, _) = ports();
    let path = write_config(
        dir,
        &[
            ("carrier", dead, "udp", &[]),
            ("berlin", sipp_port, "udp", &[]),
        ],
    );
    let mut text = std::fs::read_to_string(&path).expect("read the config just written");
    text.push_str("\n[targets.sales]\ntrunk = \"carrier\"\nnumber = \"030-1234\"\n");
    text.push_str("\n[targets.bad]\ntrunk = \"carrier\"\nnumber = \"030-1234\"\n");
    text.push_str(plugins);
    std::fs::write(&path, text).expect("write config");
    path
}

/// A `[[plugins]]` entry: `settings` are extra keys (`data_dir`, `memory_mb`, …), `config`
/// the `[plugins.config]` table's lines.
pub fn plugin_in(name: &str, file: &Path, policy: &str, settings: &str, config: &str) -> String {
    format!(
        "\n[[plugins]]\nname = \"{name}\"\npath = \"{}\"\npolicy = \"{policy}\"\nreject_code = 503\n{settings}\n[plugins.config]\n{config}\n",
        file.display()
    )
}

/// The counter `name` that plugin `plugin` of the gateway's current chain keeps (0 before it
/// counts).
pub fn plugin_counter(gateway: &gateway::run::Gateway, plugin: &str, name: &str) -> u64 {
    gateway
        .calls
        .plugins
        .current()
        .counters()
        .into_iter()
        .find(|(p, n, _)| p == plugin && n == name)
        .map_or(0, |(.., v)| v)
}

/// A plain HTTP/1.0 GET on loopback, for `/metrics` and `/healthz`; returns the whole reply.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    http_request(addr, &format!("GET {path}"), &[]).await
}

/// Waits up to `seconds` for the `/metrics` of the gateway at `http` to contain `line`. A test
/// waits for the state it needs (a browser registered, a call answered) rather than sleeping
/// for a time that a loaded machine may outlast.
pub async fn wait_for_metric(http: std::net::SocketAddr, line: &str, seconds: u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut text = String::new();
    while std::time::Instant::now() < until {
        text = http_get(http, "/metrics").await;
        if text.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no `{line}` within {seconds} s: {text}");
}

/// Waits up to 10 s until the gateway at `http` counts `browsers` registered for inbound
/// calls: a trunk calls one only then, or the call may find nobody to ring.
pub async fn wait_for_registered(http: std::net::SocketAddr, browsers: usize) {
    wait_for_metric(
        http,
        &format!("gateway_registered_identities {browsers}"),
        10,
    )
    .await;
}

/// Waits up to 20 s until the gateway at `http` has answered `calls` calls: what a test does
/// to a running call comes after that.
pub async fn wait_for_answered(http: std::net::SocketAddr, calls: usize) {
    wait_for_metric(http, &format!("gateway_calls_answered_total {calls}"), 20).await;
}

/// One plain HTTP/1.0 request without a body on loopback: `line` is the method and path,
/// `headers` go after `Host`. Returns the whole reply.
pub async fn http_request(
    addr: std::net::SocketAddr,
    line: &str,
    headers: &[(&str, &str)],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    let mut request = format!("{line} HTTP/1.0\r\nHost: localhost\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("read reply");
    reply
}

/// `npm ci` in `dir` unless `installed` (a path under its node_modules) is already there from
/// a finished install. Tests run in parallel threads: one lock keeps a second `npm ci` from
/// deleting node_modules under a test that is already loading from it, and a marker written
/// after success keeps an interrupted install from passing for a complete one.
pub fn npm_ci(dir: &Path, installed: &str) {
    static NPM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = NPM.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let modules = dir.join("node_modules");
    let done = modules.join(".npm-ci-complete");
    if done.exists() && modules.join(installed).exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("run npm (the README's test command installs Node.js and npm)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
    std::fs::write(&done, "").expect("mark node_modules complete");
}

/// Builds an example plugin from `plugins/` for wasm32-wasip2 and returns the component's
/// path. Plugins are never committed as binaries: every test run compiles them from source.
/// The first call builds every plugin (the Rust workspace and the JavaScript one), so no
/// test's calls share the CPU with a compiler.
pub fn build_plugin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root");
    let target_dir = root.join("target").join("plugins");
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--workspace", "--manifest-path"])
            .arg(root.join("plugins").join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .expect("run cargo to build the plugins");
        assert!(
            status.success(),
            "building the plugins failed; `rustup target add wasm32-wasip2` (the README's test command does)"
        );
        build_js_plugin("screen-js");
    });
    if name.ends_with("-js") {
        return build_js_plugin(name);
    }
    target_dir
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// Builds a JavaScript plugin from `plugins/<name>` (plugin.js) into a WebAssembly component
/// with jco/componentize-js (npm packages pinned by the plugin's package-lock.json) and returns
/// its path. Rebuilt only when the source or the WIT changed.
pub fn build_js_plugin(name: &str) -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root");
    let dir = root.join("plugins").join(name);
    let wit = root.join("plugin-sdk").join("wit");
    let out_dir = root.join("target").join("plugins");
    std::fs::create_dir_all(&out_dir).expect("create target/plugins");
    let out = out_dir.join(format!("{name}.wasm"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = modified(&out).is_some_and(|built| {
        [dir.join("plugin.js"), wit.join("plugin.wit")]
            .iter()
            .all(|src| modified(src).is_some_and(|m| m <= built))
    });
    if fresh {
        return out;
    }
    npm_ci(&dir, ".bin/jco");
    let status = Command::new(dir.join("node_modules").join(".bin").join("jco"))
        .arg("componentize")
        .arg("plugin.js")
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", "plugin", "--disable", "all", "-o"])
        .arg(&out)
        .current_dir(&dir)
        .status()
        .expect("run jco");
    assert!(status.success(), "building plugin `{name}` with jco failed");
    out
}

/// Writes `samples` as a mono 16-bit PCM WAV file at `rate` Hz.
pub fn write_wav(path: &Path, rate: u32, samples: &[i16]) {
    let data = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + data as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, wav).expect("write the WAV file");
}

/// A gateway whose trunk `carrier` is at 127.0.0.1:`port` over `transport`, its table
/// extended with `settings`, the whole text then passed through `edit`; with the target
/// `echo` (the number `echo`) and CDRs in `dir/cdr.jsonl`, whose path comes back too.
pub async fn gateway_to(
    dir: &Path,
    trunk: (u16, &str),
    settings: &str,
    edit: impl FnOnce(String) -> String,
) -> (gateway::run::Gateway, PathBuf) {
    let (path, cdr) = carrier_config(dir, trunk, settings, "echo");
    let text = std::fs::read_to_string(&path).expect("read the config just written");
    std::fs::write(&path, edit(text)).expect("write config");
    let gateway = gateway::run::start(&gateway::config::Config::load(&path).unwrap())
        .await
        .unwrap();
    (gateway, cdr)
}

/// The first record of the CDR file at `path`, waiting for it as [`cdr_records`] does.
pub async fn cdr_record(path: &Path) -> serde_json::Value {
    cdr_records(path, 1)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no CDR in {}", path.display()))
}

/// The records of the CDR file at `path` once it holds `count` (a call's record follows its
/// end), waiting up to 5 s; whatever it holds by then otherwise.
pub async fn cdr_records(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a CDR line is JSON"))
        .collect()
}

/// What [`media_server_that_changes_source`] saw and did.
#[derive(Debug, Default)]
pub struct MediaServerLog {
    /// Packets returned as the first source.
    pub first: u64,
    /// Packets returned as the second.
    pub second: u64,
    /// Each RTP packet from the gateway: its timestamp and marker bit.
    pub received: Vec<(u32, bool)>,
}

impl MediaServerLog {
    /// The steps between consecutive timestamps from the gateway, each with the marker bit
    /// of the packet after it.
    pub fn steps(&self) -> Vec<(i32, bool)> {
        self.received
            .windows(2)
            .map(|w| (w[1].0.wrapping_sub(w[0].0) as i32, w[1].1))
            .collect()
    }
}

/// Plays a media server beside the trunk's PBX ([`Sipp::media_server`]): returns the
/// gateway's RTP to where it came from, as one source for 1.5 s from the first packet, then
/// as another (RFC 3550 §8.2) whose sequence numbers run 20,000 ahead and whose timestamps
/// lie `behind` ticks behind the first's: a PBX handing the call to a media server, or a
/// transfer, or hold music. Ends two seconds after the last packet came.
pub async fn media_server_that_changes_source(
    socket: tokio::net::UdpSocket,
    behind: u32,
) -> MediaServerLog {
    let switch = Duration::from_millis(1500);
    let mut buf = [0u8; 1500];
    let mut first = None;
    let mut log = MediaServerLog::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let got = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await;
        let Ok(Ok((n, from))) = got else { break };
        if n < 12 {
            continue;
        }
        let timestamp = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        log.received.push((timestamp, buf[1] & 0x80 != 0));
        let second = first.get_or_insert_with(Instant::now).elapsed() >= switch;
        let (ssrc, sequence_ahead, timestamp_ahead) = if second {
            (0x2222_2222u32, 20_000u16, behind.wrapping_neg())
        } else {
            (0x1111_1111, 0, 0)
        };
        let sequence = u16::from_be_bytes([buf[2], buf[3]]).wrapping_add(sequence_ahead);
        buf[2..4].copy_from_slice(&sequence.to_be_bytes());
        buf[4..8].copy_from_slice(&timestamp.wrapping_add(timestamp_ahead).to_be_bytes());
        buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
        socket.send_to(&buf[..n], from).await.unwrap();
        if second {
            log.second += 1;
        } else {
            log.first += 1;
        }
    }
    log
}

/// A browser call with `options` to the target `echo` on a trunk offering `codecs` (a
/// `codecs = [...]` list), whose sipp answers in the one codec `rtpmap` names and sends the
/// media to a media server beside it, played by [`media_server_that_changes_source`] (its new
/// source `behind` ticks behind the old one). Returns the browser's report, what the media
/// server saw, and the call's CDR; sipp must have seen the call through.
pub async fn call_through_a_media_server(
    test: &str,
    (codecs, rtpmap): (&str, &str),
    behind: u32,
    options: &client::CallOptions,
) -> (client::CallReport, MediaServerLog, serde_json::Value) {
    let dir = out_dir(test);
    let server = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind the media server's port");
    let port = server.local_addr().expect("a bound port").port();
    let media = tokio::spawn(media_server_that_changes_source(server, behind));
    let sipp = Sipp::media_server(port, rtpmap, &dir);
    let (path, cdr) = codec_trunk_config(&dir, sipp.port, codecs);
    let config = gateway::config::Config::load(&path).expect("the test's configuration");
    let gateway = gateway::run::start(&config)
        .await
        .expect("the gateway starts");
    let report = client::run_call(&format!("ws://{}/ws", gateway.http_addr), options)
        .await
        .expect("the call is placed");
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let media = media.await.expect("the media server ran");
    assert!(sipp.finished().await, "sipp saw no call, or no BYE");
    let record = cdr_record(&cdr).await;
    eprintln!("{record}");
    (report, media, record)
}
