//! A headless WebRTC browser for tests and load: speaks the gateway's `/ws` protocol, runs a
//! real WebRTC peer (webrtc-rs's `rtc` stack, ICE + DTLS-SRTP) on its own UDP socket, sends a
//! tone as Opus and measures what comes back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use gateway::media::dtmf::{DtmfSender, EventPayload};
use gateway::media::opus::{FRAME_SAMPLES_8K, MAX_PACKET, OpusDecoder};
use gateway::media::rtp::{HEADER_LEN, RtpPacket, write_header};
use gateway::media::srtp::MAX_SRTP_TAG;
use gateway::media::tone::ToneDetector;

use crate::browser_opus::BrowserOpus;
use gateway::rtc::{is_rtp, opus_codec, telephone_event_codec as telephone_event};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

/// What to do on one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Target name or number.
    pub to: String,
    /// Token for `auth`, if any.
    pub token: Option<String>,
    /// Seconds to stay after `answered`.
    pub seconds: f64,
    /// Tone to send, Hz.
    pub tone_hz: f64,
    /// DTMF digits to send as RFC 4733 from the browser, after 0.5 s in the call.
    pub dtmf: Option<String>,
    /// Hang up by closing the WebSocket instead of sending `hangup`.
    pub close_instead_of_hangup: bool,
    /// Drop the WebSocket this many seconds after the answer, open a new one and `resume`
    /// the call with its token (media goes on meanwhile).
    pub reconnect_after: Option<f64>,
    /// With [`Self::reconnect_after`]: `resume` with this token instead of the call's.
    pub resume_with_token: Option<String>,
    /// Instead of calling `to`, register this identity and answer the first `incoming` call.
    pub answer_as: Option<String>,
    /// Digits to send with a `dtmf` message (not in RTP) 0.5 s after the answer.
    pub dtmf_message: Option<String>,
    /// Send `hold` this many seconds after the answer and `unhold` 1.5 s later.
    pub hold_after: Option<f64>,
    /// Send `transfer` to this target this many seconds after the answer.
    pub transfer_after: Option<(f64, String)>,
    /// More RFC 4733 digits from the browser, each `(seconds after the answer, digits)`.
    pub dtmf_later: Vec<(f64, String)>,
    /// Code full band whatever the gateway's description allows (a browser that ignores
    /// `maxplaybackrate`); by default the client codes as Chromium does for it.
    pub full_band: bool,
    /// Load mode: send a pre-encoded one-second Opus loop of the tone instead of encoding
    /// every frame, and only count and time what comes back (no decoding, no tone check).
    pub light: bool,
    /// Send the tone from the same pre-encoded loop as [`Self::light`] callers, but otherwise
    /// call as a browser does: through the stack's pipeline, decoding and checking what comes
    /// back. For a load generator's sampled calls, which then code nothing live either.
    pub looped_tone: bool,
    /// Send `hold` without the `unhold` that [`Self::hold_after`] sends 1.5 s later.
    pub hold_only: bool,
    /// Hang up this many seconds after `call` when no `answered` came by then.
    pub give_up_after: Option<f64>,
    /// With [`Self::answer_as`]: let `incoming` calls ring, never answering.
    pub ignore_incoming: bool,
    /// Also measure the tone and count packets between these seconds after the answer.
    pub measure_window: Option<(f64, f64)>,
    /// This many seconds after the answer, move to a new local port (the old one closed, as
    /// on a network change) and restart ICE with `renegotiate`.
    pub ice_restart_after: Option<f64>,
    /// With [`Self::ice_restart_after`]: first this many seconds with no network at all
    /// (nothing sent, nothing received), then the restart.
    pub ice_restart_silence: f64,
    /// `(seconds, n)`: send `n` `renegotiate`s whose SDP has no audio this many seconds after
    /// the answer.
    pub bad_renegotiation_after: Option<(f64, usize)>,
    /// With [`Self::answer_as`]: on `reconnect`, connect to this URL (standing in for the
    /// load balancer's next node) and register there.
    pub reconnect_to: Option<String>,
    /// Lose every this-many-th Opus frame on the way to the gateway, as a lossy uplink
    /// does: it is coded and numbered, and never arrives.
    pub uplink_loss_every: Option<u64>,
}

impl CallOptions {
    /// Whether the call sends the pre-encoded tone loop rather than coding live
    /// ([`Self::light`], [`Self::looped_tone`]).
    pub fn sends_tone_loop(&self) -> bool {
        self.light || self.looped_tone
    }

