//! A WebRTC-to-SIP trunking gateway whose call logic is extended by WebAssembly plugins.
//!
//! Data flows from the browser leg through the call to the SIP trunk; each concern lives in
//! its own module; the README has the map.

pub mod call;
pub mod cluster;
pub mod config;
pub mod count;
pub mod demo;
pub mod dial;
pub mod fault;
pub mod media;
pub mod plugin;
pub mod rtc;
pub mod run;
pub mod signal;
pub mod sip;
pub mod token;
pub mod wall;
