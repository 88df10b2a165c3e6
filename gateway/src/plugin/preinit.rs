//! Pre-initialised plugins: a plugin's `init` runs once per configuration, and every call's
//! instance starts from a snapshot of the initialised instance — its memories and globals
//! written into a new component by Wizer (`wasmtime-wizer`) — instead of running `init` again
//! on every call. With the pooling allocator the snapshot's memory is a copy-on-write image,
//! so a call's instance costs what an uninitialised one did, and `init` costs nothing.
//!
//! A snapshot can hold the guest's own state only. Whatever `init` got from the host — a log
//! line written, a key-value read, a clock reading, random bytes (a hash seed, say), a file or
//! stdout handle — would be stale or missing in every call's instance. So the snapshot is
//! taken from a probe instance in which *every* import traps: an `init` that completes there
//! provably asked the host for nothing; one that traps keeps running `init` per call, as
//! before, and the log names the import it reached for.
//!
//! Cost: the component is compiled twice (instrumented for reading its state, and the
//! snapshot), not once. The snapshots are taken after the chain is loaded, one plugin at a
//! time on a thread of their own; calls use the instrumented component (and run `init`)
//! until their plugin's snapshot exists, and for good when there is none.

use std::sync::Weak;

use wasmtime::component::{Instance, Lift, Linker, WasmList};
use wasmtime::{Engine, Store};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::host::{self, State};
use super::{Loaded, bindings};

/// How long the probe's `init`, and then the snapshot's reads of a plugin's memories and
/// globals, may each take. Not the plugin's own `deadline_ms`: loading checked its `init`
/// against that already, and the probe runs once, off every call's path, on a thread a busy
/// box may preempt for longer than a hook's 20 ms (seen: a router's snapshot given up during
/// a loaded test run, so each of its calls ran `init` for good).
const SNAPSHOT_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// Wizer as the gateway uses it: the plugin's `init` (the WIT export) is what initialises
/// it, called here with the plugin's configuration, and it stays exported.
fn wizer() -> Wizer {
    let mut wizer = Wizer::new();
    wizer.init_func("init").keep_init_func(true);
    wizer
}

/// `wasm` with exports added that let the host read its memories and globals, for
/// [`snapshot`]. Otherwise it behaves as `wasm`.
pub(super) fn instrument(wasm: &[u8]) -> Result<Vec<u8>, String> {
    wizer()
        .instrument_component(wasm)
        .map(|(_, instrumented)| instrumented)
        .map_err(|e| format!("{e:#}"))
}

/// A plugin of a chain just loaded, and the component as configured (or why it could not be
/// instrumented).
pub(super) type Pending = (Weak<Loaded>, Result<Vec<u8>, String>);

/// Takes the snapshots of a chain just loaded on a thread of its own (instrumenting,
/// snapshotting and compiling a large component takes seconds of CPU that must not hold one
/// of the gateway's async workers). The receiver turns true when all are settled.
pub(super) fn start(
    engine: Engine,
    linker: Linker<State>,
    plugins: Vec<Pending>,
) -> std::io::Result<tokio::sync::watch::Receiver<bool>> {
    let (settled, receiver) = tokio::sync::watch::channel(false);
    std::thread::Builder::new()
        .name("plugin-snapshot".into())
        .spawn(move || {
            // The probe instances are async (fibers) like every plugin instance here, so
            // they need a runtime to run on; their imports all trap, so it waits on nothing.
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(snapshot_all(engine, linker, plugins, settled)),
                // Dropping `settled` tells the waiters; calls keep running `init`.
                Err(e) => tracing::warn!(error = %e, "no runtime for plugin snapshots"),
            }
        })?;
    Ok(receiver)
}

/// Takes each plugin's snapshot in turn and says when all are settled. Stops early when the
/// chain was replaced meanwhile.
async fn snapshot_all(
    engine: Engine,
    linker: Linker<State>,
    plugins: Vec<Pending>,
    settled: tokio::sync::watch::Sender<bool>,
) {
    for (plugin, source) in plugins {
        let Some(loaded) = plugin.upgrade() else {
            break;
        };
        let result = match source {
            Ok(wasm) => snapshot(&engine, &linker, &loaded, &wasm).await,
            Err(why) => Err(format!("cannot instrument it: {why}")),
        };
        match result {
            Ok(pre) => {
                let _ = loaded.snapshot.set(pre);
                tracing::info!(plugin = %loaded.config.name, "plugin pre-initialised: calls start from the snapshot taken after its init");
            }
            Err(why) => {
                tracing::info!(plugin = %loaded.config.name, %why, "plugin not pre-initialised: its init runs for every call");
            }
        }
    }
    let _ = settled.send(true);
}