    /// A two-second call to `to` sending a 1004 Hz tone; everything else off.
    pub fn new(to: &str) -> Self {
        CallOptions {
            to: to.into(),
            seconds: 2.0,
            tone_hz: 1004.0,
            ..Default::default()
        }
    }

    /// A browser that registers as `identity` with a token signed by `secret` (HS256, valid
    /// five minutes), answers the call that rings it, and hangs up after `seconds`.
    pub fn answering(identity: &str, secret: &str, seconds: f64) -> Self {
        CallOptions {
            seconds,
            answer_as: Some(identity.into()),
            token: Some(token(identity, secret)),
            ..CallOptions::new("")
        }
    }
}

/// A token for `identity` signed with `secret`, valid five minutes.
pub fn token(identity: &str, secret: &str) -> String {
    token_for(identity, secret, &[])
}

/// Like [`token`], allowing calls to `targets` (the `targets` claim).
pub fn token_for(identity: &str, secret: &str, targets: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
        + 300;
    gateway::token::sign(
        &gateway::token::Claims {
            sub: identity.into(),
            exp,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            numbers: false,
        },
        secret.as_bytes(),
    )
}

/// What happened.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CallReport {
    /// Gateway call id.
    pub call_id: Option<String>,
    /// `call` sent → `answered` received, ms.
    pub setup_ms: Option<f64>,
    /// Message types received, in order.
    pub messages: Vec<String>,
    /// The `ended` message, if one came.
    pub ended: Option<Value>,
    /// The `incoming` message of an inbound call, if one came.
    pub incoming: Option<Value>,
    /// `error` messages received.
    pub errors: Vec<Value>,
    /// Opus packets sent.
    pub packets_sent: u64,
    /// Opus packets received.
    pub packets_received: u64,
    /// Packets the gateway sent that never arrived, from RTP sequence gaps (RFC 3550 §6.4.1).
    pub packets_lost: u64,
    /// Packets received before `answered` (early media).
    pub early_packets: u64,
    /// Median SNR of the returned tone, dB.
    pub tone_snr_db: Option<f64>,
    /// DTMF digits reported by the gateway (`dtmf` messages).
    pub dtmf_received: String,
    /// RFC 3550 §6.4.1 interarrival jitter of the audio coming back, ms.
    pub jitter_ms: Option<f64>,
    /// ICE + DTLS completed.
    pub media_connected: bool,
    /// The `maxplaybackrate` of the gateway's last description (48000 when it gives none):
    /// the widest audio this client then codes, as a browser does.
    pub far_end_playback_hz: Option<u32>,
    /// The Opus `a=fmtp` parameters of the gateway's last description.
    pub far_end_opus_fmtp: Option<String>,
    /// Packets received in [`CallOptions::measure_window`].
    pub window_packets: u64,
    /// Median SNR of the tone in [`CallOptions::measure_window`], dB.
    pub window_tone_snr_db: Option<f64>,
    /// Packets received on the port taken at [`CallOptions::ice_restart_after`].
    pub packets_after_restart: u64,
    /// Audio packets whose timestamp was not past the last one played: a browser drops them
    /// as too late, and so does this client.
    pub late_packets: u64,
    /// Audio packets more than a 20 ms frame past the one before them (silence or loss the
    /// gateway passed on).
    pub gaps: u64,
    /// Of [`Self::gaps`], the packets without the marker bit that should start the talkspurt
    /// after a gap (RFC 3551 §4.1).
    pub unmarked_gaps: u64,
}

impl CallReport {
    /// How many of the gateway's messages were of `kind` (`renegotiated`, `error` …).
    pub fn count(&self, kind: &str) -> usize {
        self.messages.iter().filter(|m| *m == kind).count()
    }
}

type Signaling =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the `/ws` signaling socket. The read buffer is kept small, as the gateway keeps its
/// own (signal/mod.rs): tungstenite zero-fills the whole buffer before every read attempt, and
/// this client's task polls the socket on every media packet — with the default 128 KiB that
/// was a quarter of a load generator's CPU (`memset` under `FrameCodec::read_frame`, perf).
async fn connect(url: &str) -> anyhow::Result<Signaling> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    Ok(ws)
}

fn text(m: &Value) -> Message {
    Message::Text(m.to_string().into())
}

