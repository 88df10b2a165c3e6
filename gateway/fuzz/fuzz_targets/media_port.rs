//! A datagram at the shared browser media port: the mux's STUN USERNAME lookup, then the
//! browser leg's own handling (STUN, DTLS or SRTP, from an address no check validated).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway_tests::fuzzing::media_port(data);
});
