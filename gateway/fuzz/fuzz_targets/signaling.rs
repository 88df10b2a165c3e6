//! A text frame on the signaling WebSocket.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway_tests::fuzzing::signaling(data);
});