/// Places one call through the gateway at `ws_url` on a task of its own ([`run_call`]); the
/// task panics if the call could not be placed at all.
pub fn spawn_call(ws_url: &str, options: CallOptions) -> tokio::task::JoinHandle<CallReport> {
    let url = ws_url.to_string();
    tokio::spawn(async move { run_call(&url, &options).await.unwrap() })
}

/// Places one call through the gateway at `ws_url` and reports.
pub async fn run_call(ws_url: &str, options: &CallOptions) -> anyhow::Result<CallReport> {
    let mut ws = connect(ws_url).await?;
    let mut report = CallReport::default();
    let mut socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut local = socket.local_addr()?;
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: telephone_event(),
            payload_type: 126,
        },
        RtpCodecKind::Audio,
    )?;
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        // An ICE restart here means a new socket: the old candidate goes with the old port.
        // Checks paced as Chromium paces them while it connects (every ~50 ms, RFC 8445
        // §14.2's Ta), for as long in all as the stack's default (1.4 s): the gateway is an
        // ICE-lite agent that sends no checks of its own, so the client's pace alone decides
        // how soon its audio flows (the stack's 200 ms default took ~0.4 s more).
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_discard_local_candidates_during_ice_restart(true)
                .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(28))
                .build(),
        )
        .with_media_engine(engine)
        .build(Instant::now())?;
    let ssrc: u32 = rand_u32();
    let sender = pc.add_track(MediaStreamTrack::new(
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
    ))?;
    // Like a browser's RTCDTMFSender: telephone-event goes out on the audio sender, so it
    // must be among the sender's codecs, not only the track's Opus.
    if let Some(mut transceiver) = pc.rtp_transceiver(sender.into()) {
        transceiver.set_codec_preferences(vec![
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: 111,
            },
            RTCRtpCodecParameters {
                rtp_codec: telephone_event(),
                payload_type: 126,
            },
        ])?;
    }
    pc.add_local_candidate(host_candidate(local)?)?;
    if let Some(token) = &options.token {
        ws.send(text(&json!({"type": "auth", "token": token})))
            .await?;
    }
    match &options.answer_as {
        Some(identity) => {
            ws.send(text(&json!({"type": "register", "identity": identity})))
                .await?
        }
        None => {
            let offer = pc.create_offer(None)?;
            pc.set_local_description(Instant::now(), offer)?;
            let offer_sdp = pc.local_description().map(|d| d.sdp).unwrap_or_default();
            ws.send(text(
                &json!({"type": "call", "to": options.to, "sdp": offer_sdp}),
            ))
            .await?;
        }
    }
    let mut call_sent = Instant::now();
    let mut dtmf_message_sent = false;
    let mut hold_step = 0;
    let mut transfer_sent = false;
    let mut resume_token = String::new();
    let mut reconnected = false;
    let mut restarted = false;
    let mut dark = false;
    let mut bad_renegotiation_sent = false;

    // Set up from the gateway's description once it comes, as a browser's is.
    let mut opus_sender: Option<BrowserOpus> = None;
    let mut decoder = OpusDecoder::new()?;
    let mut detector = ToneDetector::new(options.tone_hz, 8000, 800);
    let mut window_detector = ToneDetector::new(options.tone_hz, 8000, 800);
    let mut dtmf = DtmfSender::new(100, 60);
    let mut dtmf_queued = false;
    let mut dtmf_later_sent = 0;
    let mut dtmf_ts = 0u32;
    let mut packet = [0u8; MAX_PACKET];
    let mut decoded = [0i16; FRAME_SAMPLES_8K];
    let mut last_timestamp: Option<u32> = None;
    let mut sequence: u16 = 1;
    let mut timestamp: u32 = 1000;
    let mut answered_at: Option<Instant> = None;
    let mut buf = vec![0u8; 2000];
    // Light mode and a looped tone: one second of the tone, taken once the gateway's
    // description is in ([`tone_loop`]).
    let mut tone_loop: Arc<[Bytes]> = Arc::new([]);
    // The loop while a blocking thread codes it ([`start_sending`]).
    let mut loop_coding: Option<tokio::task::JoinHandle<anyhow::Result<Arc<[Bytes]>>>> = None;
    let mut loop_index = 0usize;
    let mut arrivals = Arrivals::new();
    // Light mode protects its RTP itself, without the stack's pipeline.
    let mut plain = Vec::with_capacity(MAX_PACKET + HEADER_LEN);
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut hung_up = false;
    let hard_deadline = Instant::now() + Duration::from_secs_f64(options.seconds + 30.0);

    while Instant::now() < hard_deadline {
        while let Some(m) = pc.poll_write() {
            if !dark {
                let _ = socket.send_to(&m.message, m.transport.peer_addr).await;
            }
        }
        while let Some(ev) = pc.poll_event() {
            match ev {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Connected,
                ) => report.media_connected = true,
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Failed,
                ) => anyhow::bail!("WebRTC connection failed"),
                _ => {}
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = pc.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = message
                && p.header.payload_type == 111
            {
                let in_window = arrivals.opus(
                    &mut report,
                    (
                        p.header.sequence_number,
                        p.header.timestamp,
                        p.header.marker,
                    ),
                    answered_at,
                    options.measure_window,
                    restarted,
                );
                if options.light {
                    continue;
                }
                // Behind the last frame played: a browser's jitter buffer has played past it
                // and drops it.
                let ts = p.header.timestamp;
                if last_timestamp.is_some_and(|last| (ts.wrapping_sub(last) as i32) <= 0) {
                    report.late_packets += 1;
                    continue;
                }
                last_timestamp = Some(ts);
                let measuring =
                    answered_at.is_some_and(|a| a.elapsed() > Duration::from_millis(300));
                if decoder.decode(&p.payload, &mut decoded).is_ok() && measuring {
                    detector.push(&decoded);
                    if in_window {
                        window_detector.push(&decoded);
                    }
                }
            }
        }
        if report.ended.is_some() {
            break;
        }
        let giving_up = answered_at.is_none()
            && options
                .give_up_after
                .is_some_and(|after| call_sent.elapsed().as_secs_f64() >= after);
        if giving_up && !hung_up && report.call_id.is_some() {
            hung_up = true;
            let id = report.call_id.clone().unwrap_or_default();
            ws.send(text(&json!({"type": "hangup", "call_id": id})))
                .await?;
        }
        if let Some(at) = answered_at
            && !hung_up
            && at.elapsed().as_secs_f64() >= options.seconds
            && dtmf.is_idle()
        {
            hung_up = true;
            if options.close_instead_of_hangup {
                let _ = ws.close(None).await;
                break;
            }
            let id = report.call_id.clone().unwrap_or_default();
            ws.send(text(&json!({"type": "hangup", "call_id": id})))
                .await?;
        }
        if let Some(at) = answered_at {
            let id = report.call_id.clone().unwrap_or_default();
            if let Some(digits) = &options.dtmf_message
                && !dtmf_message_sent
                && at.elapsed() > Duration::from_millis(500)
            {
                dtmf_message_sent = true;
                ws.send(text(
                    &json!({"type": "dtmf", "call_id": id, "digits": digits}),
                ))
                .await?;
            }
            if let Some(after) = options.reconnect_after
                && !reconnected
                && at.elapsed().as_secs_f64() >= after
            {
                reconnected = true;
                // No `hangup`: the socket just goes, as on a network change.
                drop(ws);
                let fresh = connect(ws_url).await?;
                ws = fresh;
                let token = options
                    .resume_with_token
                    .clone()
                    .unwrap_or_else(|| resume_token.clone());
                ws.send(text(
                    &json!({"type": "resume", "call_id": id, "token": token}),
                ))
                .await?;
            }
            if let Some((after, n)) = options.bad_renegotiation_after
                && !bad_renegotiation_sent
                && at.elapsed().as_secs_f64() >= after
            {
                bad_renegotiation_sent = true;
                let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
                for _ in 0..n {
                    ws.send(text(
                        &json!({"type": "renegotiate", "call_id": id, "sdp": sdp}),
                    ))
                    .await?;
                }
            }
            if let Some(after) = options.ice_restart_after
                && !restarted
                && !dark
                && options.ice_restart_silence > 0.0
                && at.elapsed().as_secs_f64() >= after
            {
                // The network goes away: the old port closes, nothing goes out.
                dark = true;
                socket = UdpSocket::bind("127.0.0.1:0").await?;
            }
            if let Some(after) = options.ice_restart_after
                && !restarted
                && at.elapsed().as_secs_f64() >= after + options.ice_restart_silence
            {
                restarted = true;
                dark = false;
                // A new network: a new local port, and the old one gone with everything
                // the gateway still sends to it.
                socket = UdpSocket::bind("127.0.0.1:0").await?;
                local = socket.local_addr()?;
                pc.restart_ice();
                let offer = pc.create_offer(None)?;
                pc.set_local_description(Instant::now(), offer)?;
                pc.add_local_candidate(host_candidate(local)?)?;
                let sdp = pc.local_description().map(|d| d.sdp).unwrap_or_default();
                ws.send(text(
                    &json!({"type": "renegotiate", "call_id": id, "sdp": sdp}),
                ))
                .await?;
            }
            if let Some((after, to)) = &options.transfer_after
                && !transfer_sent
                && at.elapsed().as_secs_f64() >= *after
            {
                transfer_sent = true;
                ws.send(text(&json!({"type": "transfer", "call_id": id, "to": to})))
                    .await?;
            }
            if let Some(after) = options.hold_after {
                let t = at.elapsed().as_secs_f64();
                if hold_step == 0 && t >= after {
                    hold_step = 1;
                    ws.send(text(&json!({"type": "hold", "call_id": id})))
                        .await?;
                } else if hold_step == 1 && t >= after + 1.5 && !options.hold_only {
                    hold_step = 2;
                    ws.send(text(&json!({"type": "unhold", "call_id": id})))
                        .await?;
                }
            }
        }
        let timer = pc
            .poll_timeout()
            .unwrap_or(Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = ticker.tick() => {
                if report.media_connected {
                    let now = Instant::now();
                    if let (Some(at), Some(digits)) = (answered_at, &options.dtmf)
                        && !dtmf_queued
                        && at.elapsed() > Duration::from_millis(500)
                    {
                        dtmf.push_digits(digits);
                        dtmf_queued = true;
                    }
                    if let Some(at) = answered_at {
                        while let Some((when, digits)) = options.dtmf_later.get(dtmf_later_sent)
                            && at.elapsed().as_secs_f64() >= *when
                        {
                            dtmf.push_digits(digits);
                            dtmf_later_sent += 1;
                        }
                    }
                    let (pt, payload, marker) = match dtmf.next_frame() {
                        Some(event) => {
                            if event.marker { dtmf_ts = timestamp; }
                            let mut p = [0u8; 4];
                            EventPayload { ..event.payload }.write(&mut p);
                            (126u8, Bytes::copy_from_slice(&p), event.marker)
                        }
                        None if options.sends_tone_loop() => {
                            if tone_loop.is_empty() {
                                continue;
                            }
                            loop_index = (loop_index + 1) % tone_loop.len();
                            (111u8, tone_loop[loop_index].clone(), false)
                        }
                        None => {
                            let Some(opus) = opus_sender.as_mut() else { continue };
                            let n = opus.next_packet(&mut packet)?;
                            (111u8, Bytes::copy_from_slice(&packet[..n]), false)
                        }
                    };
                    let ts = if pt == 126 { dtmf_ts } else { timestamp };
                    if options.light {
                        // As the gateway's browser leg does (gateway/src/rtc): the keys DTLS-SRTP
                        // agreed, to ICE's selected pair, so a load of light callers costs the
                        // generator little more than its system calls.
                        if let Some(peer) = pc.selected_remote()
                            && let Some(contexts) = pc.srtp_contexts()
                        {
                            plain.clear();
                            plain.resize(HEADER_LEN, 0);
                            write_header(&mut plain, marker, pt, sequence, ts, ssrc);
                            plain.extend_from_slice(&payload);
                            let plain_len = plain.len();
                            plain.resize(plain_len + MAX_SRTP_TAG, 0);
                            match contexts.outbound.encrypt_rtp_in_place(&mut plain, plain_len) {
                                Ok(n) => {
                                    if !dark {
                                        let _ = socket.send_to(&plain[..n], peer).await;
                                    }
                                    if pt == 111 {
                                        report.packets_sent += 1;
                                    }
                                }
                                Err(e) => eprintln!("client SRTP pt {pt}: {e}"),
                            }
                        }
                    } else if pt == 111
                        && options.uplink_loss_every.is_some_and(|n| sequence as u64 % n == n - 1)
                    {
                        // Lost on the way.
                    } else if let Some(mut s) = pc.rtp_sender(sender) {
                        let rtp = rtc::rtp::Packet { header: rtc::rtp::header::Header { version: 2, marker, payload_type: pt, sequence_number: sequence, timestamp: ts, ssrc, ..Default::default() }, payload };
                        match s.write_rtp(now, rtp) {
                            Ok(()) if pt == 111 => report.packets_sent += 1,
                            Ok(()) => {}
                            Err(e) => eprintln!("client write_rtp pt {pt}: {e}"),
                        }
                    }
                    sequence = sequence.wrapping_add(1);
                    timestamp = timestamp.wrapping_add(960);
                }
            }
            r = socket.recv_from(&mut buf) => {
                let (n, peer): (usize, SocketAddr) = r?;
                // Light mode counts the audio coming back from its header, which SRTP leaves in
                // the clear (RFC 3711 §3.1): it neither decodes nor checks it, so it need not
                // decrypt it either.
                if options.light && report.media_connected && is_rtp(&buf[..n]) {
                    if let Ok(p) = RtpPacket::parse(&buf[..n])
                        && p.payload_type == 111
                    {
                        arrivals.opus(&mut report, (p.sequence, p.timestamp, p.marker), answered_at, options.measure_window, restarted);
                    }
                    continue;
                }
                let _ = pc.handle_read(TaggedBytesMut { now: Instant::now(), transport: TransportContext { local_addr: local, peer_addr: peer, ecn: None, transport_protocol: TransportProtocol::UDP }, message: BytesMut::from(&buf[..n]) });
            }
            _ = tokio::time::sleep_until(timer.into()) => {
                let _ = pc.handle_timeout(Instant::now());
            }
            coded = async { loop_coding.as_mut().expect("guarded").await }, if loop_coding.is_some() => {
                loop_coding = None;
                tone_loop = coded??;
            }
            msg = ws.next() => {
                let Some(Ok(Message::Text(t))) = msg else { break };
                let v: Value = serde_json::from_str(&t)?;
                let kind = v["type"].as_str().unwrap_or("").to_string();
                report.messages.push(kind.clone());
                match kind.as_str() {
                    "answer" => {
                        report.call_id = v["call_id"].as_str().map(str::to_owned);
                        resume_token = v["resume_token"].as_str().unwrap_or("").to_owned();
                        pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(v["sdp"].as_str().unwrap_or("").to_owned())?)?;
                        start_sending(&mut opus_sender, &mut tone_loop, &mut loop_coding, v["sdp"].as_str().unwrap_or(""), options, &mut report)?;
                    }
                    "incoming" if report.call_id.is_none() && options.ignore_incoming => {
                        report.call_id = v["call_id"].as_str().map(str::to_owned);
                    }
                    "incoming" if report.call_id.is_none() => {
                        report.call_id = v["call_id"].as_str().map(str::to_owned);
                        resume_token = v["resume_token"].as_str().unwrap_or("").to_owned();
                        report.incoming = Some(v.clone());
                        pc.set_remote_description(Instant::now(), RTCSessionDescription::offer(v["sdp"].as_str().unwrap_or("").to_owned())?)?;
                        start_sending(&mut opus_sender, &mut tone_loop, &mut loop_coding, v["sdp"].as_str().unwrap_or(""), options, &mut report)?;
                        let answer = pc.create_answer(None)?;
                        pc.set_local_description(Instant::now(), answer)?;
                        let sdp = pc.local_description().map(|d| d.sdp).unwrap_or_default();
                        ws.send(text(&json!({"type": "answer", "call_id": report.call_id, "sdp": sdp}))).await?;
                        call_sent = Instant::now();
                    }
                    "renegotiation_needed" => {
                        // The trunk settled on another width: a new offer, as a browser's
                        // `negotiationneeded` makes, on the same ICE credentials.
                        let offer = pc.create_offer(None)?;
                        pc.set_local_description(Instant::now(), offer)?;
                        let sdp = pc.local_description().map(|d| d.sdp).unwrap_or_default();
                        ws.send(text(&json!({"type": "renegotiate", "call_id": report.call_id, "sdp": sdp}))).await?;
                    }
                    "renegotiated" => {
                        let sdp = v["sdp"].as_str().unwrap_or("");
                        pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(sdp.to_owned())?)?;
                        recode(&mut opus_sender, &mut loop_coding, sdp, options, &mut report)?;
                    }
                    "answered" => {
                        answered_at = Some(Instant::now());
                        report.setup_ms = Some(call_sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    "reconnect" if options.reconnect_to.is_some() => {
                        let fresh = connect(options.reconnect_to.as_deref().unwrap_or_default()).await?;
                        ws = fresh;
                        if let Some(token) = &options.token {
                            ws.send(text(&json!({"type": "auth", "token": token}))).await?;
                        }
                        ws.send(text(&json!({"type": "register", "identity": options.answer_as}))).await?;
                    }
                    "dtmf" => report.dtmf_received.push_str(v["digit"].as_str().unwrap_or("")),
                    "ended" => report.ended = Some(v),
                    "error" => {
                        // A refused resume leaves this client without its call.
                        let fatal = report.call_id.is_none() || v["code"] == "resume_refused";
                        report.errors.push(v);
                        if fatal { break; }
                    }
                    _ => {}
                }
            }
        }
    }
    arrivals.finish(&mut report);
    let r = detector.report();
    report.tone_snr_db = r
        .snr_db
        .is_finite()
        .then_some((r.snr_db * 10.0).round() / 10.0);
    let w = window_detector.report();
    report.window_tone_snr_db = w
        .snr_db
        .is_finite()
        .then_some((w.snr_db * 10.0).round() / 10.0);
    let _ = pc.close();
    Ok(report)
}

