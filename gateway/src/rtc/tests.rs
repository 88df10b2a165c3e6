//! The browser leg against a real WebRTC peer (the same stack in ordinary, non-lite mode):
//! ICE, DTLS and SRTP complete over loopback and Opus flows both ways.

use super::*;
use ::rtc::peer_connection::configuration::media_engine::MediaEngine;
use ::rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters;
use std::time::Duration;
use tokio::net::UdpSocket;

struct Client {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    sender: ::rtc::rtp_transceiver::RTCRtpSenderId,
    ssrc: u32,
    received: Vec<Bytes>,
    connected: bool,
}

async fn client() -> (Client, String) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let mut engine = MediaEngine::default();
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )
        .unwrap();
    let now = Instant::now();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .build(now)
        .unwrap();
    let ssrc = 4242;
    let track = MediaStreamTrack::new(
        "browser".into(),
        "mic".into(),
        "mic".into(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec(),
            ..Default::default()
        }],
    );
    let sender = pc.add_track(track).unwrap();
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: "127.0.0.1".into(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .unwrap();
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json().unwrap())
        .unwrap();
    let offer = pc.create_offer(None).unwrap();
    pc.set_local_description(now, offer).unwrap();
    let sdp = pc.local_description().unwrap().sdp;
    (
        Client {
            pc,
            socket,
            local,
            sender,
            ssrc,
            received: vec![],
            connected: false,
        },
        sdp,
    )
}

