//! A UDP datagram at the SIP port: parsed, and (when unparseable) the 400 reply built from
//! its raw text, exactly as the endpoint does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = gateway::sip::message::parse(data) {
        let _ = gateway::sip::message::bad_request_for(data, &e);
    }
});
