//! The plugin host: WebAssembly components (wasmtime) that see every call and may route,
//! reject or observe it. The interface is `plugin-sdk/wit/plugin.wit`.
//!
//! Each plugin is compiled once; each call gets fresh instances from a cached `InstancePre`
//! (one short-lived store per call per plugin), so no state leaks between calls except
//! through the host's key-value store. Limits per plugin: memory, and a deadline per hook
//! call enforced by epoch interruption. A trap, a timeout or a memory-limit hit discards the
//! instance and applies the plugin's failure policy; it never takes the call or the gateway
//! down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::{FailurePolicy, PluginConfig};

mod bindings {
    wasmtime::component::bindgen!({ path: "../plugin-sdk/wit", world: "plugin" });
}

pub use bindings::gateway::plugin::types::{CallEnd, CallInfo, Direction, Event, Verdict};
use bindings::gateway::plugin::{host, types};

/// Epoch ticks per millisecond of hook deadline.
const TICK: Duration = Duration::from_millis(1);

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file is missing or not a component.
    #[error("plugin `{name}`: cannot load {path}: {reason}")]
    Load {
        /// Plugin name.
        name: String,
        /// File.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// `init` refused the configuration.
    #[error("plugin `{name}` refused its configuration: {reason}")]
    Init {
        /// Plugin name.
        name: String,
        /// The plugin's message.
        reason: String,
    },
    /// The runtime could not be set up.
    #[error("plugin runtime: {0}")]
    Engine(String),
}

/// A key-value store shared by one plugin's instances, with expiry.
#[derive(Debug, Default)]
struct Kv {
    entries: Mutex<HashMap<String, (String, Option<Instant>)>>,
}

impl Kv {
    fn get(&self, key: &str) -> Option<String> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((_, Some(expiry))) if *expiry <= Instant::now() => {
                entries.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    fn set(&self, key: String, value: String, ttl: Option<u32>) {
        let expiry = ttl.map(|s| Instant::now() + Duration::from_secs(s as u64));
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (value, expiry));
    }
}

/// Per-store state: WASI with nothing granted, the limits, and this plugin's shared parts.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: Arc<Shared>,
}

/// What all instances of one plugin share.
#[derive(Debug)]
struct Shared {
    name: String,
    kv: Kv,
    counters: Mutex<BTreeMap<String, u64>>,
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
        let mut counters = self
            .plugin
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if counters.len() < 100 || counters.contains_key(&name) {
            *counters.entry(name).or_default() += delta;
        }
    }

    fn kv_get(&mut self, key: String) -> Option<String> {
        self.plugin.kv.get(&key)
    }

    fn kv_set(&mut self, key: String, value: String, ttl_seconds: Option<u32>) {
        self.plugin.kv.set(key, value, ttl_seconds);
    }

    fn kv_incr(&mut self, key: String, delta: i64, ttl_seconds: Option<u32>) -> i64 {
        let current: i64 = self
            .plugin
            .kv
            .get(&key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let next = current.saturating_add(delta);
        self.plugin.kv.set(key, next.to_string(), ttl_seconds);
        next
    }

    fn now_seconds(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

struct Loaded {
    config: PluginConfig,
    pre: bindings::PluginPre<State>,
    shared: Arc<Shared>,
}

/// The configured plugins, in order.
pub struct PluginChain {
    engine: Engine,
    plugins: Vec<Loaded>,
}

impl std::fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| &p.config.name))
            .finish()
    }
}

/// How the chain decided at call start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Place the call with these (possibly rewritten) parameters.
    Place {
        /// Trunk.
        trunk: String,
        /// Number.
        number: String,
        /// Caller ID.
        caller_id: String,
        /// Extra `X-` headers.
        headers: Vec<(String, String)>,
        /// Recording requested.
        record: bool,
    },
    /// Refuse the call.
    Reject {
        /// SIP status for the caller.
        sip_code: u16,
        /// Why.
        reason: String,
        /// The plugin that decided (or whose failure decided, for `fail-closed`).
        plugin: String,
    },
}

/// The plugin instances of one call, kept for its later events and dropped at its end.
#[derive(Default)]
pub struct CallPlugins {
    instances: Vec<(usize, Store<State>, bindings::Plugin)>,
}

impl std::fmt::Debug for CallPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallPlugins({})", self.instances.len())
    }
}

