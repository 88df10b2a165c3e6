//! audiopus_sys's API over `opusic-sys`: libopus 1.6.1, built from source and linked
//! statically (vendor/README.md).
#![no_std]
pub use opusic_sys::*;
