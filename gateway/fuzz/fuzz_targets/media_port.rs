//! A datagram at the shared browser media port: the mux's STUN USERNAME lookup, then the
//! browser leg's own handling (STUN, DTLS or SRTP, from an address no check validated).
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use bytes::BytesMut;
use gateway::rtc::{BrowserLeg, DtlsCertificate, stun_username_ufrag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static CERT: OnceLock<DtlsCertificate> = OnceLock::new();
    let cert = CERT.get_or_init(|| DtlsCertificate::generate().expect("certificate"));
    let _ = stun_username_ufrag(data);
    thread_local! {
        static LEG: std::cell::RefCell<Option<BrowserLeg>> = const { std::cell::RefCell::new(None) };
    }
    LEG.with(|leg| {
        let mut leg = leg.borrow_mut();
        let leg = leg.get_or_insert_with(|| {
            BrowserLeg::offer(
                "127.0.0.1:10000".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
                cert,
                Instant::now(),
            )
            .expect("leg")
            .0
        });
        let now = Instant::now();
        leg.handle_datagram(BytesMut::from(data), "127.0.0.1:40000".parse().unwrap(), now);
        while leg.poll_transmit().is_some() {}
        while leg.poll_event().is_some() {}
    });
});
