//! Several gateways as one (`[cluster]`): what must hold across nodes — a trunk's channel
//! count (a carrier counts channels per account, not per node), an optional cluster-wide call
//! limit, which node a browser identity is registered on, which nodes are alive — is shared
//! through Redis. Every entry a node writes is its own and carries a lease (TTL) it renews,
//! so a node that dies leaves nothing behind for longer than the lease.
//!
//! Calls never wait for Redis. Each node keeps its own counts ([`SharedCount::local`]) and
//! a copy of the rest of the cluster's ([`SharedCount::others`]), which the cluster task
//! refreshes a few times a second and at once after a local change; a limit is checked
//! against the sum, synchronously. Two nodes that take the last channel within the same
//! refresh can both have it: the carrier's own limit answers that rare call (503). Without
//! Redis a node says so at once (`gateway_cluster_connected 0`), keeps the others' counts as
//! last read for one lease (a hiccup is not an outage), then serves with its own alone.

mod kv;
mod redis_state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::count::SharedCount;

pub use kv::KvUnavailable;
pub use redis_state::run;

/// What this node shares, and what it knows of the others.
#[derive(Debug)]
pub struct Cluster {
    config: crate::config::ClusterConfig,
    /// Calls on this node and on the others.
    pub calls: Arc<SharedCount>,
    /// Channels in use per trunk, on this node and on the others.
    channels: BTreeMap<String, Arc<SharedCount>>,
    /// Browser identities registered on this node.
    registrations: Mutex<BTreeSet<String>>,
    /// Identities that left this node since the last write: their entries are removed if
    /// still this node's.
    unregistered: Mutex<Vec<String>>,
    connected: AtomicBool,
    draining: AtomicBool,
    live_nodes: AtomicU32,
    changed: Arc<Notify>,
    /// The cluster task's Redis connection while it works, for the plugins' key-value store.
    kv_connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// The runtime the connection lives on (plugin hooks may run on another).
    runtime: tokio::runtime::Handle,
    /// Trunk INVITEs this node forwarded to the node of the called browser.
    pub forwarded: AtomicU64,
}

impl Cluster {
    /// A cluster member counting `calls` and the trunks' `channels`; nothing is shared until
    /// [`run`] runs. Call it on the runtime [`run`] will run on.
    pub fn new(
        config: crate::config::ClusterConfig,
        calls: Arc<SharedCount>,
        channels: BTreeMap<String, Arc<SharedCount>>,
    ) -> Arc<Cluster> {
        let changed = Arc::new(Notify::new());
        for count in channels.values().chain([&calls]) {
            count.share_changes(changed.clone());
        }
        Arc::new(Cluster {
            config,
            calls,
            channels,
            registrations: Mutex::default(),
            unregistered: Mutex::default(),
            connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            live_nodes: AtomicU32::new(0),
            changed,
            kv_connection: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            forwarded: AtomicU64::new(0),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// True while Redis answers.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Live nodes, this one included, at the last read (0 while Redis is away).
    pub fn live_nodes(&self) -> u32 {
        self.live_nodes.load(Ordering::Relaxed)
    }

    /// The cluster-wide call limit, if one is set.
    pub fn max_calls(&self) -> Option<u32> {
        self.config.max_calls
    }

    /// A browser registered `identity` on this node.
    pub fn register(&self, identity: &str) {
        lock(&self.registrations).insert(identity.to_string());
        self.changed.notify_one();
    }

    /// `identity` left this node (another connection took it, or it went away).
    pub fn unregister(&self, identity: &str) {
        if lock(&self.registrations).remove(identity) {
            lock(&self.unregistered).push(identity.to_string());
            self.changed.notify_one();
        }
    }

    /// This node drains (SIGTERM): the cluster hears it with the next exchange.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Lost Redis: limits fall back to this node's own counts.
    fn forget_others(&self) {
        self.calls.others.store(0, Ordering::Release);
        for count in self.channels.values() {
            count.others.store(0, Ordering::Release);
        }
        self.live_nodes.store(0, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_counts_this_node_and_the_others() {
        let count = SharedCount::default();
        count.others.store(1, Ordering::Release);
        assert!(count.try_take(10, 2), "1 elsewhere + 0 here < 2");
        assert!(!count.try_take(10, 2), "1 elsewhere + 1 here: full");
        count.others.store(0, Ordering::Release);
        assert!(count.try_take(10, 2), "the other node's call ended");
        assert!(
            !count.try_take(2, u32::MAX),
            "this node's own limit holds too"
        );
        count.release();
        count.release();
        count.release();
        assert_eq!(count.local.load(Ordering::Acquire), 0, "never below zero");
    }
}
