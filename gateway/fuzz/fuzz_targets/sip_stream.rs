//! Bytes on a SIP TCP/TLS stream: framed by Content-Length message after message, each frame
//! parsed, as the stream reader does.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway_tests::fuzzing::sip_stream(data);
});
