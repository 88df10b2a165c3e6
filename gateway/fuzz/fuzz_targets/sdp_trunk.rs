//! A trunk's SDP (an answer in 18x/2xx, or an offer in an INVITE or re-INVITE), read as the
//! call reads it, and answered when it is an offer.
#![no_main]

use gateway::media::g711::G711;
use gateway::sip::sdp::{LocalMedia, answer, parse_remote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let preference = [G711::Pcmu, G711::Pcma];
    let _ = parse_remote(data, &preference, true);
    if let Ok(remote) = parse_remote(data, &preference, false) {
        let local = LocalMedia {
            ip: "192.0.2.1".parse().unwrap(),
            port: 20000,
            codecs: preference.to_vec(),
            session_id: 1,
        };
        let _ = answer(&local, 2, &remote);
    }
});
