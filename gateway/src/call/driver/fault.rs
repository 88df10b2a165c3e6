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

use std::time::Instant;

use super::Run;
use crate::call::machine::Call;

/// After the call's turns panicked with `what`: logs it, ends the call (the module's text)
/// and says whether its turns should run again to see the ending through. `faults` counts the
/// call's faults so far.
pub(super) fn contain(run: &mut Run<'_>, call: &mut Call, what: &str, faults: &mut u32) -> bool {
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
    let ending = crate::fault::catch(|| {
        call.handle_fault(Instant::now());
        run.carry_out(call);
    });
    match ending {
        Ok(()) => true,
        Err(again) => contain(run, call, &again, faults),
    }
}