/// The gateway's audio as it arrives: counts, loss from sequence gaps and RFC 3550 §6.4.1
/// interarrival jitter.
struct Arrivals {
    started: Instant,
    /// The previous packet's transit time, in 48 kHz timestamp units.
    transit_prev: Option<f64>,
    jitter: f64,
    first_seq: Option<u16>,
    highest_seq: u64,
    /// The last audio packet's timestamp.
    last_timestamp: Option<u32>,
}

impl Arrivals {
    fn new() -> Self {
        Arrivals {
            started: Instant::now(),
            transit_prev: None,
            jitter: 0.0,
            first_seq: None,
            highest_seq: 0,
            last_timestamp: None,
        }
    }

    /// Counts one Opus packet; true when it arrived inside `window` (seconds after the answer).
    fn opus(
        &mut self,
        report: &mut CallReport,
        (sequence, timestamp, marker): (u16, u32, bool),
        answered_at: Option<Instant>,
        window: Option<(f64, f64)>,
        restarted: bool,
    ) -> bool {
        report.packets_received += 1;
        // More than a 20 ms frame past the last packet: a gap, which should start a talkspurt
        // (RFC 3551 §4.1).
        let ahead = self
            .last_timestamp
            .map_or(0, |last| timestamp.wrapping_sub(last) as i32);
        self.last_timestamp = Some(timestamp);
        if ahead > 960 {
            report.gaps += 1;
            report.unmarked_gaps += u64::from(!marker);
        }
        if restarted {
            report.packets_after_restart += 1;
        }
        let arrival = self.started.elapsed().as_secs_f64() * 48_000.0;
        let transit = arrival - timestamp as f64;
        if let Some(prev) = self.transit_prev {
            let d = (transit - prev).abs();
            // A timestamp jump (new talkspurt, wrap) is not jitter.
            if d < 48_000.0 {
                self.jitter += (d - self.jitter) / 16.0;
            }
        }
        self.transit_prev = Some(transit);
        let first = *self.first_seq.get_or_insert(sequence);
        self.highest_seq = self.highest_seq.max(sequence.wrapping_sub(first) as u64);
        if answered_at.is_none() {
            report.early_packets += 1;
        }
        let in_window = match (answered_at, window) {
            (Some(at), Some((from, to))) => {
                let t = at.elapsed().as_secs_f64();
                t >= from && t < to
            }
            _ => false,
        };
        if in_window {
            report.window_packets += 1;
        }
        in_window
    }

