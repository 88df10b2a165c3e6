//! The plugin host: WebAssembly components (wasmtime) that see every call and may route,
//! reject, record or observe it. The interface is `plugin-sdk/wit/plugin.wit`.
//!
//! Each plugin is compiled once and pre-linked (`InstancePre`); each call gets fresh
//! instances (one short-lived store per call per plugin), from the pooling allocator when the
//! machine allows it, so no state leaks between calls except through the host's key-value
//! store. Limits per plugin: memory, a deadline per hook call (epoch interruption) and the
//! number of live instances. A trap, a timeout or a limit hit discards the instance and
//! applies the plugin's failure policy; it never takes the call or the gateway down.
//!
//! Hooks run asynchronously on the gateway's tokio workers: running wasm gives its thread
//! back every few milliseconds (epoch yields), and a hook waiting on the host (Redis, an HTTP
//! callout) holds no thread at all, so one slow plugin or CRM never stalls other calls.
//!
//! [`PluginHost`] holds the current chain; a reload swaps in a new one for new calls while
//! running calls finish on the chain they started with.

mod calls;
mod engine;
mod host;
mod http;
mod preinit;
mod start_up;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtx};

use crate::config::{FailurePolicy, PluginConfig};
use crate::sip::values::{ValueError, check_extension_header, check_user};
pub use calls::{CallHooks, CallPlugins};
use host::{Shared, Slot, State};
pub use http::{DURATION_BUCKETS as HTTP_DURATION_BUCKETS, HttpStats, OUTCOMES as HTTP_OUTCOMES};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit",
        world: "plugin",
        // What waits on the network is async on the host; wasm sees a blocking call.
        imports: {
            "gateway:plugin/host.kv-get": async,
            "gateway:plugin/host.kv-set": async,
            "gateway:plugin/host.kv-incr": async,
            "gateway:plugin/host.http-fetch": async,
        },
        exports: { default: async },
    });
}

/// The interface version this gateway links; components built for another are refused.
const INTERFACE: &str = "gateway:plugin@0.4.0";

pub use bindings::gateway::plugin::types::{
    AudioFrame, CallEnd, CallInfo, Direction, Event, Manifest, Party, Reject, Route,
    TransferRequest, Verdict,
};

