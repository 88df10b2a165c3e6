//! The fuzz targets' inputs on the stable toolchain: every seed in `gateway/fuzz/seeds` and
//! every input a fuzzer once crashed on (`gateway/fuzz/regressions/<target>/`) goes through
//! the same code its target runs ([`gateway_tests::fuzzing`]), so CI replays them all
//! without nightly.

use std::path::Path;

use gateway_tests::fuzzing;

/// The seeds (`seeds/<seeds>`) and the regressions (`regressions/<target>`) of a target.
fn inputs(target: &str, seeds: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/fuzz");
    let mut found = Vec::new();
    for dir in [
        root.join("seeds").join(seeds),
        root.join("regressions").join(target),
    ] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            found.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(!found.is_empty(), "no inputs for {target}");
    found
}

#[test]
fn sip_inputs() {
    for (_, data) in inputs("sip_datagram", "rfc4475") {
        fuzzing::sip_datagram(&data);
    }
    for (_, data) in inputs("sip_stream", "rfc4475") {
        fuzzing::sip_stream(&data);
    }
}

#[test]
fn sdp_inputs() {
    for (_, data) in inputs("sdp_trunk", "sdp") {
        fuzzing::sdp_trunk(&data);
    }
    for (name, data) in inputs("sdp_browser", "browser_sdp") {
        let answered = fuzzing::sdp_browser(&data);
        assert!(
            answered || !name.contains("/seeds/"),
            "a browser's offer is answered: {name}"
        );
    }
}

#[test]
fn media_inputs() {
    for (_, data) in inputs("media_port", "stun") {
        fuzzing::media_port(&data);
    }
    for (_, data) in inputs("rtp_rtcp", "rtp") {
        fuzzing::rtp_rtcp(&data);
    }
}

#[test]
fn signaling_and_config_inputs() {
    for (_, data) in inputs("signaling", "signaling") {
        fuzzing::signaling(&data);
    }
    for (_, data) in inputs("config", "config") {
        fuzzing::config(&data);
    }
}