    /// Loss and jitter into the report.
    fn finish(&self, report: &mut CallReport) {
        if self.first_seq.is_some() {
            report.packets_lost = (self.highest_seq + 1).saturating_sub(report.packets_received);
            report.jitter_ms = Some((self.jitter / 48.0 * 100.0).round() / 100.0);
        }
    }
}

/// A host candidate for the local socket.
fn host_candidate(local: SocketAddr) -> anyhow::Result<RTCIceCandidateInit> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    Ok(RTCIceCandidate::from(&candidate).to_json()?)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Sets up the call's Opus sender from the gateway's first description, or when it sends a
/// tone loop ([`CallOptions::sends_tone_loop`]) has the loop for it taken on a blocking thread
/// (`coding`, [`tone_loop_for`]).
///
/// Why not here: the first caller of a process codes the loop, 100 frames at 48 kHz, some 20
/// ms. Coded on the call's task, it held up the call's signaling and ICE meanwhile: the first
/// call of every `loadgen --light` run read 20 ms of set-up, which at 50 calls was the p99
/// (the gateway's own INVITE to 2xx for that call: 1.3–3.8 ms).
fn start_sending(
    sender: &mut Option<BrowserOpus>,
    tone_loop: &mut Arc<[Bytes]>,
    coding: &mut Option<tokio::task::JoinHandle<anyhow::Result<Arc<[Bytes]>>>>,
    description: &str,
    options: &CallOptions,
    report: &mut CallReport,
) -> anyhow::Result<()> {
    report.far_end_opus_fmtp = crate::browser_opus::opus_parameters(description).map(str::to_owned);
    if sender.is_some() || !tone_loop.is_empty() || coding.is_some() {
        return Ok(());
    }
    code_for(sender, coding, description, options, report)
}

