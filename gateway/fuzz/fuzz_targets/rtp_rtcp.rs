//! Trunk RTP as the trunk leg's stream takes it (source check, RTP header, RFC 4733 events,
//! G.711, G.722), and RTCP as the WebRTC stack parses it from the browser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway_tests::fuzzing::rtp_rtcp(data);
});
