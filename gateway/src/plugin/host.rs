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

/// The longest key, bytes.
pub(super) const KV_MAX_KEY: usize = 256;

/// The largest value, bytes: counters, flags and small records, not files.
pub(super) const KV_MAX_VALUE: usize = 4096;

/// Keys and values one plugin may hold in all, bytes; the gateway's memory stays bounded
/// whatever a plugin stores.
pub(super) const KV_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Log lines one plugin may write per second (a burst of as many is allowed); the rest are
/// dropped and counted, so a plugin cannot fill the disk or drown the gateway's own log.
const LOG_LINES_PER_SECOND: u32 = 50;

/// Why a write to the key-value store was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KvRefusal {
    /// The key or the value is over its size limit.
    TooLarge,
    /// The plugin's store is full (keys or bytes) of live entries.
    Full,
}

type Entries = HashMap<String, (String, Option<Instant>)>;

/// A key-value store shared by one plugin's instances, with expiry and size limits.
#[derive(Debug, Default)]
pub(super) struct Kv {
    entries: Mutex<(Entries, usize)>,
}

fn live(expiry: &Option<Instant>, now: Instant) -> bool {
    expiry.is_none_or(|e| e > now)
}

impl Kv {
    pub(super) fn get(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (entries, bytes) = &mut *guard;
        match entries.get(key) {
            Some((value, expiry)) if live(expiry, now) => Some(value.clone()),
            Some(_) => {
                if let Some((value, _)) = entries.remove(key) {
                    *bytes -= key.len() + value.len();
                }
                None
            }
            None => None,
        }
    }

    /// Stores `value` under `key`, unless a limit refuses it.
    pub(super) fn set(
        &self,
        key: String,
        value: String,
        ttl: Option<u32>,
    ) -> Result<(), KvRefusal> {
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (entries, bytes) = &mut *guard;
        insert(entries, bytes, key, value, ttl, Instant::now())
    }

    /// Bytes of keys and values held now.
    pub(super) fn bytes(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Adds `delta` to the integer under `key` (missing or not a number counts as 0), under
    /// one lock so concurrent calls never lose an increment.
    pub(super) fn incr(&self, key: String, delta: i64, ttl: Option<u32>) -> Result<i64, KvRefusal> {
        let now = Instant::now();
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (entries, bytes) = &mut *guard;
        let current: i64 = match entries.get(&key) {
            Some((value, expiry)) if live(expiry, now) => value.parse().unwrap_or(0),
            _ => 0,
        };
        let next = current.saturating_add(delta);
        insert(entries, bytes, key, next.to_string(), ttl, now)?;
        Ok(next)
    }
}

/// The key and value size limits, the same for the node's own store and the cluster's.
fn check_size(key: &str, value: &str) -> Result<(), KvRefusal> {
    if key.len() > KV_MAX_KEY || value.len() > KV_MAX_VALUE {
        return Err(KvRefusal::TooLarge);
    }
    Ok(())
}

/// Stores a value unless it is too large or the store is full of live entries (expired ones
/// are swept first). `bytes` tracks the keys' and values' total size.
fn insert(
    entries: &mut Entries,
    bytes: &mut usize,
    key: String,
    value: String,
    ttl: Option<u32>,
    now: Instant,
) -> Result<(), KvRefusal> {
    check_size(&key, &value)?;
    let replaced = entries.get(&key).map_or(0, |(v, _)| key.len() + v.len());
    let fits = |entries: &Entries, bytes: usize| {
        (entries.len() < KV_MAX_KEYS || entries.contains_key(&key))
            && bytes - replaced + key.len() + value.len() <= KV_MAX_BYTES
    };
    if !fits(entries, *bytes) {
        entries.retain(|k, (v, expiry)| {
            let keep = live(expiry, now) || *k == key;
            if !keep {
                *bytes -= k.len() + v.len();
            }
            keep
        });
        if !fits(entries, *bytes) {
            return Err(KvRefusal::Full);
        }
    }
    let expiry = ttl.map(|s| now + Duration::from_secs(s as u64));
    *bytes = *bytes - replaced + key.len() + value.len();
    entries.insert(key, (value, expiry));
    Ok(())
}

/// How old a data directory's byte count may be before it is counted again.
const DATA_USAGE_MAX_AGE: Duration = Duration::from_secs(5);

/// Bytes of the regular files under `dir` (at most 100,000 entries are looked at; links are
/// not followed).
fn directory_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut seen = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > 100_000 {
                return total;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// A plugin's log text as one line of data: control characters (line breaks above all,
/// which would start a forged log line, and terminal escapes) are written as escapes.
pub(super) fn escape_log(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1000));
    for c in message.chars().take(1000) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A one-second window of log lines.
#[derive(Debug)]
pub(super) struct LogBudget {
    window: Instant,
    lines: u32,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            window: Instant::now(),
            lines: 0,
        }
    }
}

impl LogBudget {
    /// True when one more line fits this second's budget.
    fn take(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.lines = 0;
        }
        self.lines += 1;
        self.lines <= LOG_LINES_PER_SECOND
    }
}

