//! Trunk RTP as the trunk leg's stream takes it (source check, RTP header, RFC 4733 events,
//! G.711), and RTCP as the WebRTC stack parses it from the browser.
#![no_main]

use std::sync::OnceLock;

use gateway::media::g711::G711;
use gateway::media::rtp::RtpPacket;
use gateway::media::session::RtpStream;
use gateway::sip::sdp::{Direction, RemoteMedia};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = RtpPacket::parse(data);
    let _ = rtc::rtcp::packet::unmarshal(&mut &data[..]);
    static STREAM: OnceLock<std::sync::Mutex<RtpStream>> = OnceLock::new();
    let stream = STREAM.get_or_init(|| {
        let runtime = tokio_runtime();
        let _guard = runtime.enter();
        let mut s = RtpStream::bind("127.0.0.1".parse().unwrap(), 42000, 42998).expect("RTP port");
        s.set_remote(RemoteMedia {
            addr: "127.0.0.1:4000".parse().unwrap(),
            codec: G711::Pcmu,
            dtmf_payload_type: Some(101),
            direction: Direction::SendRecv,
        });
        std::sync::Mutex::new(s)
    });
    let mut pcm = [0i16; 1500];
    let mut stream = stream.lock().unwrap();
    let _ = stream.on_datagram(data, "127.0.0.1:4000".parse().unwrap(), &mut pcm);
});

fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}