/// A new answer's Opus caps, applied as a browser's encoder applies them: a caller whose far
/// end now plays another width codes anew for it (the tone loop is coded aside, the old one
/// sent meanwhile).
fn recode(
    sender: &mut Option<BrowserOpus>,
    coding: &mut Option<tokio::task::JoinHandle<anyhow::Result<Arc<[Bytes]>>>>,
    description: &str,
    options: &CallOptions,
    report: &mut CallReport,
) -> anyhow::Result<()> {
    report.far_end_opus_fmtp = crate::browser_opus::opus_parameters(description).map(str::to_owned);
    if report.far_end_playback_hz == Some(crate::browser_opus::max_playback_rate(description)) {
        return Ok(());
    }
    code_for(sender, coding, description, options, report)
}

/// Codes the tone for the far end's `description`: the coder, or the tone loop on the
/// blocking pool (see [`start_sending`]).
fn code_for(
    sender: &mut Option<BrowserOpus>,
    coding: &mut Option<tokio::task::JoinHandle<anyhow::Result<Arc<[Bytes]>>>>,
    description: &str,
    options: &CallOptions,
    report: &mut CallReport,
) -> anyhow::Result<()> {
    report.far_end_playback_hz = Some(crate::browser_opus::max_playback_rate(description));
    if options.sends_tone_loop() {
        let (description, options) = (description.to_owned(), options.clone());
        *coding = Some(tokio::task::spawn_blocking(move || {
            tone_loop_for(&description, &options)
        }));
    } else {
        *sender = Some(tone_coder(description, options)?);
    }
    Ok(())
}

