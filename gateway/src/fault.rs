//! Faults — panics, which are the gateway's bugs — caught where one input must not take down a
//! task that serves many: a call's task on a media worker (`call::driver`), which then ends
//! that call properly, its set-up and record included; the SIP endpoint's (`sip::endpoint`: a message, a call's request, a
//! connection's event, a run of its timers) and the browser port's mux (`rtc::mux`: a
//! datagram), which drop the one piece of work they faulted on; and a media worker's sends at
//! the end of its turn (`call::workers`), which drop that turn's datagrams. Everywhere else a
//! panic ends the task it happened in, as tokio has it.
//!
//! Wherever it happens, caught or not, a panic is logged and counted ([`log_panics`]).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};

/// Panics anywhere in the gateway since it started, caught or not (`gateway_faults_total`),
/// once [`log_panics`] counts them.
pub static FAULTS: AtomicU64 = AtomicU64::new(0);

/// Fault log events a second, at most: a panic's own (the hook's) and what caught it each
/// take one. Beyond, faults are counted but not logged, and the first log of a later second
/// says how many were withheld.
///
/// Why: a bug some input sets off can be set off by a stranger, datagram after datagram (the
/// browser port's mux catches one fault per datagram), and each fault's lines — a backtrace
/// too, with `RUST_BACKTRACE` — would have the gateway write and spend at the stranger's rate.
pub const LOGS_A_SECOND: u32 = 20;

/// A second's count of fault logs ([`may_log`]).
#[derive(Debug, Default)]
struct LogWindow {
    second: u64,
    logged: u32,
    withheld: u64,
}

impl LogWindow {
    /// Whether a fault log in `second` (since some start) may be written, and how many were
    /// withheld before it, to be said first, when there were any.
    fn admit(&mut self, second: u64) -> (bool, Option<u64>) {
        if second != self.second {
            self.second = second;
            self.logged = 0;
        }
        if self.logged >= LOGS_A_SECOND {
            self.withheld += 1;
            return (false, None);
        }
        self.logged += 1;
        let withheld = std::mem::take(&mut self.withheld);
        (true, (withheld > 0).then_some(withheld))
    }
}

/// Logs an ERROR about a fault, as `tracing::error!` takes it, where [`may_log`] allows:
/// every place that catches a fault logs through this, so none can log past the limit.
macro_rules! fault_error {
    ($($event:tt)*) => {
        if $crate::fault::may_log() {
            tracing::error!($($event)*);
        }
    };
}
pub(crate) use fault_error;

/// Whether a fault's log event may be written now ([`LOGS_A_SECOND`]); the panic hook and
/// [`fault_error`] ask before they log.
pub(crate) fn may_log() -> bool {
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    static WINDOW: std::sync::Mutex<LogWindow> = std::sync::Mutex::new(LogWindow {
        second: 0,
        logged: 0,
        withheld: 0,
    });
    let second = START.elapsed().as_secs();
    let (admitted, withheld) = WINDOW
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(second);
    if let Some(withheld) = withheld {
        tracing::error!(
            withheld,
            "fault log events withheld: more than {LOGS_A_SECOND} a second came \
             (gateway_faults_total counts every panic)"
        );
    }
    admitted
}

/// From now on every panic, on any thread, is counted in [`FAULTS`] and logged as an ERROR
/// event with its message, where in the source it happened and the thread it happened on (a
/// backtrace too where `RUST_BACKTRACE` asks), in place of the standard library's line on
/// stderr. What catches it, if anything, then logs what it did about it.
///
/// Why: with `GATEWAY_LOG_FORMAT=json` a log pipeline reads JSON lines, and the standard
/// line is none; and a panic that ends a task nothing guards (a signaling connection's, say)
/// would otherwise show nowhere in `/metrics`. An operator alerts on the counter and reports
/// the log.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        FAULTS.fetch_add(1, Ordering::Relaxed);
        if !may_log() {
            return;
        }
        let thread = std::thread::current();
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
            .then(|| backtrace.to_string());
        tracing::error!(
            fault = message(info.payload()),
            %location,
            thread = thread.name().unwrap_or("unnamed"),
            backtrace,
            "a panic: a bug in the gateway; please report it with this log"
        );
    }));
}

/// Runs `f`; a panic in it comes back as its message.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| message(&*panic).to_string())
}

/// What a panic said.
pub(crate) fn message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Test support, in the gateway's unit tests and with the `fault-injection` feature (the
/// end-to-end tests'): makes the gateway panic on cue, so that tests can show what a fault
/// costs. Each fault is armed once, by an input no other test sends, and disarmed when it
/// fires.
#[cfg(any(test, feature = "fault-injection"))]
pub mod injection {
    use std::sync::Mutex;

