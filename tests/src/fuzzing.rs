//! What each fuzz target (`gateway/fuzz/fuzz_targets`) does with one input, shared with the
//! stable test that replays the seeds and every input a fuzzer once crashed on
//! (`tests/tests/fuzz_inputs.rs`). Each function drives the gateway's own code the way the
//! network or an operator would reach it, and must never panic.

use std::cell::RefCell;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use bytes::BytesMut;
use gateway::media::codec::Codec;
use gateway::media::session::RtpStream;
use gateway::media::srtp::{LocalSrtp, SrtpKeys, SrtpPolicy};
use gateway::rtc::{BrowserLeg, DtlsCertificate};
use gateway::sip::message::{Frame, frame, parse};
use gateway::sip::sdp::{Direction, LocalMedia, RemoteMedia};

fn certificate() -> &'static DtlsCertificate {
    static CERT: OnceLock<DtlsCertificate> = OnceLock::new();
    CERT.get_or_init(|| DtlsCertificate::generate().expect("a DTLS certificate"))
}

/// A UDP datagram at the SIP port: parsed, and when unparseable the 400 built from its text.
pub fn sip_datagram(data: &[u8]) {
    if let Err(e) = parse(data) {
        let _ = gateway::sip::message::bad_request_for(data, &e);
    }
}

/// Bytes on a SIP stream: framed by Content-Length, message after message, each parsed.
pub fn sip_stream(data: &[u8]) {
    let mut rest = data;
    while let Ok(Frame::Complete(len)) = frame(rest) {
        assert!(
            len > 0 && len <= rest.len(),
            "a frame lies inside the buffer"
        );
        let _ = parse(&rest[..len]);
        rest = &rest[len..];
    }
}

/// A trunk's SDP, read as an answer and as an offer (SDES lines included), and an offer
/// answered.
pub fn sdp_trunk(data: &[u8]) {
    let preference = [Codec::Pcmu, Codec::Pcma];
    let srtp = LocalSrtp::new(SrtpPolicy::Optional);
    let _ = gateway::sip::sdp::parse_remote(data, &preference, &srtp, true);
    if let Ok(remote) = gateway::sip::sdp::parse_remote(data, &preference, &srtp, false) {
        let local = LocalMedia {
            ip: "192.0.2.1".parse().expect("literal address"),
            port: 20000,
            codecs: preference.to_vec(),
            session_id: 1,
            srtp,
        };
        assert!(!gateway::sip::sdp::answer(&local, 2, &remote).is_empty());
    }
}

/// A browser's SDP offer, answered by a new browser leg. Returns whether it was answered.
pub fn sdp_browser(data: &[u8]) -> bool {
    let Ok(offer) = std::str::from_utf8(data) else {
        return false;
    };
    BrowserLeg::answer(
        offer,
        "127.0.0.1:10000".parse().expect("literal address"),
        "127.0.0.1".parse().expect("literal address"),
        certificate(),
        // A G.711 gateway's: the answer's Opus line is rewritten too.
        gateway::rtc::AudioCaps::up_to(8000),
        Instant::now(),
    )
    .is_ok()
}

/// A datagram at the browser media port: the mux's USERNAME lookup, then one leg's handling.
pub fn media_port(data: &[u8]) {
    thread_local! {
        static LEG: RefCell<Option<BrowserLeg>> = const { RefCell::new(None) };
    }
    let _ = gateway::rtc::stun_username_ufrag(data);
    LEG.with(|leg| {
        let mut leg = leg.borrow_mut();
        let leg = leg.get_or_insert_with(|| {
            BrowserLeg::offer(
                "127.0.0.1:10000".parse().expect("literal address"),
                "127.0.0.1".parse().expect("literal address"),
                certificate(),
                gateway::rtc::AudioCaps::up_to(8000),
                Instant::now(),
            )
            .expect("a browser leg")
            .0
        });
        let peer = "127.0.0.1:40000".parse().expect("literal address");
        leg.handle_datagram(BytesMut::from(data), peer, Instant::now());
        while leg.poll_transmit().is_some() {}
        while leg.poll_event().is_some() {}
    });
}

/// Trunk RTP through the stream's source check, RTP header, events, G.711 and G.722; RTCP as
/// the WebRTC stack parses it from the browser.
pub fn rtp_rtcp(data: &[u8]) {
    static STREAM: OnceLock<Mutex<RtpStream>> = OnceLock::new();
    let _ = gateway::media::rtp::RtpPacket::parse(data);
    let _ = rtc::rtcp::packet::unmarshal(&mut &data[..]);
    let stream = STREAM.get_or_init(|| {
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        let runtime = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("a runtime")
        });
        let _context = runtime.enter();
        let ip = "127.0.0.1".parse().expect("literal address");
        let mut stream = RtpStream::bind(ip, 42000, 42998).expect("an RTP port");
        stream.set_remote(RemoteMedia {
            addr: "127.0.0.1:4000".parse().expect("literal address"),
            codec: Codec::Pcmu,
            payload_type: 0,
            dtmf_payload_type: Some(101),
            direction: Direction::SendRecv,
            srtp: None,
            opus: Default::default(),
        });
        Mutex::new(stream)
    });
    let mut pcm = [0i16; 1500];
    let source = "127.0.0.1:4000".parse().expect("literal address");
    let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
    let mut copy = data.to_vec();
    let _ = stream.handle_datagram(&mut copy, source, std::time::Instant::now(), &mut pcm);
    // The same bytes as SRTP: authentication refuses them before anything parses them.
    let remote = stream.remote();
    if let Some(remote) = remote {
        let key = LocalSrtp::new(SrtpPolicy::Required).keys[0];
        stream.set_remote(RemoteMedia {
            srtp: Some(SrtpKeys {
                secure_profile: true,
                ours: key,
                theirs: key,
            }),
            ..remote
        });
        let mut copy = data.to_vec();
        let _ = stream.handle_datagram(&mut copy, source, std::time::Instant::now(), &mut pcm);
        stream.set_remote(remote);
    }
    // The same bytes as an Opus trunk's RTP, and the check before they are relayed.
    let g711 = stream.remote();
    if let Some(remote) = g711 {
        stream.set_remote(RemoteMedia {
            codec: Codec::Opus,
            payload_type: 96,
            ..remote
        });
        let mut copy = data.to_vec();
        if let gateway::media::session::Received::Encoded { start, len, .. } =
            stream.handle_datagram(&mut copy, source, std::time::Instant::now(), &mut pcm)
        {
            let _ = gateway::media::opus::relayable_ticks(&copy[start..start + len]);
        }
        // The same bytes as a G.722 trunk's RTP, through the gateway's own G.722 decoder.
        stream.set_remote(RemoteMedia {
            codec: Codec::G722,
            payload_type: 9,
            ..remote
        });
        let mut copy = data.to_vec();
        let _ = stream.handle_datagram(&mut copy, source, std::time::Instant::now(), &mut pcm);
        stream.set_remote(remote);
    }
    let _ = gateway::media::opus::relayable_ticks(data);
}

/// A text frame on the signaling WebSocket.
pub fn signaling(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gateway::signal::protocol::parse(text);
    }
}

/// A configuration file (no environment variables set).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gateway::config::Config::parse(text, Path::new("fuzz.toml"), &|_| None);
    }
}
