//! Loading a plugin: its manifest and `init` run once before it takes calls, and a deadline
//! overrun there is tried again before it counts against the plugin.

use wasmtime::Engine;

use super::{Loaded, PluginError, host};

/// How many times loading runs a plugin's manifest and `init` before a deadline overrun
/// counts against the plugin: its deadline is wall-clock time, and a busy machine can
/// preempt the thread for longer than a hook's 20 ms (seen in a loaded test run: a
/// snapshot's `init` given up for it, `preinit`). A plugin that is too slow overruns every
/// time.
const LOAD_TRIES: u32 = 3;

/// Why a plugin could not start up, and whether only its deadline was to blame.
struct StartUp {
    error: PluginError,
    past_deadline: bool,
}

impl StartUp {
    /// The error for the operator: an overrun on every try says what to change.
    fn into_error(self) -> PluginError {
        let advice = |reason: String| {
            format!(
                "{reason}, on each of {LOAD_TRIES} tries: raise its `deadline_ms` or make its start-up cheaper"
            )
        };
        match self.error {
            PluginError::Init { name, reason } if self.past_deadline => PluginError::Init {
                name,
                reason: advice(reason),
            },
            PluginError::Load { name, path, reason } if self.past_deadline => PluginError::Load {
                name,
                path,
                reason: advice(reason),
            },
            error => error,
        }
    }
}

impl Loaded {
    /// Reads the plugin's manifest, grants its data directory, and runs its `init`, as loading
    /// does before the plugin takes calls; a deadline overrun is tried again ([`LOAD_TRIES`]).
    pub(super) async fn start_up(&mut self, engine: &Engine) -> Result<(), PluginError> {
        let mut tries = 1;
        loop {
            match self.start_up_once(engine).await {
                Ok(()) => return Ok(()),
                Err(StartUp {
                    past_deadline: true,
                    error,
                }) if tries < LOAD_TRIES => {
                    tracing::warn!(plugin = %self.config.name, %error, tries, "plugin ran past its deadline while loading; trying again");
                    tries += 1;
                }
                Err(failed) => return Err(failed.into_error()),
            }
        }
    }

    async fn start_up_once(&mut self, engine: &Engine) -> Result<(), StartUp> {
        let c = &self.config;
        let load_err = |e: wasmtime::Error| StartUp {
            past_deadline: e.is::<host::PastDeadline>(),
            error: PluginError::load(c, format!("{e:#}")),
        };
        let init_err = |reason: String, past_deadline: bool| StartUp {
            past_deadline,
            error: PluginError::init(c, reason),
        };
        let trapped = |what: &str, e: wasmtime::Error| {
            init_err(
                format!("{what} trapped: {e:#}"),
                e.is::<host::PastDeadline>(),
            )
        };
        let (mut store, plugin) = self
            .instantiate(&self.pre, engine, None)
            .await
            .map_err(load_err)?;
        let manifest = plugin
            .call_manifest(&mut store)
            .await
            .map_err(|e| trapped("manifest", e))?;
        match (&manifest.data_dir, &c.data_dir) {
            (true, None) => {
                return Err(init_err(
                    format!(
                        "it asks for a data directory: set `data_dir` in its [[plugins]] entry (a folder only `{}` uses)",
                        c.name
                    ),
                    false,
                ));
            }
            (true, Some(dir)) => std::fs::create_dir_all(dir).map_err(|e| {
                init_err(
                    format!("data_dir `{}` cannot be created: {e}", dir.display()),
                    false,
                )
            })?,
            (false, Some(_)) => {
                tracing::warn!(plugin = %c.name, "data_dir is set but the plugin does not ask for one; not granted");
            }
            (false, None) => {}
        }
        self.manifest = manifest;
        // The data directory is granted from here on (the manifest was read without it).
        let (mut store, plugin) = self
            .instantiate(&self.pre, engine, None)
            .await
            .map_err(load_err)?;
        match plugin.call_init(&mut store, &self.config.config_json).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(init_err(reason, false)),
            Err(e) => Err(trapped("init", e)),
        }
    }
}
