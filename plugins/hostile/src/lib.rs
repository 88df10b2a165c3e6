//! A plugin that misbehaves on purpose, so the tests can show the host contains it. Its
//! configuration is one word, the mode: `loop` (never returns), `trap` (panics), `memory`
//! (allocates until refused), `escape` (tries to read /etc/passwd), `reject` (a well-behaved
//! 403), or `continue`.

// The generated bindings have as many parameters as the WIT functions.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ path: "../../plugin-sdk/wit", world: "plugin" });

use std::sync::OnceLock;

use gateway::plugin::types::Reject;

static MODE: OnceLock<String> = OnceLock::new();

struct Hostile;

impl Guest for Hostile {
    fn init(config: String) -> Result<(), String> {
        let mode = config
            .trim()
            .trim_matches(|c| c == '{' || c == '}')
            .split(':')
            .nth(1)
            .unwrap_or("\"continue\"")
            .trim()
            .trim_matches('"')
            .to_string();
        let _ = MODE.set(mode);
        Ok(())
    }

    fn on_call_start(_call: CallInfo) -> Verdict {
        match MODE.get().map(String::as_str).unwrap_or("continue") {
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
            "escape" => match std::fs::read_to_string("/etc/passwd") {
                Ok(_) => Verdict::Reject(Reject {
                    sip_code: 599,
                    reason: "escaped the sandbox".into(),
                }),
                Err(_) => Verdict::Continue,
            },
            "reject" => Verdict::Reject(Reject {
                sip_code: 403,
                reason: "blocked by policy".into(),
            }),
            _ => Verdict::Continue,
        }
    }

    fn on_event(_call_id: String, _event: Event) {}
}

export!(Hostile);