#[tokio::test]
async fn browser_leg_connects_and_carries_opus_both_ways() {
    let (mut client, offer) = client().await;
    let gw_socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let gw_local = gw_socket.local_addr().unwrap();
    let (mut leg, answer) = BrowserLeg::answer(
        &offer,
        gw_local,
        gw_local.ip(),
        &DtlsCertificate::generate().unwrap(),
        AudioCaps::up_to(8000),
        Instant::now(),
    )
    .unwrap();
    assert!(answer.contains("a=ice-lite"), "{answer}");
    // A G.711 call: the browser is asked to code narrowband (RFC 7587 §6.1), and the
    // rewritten answer is the one the stack runs with.
    assert!(
        answer.contains(
            "a=fmtp:111 minptime=10;useinbandfec=1;maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000\r\n"
        ),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("{} typ host", gw_local.port())),
        "the answer carries our candidate: {answer}"
    );
    client
        .pc
        .set_remote_description(
            Instant::now(),
            RTCSessionDescription::answer(answer).unwrap(),
        )
        .unwrap();

    let mut gw_connected = false;
    let mut gw_opus = 0;
    let mut gw_reports = Vec::new();
    let mut sent = 0u32;
    let (mut opus_sent, mut opus_in_spare_buffers) = (0usize, 0usize);
    // STUN Binding requests from the leg (RFC 5389 §6: message type 0x0001).
    let mut checks_sent = 0usize;
    let mut genuine = None;
    let mut buf = vec![0u8; 2000];
    let mut gw_buf = vec![0u8; 2000];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && (gw_opus < 20 || client.received.len() < 20 || gw_reports.is_empty())
    {
        let now = Instant::now();
        while let Some(m) = client.pc.poll_write() {
            client
                .socket
                .send_to(&m.message, m.transport.peer_addr)
                .await
                .unwrap();
        }
        while let Some((bytes, peer)) = leg.poll_transmit() {
            gw_socket.send_to(&bytes, peer).await.unwrap();
            checks_sent += usize::from(bytes.starts_with(&[0x00, 0x01]));
            if is_rtp(&bytes) && bytes[1] & 0x7f == 111 {
                opus_sent += 1;
                opus_in_spare_buffers += usize::from(bytes.capacity() == audio::PACKET_BUFFER);
            }
            leg.reuse(bytes);
        }
        while let Some(ev) = client.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) = ev
            {
                client.connected = true;
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = client.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = message {
                client.received.push(p.payload);
            }
        }
        while let Some(ev) = leg.poll_event() {
            match ev {
                BrowserEvent::Connected => gw_connected = true,
                BrowserEvent::Opus { .. } => gw_opus += 1,
                BrowserEvent::ReceiverReport { fraction_lost } => gw_reports.push(fraction_lost),
                other => panic!("unexpected {other:?}"),
            }
        }
        if client.connected && gw_connected {
            // A 20 ms frame each way per turn.
            let packet = ::rtc::rtp::Packet {
                header: ::rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: sent as u16,
                    timestamp: sent.wrapping_mul(960),
                    ssrc: client.ssrc,
                    ..Default::default()
                },
                payload: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
            };
            client
                .pc
                .rtp_sender(client.sender)
                .unwrap()
                .write_rtp(now, packet)
                .unwrap();
            leg.send_opus(&[0xf8, 0xff, 0xfe], sent == 0).unwrap();
            if sent == 10 {
                // The browser's view of our audio: a quarter lost (RFC 3550 §6.4.2), then a
                // block about another source, which the leg must not take as ours.
                let report = ::rtc::rtcp::receiver_report::ReceiverReport {
                    ssrc: client.ssrc,
                    reports: [(leg.ssrc, 64), (leg.ssrc.wrapping_add(1), 200)]
                        .map(|(ssrc, fraction_lost)| {
                            ::rtc::rtcp::reception_report::ReceptionReport {
                                ssrc,
                                fraction_lost,
                                ..Default::default()
                            }
                        })
                        .to_vec(),
                    ..Default::default()
                };
                client
                    .pc
                    .rtp_sender(client.sender)
                    .unwrap()
                    .write_rtcp(now, vec![Box::new(report)])
                    .unwrap();
            }
            sent += 1;
        }
        tokio::select! {
            r = client.socket.recv_from(&mut buf) => {
                let (n, peer) = r.unwrap();
                client.pc.handle_read(TaggedBytesMut { now: Instant::now(), transport: TransportContext { local_addr: client.local, peer_addr: peer, ecn: None, transport_protocol: TransportProtocol::UDP }, message: BytesMut::from(&buf[..n]) }).unwrap();
            }
            r = gw_socket.recv_from(&mut gw_buf) => {
                let (n, peer) = r.unwrap();
                if let Some(ufrag) = stun_username_ufrag(&gw_buf[..n]) {
                    assert_eq!(ufrag, leg.ufrag(), "STUN USERNAME names our leg first");
                }
                if is_rtp(&gw_buf[..n]) {
                    genuine = Some(BytesMut::from(&gw_buf[..n]));
                }
                leg.handle_datagram(BytesMut::from(&gw_buf[..n]), peer, Instant::now());
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                let now = Instant::now();
                if client.pc.poll_timeout().is_some_and(|t| t <= now) { client.pc.handle_timeout(now).unwrap(); }
                if leg.poll_timeout().is_some_and(|t| t <= now) { leg.handle_timeout(now); }
            }
        }
    }
    assert!(
        gw_connected && client.connected,
        "ICE + DTLS did not complete"
    );
    // An ICE-lite agent answers the browser's checks and sends none (RFC 8445 §2.5).
    assert_eq!(checks_sent, 0, "binding requests from the lite leg");
    // Our audio went out in buffers the leg reuses, and it keeps at most two of them, none
    // of another size.
    assert!(opus_sent >= 20);
    assert_eq!(opus_in_spare_buffers, opus_sent);
    while let Some((bytes, _)) = leg.poll_transmit() {
        leg.reuse(bytes);
    }
    assert!((1..=2).contains(&leg.spare.len()));
    leg.reuse(BytesMut::with_capacity(4096));
    assert!(
        leg.spare
            .iter()
            .all(|b| b.capacity() == audio::PACKET_BUFFER)
    );
    assert!(gw_opus >= 20, "gateway received {gw_opus} Opus packets");
    assert_eq!(gw_reports, [64], "the browser's report on our audio");
    assert!(
        client.received.len() >= 20,
        "browser received {} packets",
        client.received.len()
    );
    assert!(
        client
            .received
            .iter()
            .all(|p| p.as_ref() == [0xf8, 0xff, 0xfe])
    );
    // SRTP and DTLS are taken only from the validated pair; a stranger's never reach the
    // stack, however well they are forged.
    let srtp = [0x80u8, 111, 0, 9, 0, 0, 0, 0, 0, 0, 0x10, 0x92, 1, 2, 3, 4];
    let dtls = [22u8, 254, 253, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    let stranger: SocketAddr = "127.0.0.2:40000".parse().unwrap();
    for forged in [&srtp[..], &dtls[..]] {
        assert!(!leg.handle_datagram(BytesMut::from(forged), stranger, Instant::now()));
    }
    assert!(leg.handle_datagram(BytesMut::from(&srtp[..]), client.local, Instant::now()));
    // From the validated address, SRTP must still authenticate (RFC 3711 §3.3): a replayed
    // packet and an altered one carry no audio.
    let genuine = genuine.expect("the browser's SRTP was seen");
    // What the loop's last turn received and did not poll.
    while leg.poll_event().is_some() {}
    let mut altered = genuine.clone();
    altered[13] ^= 1;
    for packet in [genuine, altered] {
        assert!(leg.handle_datagram(packet, client.local, Instant::now()));
        assert_eq!(
            leg.poll_event(),
            None,
            "nothing from a replayed or altered packet"
        );
    }

    // Opus relayed from the trunk keeps the trunk's timing on our clock (SRTP leaves the
    // header in the clear, RFC 3711 §3.1): a frame lost, the next two reordered, a packet of
    // two frames (40 ms), one after it; then a frame of our own, and a relay that starts anew.
    while let Some((bytes, _)) = leg.poll_transmit() {
        leg.reuse(bytes);
    }
    let next = leg.timestamp;
    let (frame, double) = ([0xf8u8, 0xff, 0xfe], [0xf9u8, 0xff, 0xfe]);
    let trunk = 4_294_966_000u32;
    for (at, payload) in [
        (0u32, &frame),
        (960, &frame),
        (2880, &frame),
        (4800, &frame),
        (3840, &frame),
        (5760, &double),
        (7680, &frame),
    ] {
        let ticks = crate::media::opus::relayable_ticks(payload).unwrap();
        leg.relay_opus(payload, trunk.wrapping_add(at), ticks)
            .unwrap();
    }
    leg.send_opus(&frame, false).unwrap();
    leg.relay_opus(&frame, 5, 960).unwrap();
    let mut sent = Vec::new();
    while let Some((bytes, _)) = leg.poll_transmit() {
        let timestamp = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
        sent.push((timestamp.wrapping_sub(next), bytes[1] & 0x80 != 0));
        leg.reuse(bytes);
    }
    assert_eq!(
        sent,
        [
            (0, true),
            (960, false),
            (2880, true),
            (4800, true),
            (3840, false),
            (5760, false),
            (7680, false),
            (8640, false),
            (9600, true),
        ],
        "(timestamp on our clock, marker) of each packet to the browser"
    );

    // Connected, the stack's timers run once a second, though ICE asks every 200 ms.
    let now = Instant::now();
    leg.handle_timeout(now);
    let asked = leg
        .pc
        .poll_timeout()
        .expect("ICE's check that the browser is heard");
    assert!(
        asked < now + CONNECTED_TICK,
        "the stack asks sooner: {asked:?}"
    );
    assert_eq!(leg.poll_timeout(), Some(now + CONNECTED_TICK));
    // A datagram through the stack does not bring its timers forward.
    leg.handle_datagram(BytesMut::from(&[22u8, 254, 253, 0][..]), client.local, now);
    assert_eq!(leg.poll_timeout(), Some(now + CONNECTED_TICK));
}

