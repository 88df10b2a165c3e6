//! The wasmtime engine the plugins run on (epoch deadlines, the pooling allocator sized for
//! the configured limits) and compiling each plugin for it.

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, PoolingAllocationConfig};

use super::host::State;
use super::{INTERFACE, PluginError, TICK, bindings, preinit};
use crate::config::PluginConfig;

pub(super) fn engine(configs: &[PluginConfig], pooling: bool) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    if pooling {
        // Slots for every instance the limits allow, plus one per plugin for loading.
        let instances: u32 = configs
            .iter()
            .map(|c| c.max_instances.saturating_add(1))
            .fold(0u32, u32::saturating_add)
            .clamp(1, 20_000);
        let max_memory = configs
            .iter()
            .map(|c| c.memory_bytes)
            .max()
            .unwrap_or(1 << 24);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .max_memory_size(max_memory)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            // Components built from other languages (a JavaScript engine, say) have large
            // function tables.
            .table_elements(100_000)
            // Calls come constantly: keep a slot's pages mapped and reset only the pages the
            // last call dirtied (PAGEMAP_SCAN where the kernel has it) instead of returning
            // them to the kernel and faulting them in again.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            // Hooks run on fibers (async): one stack per instance that may be mid-hook, its
            // used pages kept like the memories'.
            .total_stacks(instances)
            .async_stack_keep_resident(64 << 10)
            .decommit_batch_size(16);
        config.allocation_strategy(pool);
        // Reserve only the largest allowed memory per slot (bounds checks stay in the code)
        // instead of 4 GiB each, so thousands of slots fit the address space.
        config.memory_reservation(max_memory as u64);
        config.memory_guard_size(64 * 1024);
    }
    Engine::new(&config)
}

/// A plugin compiled and linked for the engine.
pub(super) struct Compiled {
    /// Its component, instrumented for a snapshot where that worked ([`super::preinit`]).
    pub(super) pre: bindings::PluginPre<State>,
    /// The component as configured, for the snapshot; or why it could not be instrumented.
    pub(super) source: Result<Vec<u8>, String>,
}

/// Compiles and links every plugin for a new engine (blocking: Cranelift runs here).
pub(super) fn compile(
    configs: &[PluginConfig],
    pooling: bool,
) -> Result<(Engine, Linker<State>, Vec<Compiled>), PluginError> {
    let engine = engine(configs, pooling).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    let ticker = engine.weak();
    // The hook deadline's clock: one epoch per millisecond while the engine lives. Without
    // plugins no wasm runs, and the thread's thousand wake-ups a second would be waste.
    if !configs.is_empty() {
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
    }
    let mut linker: Linker<State> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| PluginError::Engine(e.to_string()))?;
    bindings::Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
        .map_err(|e| PluginError::Engine(e.to_string()))?;
    let mut compiled = Vec::new();
    for c in configs {
        let wasm = std::fs::read(&c.path).map_err(|e| PluginError::load(c, e.to_string()))?;
        // Not a component Wizer can instrument (or not a component at all): compiled as it
        // is, and compiling says what is wrong with it.
        let (component, source) = match preinit::instrument(&wasm) {
            Ok(instrumented) => (Component::new(&engine, &instrumented), Ok(wasm)),
            Err(why) => (Component::new(&engine, &wasm), Err(why)),
        };
        let component = component.map_err(|e| PluginError::load(c, format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::PluginPre::new)
            .map_err(|e| {
                PluginError::load(c, format!(
                    "{e:#} (this gateway speaks {INTERFACE}: rebuild the plugin against plugin-sdk/wit)"
                ))
            })?;
        compiled.push(Compiled { pre, source });
    }
    Ok((engine, linker, compiled))
}
