//! Every panic is logged and counted (`gateway::fault::log_panics`, which `gateway` installs
//! at start). A test binary of its own: the hook it installs is the whole process's.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Where the log lines go: the test reads them back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_panic_on_any_thread_is_one_json_log_line_with_its_place_and_thread_and_counted() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .init();
    gateway::fault::log_panics();
    let before = gateway::fault::FAULTS.load(Ordering::Relaxed);
    let line = line!() + 3;
    let ended = std::thread::Builder::new()
        .name("media-7".into())
        .spawn(|| panic!("a test's fault, number {}", 42))
        .unwrap()
        .join();
    assert!(ended.is_err(), "the thread ended in its panic");
    assert_eq!(gateway::fault::FAULTS.load(Ordering::Relaxed), before + 1);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let fields = &lines[0]["fields"];
    assert_eq!(lines[0]["level"], "ERROR", "{text}");
    assert_eq!(fields["fault"], "a test's fault, number 42", "{text}");
    assert_eq!(fields["thread"], "media-7", "{text}");
    let location = fields["location"].as_str().unwrap_or_default();
    assert!(
        location.starts_with(&format!("gateway/tests/panics.rs:{line}:")),
        "{location}: {text}"
    );
    assert!(
        fields["message"]
            .as_str()
            .is_some_and(|m| m.contains("please report it")),
        "{text}"
    );
}
