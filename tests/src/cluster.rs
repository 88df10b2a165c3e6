//! Gateway cluster nodes for the tests: one configuration for every node, run in the test's
//! process (`gateway::run::start`) or as a `gateway run` process of its own, which a test
//! can kill with SIGKILL as an operator's `kill -9` would.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The token secret every test node shares.
pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// Writes node `id`'s configuration: every socket on `ip`, RTP from `rtp` (500 ports), the
/// cluster on `redis_url` with a 3 s lease and the loopback network as its peers, the target
/// `echo` on the trunk `carrier` (sipp at 127.0.0.1:`trunk_port`, two channels for the
/// cluster); `extra` (`[inbound]`, `[[plugins]]` …) ends the file.
pub fn node_config(
    dir: &Path,
    id: &str,
    ip: &str,
    rtp: u16,
    redis_url: &str,
    trunk_port: u16,
    extra: &str,
) -> PathBuf {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let text = format!(
        "[sip]\nudp = \"{ip}:0\"\n\n[rtp]\nip = \"{ip}\"\nport_min = {rtp}\nport_max = {}\n\n\
         [http]\nlisten = \"{ip}:0\"\nanonymous = true\ntoken_secret_file = \"{}\"\n\n\
         [webrtc]\nudp = \"{ip}:0\"\n\n\
         [trunks.carrier]\naddresses = [\"127.0.0.1:{trunk_port}\"]\noptions_interval = 0\nmax_channels = 2\n\n\
         [targets.echo]\ntrunk = \"carrier\"\nnumber = \"100\"\n\n\
         [cluster]\nredis_url = \"{redis_url}\"\nnode_id = \"{id}\"\nlease_seconds = 3\npeers = [\"127.0.0.0/24\"]\n{extra}",
        rtp + 499,
        dir.join("secret").display(),
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A `gateway run` process; killed (SIGKILL) when dropped.
pub struct NodeProcess {
    child: Child,
    /// Its HTTP side (`/ws`, `/metrics`).
    pub http: SocketAddr,
    /// Its SIP over UDP.
    pub sip: SocketAddr,
}

impl NodeProcess {
    /// Runs `gateway` (the binary's path) with `config`; its log goes to `<config>.log`.
    /// Returns once it says where it listens.
    pub fn start(gateway: &Path, config: &Path) -> NodeProcess {
        let mut child = Command::new(gateway)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("GATEWAY_LOG", "info,rtc_dtls=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the gateway binary");
        let stderr = child.stderr.take().expect("piped");
        let log_path = config.with_extension("log");
        let (tx, rx) = std::sync::mpsc::channel();
        // The reader keeps draining stderr into the log for the process's life, so a full
        // pipe never stalls the node.
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).expect("node log");
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                let _ = tx.send(line);
            }
        });
        let (mut http, mut sip) = (None, None);
        let until = Instant::now() + Duration::from_secs(30);
        while http.is_none() || sip.is_none() {
            let left = until.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the node started by {} said nothing of its addresses; see its .log",
                    config.display()
                )
            });
            if let Some(rest) = line.split("signaling ws://").nth(1) {
                http = rest.split("/ws").next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split("SIP on udp ").nth(1) {
                sip = rest
                    .split([';', ','])
                    .next()
                    .and_then(|a| a.trim().parse().ok());
            }
        }
        NodeProcess {
            child,
            http: http.unwrap(),
            sip: sip.unwrap(),
        }
    }

    /// SIGTERM, as an orchestrator stopping the node: it drains, then exits.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "SIGTERM to the node");
    }

    /// Waits up to `limit` for the process to exit; true when it did, with status 0.
    pub fn exited(&mut self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL, as `kill -9`: nothing of the node's own clean-up runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits up to `seconds` for Redis to say `identity` is registered on node `node`.
pub async fn wait_for_registration(
    redis: &crate::redis::Redis,
    identity: &str,
    node: &str,
    seconds: u64,
) {
    let key = format!("gateway:registration:{identity}");
    wait_for_redis(redis, &["GET", &key], node, seconds).await;
}

/// Waits up to `seconds` for Redis to answer `command` with `expected`. A node writes its
/// counts from its cluster task, just after the change it shares, so a test reads them until
/// they agree rather than once.
pub async fn wait_for_redis(
    redis: &crate::redis::Redis,
    command: &[&str],
    expected: &str,
    seconds: u64,
) {
    let until = Instant::now() + Duration::from_secs(seconds);
    loop {
        let answer = redis.command(command);
        if answer == expected {
            return;
        }
        assert!(
            Instant::now() < until,
            "Redis answered {command:?} with `{answer}`, not `{expected}`, for {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