/// Runs `loaded`'s `init` in a probe instance of its instrumented component (`loaded.pre`,
/// compiled from [`instrument`]`(wasm)`) whose imports all trap, and returns the plugin
/// pre-linked from the snapshot taken after it — or why there is none.
async fn snapshot(
    engine: &Engine,
    linker: &Linker<State>,
    loaded: &Loaded,
    wasm: &[u8],
) -> Result<bindings::PluginPre<State>, String> {
    let wizer = wizer();
    // Deterministic: the same instrumentation as the compiled component's.
    let (cx, _) = wizer
        .instrument_component(wasm)
        .map_err(|e| format!("cannot instrument: {e:#}"))?;
    let component = loaded.pre.instance_pre().component().clone();
    let mut probe: Linker<State> = Linker::new(engine);
    probe
        .define_unknown_imports_as_traps(&component)
        .map_err(|e| format!("{e:#}"))?;
    let mut store = loaded.store(engine, None).map_err(|e| format!("{e:#}"))?;
    host::begin_hook(&mut store, SNAPSHOT_BUDGET);
    let instance = probe
        .instantiate_async(&mut store, &component)
        .await
        .map_err(|e| {
            format!(
                "it cannot be instantiated without the host: {}",
                e.root_cause()
            )
        })?;
    let plugin = bindings::Plugin::new(&mut store, &instance).map_err(|e| format!("{e:#}"))?;
    host::begin_hook(&mut store, SNAPSHOT_BUDGET);
    match plugin
        .call_init(&mut store, &loaded.config.config_json)
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return Err(format!("init refused: {reason}")),
        // Mostly an import reached for ("unknown import: `wasi:random/…`"); a trap or an
        // overrun deadline says so instead.
        Err(e) => return Err(format!("its init needs the host: {}", e.root_cause())),
    }
    host::begin_hook(&mut store, SNAPSHOT_BUDGET);
    let mut state = Snapshotting {
        store: &mut store,
        instance,
        failed: None,
    };
    let snapshot = wizer
        .snapshot_component(&cx, &mut state)
        .await
        .map_err(|e| format!("cannot snapshot: {e:#}"))?;
    if let Some(e) = state.failed {
        return Err(format!("cannot read its state: {e}"));
    }
    let component = wasmtime::component::Component::new(engine, &snapshot)
        .map_err(|e| format!("cannot compile the snapshot: {e:#}"))?;
    linker
        .instantiate_pre(&component)
        .and_then(bindings::PluginPre::new)
        .map_err(|e| format!("{e:#}"))
}

/// The initialised probe instance, read through the accessors the instrumentation exported.
struct Snapshotting<'a> {
    store: &'a mut Store<State>,
    instance: Instance,
    /// The first read that failed; the snapshot is then discarded.
    failed: Option<String>,
}

impl Snapshotting<'_> {
    async fn call<R: Lift + Send + Sync + 'static, T: Default>(
        &mut self,
        interface: &str,
        func: &str,
        read: impl FnOnce(&Store<State>, R) -> T,
    ) -> T {
        let result: wasmtime::Result<T> = async {
            let (_, exported) = self
                .instance
                .get_export(&mut *self.store, None, interface)
                .ok_or_else(|| wasmtime::format_err!("no export {interface}"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&exported), func)
                .ok_or_else(|| wasmtime::format_err!("no export {interface}#{func}"))?;
            let typed = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)?;
            let (value,) = typed.call_async(&mut *self.store, ()).await?;
            Ok(read(self.store, value))
        }
        .await;
        result.unwrap_or_else(|e| {
            self.failed.get_or_insert_with(|| format!("{e:#}"));
            T::default()
        })
    }
}

impl ComponentInstanceState for Snapshotting<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let bytes: Vec<u8> = self
            .call(instance, func, |store, list: WasmList<u8>| {
                list.as_le_slice(store).to_vec()
            })
            .await;
        contents(&bytes);
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, v: i32| v).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, v: i64| v).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, v: f32| v.to_bits()).await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, v: f64| v.to_bits()).await
    }
}
