//! A browser's SDP offer in a `call` message: answered by a new browser leg, as signaling
//! does (the WebRTC stack parses and negotiates it).
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use gateway::rtc::{BrowserLeg, DtlsCertificate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static CERT: OnceLock<DtlsCertificate> = OnceLock::new();
    let cert = CERT.get_or_init(|| DtlsCertificate::generate().expect("certificate"));
    let Ok(offer) = std::str::from_utf8(data) else {
        return;
    };
    let _ = BrowserLeg::answer(
        offer,
        "127.0.0.1:10000".parse().unwrap(),
        "127.0.0.1".parse().unwrap(),
        cert,
        Instant::now(),
    );
});
