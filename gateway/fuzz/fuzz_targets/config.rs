//! A configuration file (no environment variables set; files it names mostly absent).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway_tests::fuzzing::config(data);
});
