//! A UDP datagram at the SIP port: parsed, and (when unparseable) the 400 reply built from
//! its raw text, exactly as the endpoint does.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway_tests::fuzzing::sip_datagram(data);
});
