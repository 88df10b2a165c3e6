//! A browser's SDP offer in a `call` message: answered by a new browser leg, as signaling
//! does (the WebRTC stack parses and negotiates it).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gateway_tests::fuzzing::sdp_browser(data);
});