    /// The cues armed for each fault: several, as tests run side by side in one process.
    type Armed = Mutex<Vec<String>>;

    static ON_DTMF: Armed = Mutex::new(Vec::new());
    static ON_SIP_CALL_ID: Armed = Mutex::new(Vec::new());
    static ON_BROWSER_DATAGRAM: Armed = Mutex::new(Vec::new());
    static ON_MEDIA_SEND: Armed = Mutex::new(Vec::new());
    static ON_CALL_SET_UP: Armed = Mutex::new(Vec::new());

    /// The next call whose browser sends exactly `digits` (a `dtmf` message) panics on its
    /// media worker as it handles them.
    pub fn panic_on_dtmf(digits: &str) {
        arm(&ON_DTMF, digits);
    }

    /// The SIP endpoint panics on the next message it is handed, or request a call asks it
    /// to send, whose Call-ID is `call_id`.
    pub fn panic_on_sip_call_id(call_id: &str) {
        arm(&ON_SIP_CALL_ID, call_id);
    }

    /// The browser port's mux panics on the next datagram it routes from `peer`.
    pub fn panic_on_browser_datagram_from(peer: std::net::SocketAddr) {
        arm(&ON_BROWSER_DATAGRAM, &peer.to_string());
    }

    /// A media worker panics as it sends its turn's datagrams, the next time one of them is
    /// for `to`.
    pub fn panic_on_media_send_to(to: std::net::SocketAddr) {
        arm(&ON_MEDIA_SEND, &to.to_string());
    }

    /// Whether the fault [`panic_on_media_send_to`] armed for `to` has yet to fire.
    pub fn media_send_fault_pending(to: std::net::SocketAddr) -> bool {
        let to = to.to_string();
        ON_MEDIA_SEND
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&to)
    }

    /// The next call to `to` (what a browser asked to call, or the number a trunk dialled)
    /// panics on its media worker as it is set up there, before its driver runs.
    pub fn panic_on_call_to(to: &str) {
        arm(&ON_CALL_SET_UP, to);
    }

    fn arm(fault: &Armed, cue: &str) {
        fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cue.to_string());
    }

    /// Panics if `fires` says one of `fault`'s cues has come (and disarms that one).
    fn fire(fault: &Armed, fires: impl Fn(&str) -> bool, what: &str) {
        let mut armed = fault.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = armed.iter().position(|cue| fires(cue)) {
            armed.swap_remove(i);
            drop(armed);
            panic!("a fault injected by a test, on {what}");
        }
    }

    // Each cue's check makes what it compares only while a cue is armed.

    pub(crate) fn dtmf(digits: &str) {
        fire(&ON_DTMF, |cue| cue == digits, "DTMF");
    }

    /// `message` makes the message's bytes.
    pub(crate) fn sip_message(message: impl Fn() -> Vec<u8>) {
        let names = |cue: &str| {
            String::from_utf8_lossy(&message()).contains(&format!("Call-ID: {cue}\r\n"))
        };
        fire(&ON_SIP_CALL_ID, names, "a SIP message");
    }

    pub(crate) fn browser_datagram(peer: std::net::SocketAddr) {
        let from = |cue: &str| cue == peer.to_string();
        fire(&ON_BROWSER_DATAGRAM, from, "a browser's datagram");
    }

    pub(crate) fn media_send(to: Option<std::net::SocketAddr>) {
        let for_cue = |cue: &str| to.is_some_and(|to| cue == to.to_string());
        fire(&ON_MEDIA_SEND, for_cue, "a media worker's sends");
    }

    pub(crate) fn call_set_up(to: &str) {
        fire(&ON_CALL_SET_UP, |cue| cue == to, "a call's set-up");
    }
}

#[cfg(test)]
mod tests {
    use super::{LOGS_A_SECOND, LogWindow};

    #[test]
    fn a_second_logs_its_share_of_faults_and_the_next_says_how_many_it_withheld() {
        let mut window = LogWindow::default();
        for _ in 0..LOGS_A_SECOND {
            assert_eq!(window.admit(7), (true, None));
        }
        assert_eq!(window.admit(7), (false, None));
        assert_eq!(window.admit(7), (false, None));
        assert_eq!(
            window.admit(8),
            (true, Some(2)),
            "the next second says so, once"
        );
        assert_eq!(window.admit(8), (true, None));
        assert_eq!(window.admit(30), (true, None));
    }
}