impl PluginChain {
    /// Compiles every plugin and runs its `init` once, refusing plugins that fail.
    pub fn load(configs: &[PluginConfig]) -> Result<PluginChain, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))?;
        let ticker = engine.weak();
        // The hook deadline's clock: one epoch per millisecond while the engine lives.
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        bindings::Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut plugins = Vec::new();
        for c in configs {
            let load_err = |reason: String| PluginError::Load {
                name: c.name.clone(),
                path: c.path.display().to_string(),
                reason,
            };
            let component =
                Component::from_file(&engine, &c.path).map_err(|e| load_err(format!("{e:#}")))?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(|e| load_err(format!("{e:#}")))?;
            let pre = bindings::PluginPre::new(pre).map_err(|e| load_err(format!("{e:#}")))?;
            let shared = Arc::new(Shared {
                name: c.name.clone(),
                kv: Kv::default(),
                counters: Mutex::default(),
            });
            let loaded = Loaded {
                config: c.clone(),
                pre,
                shared,
            };
            let (mut store, plugin) = loaded
                .instantiate(&engine)
                .map_err(|e| load_err(format!("{e:#}")))?;
            match plugin.call_init(&mut store, &c.config_json) {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    return Err(PluginError::Init {
                        name: c.name.clone(),
                        reason,
                    });
                }
                Err(e) => {
                    return Err(PluginError::Init {
                        name: c.name.clone(),
                        reason: format!("trapped: {e:#}"),
                    });
                }
            }
            plugins.push(loaded);
        }
        Ok(PluginChain { engine, plugins })
    }

    /// True when no plugin is configured.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Counters plugins reported through the host, by plugin and name.
    pub fn counters(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for p in &self.plugins {
            for (name, value) in p
                .shared
                .counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                out.push((p.config.name.clone(), name.clone(), *value));
            }
        }
        out
    }

    /// Runs the call-start hooks in order. A `reject` stops the chain; a `route` rewrites
    /// what the next plugins see. Returns the decision and the instances for later events.
    pub fn start_call(&self, mut call: CallInfo) -> (Decision, CallPlugins) {
        let mut instances = Vec::new();
        let mut headers = Vec::new();
        let mut record = false;
        for (index, loaded) in self.plugins.iter().enumerate() {
            let result = loaded
                .instantiate(&self.engine)
                .and_then(|(mut store, plugin)| {
                    match plugin.call_init(&mut store, &loaded.config.config_json)? {
                        Ok(()) => {}
                        Err(reason) => {
                            return Err(wasmtime::Error::msg(format!("init refused: {reason}")));
                        }
                    }
                    store.set_epoch_deadline(loaded.deadline_ticks());
                    let verdict = plugin.call_on_call_start(&mut store, &call)?;
                    Ok((store, plugin, verdict))
                });
            let verdict = match result {
                Ok((store, plugin, verdict)) => {
                    instances.push((index, store, plugin));
                    verdict
                }
                Err(e) => {
                    tracing::warn!(plugin = %loaded.config.name, error = %format!("{e:#}"), "plugin failed at call start");
                    loaded.count_failure();
                    match loaded.config.policy {
                        FailurePolicy::FailOpen => Verdict::Continue,
                        FailurePolicy::FailClosed => {
                            return (
                                Decision::Reject {
                                    sip_code: loaded.config.reject_code,
                                    reason: format!("plugin `{}` failed", loaded.config.name),
                                    plugin: loaded.config.name.clone(),
                                },
                                CallPlugins { instances },
                            );
                        }
                    }
                }
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Reject(r) => {
                    // Only final failure codes make sense; anything else becomes 403.
                    let sip_code = if (400..700).contains(&r.sip_code) {
                        r.sip_code
                    } else {
                        403
                    };
                    return (
                        Decision::Reject {
                            sip_code,
                            reason: r.reason,
                            plugin: loaded.config.name.clone(),
                        },
                        CallPlugins { instances },
                    );
                }
                Verdict::Route(route) => {
                    if let Some(t) = route.trunk {
                        call.trunk = t;
                    }
                    if let Some(n) = route.number {
                        call.number = n;
                    }
                    if let Some(c) = route.caller_id {
                        call.caller_id = c;
                    }
                    headers.extend(
                        route
                            .headers
                            .into_iter()
                            .filter(|(name, _)| name.to_ascii_lowercase().starts_with("x-")),
                    );
                    record |= route.record_audio;
                }
            }
        }
        (
            Decision::Place {
                trunk: call.trunk,
                number: call.number,
                caller_id: call.caller_id,
                headers,
                record,
            },
            CallPlugins { instances },
        )
    }

    /// Passes a later event of a call to the plugins that saw its start. A failing plugin is
    /// dropped from the call (events are informational: nothing to fail closed on).
    pub fn event(&self, call: &mut CallPlugins, call_id: &str, event: &Event) {
        call.instances.retain_mut(|(index, store, plugin)| {
            let loaded = &self.plugins[*index];
            store.set_epoch_deadline(loaded.deadline_ticks());
            match plugin.call_on_event(&mut *store, call_id, event) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(plugin = %loaded.config.name, error = %format!("{e:#}"), "plugin failed on an event; dropped for this call");
                    loaded.count_failure();
                    false
                }
            }
        });
    }
}

impl Loaded {
    fn instantiate(&self, engine: &Engine) -> wasmtime::Result<(Store<State>, bindings::Plugin)> {
        let state = State {
            // No environment, no arguments, no preopened directories, no network: nothing.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.config.memory_bytes)
                .instances(4)
                .tables(20)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            plugin: self.shared.clone(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let plugin = self.pre.instantiate(&mut store)?;
        Ok((store, plugin))
    }

    fn deadline_ticks(&self) -> u64 {
        (self.config.deadline.as_millis() as u64 / TICK.as_millis() as u64).max(1)
    }

    fn count_failure(&self) {
        *self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry("failures".into())
            .or_default() += 1;
    }
}
