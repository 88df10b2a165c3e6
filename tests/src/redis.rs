//! redis-server (Debian's `redis-server`), the shared state of a gateway cluster, on loopback
//! with nothing persisted; stopped and started again on the same port to play an outage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` on 127.0.0.1.
pub struct Redis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts one on a free port, logging to `dir/redis.log`. A port another test's server
    /// took meanwhile is noticed (that server would answer PING too) and another is tried.
    pub fn start(dir: &Path) -> Redis {
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut redis = Redis {
                child: None,
                port,
                dir: dir.to_path_buf(),
            };
            if redis.try_start() {
                return redis;
            }
        }
        panic!(
            "redis-server did not start; see {}",
            dir.join("redis.log").display()
        );
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "redis-server did not start again on {}",
            self.port
        );
    }

    /// Starts the server and waits until it answers as this one (its folder is ours).
    fn try_start(&mut self) -> bool {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .expect("redis log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("redis-server runs (Debian package redis-server; scripts/install-deps.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && child.try_wait().ok().flatten().is_some()
            {
                // It exited: the port is taken.
                self.child = None;
                return false;
            }
            if self.command(&["PING"]) == "PONG" {
                let ours = self.command(&["CONFIG", "GET", "dir"]);
                let dir = self.dir.canonicalize().unwrap_or(self.dir.clone());
                if ours.lines().nth(1) == Some(&*dir.to_string_lossy()) {
                    return true;
                }
                self.stop();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        false
    }

    /// Runs one command with `redis-cli` and returns its output, trimmed.
    pub fn command(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