#[test]
fn stun_username_is_read_from_a_binding_request() {
    // Binding request, magic cookie, transaction id, USERNAME "abcd:wxyz", then padding.
    let mut msg = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xA4, 0x42];
    msg.extend_from_slice(&[7; 12]);
    msg.extend_from_slice(&[0x00, 0x06, 0x00, 0x09]);
    msg.extend_from_slice(b"abcd:wxyz\0\0\0");
    assert_eq!(stun_username_ufrag(&msg), Some("abcd"));
    assert_eq!(stun_username_ufrag(&msg[..22]), None, "truncated");
    assert_eq!(
        stun_username_ufrag(b"\x80\x00 definitely RTP, not STUN"),
        None
    );
}

#[test]
fn chromes_offer_is_answered_with_its_opus_capped_at_the_trunk_sides_rate() {
    let offer = include_str!("../../fuzz/seeds/browser_sdp/chrome.sdp").replace('\n', "\r\n");
    let local = "127.0.0.1:10000".parse().unwrap();
    let certificate = DtlsCertificate::generate().unwrap();
    let (_, answer) = BrowserLeg::answer(
        &offer,
        local,
        local.ip(),
        &certificate,
        AudioCaps::up_to(8000),
        Instant::now(),
    )
    .unwrap();
    assert!(
        answer.contains("a=fmtp:111 minptime=10;useinbandfec=1;maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000\r\n"),
        "{answer}"
    );
}

/// A trunk that may speak Opus answered G.711: the browser, told full band in the call's
/// answer, is asked for a new offer (no ICE restart), and the answer to it caps its audio at
/// 8 kHz and 24 kb/s, on the same ICE credentials.
#[tokio::test]
async fn a_new_offer_after_the_trunk_narrowed_is_answered_with_the_narrower_caps() {
    let (mut client, offer) = client().await;
    let local = "127.0.0.1:10000".parse().unwrap();
    let now = Instant::now();
    let (mut leg, answer) = BrowserLeg::answer(
        &offer,
        local,
        local.ip(),
        &DtlsCertificate::generate().unwrap(),
        AudioCaps::up_to(48_000),
        now,
    )
    .unwrap();
    assert!(!answer.contains("maxplaybackrate"), "{answer}");
    client
        .pc
        .set_remote_description(now, RTCSessionDescription::answer(answer).unwrap())
        .unwrap();
    assert!(!leg.set_audio(AudioCaps::up_to(48_000)), "nothing changed");
    assert!(
        leg.set_audio(AudioCaps::up_to(8000)),
        "the trunk answered G.711"
    );
    let ufrag = leg.ufrag().to_owned();
    let offer = client.pc.create_offer(None).unwrap();
    client.pc.set_local_description(now, offer).unwrap();
    let offer = client.pc.local_description().unwrap().sdp;
    let answer = leg.renegotiate(&offer, now).unwrap();
    assert!(
        answer.contains("maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000"),
        "{answer}"
    );
    assert_eq!(leg.ufrag(), ufrag, "no ICE restart");
    client
        .pc
        .set_remote_description(now, RTCSessionDescription::answer(answer).unwrap())
        .unwrap();
    assert!(!leg.set_audio(AudioCaps::up_to(8000)));
}
