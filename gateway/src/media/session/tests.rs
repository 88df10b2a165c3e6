//! RTP streams on loopback pairs: G.711 with events, Opus relayed, G.722 on its 8 kHz clock, loss
//! and jitter bookkeeping.
use super::*;

use crate::media::description::Direction;

#[tokio::test]
async fn audio_and_digits_cross_a_loopback_pair() {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut a = RtpStream::bind(ip, 41000, 41100).unwrap();
    let mut b = RtpStream::bind(ip, 41000, 41100).unwrap();
    assert_eq!(a.local_port() % 2, 0);
    let remote = |port| RemoteMedia {
        addr: SocketAddr::new(ip, port),
        codec: Codec::Pcma,
        payload_type: 8,
        dtmf_payload_type: Some(101),
        direction: Direction::SendRecv,
        srtp: None,
        opus: Default::default(),
    };
    a.set_remote(remote(b.local_port()));
    b.set_remote(remote(a.local_port()));
    a.send_digits("7");
    let tone = [1000i16; FRAME_SAMPLES];
    let mut buf = [0u8; 1500];
    let mut pcm = [0i16; FRAME_SAMPLES];
    let mut digits = String::new();
    let mut audio = 0;
    for _ in 0..20 {
        a.send_frame(&tone);
        let (n, src) = tokio::time::timeout(std::time::Duration::from_secs(2), b.recv(&mut buf))
            .await
            .expect("frame arrives")
            .unwrap();
        match b.handle_datagram(&mut buf[..n], src, std::time::Instant::now(), &mut pcm) {
            Received::Audio { .. } => audio += 1,
            Received::Digit(d) => digits.push(d),
            Received::Nothing | Received::Encoded { .. } => {}
        }
    }
    assert_eq!(digits, "7");
    assert!(audio >= 10, "audio resumes after the event: {audio}");
    assert_eq!(b.stats.received, 20);
}

#[test]
fn datagrams_read_a_tick_late_keep_their_arrival_times_for_jitter() {
    // A ticking call reads its trunk's RTP up to 20 ms after it arrived, on a socket no
    // reactor watches: the jitter it reports must be the network's, by the kernel's stamps.
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut stream = RtpStream::bind(ip, 41000, 41100).unwrap();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stream.set_remote(pcmu_towards(peer.local_addr().unwrap()));
    let to = SocketAddr::new(ip, stream.local_port());
    incoming::tests::until_stamping_is_on();
    // Two packets 20 ms apart on the wire and in RTP time, read together 30 ms later.
    let sent = std::time::Instant::now();
    peer.send_to(&pcmu_of(7, 1, 0), to).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    peer.send_to(&pcmu_of(7, 2, 160), to).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let read_at = std::time::Instant::now();
    let mut bufs = [[0; incoming::DATAGRAM]; incoming::BATCH];
    let mut got = [incoming::Got::empty(); incoming::BATCH];
    assert!(!stream.is_watched());
    assert_eq!(stream.recv_waiting(&mut bufs, &mut got).unwrap(), 2);
    let apart = got[1].at.saturating_duration_since(got[0].at);
    assert!(
        got[0].at >= sent - std::time::Duration::from_millis(2)
            && apart >= std::time::Duration::from_millis(19)
            && read_at.saturating_duration_since(got[1].at) >= std::time::Duration::from_millis(28),
        "arrivals {:?} and {:?} after sending, read {:?} after",
        got[0].at.saturating_duration_since(sent),
        got[1].at.saturating_duration_since(sent),
        read_at.saturating_duration_since(sent),
    );
    let mut pcm = [0i16; FRAME_SAMPLES];
    for (buf, got) in bufs.iter_mut().zip(&got).take(2) {
        let heard = stream.handle_datagram(&mut buf[..got.len], got.source, got.at, &mut pcm);
        assert!(matches!(heard, Received::Audio { .. }), "{heard:?}");
    }
    // Read together but timed by arrival: no more jitter than the sleep's own overshoot (a
    // reading time would make it 160 / 16 = 10 units).
    assert!(stream.stats.jitter < 8, "jitter {}", stream.stats.jitter);
}