/// What all instances of one plugin share, across calls and reloads.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) kv: Kv,
    pub(super) counters: Mutex<BTreeMap<String, u64>>,
    /// Instances alive now (calls holding one), against `max_instances`.
    pub(super) live: AtomicUsize,
    /// This second's log lines.
    pub(super) log_budget: Mutex<LogBudget>,
    /// Bytes in the data directory, and when they were counted.
    data_usage: Mutex<Option<(Instant, u64)>>,
    /// In a cluster, the key-value store lives in Redis (the node's own store stands in
    /// while Redis is away).
    pub(super) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Its HTTP callouts.
    pub(super) http: super::http::HttpStats,
}

impl Shared {
    pub(super) fn new(name: &str) -> Shared {
        Shared {
            name: name.to_string(),
            kv: Kv::default(),
            counters: Mutex::default(),
            live: AtomicUsize::new(0),
            log_budget: Mutex::default(),
            data_usage: Mutex::default(),
            cluster: std::sync::OnceLock::new(),
            http: Default::default(),
        }
    }

    /// Bytes the plugin's data directory holds, counted again at most every few seconds
    /// (a directory of recordings can hold many files; every call asks).
    pub(super) fn data_usage(&self, dir: &std::path::Path) -> u64 {
        let mut cached = self.data_usage.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((at, bytes)) = *cached
            && now.duration_since(at) < DATA_USAGE_MAX_AGE
        {
            return bytes;
        }
        let bytes = directory_bytes(dir);
        *cached = Some((now, bytes));
        bytes
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
        take_one(&shared.live, max as usize).then(|| Slot(shared.clone()))
    }
}

/// Counts one more in `counter` unless `max` are counted already (then leaves it as it was);
/// whoever got `true` gives it back with a `fetch_sub` when done.
pub(super) fn take_one(counter: &AtomicUsize, max: usize) -> bool {
    if counter.fetch_add(1, Ordering::AcqRel) >= max {
        counter.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    true
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
    /// The URLs it may call, the callouts' limits, and its HTTP client.
    pub(super) http: Arc<super::http::Callouts>,
    /// The hook running now, and when it must be done.
    pub(super) hook: Hook,
    pub(super) _slot: Option<Slot>,
}

/// The running hook's deadline (wall clock: it counts the time spent waiting on the host).
#[derive(Debug, Clone, Copy)]
pub(super) struct Hook {
    pub(super) deadline: Instant,
    budget: Duration,
}

impl Default for Hook {
    fn default() -> Self {
        Hook {
            deadline: Instant::now(),
            budget: Duration::ZERO,
        }
    }
}

/// How long running wasm keeps its thread before it yields to other tasks (epoch ticks, ms).
/// Not every tick: a yield is a fiber switch, and a typical hook (tens of µs) would pay one
/// whenever it happened to run across a tick.
const SLICE_TICKS: u64 = 5;

/// Ticks until the next check: a slice, or less when the deadline comes first.
fn ticks_until(deadline: Instant) -> u64 {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_millis() as u64;
    left.clamp(1, SLICE_TICKS)
}

/// The trap of a hook that ran past its deadline: typed, so loading can tell it from a
/// plugin's own failure (`wasmtime::Error::is`).
#[derive(Debug)]
pub(super) struct PastDeadline {
    budget: Duration,
}

impl std::fmt::Display for PastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the hook ran past its deadline ({} ms)",
            self.budget.as_millis()
        )
    }
}

impl std::error::Error for PastDeadline {}

/// Starts the clock of a hook that may run for `budget`.
pub(super) fn begin_hook(store: &mut wasmtime::Store<State>, budget: Duration) {
    let deadline = Instant::now() + budget;
    store.data_mut().hook = Hook { deadline, budget };
    store.set_epoch_deadline(ticks_until(deadline));
}