/// The call's tone coded as a browser codes a caller's voice for the far end's
/// `description` (or full band, with [`CallOptions::full_band`]).
fn tone_coder(description: &str, options: &CallOptions) -> anyhow::Result<BrowserOpus> {
    let mut opus = if options.full_band {
        BrowserOpus::coding_up_to(48_000, true, options.tone_hz)?
    } else {
        BrowserOpus::new(description, options.tone_hz)?
    };
    // The tone stands in for a caller's voice: coded as a browser codes speech.
    opus.code_as_speech()?;
    Ok(opus)
}

/// The one-second tone loop a caller with `options` sends for the far end's `description`:
/// what `loadgen --light`'s callers send, and what the media bench's load floor codes.
pub fn tone_loop_for(description: &str, options: &CallOptions) -> anyhow::Result<Arc<[Bytes]>> {
    let key = format!(
        "{} {} {}",
        options.full_band,
        options.tone_hz,
        crate::browser_opus::opus_parameters(description).unwrap_or("")
    );
    tone_loop(&key, || tone_coder(description, options))
}

/// One second of the tone as `coder` codes it, coded once per process for each way of coding
/// it (`key`): a load of callers then costs the generator no encoding, at set-up or after
/// (each light caller used to code its own loop, 50 frames of 48 kHz at complexity 9). The
/// loop is the coder's second second: by then it codes the steady tone as it goes on doing,
/// so the seam (the far end's decoder given the loop's first packet after its last) is like
/// any other frame boundary, 1004 Hz having a whole number of periods a second.
fn tone_loop(
    key: &str,
    coder: impl FnOnce() -> anyhow::Result<BrowserOpus>,
) -> anyhow::Result<Arc<[Bytes]>> {
    static LOOPS: Mutex<Vec<(String, Arc<[Bytes]>)>> = Mutex::new(Vec::new());
    let mut loops = LOOPS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, coded)) = loops.iter().find(|(k, _)| k == key) {
        return Ok(coded.clone());
    }
    let mut opus = coder()?;
    let mut packet = [0u8; MAX_PACKET];
    let mut coded = Vec::with_capacity(50);
    for frame in 0..100 {
        let n = opus.next_packet(&mut packet)?;
        if frame >= 50 {
            coded.push(Bytes::copy_from_slice(&packet[..n]));
        }
    }
    let coded: Arc<[Bytes]> = coded.into();
    loops.push((key.to_owned(), coded.clone()));
    Ok(coded)
}