#[test]
fn a_flood_the_socket_cannot_hold_is_counted_as_the_kernels_drops() {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut stream = RtpStream::bind(ip, 41000, 41100).unwrap();
    let drops = Arc::new(MediaDrops::default());
    stream.set_drop_counters(drops.clone());
    stream.set_remote(pcmu_towards("127.0.0.1:9".parse().unwrap()));
    // Room for a few datagrams only (the kernel's least).
    socket2::SockRef::from(&*stream.sender_socket)
        .set_recv_buffer_size(1)
        .unwrap();
    let to = SocketAddr::new(ip, stream.local_port());
    let stranger = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut read = 0;
    let mut bufs = [[0; incoming::DATAGRAM]; incoming::BATCH];
    let mut got = [incoming::Got::empty(); incoming::BATCH];
    let mut pcm = [0i16; FRAME_SAMPLES];
    // A flood between two reads, then one datagram more: the kernel tells its count of drops
    // with the next datagram it queues.
    for flood in [200, 1] {
        for i in 0..flood {
            stranger.send_to(&pcmu(i), to).unwrap();
        }
        loop {
            let count = stream.recv_waiting(&mut bufs, &mut got).unwrap();
            for (buf, got) in bufs.iter_mut().zip(&got).take(count) {
                stream.handle_datagram(&mut buf[..got.len], got.source, got.at, &mut pcm);
                read += 1;
            }
            if count < incoming::BATCH {
                break;
            }
        }
    }
    let dropped = stream.stats.dropped_overflow;
    assert!(read < 200 && dropped > 0, "read {read}, dropped {dropped}");
    assert_eq!(read + dropped, 201, "every datagram read or counted");
    assert_eq!(stream.stats.dropped_source, read);
    assert_eq!(drops.trunk_overflow.load(Ordering::Relaxed), dropped);
}

fn pcmu(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0xff; FRAME_SAMPLES]);
    p
}

