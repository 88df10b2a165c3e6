//! A plugin that misbehaves on purpose, so the tests can show the host contains it. Its
//! configuration names the mode: `{"mode": "loop"}` (never returns), `trap` (panics),
//! `memory` (allocates until refused), `escape` (tries to read host files: `/etc/passwd`,
//! and `../` out of its data directory), `inject` (routes with CR/LF in the number, caller
//! ID and a header, to write its own SIP headers), `kv-flood` (stores 200 values of 1 MB and
//! then small values until refused), `log-flood` (20,000 log lines, one with a line break
//! that forges a log line), `reject` (a well-behaved 403), or `continue`.
//! With `"when_to": "bad"` it misbehaves only on calls to that destination, so tests can run
//! a normal call beside a poisoned one. With `"init_host"` its `init` asks the host for
//! something — `log` (a log line), `clock` (WASI's wall clock) or `random` (a hash map's
//! random seed, from WASI) — which keeps the gateway from snapshotting it after `init`.
//! With `"init_stalls": N` its `init` never returns on its first N runs (counted in a file in
//! its data directory), as a plugin preempted on a busy machine would seem to.
//! In every mode it counts the ends it hears of by their reason (counter `ended_<reason>`), so
//! tests can see that the plugins of a call hear of its end however it ended.

use gateway_plugin_sdk::{
    CallInfo, Event, Level, Manifest, Plugin, Reject, Verdict, export_plugin, host, route,
};

/// The plugin; the mode is its whole state.
pub struct Hostile {
    mode: String,
    when_to: Option<String>,
}

impl Plugin for Hostile {
    fn manifest() -> Manifest {
        // Asks for a data directory so the escape mode can try to climb out of it.
        Manifest {
            audio: false,
            data_dir: true,
        }
    }

    fn init(config: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(config).map_err(|e| format!("hostile config: {e}"))?;
        match v.get("init_host").and_then(|h| h.as_str()) {
            Some("log") => host::log(Level::Info, "hostile: init"),
            Some("clock") => {
                std::hint::black_box(std::time::SystemTime::now());
            }
            Some("random") => {
                let seeded: std::collections::HashMap<u8, u8> = Default::default();
                std::hint::black_box(seeded);
            }
            _ => {}
        }
        if let Some(stalls) = v.get("init_stalls").and_then(|n| n.as_u64()) {
            let runs = gateway_plugin_sdk::data_dir().join("init-runs");
            let mut count = std::fs::read(&runs).unwrap_or_default();
            count.push(b'.');
            std::fs::write(&runs, &count).map_err(|e| format!("hostile: counting runs: {e}"))?;
            if count.len() as u64 <= stalls {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
        }
        Ok(Hostile {
            mode: v
                .get("mode")
                .and_then(|m| m.as_str())
                .unwrap_or("continue")
                .to_string(),
            when_to: v.get("when_to").and_then(|w| w.as_str()).map(str::to_owned),
        })
    }

    fn on_event(&mut self, _call_id: &str, event: &Event) {
        if let Event::Ended(end) = event {
            host::counter(&format!("ended_{}", end.reason), 1);
        }
    }

    fn on_call_start(&mut self, call: &CallInfo) -> Verdict {
        if self
            .when_to
            .as_ref()
            .is_some_and(|to| *to != call.destination)
        {
            return Verdict::Continue;
        }
        match self.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "trap" => panic!("hostile plugin traps on purpose"),
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "escape" => {
                let data = gateway_plugin_sdk::data_dir();
                let attempts = [
                    std::path::PathBuf::from("/etc/passwd"),
                    data.join("../../../../etc/passwd"),
                    data.join("..").join("..").join("etc").join("hostname"),
                ];
                match attempts.iter().find(|p| std::fs::read(p).is_ok()) {
                    Some(p) => Verdict::Reject(Reject {
                        sip_code: 599,
                        reason: format!("escaped the sandbox: read {}", p.display()),
                    }),
                    None => Verdict::Continue,
                }
            }
            "inject" => Verdict::Route(gateway_plugin_sdk::Route {
                number: Some(format!("{}\r\nX-Injected-Number: yes", call.number)),
                caller_id: Some("+15551234\r\nX-Injected-Caller: yes".into()),
                headers: vec![("X-Crm".into(), "gold\r\nX-Injected-Header: yes".into())],
                ..route()
            }),
            "kv-flood" => {
                let big = "x".repeat(1 << 20);
                for i in 0..200 {
                    host::kv_set(&format!("big-{}-{i}", call.call_id), &big, None);
                }
                let small = "y".repeat(4096);
                for i in 0..10_000 {
                    host::kv_set(&format!("small-{}-{i}", call.call_id), &small, None);
                }
                Verdict::Continue
            }
            "log-flood" => {
                host::log(
                    Level::Error,
                    "caller looked up\nFAKE LOG LINE level=error forged by a plugin",
                );
                for i in 0..20_000 {
                    host::log(Level::Warn, &format!("noise {i}"));
                }
                Verdict::Continue
            }
            "reject" => Verdict::Reject(Reject {
                sip_code: 403,
                reason: "blocked by policy".into(),
            }),
            _ => Verdict::Continue,
        }
    }
}

export_plugin!(Hostile);