/// When running wasm reaches its next check: trap once the hook is past its deadline, else
/// give the thread back to other tasks for a moment and run on.
pub(super) fn watch_deadline(store: &mut wasmtime::Store<State>) {
    store.epoch_deadline_callback(|store| {
        let hook = store.data().hook;
        if Instant::now() >= hook.deadline {
            return Err(wasmtime::Error::new(PastDeadline {
                budget: hook.budget,
            }));
        }
        Ok(wasmtime::UpdateDeadline::Yield(ticks_until(hook.deadline)))
    });
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

impl State {
    /// The cluster whose Redis holds the store, if the gateway is in one.
    fn cluster(&self) -> Option<Arc<crate::cluster::Cluster>> {
        self.plugin.cluster.get().cloned()
    }

    /// What a cluster key-value operation gave: `None` means "use the node's own store"
    /// (Redis away or slow, counted as `kv_cluster_unavailable`).
    fn cluster_answer<T>(&self, answer: Result<T, crate::cluster::KvUnavailable>) -> Option<T> {
        answer
            .inspect_err(|_| self.plugin.count("kv_cluster_unavailable", 1))
            .ok()
    }

    /// Counts a refused key-value write (`kv_refused_too_large`, `kv_refused_full` on
    /// `/metrics`); logged at debug only, since a plugin could otherwise flood the log.
    fn kv_refused(&self, refusal: KvRefusal) {
        let name = match refusal {
            KvRefusal::TooLarge => "kv_refused_too_large",
            KvRefusal::Full => "kv_refused_full",
        };
        self.plugin.count(name, 1);
        tracing::debug!(plugin = %self.plugin.name, ?refusal, "plugin key-value write refused");
    }
}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String) {
        let plugin = &self.plugin.name;
        let allowed = self
            .plugin
            .log_budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now());
        if !allowed {
            self.plugin.count("log_lines_dropped", 1);
            return;
        }
        // Plugins are not trusted: their text is cut, escaped and logged as data.
        let message = escape_log(&message);
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

    async fn kv_get(&mut self, key: String) -> Option<String> {
        if let Some(cluster) = self.cluster() {
            let answer = cluster.kv_get(&self.plugin.name, &key).await;
            if let Some(shared) = self.cluster_answer(answer) {
                return shared;
            }
        }
        self.plugin.kv.get(&key)
    }

    async fn kv_set(&mut self, key: String, value: String, ttl_seconds: Option<u32>) {
        // The same size limits in Redis as in the node's own store.
        if let Err(refusal) = check_size(&key, &value) {
            return self.kv_refused(refusal);
        }
        if let Some(cluster) = self.cluster() {
            let answer = cluster
                .kv_set(&self.plugin.name, &key, &value, ttl_seconds)
                .await;
            if self.cluster_answer(answer).is_some() {
                return;
            }
        }
        if let Err(refusal) = self.plugin.kv.set(key, value, ttl_seconds) {
            self.kv_refused(refusal);
        }
    }

    async fn kv_incr(&mut self, key: String, delta: i64, ttl_seconds: Option<u32>) -> i64 {
        if let Err(refusal) = check_size(&key, "") {
            self.kv_refused(refusal);
            return 0;
        }
        if let Some(cluster) = self.cluster() {
            let answer = cluster
                .kv_incr(&self.plugin.name, &key, delta, ttl_seconds)
                .await;
            if let Some(n) = self.cluster_answer(answer) {
                return n;
            }
        }
        // The WIT gives `kv-incr` no error: a refused increment reads as 0, which a rate
        // limiter treats as "first call", and the refusal is counted.
        self.plugin
            .kv
            .incr(key, delta, ttl_seconds)
            .unwrap_or_else(|refusal| {
                self.kv_refused(refusal);
                0
            })
    }

    fn now_seconds(&mut self) -> u64 {
        crate::wall::unix_secs()
    }

    async fn http_fetch(
        &mut self,
        request: host::HttpRequest,
    ) -> Result<host::HttpResponse, host::HttpError> {
        super::http::fetch(&self.plugin, &self.http, self.hook.deadline, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_refuses_large_values_and_stops_at_its_byte_budget() {
        let kv = Kv::default();
        assert_eq!(
            kv.set("k".into(), "v".repeat(KV_MAX_VALUE + 1), None),
            Err(KvRefusal::TooLarge)
        );
        assert_eq!(
            kv.set("k".repeat(KV_MAX_KEY + 1), "v".into(), None),
            Err(KvRefusal::TooLarge)
        );
        let value = "v".repeat(KV_MAX_VALUE);
        let mut stored = 0;
        for i in 0..10_000 {
            match kv.set(format!("key-{i}"), value.clone(), None) {
                Ok(()) => stored += 1,
                Err(refusal) => {
                    assert_eq!(refusal, KvRefusal::Full);
                    break;
                }
            }
        }
        assert!(kv.bytes() <= KV_MAX_BYTES, "{}", kv.bytes());
        assert!(stored > 1000 && stored < 2100, "{stored}");
        // Replacing a value with a smaller one always fits, and frees bytes.
        let before = kv.bytes();
        assert_eq!(kv.set("key-0".into(), "1".into(), None), Ok(()));
        assert_eq!(kv.bytes(), before - KV_MAX_VALUE + 1);
        assert_eq!(kv.incr("key-0".into(), 2, None), Ok(3));
    }

    #[test]
    fn expired_entries_make_room() {
        let kv = Kv::default();
        let value = "v".repeat(KV_MAX_VALUE);
        // 12 MB of entries with a TTL of 0 s: each time the store is full, the sweep frees
        // the expired ones and the write is taken.
        for i in 0..3000 {
            assert_eq!(
                kv.set(format!("t-{i}"), value.clone(), Some(0)),
                Ok(()),
                "{i}"
            );
        }
        assert!(kv.bytes() <= KV_MAX_BYTES);
    }

    #[test]
    fn log_text_stays_one_line_and_the_budget_holds() {
        assert_eq!(
            escape_log("ok\nFAKE LOG LINE level=error\r\u{1b}[31m"),
            "ok\\nFAKE LOG LINE level=error\\r\\u{1b}[31m"
        );
        let mut budget = LogBudget::default();
        let t0 = Instant::now();
        let allowed = (0..200).filter(|_| budget.take(t0)).count();
        assert_eq!(allowed, LOG_LINES_PER_SECOND as usize);
        assert!(budget.take(t0 + Duration::from_secs(1)));
    }
}
