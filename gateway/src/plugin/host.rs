//! What a plugin instance reaches: the `host` interface of the WIT world (log, counters, the
//! plugin's key-value store, the time) and a WASI context that grants nothing but, when the
//! manifest asks, one data directory.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::gateway::plugin::{host, types};

/// Keys one plugin may keep; beyond, expired keys are swept and new ones refused.
const KV_MAX_KEYS: usize = 100_000;

/// A key-value store shared by one plugin's instances, with expiry.
#[derive(Debug, Default)]
pub(super) struct Kv {
    entries: Mutex<HashMap<String, (String, Option<Instant>)>>,
}

fn live(expiry: &Option<Instant>, now: Instant) -> bool {
    expiry.is_none_or(|e| e > now)
}

impl Kv {
    pub(super) fn get(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((value, expiry)) if live(expiry, now) => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// False when the store is full of live keys.
    pub(super) fn set(&self, key: String, value: String, ttl: Option<u32>) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        insert(&mut entries, key, value, ttl, Instant::now())
    }

    /// Adds `delta` to the integer under `key` (missing or not a number counts as 0), under
    /// one lock so concurrent calls never lose an increment.
    pub(super) fn incr(&self, key: String, delta: i64, ttl: Option<u32>) -> i64 {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let current: i64 = match entries.get(&key) {
            Some((value, expiry)) if live(expiry, now) => value.parse().unwrap_or(0),
            _ => 0,
        };
        let next = current.saturating_add(delta);
        insert(&mut entries, key, next.to_string(), ttl, now);
        next
    }
}

/// Stores a value unless the store is full of live keys (expired ones are swept first);
/// false when it was refused.
fn insert(
    entries: &mut HashMap<String, (String, Option<Instant>)>,
    key: String,
    value: String,
    ttl: Option<u32>,
    now: Instant,
) -> bool {
    if entries.len() >= KV_MAX_KEYS && !entries.contains_key(&key) {
        entries.retain(|_, (_, expiry)| live(expiry, now));
        if entries.len() >= KV_MAX_KEYS {
            return false;
        }
    }
    let expiry = ttl.map(|s| now + Duration::from_secs(s as u64));
    entries.insert(key, (value, expiry));
    true
}

/// What all instances of one plugin share, across calls and reloads.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) kv: Kv,
    pub(super) counters: Mutex<BTreeMap<String, u64>>,
    /// Instances alive now (calls holding one), against `max_instances`.
    pub(super) live: AtomicUsize,
}

impl Shared {
    pub(super) fn new(name: &str) -> Shared {
        Shared {
            name: name.to_string(),
            kv: Kv::default(),
            counters: Mutex::default(),
            live: AtomicUsize::new(0),
        }
    }

    pub(super) fn count(&self, name: &str, delta: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        // Names come from the plugin: a bounded set, so /metrics cannot be flooded.
        if counters.len() < 100 || counters.contains_key(name) {
            *counters.entry(name.to_string()).or_default() += delta;
        }
    }
}

/// Holds one of a plugin's `max_instances` slots until dropped.
#[derive(Debug)]
pub(super) struct Slot(Arc<Shared>);

impl Slot {
    pub(super) fn take(shared: &Arc<Shared>, max: u32) -> Option<Slot> {
        let taken = shared.live.fetch_add(1, Ordering::AcqRel);
        if taken >= max as usize {
            shared.live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-store state: WASI with nothing granted (or only the data directory), the limits, and
/// this plugin's shared parts.
pub(super) struct State {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) plugin: Arc<Shared>,
    pub(super) _slot: Option<Slot>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for State {}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String) {
        let plugin = &self.plugin.name;
        // Plugins are not trusted: their text is cut and logged as data.
        let message: String = message.chars().take(1000).collect();
        match level {
            host::Level::Debug => tracing::debug!(%plugin, %message, "plugin"),
            host::Level::Info => tracing::info!(%plugin, %message, "plugin"),
            host::Level::Warn => tracing::warn!(%plugin, %message, "plugin"),
            host::Level::Error => tracing::error!(%plugin, %message, "plugin"),
        }
    }

    fn counter(&mut self, name: String, delta: u64) {
        self.plugin.count(&name, delta);
    }

    fn kv_get(&mut self, key: String) -> Option<String> {
        self.plugin.kv.get(&key)
    }

    fn kv_set(&mut self, key: String, value: String, ttl_seconds: Option<u32>) {
        if !self.plugin.kv.set(key, value, ttl_seconds) {
            tracing::warn!(plugin = %self.plugin.name, "plugin key-value store full; write dropped");
        }
    }

    fn kv_incr(&mut self, key: String, delta: i64, ttl_seconds: Option<u32>) -> i64 {
        self.plugin.kv.incr(key, delta, ttl_seconds)
    }

    fn now_seconds(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}
