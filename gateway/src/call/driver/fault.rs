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
//!
//! Around the driver, the call's whole task is guarded too ([`contain_task`]): a fault while
//! the call is set up on its worker, or while its record is written, ends the task but not
//! in silence.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt;

use super::Run;
use crate::call::cdr::{Placed, record_fault};
use crate::call::machine::{Call, CallEvent};
use crate::call::{CallContext, EventSink};

/// After the call's turns panicked with `what`: logs it, ends the call (the module's text)
/// and says whether its turns should run again to see the ending through. `faults` counts the
/// call's faults so far.
pub(super) fn contain(run: &mut Run<'_>, call: &mut Call, what: &str, faults: &mut u32) -> bool {
    *faults += 1;
    if *faults > 1 {
        crate::fault::fault_error!(
            call_id = %run.call_id,
            fault = what,
            "the call failed again while it was being ended; given up: if its trunk leg \
             was up, the trunk's own timers end it. This is a bug in the gateway: please \
             report it with this log"
        );
        return false;
    }
    crate::fault::fault_error!(
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

/// Runs `task`, the whole task of the call `placed` on its media worker: its set-up there, its
/// driver (whose turns contain their own faults, [`contain`]) and its record. A fault outside
/// the driver's turns ends the task, and is logged. If the call had not ended yet, its
/// browser is told it ended (`internal_error`, 500) where the browser knows of the call — it
/// placed it (`placed_by_browser`), or was offered it through `events` — and the call is
/// recorded as ended by the fault (`cdr::record_fault`). A trunk's INVITE the task held is
/// answered 500 by the SIP endpoint once it is dropped unanswered
/// (`sip::endpoint::Responder`), and the call's plugins hear of its end as their hooks are
/// dropped (`plugin::CallHooks`).
///
/// Why: without this, a browser whose call faulted before its driver ran waited for an end
/// that never came, as the driver's own callers did before [`contain`] (the client gave up
/// after 30 s in `tests/call_engine.rs`).
pub(in crate::call) async fn contain_task(
    placed: Placed,
    events: EventSink,
    placed_by_browser: bool,
    ctx: &CallContext,
    task: impl Future<Output = ()>,
) {
    let Err(panic) = AssertUnwindSafe(task).catch_unwind().await else {
        return;
    };
    let fault = crate::fault::message(&*panic);
    let call_id = &placed.parties.call_id;
    if events.has_ended() {
        crate::fault::fault_error!(
            %call_id,
            fault,
            "a fault in the gateway after this call ended: its record (CDR) may be missing, \
             and plugins not yet told of its end were told internal_error. This is a bug in \
             the gateway: please report it with this log"
        );
        return;
    }
    crate::fault::fault_error!(
        %call_id,
        fault,
        "a fault in the gateway ended this call as it was set up (reason internal_error); \
         the other calls go on. This is a bug in the gateway: please report it with this log"
    );
    if placed_by_browser || events.has_passed_any() {
        let ended = CallEvent::Ended {
            reason: "internal_error".into(),
            sip_code: 500,
        };
        events.send((call_id.clone(), ended));
    }
    record_fault(ctx, &placed).await;
}