/// A PCMU packet of source `ssrc`, with sequence `seq` and timestamp `timestamp`.
fn pcmu_of(ssrc: u32, seq: u16, timestamp: u32) -> Vec<u8> {
    let mut p = pcmu(seq);
    p[4..8].copy_from_slice(&timestamp.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

async fn stream_towards(sdp_addr: &str, source: RtpSource) -> RtpStream {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut s = RtpStream::bind(ip, 41400, 41500).unwrap();
    s.set_remote(pcmu_towards(sdp_addr.parse().unwrap()));
    s.set_source_policy(source, Some("192.0.2.7".parse().unwrap()));
    s.set_drop_counters(Arc::new(MediaDrops::default()));
    s
}

#[tokio::test]
async fn strict_mode_takes_media_only_from_the_sdp_address() {
    let mut s = stream_towards("192.0.2.10:4000", RtpSource::Strict).await;
    let mut pcm = [0i16; FRAME_SAMPLES];
    for stranger in ["198.51.100.1:4000", "192.0.2.10:4002", "192.0.2.7:4000"] {
        let got = s.handle_datagram(
            &mut pcmu(1),
            stranger.parse().unwrap(),
            std::time::Instant::now(),
            &mut pcm,
        );
        assert_eq!(got, Received::Nothing, "{stranger}");
    }
    assert_eq!(s.stats.dropped_source, 3);
    let got = s.handle_datagram(
        &mut pcmu(2),
        "192.0.2.10:4000".parse().unwrap(),
        std::time::Instant::now(),
        &mut pcm,
    );
    assert!(matches!(got, Received::Audio { .. }));
    let drops = s.drops.as_ref().unwrap();
    assert_eq!(drops.trunk_source.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn latch_mode_latches_once_to_the_trunks_ip_and_ignores_everyone_else() {
    // SDP names a private address (the trunk is behind NAT); media comes from its SIP IP.
    let mut s = stream_towards("10.0.0.5:4000", RtpSource::Latch).await;
    let mut pcm = [0i16; FRAME_SAMPLES];
    let stranger: SocketAddr = "198.51.100.1:4000".parse().unwrap();
    assert_eq!(
        s.handle_datagram(&mut pcmu(1), stranger, std::time::Instant::now(), &mut pcm),
        Received::Nothing
    );
    let nat: SocketAddr = "192.0.2.7:31000".parse().unwrap();
    assert!(matches!(
        s.handle_datagram(&mut pcmu(2), nat, std::time::Instant::now(), &mut pcm),
        Received::Audio { .. }
    ));
    // Latched: another port of the same IP, or the SDP address itself, is refused now.
    for other in ["192.0.2.7:31002", "10.0.0.5:4000"] {
        let got = s.handle_datagram(
            &mut pcmu(3),
            other.parse().unwrap(),
            std::time::Instant::now(),
            &mut pcm,
        );
        assert_eq!(got, Received::Nothing, "{other}");
    }
    assert_eq!(
        s.latched,
        Some(nat),
        "replies keep going to the latched source"
    );
    assert_eq!(s.stats.received, 1);
    assert_eq!(s.stats.dropped_source, 3);
    // A re-INVITE moving the media starts over.
    s.set_remote(pcmu_towards("192.0.2.20:5000".parse().unwrap()));
    assert!(matches!(
        s.handle_datagram(
            &mut pcmu(4),
            "192.0.2.20:5000".parse().unwrap(),
            std::time::Instant::now(),
            &mut pcm
        ),
        Received::Audio { .. }
    ));
}

#[tokio::test]
async fn a_held_peer_gets_no_media() {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut a = RtpStream::bind(ip, 41200, 41300).unwrap();
    a.set_remote(RemoteMedia {
        addr: "127.0.0.1:9".parse().unwrap(),
        codec: Codec::Pcmu,
        payload_type: 0,
        dtmf_payload_type: None,
        direction: Direction::SendOnly,
        srtp: None,
        opus: Default::default(),
    });
    a.send_frame(&[0; FRAME_SAMPLES]);
    assert_eq!(a.stats.sent, 0);
}

#[tokio::test]
async fn opus_frames_are_relayed_untouched_with_events_on_the_48k_clock() {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut a = RtpStream::bind(ip, 41200, 41300).unwrap();
    let mut b = RtpStream::bind(ip, 41200, 41300).unwrap();
    let remote = |port| RemoteMedia {
        addr: SocketAddr::new(ip, port),
        codec: Codec::Opus,
        payload_type: 96,
        dtmf_payload_type: Some(110),
        direction: Direction::SendRecv,
        srtp: None,
        opus: Default::default(),
    };
    a.set_remote(remote(b.local_port()));
    b.set_remote(remote(a.local_port()));
    let frame = [0xAB_u8; 61];
    let mut buf = [0u8; 1500];
    let mut pcm = [0i16; FRAME_SAMPLES];
    let mut timestamps = Vec::new();
    // The browser's clock: three frames in a row, one lost before the fourth, the sixth before
    // the fifth (reordered), then the seventh, a packet of two frames (40 ms), and one after
    // it.
    let browser = [
        (7000u32, 960),
        (7960, 960),
        (8920, 960),
        (10840, 960),
        (12760, 960),
        (11800, 960),
        (13720, 1920),
        (15640, 960),
    ];
    let mut markers = Vec::new();
    for (at, ticks) in browser {
        a.send_encoded(&frame, at, ticks);
        let (n, src) = b.recv(&mut buf).await.unwrap();
        assert_eq!(buf[1] & 0x7f, 96, "sent with the peer's payload type");
        markers.push(buf[1] & 0x80 != 0);
        match b.handle_datagram(&mut buf[..n], src, std::time::Instant::now(), &mut pcm) {
            Received::Encoded {
                start,
                len,
                timestamp,
            } => {
                assert_eq!(&buf[start..start + len], &frame[..]);
                timestamps.push(timestamp);
            }
            other => panic!("not relayed: {other:?}"),
        }
    }
    // The browser's timing on our clock: the gap it left is kept (the trunk's decoder conceals
    // it), the frame that came late keeps its place, and the 40 ms packet's length is no gap.
    let steps: Vec<i32> = timestamps
        .windows(2)
        .map(|w| w[1].wrapping_sub(w[0]) as i32)
        .collect();
    assert_eq!(steps, [960, 960, 1920, 1920, -960, 1920, 1920]);
    // A talkspurt starts the stream, and so does each run of frames after a gap (RFC 3551
    // §4.1).
    assert_eq!(
        markers,
        [true, false, false, true, true, false, false, false]
    );
    // A browser stream that started over, its clock far behind: the relay starts anew where
    // our clock stands, and the frame starts a talkspurt.
    a.send_encoded(&frame, 3_000_000_000, 960);
    let (n, src) = b.recv(&mut buf).await.unwrap();
    let marker = buf[1] & 0x80 != 0;
    let Received::Encoded { timestamp, .. } =
        b.handle_datagram(&mut buf[..n], src, std::time::Instant::now(), &mut pcm)
    else {
        panic!("not relayed");
    };
    let last = timestamps.last().copied().unwrap_or_default();
    assert_eq!((timestamp.wrapping_sub(last), marker), (960, true));
    a.send_digits("5");
    a.send_encoded(&frame, 3_000_000_960, 960);
    let (n, _) = b.recv(&mut buf).await.unwrap();
    assert_eq!(
        buf[1] & 0x7f,
        110,
        "the digit goes on the 48 kHz event type"
    );
    let payload = crate::media::dtmf::EventPayload::parse(&buf[12..n]).unwrap();
    assert_eq!(payload.duration, 960, "one frame on the 48 kHz clock");
}

#[tokio::test]
async fn g722_carries_16_khz_audio_on_the_8_khz_rtp_clock() {
    use crate::media::tone::{ToneDetector, ToneGenerator};
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut a = RtpStream::bind(ip, 41400, 41500).unwrap();
    let mut b = RtpStream::bind(ip, 41400, 41500).unwrap();
    let remote = |port| RemoteMedia {
        addr: SocketAddr::new(ip, port),
        codec: Codec::G722,
        payload_type: 9,
        dtmf_payload_type: Some(101),
        direction: Direction::SendRecv,
        srtp: None,
        opus: Default::default(),
    };
    a.set_remote(remote(b.local_port()));
    b.set_remote(remote(a.local_port()));
    // 5 kHz: only a wideband path carries it.
    let mut tone = ToneGenerator::new(5000.0, 16000, 8000);
    let mut detector = ToneDetector::new(5000.0, 16000, 1600);
    let mut frame = [0i16; WIDE_FRAME_SAMPLES];
    let mut buf = [0u8; 1500];
    let mut pcm = [0i16; 1500];
    let mut timestamps = Vec::new();
    for i in 0..30 {
        tone.fill(&mut frame);
        a.send_frame(&frame);
        let (n, src) = b.recv(&mut buf).await.unwrap();
        assert_eq!(n, 12 + 160, "64 kbit/s: 160 bytes per 20 ms");
        match b.handle_datagram(&mut buf[..n], src, std::time::Instant::now(), &mut pcm) {
            Received::Audio { samples, timestamp } => {
                assert_eq!(samples, WIDE_FRAME_SAMPLES);
                timestamps.push(timestamp);
                if i >= 5 {
                    detector.push(&pcm[..samples]);
                }
            }
            other => panic!("no audio: {other:?}"),
        }
    }
    assert!(
        timestamps
            .windows(2)
            .all(|w| w[1].wrapping_sub(w[0]) == 160),
        "RFC 3551 §4.5.2: 160 ticks per 20 ms although 320 samples: {timestamps:?}"
    );
    let snr = detector.report().snr_db;
    assert!(snr >= 20.0, "5 kHz through G.722 at {snr} dB");
}

#[tokio::test]
async fn srtp_streams_carry_audio_and_digits_and_refuse_plain_or_forged_packets() {
    use crate::media::srtp::{CryptoSuite, SdesKey, SrtpKeys};
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut a = RtpStream::bind(ip, 41600, 41700).unwrap();
    let mut b = RtpStream::bind(ip, 41600, 41700).unwrap();
    let (ka, kb) = (
        SdesKey::generate(1, CryptoSuite::AesCm128HmacSha1_80),
        SdesKey::generate(1, CryptoSuite::AesCm128HmacSha1_80),
    );
    let remote = |port, ours, theirs| RemoteMedia {
        addr: SocketAddr::new(ip, port),
        codec: Codec::Pcmu,
        payload_type: 0,
        dtmf_payload_type: Some(101),
        direction: Direction::SendRecv,
        srtp: Some(SrtpKeys {
            secure_profile: true,
            ours,
            theirs,
        }),
        opus: Default::default(),
    };
    a.set_remote(remote(b.local_port(), ka, kb));
    b.set_remote(remote(a.local_port(), kb, ka));
    assert!(a.is_secure() && b.is_secure());
    a.send_digits("5");
    let tone = [1000i16; FRAME_SAMPLES];
    let mut buf = [0u8; 1500];
    let mut pcm = [0i16; FRAME_SAMPLES];
    let (mut digits, mut audio) = (String::new(), 0);
    for _ in 0..20 {
        a.send_frame(&tone);
        let (n, src) = tokio::time::timeout(std::time::Duration::from_secs(2), b.recv(&mut buf))
            .await
            .expect("frame arrives")
            .unwrap();
        // On the wire: 12 bytes of header, 160 of encrypted PCMU, a 10-byte tag.
        assert!(n == 12 + 160 + 10 || n == 12 + 4 + 10, "{n}");
        match b.handle_datagram(&mut buf[..n], src, std::time::Instant::now(), &mut pcm) {
            Received::Audio { samples, .. } => {
                assert_eq!(samples, FRAME_SAMPLES);
                assert!(pcm.iter().all(|s| (s - 1000).abs() < 40), "decoded tone");
                audio += 1;
            }
            Received::Digit(d) => digits.push(d),
            _ => {}
        }
    }
    assert_eq!(digits, "5");
    assert!(audio >= 10, "{audio}");
    // Plain RTP from the same source, a replay, and a packet under the wrong key: dropped.
    let mut plain = vec![0x80, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0, 1];
    plain.extend_from_slice(&[0xff; 160]);
    let src = SocketAddr::new(ip, a.local_port());
    assert_eq!(
        b.handle_datagram(&mut plain, src, std::time::Instant::now(), &mut pcm),
        Received::Nothing
    );
    a.send_frame(&tone);
    let (n, _) = b.recv(&mut buf).await.unwrap();
    let copy = buf[..n].to_vec();
    assert!(matches!(
        b.handle_datagram(&mut buf[..n], src, std::time::Instant::now(), &mut pcm),
        Received::Audio { .. }
    ));
    let mut replay = copy.clone();
    assert_eq!(
        b.handle_datagram(&mut replay, src, std::time::Instant::now(), &mut pcm),
        Received::Nothing
    );
    assert_eq!(b.stats.received, 21);
    assert_eq!(b.stats.dropped, 2);
}

#[tokio::test]
async fn a_new_source_from_the_trunk_continues_its_clock_and_counts_its_own_loss() {
    let mut s = stream_towards("192.0.2.10:4000", RtpSource::Strict).await;
    let from: SocketAddr = "192.0.2.10:4000".parse().unwrap();
    let mut pcm = [0i16; FRAME_SAMPLES];
    let mut stamps = Vec::new();
    // Five packets of one source, then (the PBX transferred the call) five of another, with
    // sequence and timestamp bases of its own (RFC 3550 §8.2).
    let packets = (0..5u16).map(|i| pcmu_of(1, 100 + i, 8000 + 160 * u32::from(i)));
    let packets =
        packets.chain((0..5u16).map(|i| pcmu_of(2, 20000 + i, 3_000_000_000 + 160 * u32::from(i))));
    for mut packet in packets {
        match s.handle_datagram(&mut packet, from, std::time::Instant::now(), &mut pcm) {
            Received::Audio { timestamp, .. } => stamps.push(timestamp),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(stamps[..5], [8000, 8160, 8320, 8480, 8640]);
    // The new source follows the last packet by whole frames (the time between them), then
    // goes on a frame at a time: the jitter buffer and a relayed browser see one clock.
    let gap = stamps[5].wrapping_sub(stamps[4]);
    assert!(
        gap % 160 == 0 && (160..=50 * 160).contains(&gap),
        "{stamps:?}"
    );
    assert!(
        stamps[5..].windows(2).all(|w| w[1] == w[0] + 160),
        "{stamps:?}"
    );
    // Each source's sequence numbers count on their own: nothing was lost.
    assert_eq!((s.stats.received, s.stats.lost), (10, 0));
}

/// Reads what waits on `stream`'s socket as a call does, each datagram's source in turn.
fn read_as_a_call(stream: &mut RtpStream) -> Vec<(SocketAddr, Received)> {
    let mut bufs = [[0; incoming::DATAGRAM]; incoming::BATCH];
    let mut got = [incoming::Got::empty(); incoming::BATCH];
    let mut pcm = [0i16; FRAME_SAMPLES];
    let mut heard = Vec::new();
    loop {
        let count = stream.recv_waiting(&mut bufs, &mut got).unwrap_or(0);
        for (buf, got) in bufs.iter_mut().zip(&got).take(count) {
            let received = stream.handle_received(&mut buf[..got.len], got, &mut pcm);
            heard.push((got.source, received));
        }
        if count < incoming::BATCH {
            return heard;
        }
    }
}

fn pcmu_towards(addr: SocketAddr) -> RemoteMedia {
    RemoteMedia {
        addr,
        codec: Codec::Pcmu,
        payload_type: 0,
        dtmf_payload_type: None,
        direction: Direction::SendRecv,
        srtp: None,
        opus: Default::default(),
    }
}

#[test]
fn once_latched_the_socket_hears_its_trunk_alone() {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut stream = RtpStream::bind(ip, 41600, 41700).unwrap();
    let drops = Arc::new(MediaDrops::default());
    stream.set_drop_counters(drops.clone());
    let trunk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stranger = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    stream.set_remote(pcmu_towards(trunk.local_addr().unwrap()));
    let to = SocketAddr::new(ip, stream.local_port());
    let settle = || std::thread::sleep(std::time::Duration::from_millis(20));

    // Before the trunk's first packet a stranger's are read, and refused.
    latch_past(&mut stream, &stranger, &trunk);
    assert_eq!(stream.stats.dropped_source, 1);

    // Then the kernel hands the call its trunk's datagrams alone, however many a stranger
    // sends, and what the call sends still reaches the trunk.
    for i in 0..500 {
        stranger.send_to(&pcmu(i), to).unwrap();
    }
    trunk.send_to(&pcmu(3), to).unwrap();
    settle();
    let heard = read_as_a_call(&mut stream);
    assert_eq!(heard.len(), 1, "the trunk's packet alone: {heard:?}");
    assert_eq!(heard[0].0, trunk.local_addr().unwrap());
    assert!(matches!(heard[0].1, Received::Audio { .. }), "{heard:?}");
    assert_eq!(stream.stats.dropped_source, 1);
    assert_eq!(drops.trunk_source.load(Ordering::Relaxed), 1);
    assert_eq!(stream.stats.dropped_overflow, 0);
    stream.send_frame(&[0; FRAME_SAMPLES]);
    trunk
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = trunk.recv_from(&mut buf).expect("the call's frame arrives");
    assert_eq!((n, from), (12 + FRAME_SAMPLES, to));

    // The trunk's media moves (a re-INVITE): the socket hears every source again, and latches
    // anew.
    let moved = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stream.set_remote(pcmu_towards(moved.local_addr().unwrap()));
    assert!(stream.sender_socket.peer_addr().is_err(), "disconnected");
    latch_past(&mut stream, &stranger, &moved);
    assert_eq!(stream.stats.dropped_source, 2);
}

/// A stranger's datagram, then `trunk`'s, to `stream` on 127.0.0.1: both are read, and the
/// stream latches to the trunk and connects its socket to it.
fn latch_past(stream: &mut RtpStream, stranger: &std::net::UdpSocket, trunk: &std::net::UdpSocket) {
    let to = SocketAddr::from(([127, 0, 0, 1], stream.local_port()));
    stranger.send_to(&pcmu(1), to).unwrap();
    trunk.send_to(&pcmu(2), to).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let heard = read_as_a_call(stream);
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert_eq!(
        stream.sender_socket.peer_addr().ok(),
        trunk.local_addr().ok(),
        "latched, the socket is connected to the trunk"
    );
}

#[test]
fn a_socket_bound_everywhere_is_connected_only_where_its_trunk_sends() {
    let everywhere: IpAddr = "0.0.0.0".parse().unwrap();
    let trunk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let settle = || std::thread::sleep(std::time::Duration::from_millis(20));
    // The route to the trunk leaves from 127.0.0.1, and the trunk sends there: connected, the
    // socket hears on that address alone.
    let mut stream = RtpStream::bind(everywhere, 41600, 41700).unwrap();
    stream.set_remote(pcmu_towards(trunk.local_addr().unwrap()));
    let port = stream.local_port();
    trunk.send_to(&pcmu(1), ("127.0.0.1", port)).unwrap();
    settle();
    assert_eq!(read_as_a_call(&mut stream).len(), 1);
    assert_eq!(
        stream.sender_socket.peer_addr().ok(),
        trunk.local_addr().ok()
    );
    assert_eq!(
        stream.sender_socket.local_addr().unwrap().ip(),
        trunk.local_addr().unwrap().ip()
    );

    // The trunk sends to 127.0.0.3, another of the box's addresses (the one the SDP named,
    // say): connecting would leave the socket deaf to it, so it stays unconnected.
    let mut stream = RtpStream::bind(everywhere, 41600, 41700).unwrap();
    stream.set_remote(pcmu_towards(trunk.local_addr().unwrap()));
    let port = stream.local_port();
    for seq in 1..=3 {
        trunk.send_to(&pcmu(seq), ("127.0.0.3", port)).unwrap();
        settle();
        let heard = read_as_a_call(&mut stream);
        assert_eq!(heard.len(), 1, "packet {seq} heard: {heard:?}");
        assert!(matches!(heard[0].1, Received::Audio { .. }), "{heard:?}");
    }
    assert!(stream.sender_socket.peer_addr().is_err(), "not connected");
    assert!(
        stream
            .sender_socket
            .local_addr()
            .unwrap()
            .ip()
            .is_unspecified()
    );
}
