//! A fault in a call's task — a panic, which is a bug of the gateway's — ends that call alone,
//! and ends it properly.
//!
//! Why: a media worker runs hundreds of calls' tasks on one thread. The runtime already keeps
//! a panicking task from taking the others with it, but the call's state went with the task:
//! its trunk leg stayed up at the carrier (and billed) until the trunk's own timers gave up,
//! its browser heard nothing, and no CDR said it happened. Here the driver's turns are run
//! under `catch_unwind`; after a panic the machine, which lives outside them, is ended as for
//! any other reason (`internal_error`: BYE, CANCEL or a 500 to the trunk's INVITE, the
//! browser told, the CDR written), and the turns run again to see the trunk leg's ending
//! through, with the call's media off. A second fault while it ends gives up at once.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use super::Run;
use crate::call::machine::Call;

/// After the call's turns panicked with `panic`: logs it, ends the call (the module's text)
/// and says whether its turns should run again to see the ending through. `faults` counts the
/// call's faults so far.
pub(super) fn contain(
    run: &mut Run<'_>,
    call: &mut Call,
    panic: &(dyn Any + Send),
    faults: &mut u32,
) -> bool {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    *faults += 1;
    if *faults > 1 {
        tracing::error!(
            call_id = %run.call_id,
            fault = what,
            "the call failed again while it was being ended; given up: if its trunk leg was up, \
             the trunk's own timers end it. This is a bug in the gateway: please report it with \
             this log"
        );
        return false;
    }
    tracing::error!(
        call_id = %run.call_id,
        fault = what,
        "a fault in the gateway ended this call (reason internal_error); its legs are being \
         hung up and the other calls go on. This is a bug in the gateway: please report it \
         with this log"
    );
    let ending = std::panic::catch_unwind(AssertUnwindSafe(|| {
        call.handle_fault(Instant::now());
        run.carry_out(call);
    }));
    match ending {
        Ok(()) => true,
        Err(again) => contain(run, call, &*again, faults),
    }
}

/// Test support, with the `fault-injection` feature only (the test suite's): makes a call's
/// task panic on cue, so that tests can show a fault ends that call alone.
#[cfg(feature = "fault-injection")]
pub mod injection {
    use std::sync::Mutex;

    /// DTMF digits that make the call whose browser sends them panic, once.
    static ON_DTMF: Mutex<Option<String>> = Mutex::new(None);

    /// The next call whose browser sends exactly `digits` panics on its media worker as it
    /// handles them. Digits no other test sends keep the fault to the test's own call.
    pub fn panic_on_dtmf(digits: &str) {
        *ON_DTMF.lock().unwrap_or_else(|e| e.into_inner()) = Some(digits.to_string());
    }

    /// Panics if `digits` are the armed ones (and disarms them).
    pub(in crate::call::driver) fn dtmf(digits: &str) {
        let mut armed = ON_DTMF.lock().unwrap_or_else(|e| e.into_inner());
        if armed.as_deref() == Some(digits) {
            *armed = None;
            drop(armed);
            panic!("a fault injected by a test, on DTMF {digits}");
        }
    }
}
