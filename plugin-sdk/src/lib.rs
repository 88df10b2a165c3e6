//! Write call plugins for the gateway in Rust.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`export_plugin!`] and built for
//! `wasm32-wasip2`. The gateway creates one instance per call (fresh memory each time):
//! [`Plugin::init`] runs with the operator's configuration, then the call's hooks. State that
//! must outlive a call goes through the host's key-value store ([`host::kv_get`] and friends).
//!
//! The same code builds natively, where [`host`] talks to a mock ([`mock`]), so a plugin's own
//! `cargo test` exercises its logic, its key-value use and its counters without wasm.
//!
//! ```ignore
//! use gateway_plugin_sdk::{CallInfo, Plugin, Reject, Verdict, export_plugin, host};
//!
//! struct NoPremium;
//!
//! impl Plugin for NoPremium {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(NoPremium)
//!     }
//!     fn on_call_start(&mut self, call: &CallInfo) -> Verdict {
//!         if call.number.starts_with("+49900") {
//!             host::counter("blocked", 1);
//!             return Verdict::Reject(Reject { sip_code: 403, reason: "premium rate".into() });
//!         }
//!         Verdict::Continue
//!     }
//! }
//!
//! export_plugin!(NoPremium);
//! ```

// The generated bindings have as many parameters as the WIT functions.
#![allow(clippy::too_many_arguments)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "gateway_plugin_sdk::bindings",
    });
}

pub use bindings::gateway::plugin::host::{HttpError, HttpRequest, HttpResponse, Level};
pub use bindings::gateway::plugin::types::{
    AudioFrame, CallEnd, CallInfo, Direction, Event, Manifest, Party, Reject, Route,
    TransferRequest, Verdict,
};

pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod mock;

/// A call plugin. One value lives per call: [`init`](Plugin::init) makes it, the hooks use
/// it, and it is dropped when the call ends.
pub trait Plugin: Sized + 'static {
    /// What the plugin needs from the host beyond the call hooks. The default: nothing.
    fn manifest() -> Manifest {
        Manifest {
            audio: false,
            data_dir: false,
        }
    }

    /// Reads the operator's configuration (the `[plugins.config]` table, as JSON). An error
    /// refuses the plugin at load with this message, so name the field that is wrong.
    fn init(config: &str) -> Result<Self, String>;

    /// The routing and compliance gate: continue, reject or route.
    fn on_call_start(&mut self, call: &CallInfo) -> Verdict;

    /// Later events of the call: ringing, answered, DTMF, hold, ended.
    fn on_event(&mut self, _call_id: &str, _event: &Event) {}

    /// 20 ms of audio, both ways; only if [`manifest`](Plugin::manifest) asks for audio and a
    /// plugin marked the call `record_audio`.
    fn on_audio(&mut self, _call_id: &str, _frame: &AudioFrame) {}

    /// The trunk asks to transfer the call: `None` lets it (the default), `Some(reject)`
    /// refuses it with that SIP status.
    fn on_transfer(&mut self, _call_id: &str, _request: &TransferRequest) -> Option<Reject> {
        None
    }
}

/// A route that changes nothing: fill in what you want to change.
pub fn route() -> Route {
    Route {
        trunk: None,
        failover: Vec::new(),
        number: None,
        caller_id: None,
        headers: Vec::new(),
        record_audio: false,
    }
}

/// The plugin's data directory (granted when the manifest asks for it): `/data` inside the
/// sandbox; natively, the folder the mock host was given (see [`mock::set_data_dir`]).
pub fn data_dir() -> std::path::PathBuf {
    #[cfg(target_arch = "wasm32")]
    {
        std::path::PathBuf::from("/data")
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        mock::data_dir()
    }
}

/// The glue [`export_plugin!`] expands to; not for direct use.
#[doc(hidden)]
pub mod __export {
    use std::any::Any;
    use std::cell::RefCell;

    use super::{AudioFrame, CallInfo, Event, Plugin, Reject, TransferRequest, Verdict};

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with<P: Plugin, R>(f: impl FnOnce(&mut P) -> R) -> R {
        INSTANCE.with(|i| {
            let mut slot = i.borrow_mut();
            let plugin = slot
                .as_mut()
                .and_then(|b| b.downcast_mut::<P>())
                .expect("the host calls init before any hook");
            f(plugin)
        })
    }

    pub fn init<P: Plugin>(config: String) -> Result<(), String> {
        let plugin = P::init(&config)?;
        INSTANCE.with(|i| *i.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    pub fn on_call_start<P: Plugin>(call: CallInfo) -> Verdict {
        with::<P, _>(|p| p.on_call_start(&call))
    }

    pub fn on_event<P: Plugin>(call_id: String, event: Event) {
        with::<P, _>(|p| p.on_event(&call_id, &event));
        if matches!(event, Event::Ended(_)) {
            // The instance ends with its call: run the plugin's Drop (flush files) now.
            INSTANCE.with(|i| i.borrow_mut().take());
        }
    }

    pub fn on_audio<P: Plugin>(call_id: String, frame: AudioFrame) {
        with::<P, _>(|p| p.on_audio(&call_id, &frame))
    }

    pub fn on_transfer<P: Plugin>(call_id: String, request: TransferRequest) -> Option<Reject> {
        with::<P, _>(|p| p.on_transfer(&call_id, &request))
    }
}

/// Exports a [`Plugin`] as the component's implementation of the gateway's WIT world.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __GatewayPluginExport;

        impl $crate::bindings::Guest for __GatewayPluginExport {
            fn manifest() -> $crate::Manifest {
                <$plugin as $crate::Plugin>::manifest()
            }
            fn init(config: String) -> Result<(), String> {
                $crate::__export::init::<$plugin>(config)
            }
            fn on_call_start(call: $crate::CallInfo) -> $crate::Verdict {
                $crate::__export::on_call_start::<$plugin>(call)
            }
            fn on_event(call_id: String, event: $crate::Event) {
                $crate::__export::on_event::<$plugin>(call_id, event)
            }
            fn on_audio(call_id: String, frame: $crate::AudioFrame) {
                $crate::__export::on_audio::<$plugin>(call_id, frame)
            }
            fn on_transfer(
                call_id: String,
                request: $crate::TransferRequest,
            ) -> Option<$crate::Reject> {
                $crate::__export::on_transfer::<$plugin>(call_id, request)
            }
        }

        $crate::bindings::export!(__GatewayPluginExport with_types_in $crate::bindings);
    };
}
