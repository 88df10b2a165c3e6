//! A count every node of a cluster keeps — the calls it carries, a trunk's channels — as this
//! node's part and the other live nodes' as last read; `crate::cluster` shares it through
//! Redis. A module of its own, used by `sip` (trunk channels), `call` and `cluster`, so that
//! none of them depends on another for it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

/// A count kept by every node: this node's part, and the other live nodes' as last read.
#[derive(Debug, Default)]
pub struct SharedCount {
    /// This node's.
    pub local: AtomicU32,
    /// The rest of the cluster's, as last read from Redis (0 without a cluster).
    pub others: AtomicU32,
    /// Wakes the cluster task to share a change at once (set in a cluster).
    changed: OnceLock<Arc<Notify>>,
}

impl SharedCount {
    /// Takes one if this node stays under `local_max` and the cluster under `total_max`.
    pub fn try_take(&self, local_max: u32, total_max: u32) -> bool {
        let others = self.others.load(Ordering::Acquire);
        self.local
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < local_max && n.saturating_add(others) < total_max).then_some(n + 1)
            })
            .inspect(|_| self.touch())
            .is_ok()
    }

    /// Gives one back.
    pub fn release(&self) {
        let _ = self
            .local
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.touch();
    }

    /// This node's count.
    pub fn get(&self) -> u32 {
        self.local.load(Ordering::Acquire)
    }

    /// From now on every change wakes `changed` (the cluster task, which shares it at once).
    pub fn share_changes(&self, changed: Arc<Notify>) {
        let _ = self.changed.set(changed);
    }

    fn touch(&self) {
        if let Some(changed) = self.changed.get() {
            changed.notify_one();
        }
    }
}
