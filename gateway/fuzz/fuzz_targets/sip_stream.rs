//! Bytes on a SIP TCP/TLS stream: framed by Content-Length message after message, each frame
//! parsed, as the stream reader does.
#![no_main]

use gateway::sip::message::{Frame, frame, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Frame::Complete(len)) = frame(rest) {
        assert!(len > 0 && len <= rest.len(), "a frame lies inside the buffer");
        let _ = parse(&rest[..len]);
        rest = &rest[len..];
    }
});