/// Epoch ticks per millisecond of hook deadline.
const TICK: Duration = Duration::from_millis(1);

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file is missing or not a component of this interface.
    #[error("plugin `{name}`: cannot load {path}: {reason}")]
    Load {
        /// Plugin name.
        name: String,
        /// File.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// `init` refused the configuration, or the manifest asks for what is not configured.
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

impl PluginError {
    /// `config`'s plugin could not be loaded, for `reason`.
    fn load(config: &PluginConfig, reason: String) -> PluginError {
        PluginError::Load {
            name: config.name.clone(),
            path: config.path.display().to_string(),
            reason,
        }
    }

    /// `config`'s plugin refused its configuration, for `reason`.
    fn init(config: &PluginConfig, reason: String) -> PluginError {
        PluginError::Init {
            name: config.name.clone(),
            reason,
        }
    }
}

struct Loaded {
    config: PluginConfig,
    manifest: Manifest,
    /// Its component (instrumented for the snapshot, [`preinit`]): each call runs `init` on
    /// it until `snapshot` is there.
    pre: bindings::PluginPre<State>,
    /// The component from the snapshot taken after `init`: calls start from it and skip
    /// `init`. Taken in the background after loading; never, when `init` needs the host.
    snapshot: std::sync::OnceLock<bindings::PluginPre<State>>,
    shared: Arc<Shared>,
    http: Arc<http::Callouts>,
}

/// The configured plugins, in order, compiled for one engine.
pub struct PluginChain {
    engine: Engine,
    plugins: Vec<Arc<Loaded>>,
    pooling: bool,
    /// Becomes true when every plugin's snapshot was taken or given up on.
    snapshots_settled: tokio::sync::watch::Receiver<bool>,
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
        /// Trunks to try after it; empty keeps the trunk's configured failover.
        failover: Vec<String>,
        /// Number (outbound) or browser identity (inbound).
        number: String,
        /// Caller ID.
        caller_id: String,
        /// Extra `X-` headers.
        headers: Vec<(String, String)>,
        /// Audio requested for the plugins that asked for it.
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

impl PluginChain {
    /// Compiles every plugin (on the blocking pool), reads its manifest and runs its `init`
    /// once, refusing plugins that fail. Uses the pooling allocator, or on-demand allocation
    /// if the pool cannot be set up here (restricted address space, say). Plugins also in
    /// `previous` keep their key-value store and counters.
    pub async fn load(
        configs: &[PluginConfig],
        previous: Option<&PluginChain>,
    ) -> Result<PluginChain, PluginError> {
        match Self::load_with(configs, previous, true).await {
            Ok(chain) => Ok(chain),
            // The plugin itself refused: the allocator is not the problem.
            Err(e @ PluginError::Init { .. }) => Err(e),
            Err(pool_error) => {
                let chain = Self::load_with(configs, previous, false).await?;
                tracing::warn!(error = %pool_error, "pooling allocator unavailable; plugin instances are allocated on demand");
                Ok(chain)
            }
        }
    }

    async fn load_with(
        configs: &[PluginConfig],
        previous: Option<&PluginChain>,
        pooling: bool,
    ) -> Result<PluginChain, PluginError> {
        let owned = configs.to_vec();
        let (engine, linker, compiled) =
            tokio::task::spawn_blocking(move || engine::compile(&owned, pooling))
                .await
                .map_err(|e| PluginError::Engine(format!("compiling plugins: {e}")))??;
        let mut plugins = Vec::new();
        let mut sources = Vec::new();
        for (c, engine::Compiled { pre, source }) in configs.iter().zip(compiled) {
            let shared = previous
                .and_then(|p| p.plugins.iter().find(|l| l.config.name == c.name))
                .map(|l| l.shared.clone())
                .unwrap_or_else(|| Arc::new(Shared::new(&c.name)));
            let mut loaded = Loaded {
                config: c.clone(),
                manifest: Manifest {
                    audio: false,
                    data_dir: false,
                },
                pre,
                shared,
                http: Arc::new(
                    http::Callouts::new(&c.http)
                        .map_err(|e| PluginError::load(c, format!("its HTTP client: {e}")))?,
                ),
                snapshot: std::sync::OnceLock::new(),
            };
            loaded.start_up(&engine).await?;
            let loaded = Arc::new(loaded);
            sources.push((Arc::downgrade(&loaded), source));
            plugins.push(loaded);
        }
        // Snapshots cost another compilation each: taken after loading, so a (re)load is as
        // quick as before and calls run `init` themselves until their plugin's is there.
        let snapshots_settled = preinit::start(engine.clone(), linker, sources)
            .map_err(|e| PluginError::Engine(format!("starting the snapshot thread: {e}")))?;
        Ok(PluginChain {
            engine,
            plugins,
            pooling,
            snapshots_settled,
        })
    }

    /// Returns when every plugin's snapshot was taken or given up on
    /// ([`Self::preinitialised`] then holds for good).
    pub async fn snapshots_settled(&self) {
        let _ = self.snapshots_settled.clone().wait_for(|done| *done).await;
    }

    /// True when no plugin is configured.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Each plugin, and whether its calls start from a snapshot taken after its `init`
    /// ([`preinit`]) rather than running `init` themselves.
    pub fn preinitialised(&self) -> Vec<(String, bool)> {
        self.plugins
            .iter()
            .map(|p| (p.config.name.clone(), p.snapshot.get().is_some()))
            .collect()
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

    /// Each plugin's HTTP callouts so far.
    pub fn http_stats(&self) -> Vec<(&str, &HttpStats)> {
        self.plugins
            .iter()
            .map(|p| (p.config.name.as_str(), &p.shared.http))
            .collect()
    }

    /// Bytes each plugin holds in its key-value store.
    pub fn kv_bytes(&self) -> Vec<(String, usize)> {
        self.plugins
            .iter()
            .map(|p| (p.config.name.clone(), p.shared.kv.bytes()))
            .collect()
    }

    /// Runs the call-start hooks in order. A `reject` stops the chain; a `route` rewrites
    /// what the next plugins see. Returns the decision and the instances for later events.
    pub async fn start_call(&self, mut call: CallInfo) -> (Decision, CallPlugins) {
        let mut instances = CallPlugins::default();
        let mut headers = Vec::new();
        let mut failover = Vec::new();
        let mut record = false;
        for (index, loaded) in self.plugins.iter().enumerate() {
            let result = loaded.start(&self.engine, &call).await;
            // A route whose values would not make a well-formed INVITE is the plugin failing,
            // like a trap: its policy decides, and nothing it wrote reaches the trunk.
            let result = result.and_then(|(store, plugin, verdict)| match &verdict {
                Verdict::Route(route) => match check_route(route) {
                    Ok(()) => Ok((store, plugin, verdict)),
                    Err(e) => {
                        instances.push(index, store, plugin);
                        Err(wasmtime::Error::msg(format!("unusable route: {e}")))
                    }
                },
                _ => Ok((store, plugin, verdict)),
            });
            let verdict = match result {
                Ok((store, plugin, verdict)) => {
                    instances.push(index, store, plugin);
                    verdict
                }
                Err(e) => {
                    tracing::warn!(plugin = %loaded.config.name, error = %format!("{e:#}"), "plugin failed at call start");
                    loaded.shared.count("failures", 1);
                    match loaded.config.policy {
                        FailurePolicy::FailOpen => Verdict::Continue,
                        FailurePolicy::FailClosed => {
                            return (
                                Decision::Reject {
                                    sip_code: loaded.config.reject_code,
                                    reason: format!("plugin `{}` failed", loaded.config.name),
                                    plugin: loaded.config.name.clone(),
                                },
                                instances,
                            );
                        }
                    }
                }
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Reject(r) => {
                    let Reject { sip_code, reason } = bounded(r);
                    return (
                        Decision::Reject {
                            sip_code,
                            reason,
                            plugin: loaded.config.name.clone(),
                        },
                        instances,
                    );
                }
                Verdict::Route(route) => {
                    if let Some(t) = route.trunk {
                        call.trunk = t;
                        failover = route.failover;
                    }
                    if let Some(n) = route.number {
                        call.number = n;
                    }
                    if let Some(c) = route.caller_id {
                        call.caller_id = c;
                    }
                    headers.extend(route.headers);
                    record |= route.record_audio;
                }
            }
        }
        (
            Decision::Place {
                trunk: call.trunk,
                failover,
                number: call.number,
                caller_id: call.caller_id,
                headers,
                record,
            },
            instances,
        )
    }
}

/// A plugin's refusal as the gateway passes it on: only final failure codes make sense
/// (anything else becomes 403), and the reason is cut to 200 characters.
fn bounded(r: Reject) -> Reject {
    Reject {
        sip_code: if (400..700).contains(&r.sip_code) {
            r.sip_code
        } else {
            403
        },
        reason: r.reason.chars().take(200).collect(),
    }
}

/// Holds a route's number, caller ID and headers to the SIP grammar
/// ([`crate::sip::values`]) before any of them is used.
fn check_route(route: &Route) -> Result<(), ValueError> {
    if let Some(number) = &route.number {
        check_user("the number", number)?;
    }
    if let Some(caller_id) = &route.caller_id {
        check_user("the caller ID", caller_id)?;
    }
    for (name, value) in &route.headers {
        check_extension_header(name, value)?;
    }
    Ok(())
}

impl Loaded {
    /// A fresh instance for a call: its `init`, then its verdict on the call.
    async fn start(
        &self,
        engine: &Engine,
        call: &CallInfo,
    ) -> wasmtime::Result<(Store<State>, bindings::Plugin, Verdict)> {
        let slot = Slot::take(&self.shared, self.config.max_instances).ok_or_else(|| {
            wasmtime::Error::msg(format!(
                "instance limit: {} calls hold one already (max_instances)",
                self.config.max_instances
            ))
        })?;
        let (pre, init) = match self.snapshot.get() {
            Some(snapshot) => (snapshot, false),
            None => (&self.pre, true),
        };
        let (mut store, plugin) = self.instantiate(pre, engine, Some(slot)).await?;
        if init
            && let Err(reason) = plugin
                .call_init(&mut store, &self.config.config_json)
                .await?
        {
            return Err(wasmtime::Error::msg(format!("init refused: {reason}")));
        }
        host::begin_hook(&mut store, self.config.deadline);
        let verdict = plugin.call_on_call_start(&mut store, call).await?;
        Ok((store, plugin, verdict))
    }

    async fn instantiate(
        &self,
        pre: &bindings::PluginPre<State>,
        engine: &Engine,
        slot: Option<Slot>,
    ) -> wasmtime::Result<(Store<State>, bindings::Plugin)> {
        let mut store = self.store(engine, slot)?;
        // Instantiation runs the component's start code: under the same deadline.
        host::begin_hook(&mut store, self.config.deadline);
        let plugin = pre.instantiate_async(&mut store).await?;
        host::begin_hook(&mut store, self.config.deadline);
        Ok((store, plugin))
    }

    /// A fresh store for one instance of this plugin, with its limits and deadline watch.
    fn store(&self, engine: &Engine, slot: Option<Slot>) -> wasmtime::Result<Store<State>> {
        // No environment, no arguments, no network, no clock beyond WASI's, and no files but
        // the data directory the manifest asked for.
        let mut wasi = WasiCtx::builder();
        if self.manifest.data_dir
            && let Some(dir) = &self.config.data_dir
        {
            // Over its quota, the directory is still readable but no longer writable: the
            // plugin's writes fail inside the sandbox and the disk stops filling. (A call
            // that started under the quota may still write past it.)
            let perms = if self.shared.data_usage(dir) >= self.config.data_quota_bytes {
                self.shared.count("data_quota_reached", 1);
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(dir, "/data", perms)?;
        }
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.config.memory_bytes)
                .instances(16)
                .tables(20)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            plugin: self.shared.clone(),
            http: self.http.clone(),
            hook: host::Hook::default(),
            _slot: slot,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        host::watch_deadline(&mut store);
        Ok(store)
    }
}

/// The current plugin chain of a running gateway, replaceable while calls run.
#[derive(Debug)]
pub struct PluginHost {
    current: RwLock<Arc<PluginChain>>,
    /// The cluster whose Redis holds the plugins' key-value stores, if any.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// One reload at a time, so the later request's plugins are the ones that stay.
    reloading: tokio::sync::Mutex<()>,
}

impl PluginHost {
    /// Starts with `chain`.
    pub fn new(chain: PluginChain) -> PluginHost {
        PluginHost {
            current: RwLock::new(Arc::new(chain)),
            cluster: std::sync::OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Keeps the plugins' key-value stores in the cluster's Redis from now on (this chain's
    /// and every reloaded one's).
    pub fn join_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
        self.share_kv(&self.current());
    }

    fn share_kv(&self, chain: &PluginChain) {
        if let Some(cluster) = self.cluster.get() {
            for plugin in &chain.plugins {
                let _ = plugin.shared.cluster.set(cluster.clone());
            }
        }
    }

    /// The chain new calls use; a call keeps the one it started with to its end.
    pub fn current(&self) -> Arc<PluginChain> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads `configs` and, if every plugin loads, makes them the chain for new calls. On
    /// error the running chain stays. Returns the names now loaded.
    pub async fn reload(&self, configs: &[PluginConfig]) -> Result<Vec<String>, PluginError> {
        let _one_at_a_time = self.reloading.lock().await;
        let previous = self.current();
        let chain = PluginChain::load(configs, Some(&previous)).await?;
        self.share_kv(&chain);
        let names = chain
            .plugins
            .iter()
            .map(|p| p.config.name.clone())
            .collect();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(chain);
        Ok(names)
    }
}

impl PluginHost {
    /// Reads the configuration file again and replaces the plugin chain for new calls; running
    /// calls finish on the chain they started with. On any error (the file, a plugin that does
    /// not load or refuses its configuration) the running chain stays. Returns the plugins now
    /// loaded. Only `[[plugins]]` is applied; other changes need a restart.
    pub async fn reload_file(
        self: &Arc<Self>,
        source: Option<std::path::PathBuf>,
    ) -> Result<Vec<String>, String> {
        let Some(path) = source else {
            return Err(
                "the gateway runs without a configuration file (demo mode): nothing to reload"
                    .into(),
            );
        };
        let result = match tokio::task::spawn_blocking(move || crate::config::Config::load(&path))
            .await
            .map_err(|e| format!("plugin reload failed: {e}"))?
        {
            Ok(config) => self
                .reload(&config.plugins)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match &result {
            Ok(names) => tracing::info!(plugins = ?names, "plugins reloaded"),
            Err(e) => tracing::warn!(error = %e, "plugin reload refused; the running plugins stay"),
        }
        result
    }
}
