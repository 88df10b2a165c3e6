//! A configuration file (no environment variables set; files it names mostly absent).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gateway::config::Config::parse(text, std::path::Path::new("fuzz.toml"), &|_| None);
    }
});
