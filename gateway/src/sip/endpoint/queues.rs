//! The queues between the endpoint and its transaction users, and what happens when one is
//! full.
//!
//! A call's requests and its transactions' events go to the call's task on a media worker
//! (`crate::call::workers`); new requests go to the application, and the events of the
//! gateway's own transactions (REGISTER, OPTIONS probes) to their tasks, on the shared
//! runtime. The queues are bounded, so that a worker or a runtime that falls behind, or a
//! peer that floods one dialog or transaction, costs at most [`CALL_QUEUE`] (or
//! [`APP_QUEUE`]) messages: the endpoint's task never waits for a user and never grows a
//! user's queue without bound.
//!
//! - A request that finds its queue full is answered 503 with Retry-After through its
//!   transaction (RFC 3261 §21.5.4: temporarily overloaded), so its retransmissions get the
//!   same answer and the peer tries again later. An ACK or a CANCEL's notice takes no answer
//!   and is dropped: the ACK has already stopped the 2xx's retransmissions, and the CANCEL
//!   has been answered and its INVITE ended with 487 by the endpoint itself.
//! - A transaction's event that finds its queue full is dropped only if its user can do
//!   without it: a provisional response, or a 2xx retransmission once a final response has
//!   passed (the peer sends it again until the ACK). The last [`FINALS_RESERVED`] places are
//!   kept for the rest — a first final response, a timeout — which a user has at most one of
//!   per open transaction.
//!
//! Every message lost this way is counted (`/metrics`: `gateway_sip_queue_full_total`).
//!
//! The other way, what calls ask of the endpoint (their requests, their answers) stays
//! unbounded: a call asks once per message it takes from these queues or per action of its
//! browser, so these bounds bound it too, and the endpoint must neither make a call wait nor
//! drop its BYE.

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::{IncomingRequest, TaggedEvent};
use crate::sip::message::refusal;
use crate::sip::transaction::ClientEvent;

/// Messages that may wait in each of a call's two queues (its requests; its transactions'
/// events), and in a transaction's own queue of events. A call takes them as they come, a
/// handful at a time (a re-INVITE, its ACK, a BYE); 64 waiting means its worker is far
/// behind or a peer floods the dialog.
pub const CALL_QUEUE: usize = 64;

/// New requests (INVITEs, REGISTERs …) that may wait for the application.
pub const APP_QUEUE: usize = 1024;

/// Places in an event queue that only essential events may take ([`Sink::send`]).
pub const FINALS_RESERVED: usize = 16;

/// Seconds a peer is asked to wait before it retries a request refused for a full queue.
const RETRY_AFTER_SECONDS: u32 = 1;

/// Where the endpoint hands requests to a transaction user (the application, or a
/// dialog's call). Boxed: tokio's channel allocates its slots 32 at a time and up front, and
/// at 288 bytes an unboxed request made every call's queue 9.2 KB before its first request
/// (heaptrack, docs/benchmarks-history.md §2).
pub type RequestSender = mpsc::Sender<Box<IncomingRequest>>;

/// The receiving end of a [`RequestSender`].
pub type RequestReceiver = mpsc::Receiver<Box<IncomingRequest>>;

/// A call's queue of requests ([`CALL_QUEUE`]).
pub fn request_channel() -> (RequestSender, RequestReceiver) {
    mpsc::channel(CALL_QUEUE)
}

/// A call's queue of its transactions' events ([`CALL_QUEUE`]).
pub fn event_channel() -> (mpsc::Sender<TaggedEvent>, mpsc::Receiver<TaggedEvent>) {
    mpsc::channel(CALL_QUEUE)
}

/// Hands `incoming` to `queue`; false if the queue was full, and the request then answered
/// 503 with Retry-After (or dropped, if it takes no answer). A closed queue (its user is
/// gone) answers `closed`.
pub(super) fn deliver(queue: &RequestSender, incoming: Box<IncomingRequest>, closed: u16) -> bool {
    let (lost, code, had_room) = match queue.try_send(incoming) {
        Ok(()) => return true,
        Err(TrySendError::Full(lost)) => (lost, 503, false),
        Err(TrySendError::Closed(lost)) => (lost, closed, true),
    };
    if let Some(responder) = &lost.responder {
        responder.respond(refusal(&lost.request, code, RETRY_AFTER_SECONDS));
    }
    had_room
}

/// Where a client transaction's events go: its own channel, or a call's shared channel
/// tagged with the transaction's id there (one call has several transactions at once).
#[derive(Debug)]
pub(super) struct Sink {
    to: Queue,
    /// A final response of this transaction has reached its user.
    answered: bool,
}

#[derive(Debug)]
enum Queue {
    Own(mpsc::Sender<ClientEvent>),
    Tagged(u64, mpsc::Sender<TaggedEvent>),
}

impl Sink {
    /// A transaction's own channel ([`event_channel`]'s size).
    pub(super) fn own() -> (Sink, mpsc::Receiver<ClientEvent>) {
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        (Sink::new(Queue::Own(tx)), rx)
    }

    /// A call's shared channel, the transaction known there as `id`.
    pub(super) fn tagged(id: u64, tx: mpsc::Sender<TaggedEvent>) -> Sink {
        Sink::new(Queue::Tagged(id, tx))
    }

    fn new(to: Queue) -> Sink {
        Sink {
            to,
            answered: false,
        }
    }

    /// Passes `event` on; false if a full queue dropped it (module text).
    pub(super) fn send(&mut self, event: ClientEvent) -> bool {
        let code = match &event {
            ClientEvent::Response(r) => Some(r.status_code.code()),
            ClientEvent::Timeout => None,
        };
        let spare = code.is_some_and(|c| c < 200 || (self.answered && (200..300).contains(&c)));
        let room = match &self.to {
            Queue::Own(tx) => tx.capacity(),
            Queue::Tagged(_, tx) => tx.capacity(),
        };
        if spare && room <= FINALS_RESERVED {
            return false;
        }
        let sent = match &self.to {
            Queue::Own(tx) => tx
                .try_send(event)
                .map_err(|e| matches!(e, TrySendError::Full(_))),
            Queue::Tagged(id, tx) => tx
                .try_send(Box::new((*id, event)))
                .map_err(|e| matches!(e, TrySendError::Full(_))),
        };
        match sent {
            Ok(()) => {
                self.answered |= code.is_some_and(|c| c >= 200);
                true
            }
            Err(full) => !full,
        }
    }
}

#[cfg(test)]
mod tests;
