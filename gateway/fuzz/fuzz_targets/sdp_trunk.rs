//! A trunk's SDP (an answer in 18x/2xx, or an offer in an INVITE or re-INVITE), read as the
//! call reads it, and answered when it is an offer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway_tests::fuzzing::sdp_trunk(data);
});
