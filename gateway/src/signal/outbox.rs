//! What a signaling connection sends, queued for its writer task.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use super::protocol::ServerMessage;

/// Messages one connection may have waiting for its client. A call makes some twenty in its
/// life and a request one, so a client that keeps up never comes near; one that stops
/// reading its WebSocket while it goes on sending would otherwise grow the queue without
/// bound (the writer waits on a full TCP window).
pub const OUTBOX: usize = 256;

/// The sending side. A message that finds [`OUTBOX`] waiting marks the connection too slow:
/// it is then closed, and its calls wait to be resumed as on any dropped connection.
///
/// Messages wait as their JSON text: a queue of `ServerMessage`s (168 bytes each) took
/// 5.4 KB per connection before its first message, since tokio's channel allocates its
/// slots 32 at a time and up front (heaptrack, docs/benchmarks-history.md §2); text is made once
/// either way, and sent as it is.
pub struct Outbox {
    tx: mpsc::Sender<String>,
    overflowed: AtomicBool,
}

impl Outbox {
    /// The outbox and the writer's end.
    pub fn new() -> (Outbox, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let outbox = Outbox {
            tx,
            overflowed: AtomicBool::new(false),
        };
        (outbox, rx)
    }

    /// Queues a message for the client.
    pub fn send(&self, message: ServerMessage) {
        let text = match serde_json::to_string(&message) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "a signaling message could not be written as JSON");
                return;
            }
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(text) {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// True once a message found the queue full: the client is not reading.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}
