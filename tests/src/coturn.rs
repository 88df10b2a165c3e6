//! coturn (Debian's `coturn`), the TURN server deployments put beside the gateway, on
//! loopback with the TURN REST API's shared secret (`use-auth-secret`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `turnserver` on 127.0.0.1.
pub struct Coturn {
    child: Child,
    /// Its TURN port (UDP and TCP).
    pub port: u16,
    log: PathBuf,
}

impl Coturn {
    /// Starts coturn with `secret` as its `static-auth-secret`, relaying on loopback (which
    /// it refuses by default), logging to `dir/coturn.log`.
    pub fn start(dir: &Path, secret: &str) -> Coturn {
        let (port, _) = crate::ports();
        let log = dir.join("coturn.log");
        let out = std::fs::File::create(&log).expect("coturn log");
        let child = Command::new("turnserver")
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            // Relay ports from coturn's default range (49152-65535), each allocation two:
            // coturn moves on from a port that is taken.
            .args([
                "--use-auth-secret",
                "--realm=gateway.test",
                "--allow-loopback-peers",
            ])
            .arg(format!("--static-auth-secret={secret}"))
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--log-file=stdout",
                "--simple-log",
            ])
            // Its database and pid file in the test's folder, not /var: nothing shared with
            // another instance or a system coturn, and no root needed.
            .arg(format!("--userdb={}", dir.join("turndb").display()))
            .arg(format!(
                "--pidfile={}",
                dir.join("turnserver.pid").display()
            ))
            .arg("--verbose")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("turnserver runs (Debian package coturn; scripts/install-deps.sh installs it)");
        let coturn = Coturn { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "coturn did not listen on {port}: {}",
                coturn.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        coturn
    }

    /// What coturn logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
