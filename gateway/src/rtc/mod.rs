//! The browser leg on webrtc-rs's sans-IO core (`rtc` 0.21): ICE-lite, DTLS-SRTP, one Opus
//! track each way and RFC 4733 events from the browser.
//!
//! A [`BrowserLeg`] never touches a socket. All browser media share one UDP port: the media
//! task owns the socket and hands each datagram to the leg it belongs to, found by the STUN
//! USERNAME on first contact ([`stun_username_ufrag`]) and by the peer's address after.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ::rtc::media_stream::MediaStreamTrack;
use ::rtc::peer_connection::RTCPeerConnection;
use ::rtc::peer_connection::RTCPeerConnectionBuilder;
use ::rtc::peer_connection::configuration::RTCConfigurationBuilder;
use ::rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use ::rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use ::rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use ::rtc::peer_connection::sdp::RTCSessionDescription;
use ::rtc::peer_connection::state::RTCPeerConnectionState;
use ::rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use ::rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use ::rtc::sansio::Protocol;
use ::rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use bytes::{Bytes, BytesMut};

mod audio;
pub mod ice_servers;
pub mod mux;
mod reports;
mod sdp;

pub use sdp::{AudioCaps, cap_audio, opus_codec, telephone_event_codec};
use sdp::{DTMF_PT, OPUS_PT, ice_ufrag, media_engine, negotiated_payload_types, relay_candidates};

use crate::media::dtmf::DtmfReceiver;
use crate::media::srtp::InboundSsrcs;

/// Why the browser leg could not be set up or failed.
#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    /// The browser's SDP offer was refused.
    #[error("the SDP offer cannot be used: {0}")]
    BadOffer(String),
    /// The offer has no audio we can receive (Opus is required).
    #[error("the SDP offer has no Opus audio; offer an audio track with Opus")]
    NoOpus,
    /// The WebRTC stack refused an operation.
    #[error("WebRTC error: {0}")]
    Stack(String),
}

fn stack(e: impl std::fmt::Display) -> RtcError {
    RtcError::Stack(e.to_string())
}

fn bad_offer(e: impl std::fmt::Display) -> RtcError {
    RtcError::BadOffer(e.to_string())
}

/// What the leg reports to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserEvent {
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// Nothing came from the browser for a while (ICE `disconnected`, RFC 7675 consent not
    /// refreshed): its network may be changing, and an ICE restart can bring it back.
    Interrupted,
    /// The connection failed (no ICE path for some 30 s) or closed.
    Failed,
    /// An Opus packet from the browser.
    Opus {
        /// RTP sequence number counting audio packets only (for loss detection): the
        /// sequence numbers RFC 4733 event packets took are not missing audio.
        sequence: u16,
        /// RTP timestamp (48 kHz clock).
        timestamp: u32,
        /// The Opus packet.
        payload: Bytes,
    },
    /// A DTMF digit (RFC 4733) from the browser's RTCDTMFSender.
    Dtmf(char),
    /// The browser's RTCP report on the audio we send it: the fraction of packets lost since
    /// its previous report, in 1/256 (RFC 3550 §6.4.1).
    ReceiverReport {
        /// Fraction lost, 0-255.
        fraction_lost: u8,
    },
}

/// The gateway's DTLS certificate, generated once per process and shared by every browser
/// leg. Generating an ECDSA key per call cost ~40 ms of call setup; a browser checks the
/// fingerprint carried in the (authenticated) signaling, not the certificate's identity, so
/// one certificate serves all calls, as RTCPeerConnection.generateCertificate() allows.
/// A restart rotates it.
#[derive(Clone)]
pub struct DtlsCertificate(::rtc::peer_connection::certificate::RTCCertificate);

impl std::fmt::Debug for DtlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DtlsCertificate")
    }
}

impl DtlsCertificate {
    /// A fresh ECDSA P-256 certificate.
    pub fn generate() -> Result<DtlsCertificate, RtcError> {
        let provider = ::rtc::crypto::default_provider().map_err(stack)?;
        let params =
            ::rtc::peer_connection::certificate::CertificateParams::new(vec!["gateway".to_owned()])
                .map_err(stack)?;
        let certificate = ::rtc::peer_connection::certificate::RTCCertificate::generate(
            provider.crypto(),
            ::rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            params,
        )
        .map_err(stack)?;
        Ok(DtlsCertificate(certificate))
    }
}

/// One browser's peer connection.
pub struct BrowserLeg {
    pc: RTCPeerConnection,
    local: SocketAddr,
    ufrag: String,
    ssrc: u32,
    opus_pt: u8,
    dtmf_pt: Option<u8>,
    /// What the call's trunk side carries: what our descriptions let the browser's encoder
    /// code ([`cap_audio`]).
    audio: AudioCaps,
    /// The Opus modes our last description to the browser preferred (RFC 7587 §6.1).
    told_modes: crate::media::description::OpusModes,
    sequence: u16,
    timestamp: u32,
    /// Relayed Opus on our clock, so the trunk's timing (silences included) reaches the
    /// browser as it was.
    relay: crate::media::rtp::RelayClock,
    dtmf: DtmfReceiver,
    events: std::collections::VecDeque<BrowserEvent>,
    /// Browser addresses whose ICE checks the stack answered with success: the only ones
    /// DTLS and SRTP are taken from.
    validated: Vec<SocketAddr>,
    /// The browser's relay candidates (a TURN server's relayed addresses), from its SDP.
    relay_candidates: Vec<SocketAddr>,
    /// Where the browser's DTLS and SRTP last came from.
    media_from: Option<SocketAddr>,
    /// Where our SRTP goes: ICE's selected pair's remote address, as the stack last had it
    /// (see `drain`).
    media_to: Option<SocketAddr>,
    /// RTP packets of RFC 4733 events received so far, and the last one's sequence: events
    /// share the audio's sequence space (RFC 4733 §2.1), so audio sequences are reported
    /// with them taken out, and the bridge does not take a digit for lost audio.
    event_packets: u16,
    last_event_sequence: Option<u16>,
    /// The browser's RTP SSRCs the inbound SRTP context has state for.
    inbound_ssrcs: InboundSsrcs,
    /// Buffers of protected RTP the call sent and gave back ([`Self::reuse`]), for the next
    /// packets: audio to the browser allocates nothing per packet.
    spare: Vec<BytesMut>,
    /// Protected RTP waiting for [`Self::poll_transmit`], after what the stack sends.
    outbox: std::collections::VecDeque<(BytesMut, SocketAddr)>,
    /// The stack was called since its last datagram was taken (see `drain`).
    stack_may_write: bool,
    /// The stack's next deadline, while it was not called since it was asked (see
    /// [`Self::poll_timeout`]).
    stack_deadline: Option<Option<Instant>>,
    /// ICE and DTLS completed: the stack's timers run at most every [`CONNECTED_TICK`].
    connected: bool,
    /// When [`Self::handle_timeout`] last ran.
    timers_ran: Option<Instant>,
}

/// Once ICE and DTLS have completed, the stack's timers run at most this often.
///
/// Why: the only timer the stack then keeps is the ICE agent's check that the browser is
/// still heard from (`disconnected` after 5 s of silence, `failed` after 25 s), and the agent
/// asks for it every 200 ms whatever its settings (`rtc-ice`'s `get_timeout_interval` only
/// ever lowers its 200 ms default): five wake-ups of the call a second, each walking every
/// handler and interceptor of the stack, for a verdict that can come up to a second later at
/// no cost (2,479 runs in 5 s at 100 relayed calls, docs/benchmarks-history.md §2). Audio bypasses
/// the stack ([`BrowserLeg::handle_datagram`]), and an ICE-lite agent sends no checks of its own
/// on a timer (RFC 8445 §2.5), so nothing else waits on it.
const CONNECTED_TICK: Duration = Duration::from_secs(1);

/// Validated pairs one leg keeps; a browser has a handful of candidates at most.
const MAX_VALIDATED: usize = 8;

/// RFC 7983 §7: a first byte of 0–3 is STUN; everything else (DTLS, SRTP) needs a pair.
fn is_stun(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| *b < 4)
}

/// SRTP rather than SRTCP or DTLS: a first byte of 128–191 (RFC 7983 §7) and a second byte
/// that is not an RTCP packet type 192–223 (RFC 5761 §4; the marker bit set with payload
/// types 64–95, which RFC 5761 §4 keeps out of use for this reason).
pub fn is_rtp(datagram: &[u8]) -> bool {
    matches!(datagram, [128..=191, second, ..] if !(192..=223).contains(second))
}

/// A STUN Binding success response (RFC 5389 §6: type 0x0101, magic cookie).
fn is_binding_success(datagram: &[u8]) -> bool {
    datagram.len() >= 20
        && datagram[0..2] == [0x01, 0x01]
        && datagram[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

impl std::fmt::Debug for BrowserLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLeg")
            .field("ufrag", &self.ufrag)
            .finish_non_exhaustive()
    }
}

impl BrowserLeg {
    fn build(
        certificate: &DtlsCertificate,
        now: Instant,
    ) -> Result<(RTCPeerConnection, u32), RtcError> {
        // The stack draws the ICE credentials (RFC 8445 §5.3), and new ones at an ICE
        // restart: fixed ones in the setting engine would be reused by a restart, which
        // RFC 8839 §4.4.1.1.2 forbids and a restarting peer may not accept.
        let settings = SettingEngineBuilder::new().with_lite(true).build();
        let pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![certificate.0.clone()])
                    .build(),
            )
            .with_setting_engine(settings)
            .with_media_engine(media_engine()?)
            // Application-most, past every built-in slot: it only marks what reaches us.
            .with_interceptor_registry(::rtc::interceptor::Registry::new().with(
                ::rtc::interceptor::Slot::Custom(14_000),
                reports::DeliverReports::default(),
            ))
            .build(now)
            .map_err(stack)?;
        Ok((pc, rand::random()))
    }

    fn add_track_and_candidate(
        pc: &mut RTCPeerConnection,
        ssrc: u32,
        local: SocketAddr,
        advertised: IpAddr,
    ) -> Result<(), RtcError> {
        let track = MediaStreamTrack::new(
            "gateway".to_owned(),
            "gateway-audio".to_owned(),
            "gateway".to_owned(),
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
        pc.add_track(track).map_err(stack)?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: advertised.to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(stack)?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json().map_err(stack)?)
            .map_err(stack)
    }

    fn finish(
        pc: RTCPeerConnection,
        local: SocketAddr,
        advertised: IpAddr,
        sdp: &str,
        ssrc: u32,
    ) -> Result<BrowserLeg, RtcError> {
        let ufrag = ice_ufrag(sdp)
            .ok_or_else(|| stack("our SDP has no a=ice-ufrag"))?
            .to_owned();
        let mut leg = BrowserLeg {
            pc,
            // The stack matches incoming datagrams to our candidate by local address, so
            // datagrams are tagged with the advertised address even when the socket is bound
            // to 0.0.0.0 or a private address behind 1:1 NAT.
            local: SocketAddr::new(advertised, local.port()),
            ufrag,
            ssrc,
            opus_pt: OPUS_PT,
            dtmf_pt: Some(DTMF_PT),
            audio: AudioCaps::up_to(48_000),
            told_modes: Default::default(),
            sequence: rand::random(),
            timestamp: rand::random(),
            relay: Default::default(),
            dtmf: DtmfReceiver::new(),
            events: Default::default(),
            validated: Vec::new(),
            relay_candidates: Vec::new(),
            media_from: None,
            media_to: None,
            event_packets: 0,
            last_event_sequence: None,
            inbound_ssrcs: InboundSsrcs::default(),
            spare: Vec::new(),
            outbox: Default::default(),
            stack_may_write: true,
            stack_deadline: None,
            connected: false,
            timers_ran: None,
        };
        leg.drain();
        Ok(leg)
    }

    /// Answers a browser's offer. `local` is the shared media socket's address and
    /// `advertised` the IP the browser should send to (the public IP behind 1:1 NAT). The
    /// answer carries our only candidate, so no trickle round-trip is needed. `audio` is what
    /// the call's trunk side carries (8 kHz for G.711, 16 kHz for G.722, up to 48 kHz when
    /// Opus may be relayed): the browser is asked to code no wider.
    pub fn answer(
        offer_sdp: &str,
        local: SocketAddr,
        advertised: IpAddr,
        certificate: &DtlsCertificate,
        audio: AudioCaps,
        now: Instant,
    ) -> Result<(BrowserLeg, String), RtcError> {
        let (mut pc, ssrc) = Self::build(certificate, now)?;
        let offer = RTCSessionDescription::offer(offer_sdp.to_owned()).map_err(bad_offer)?;
        pc.set_remote_description(now, offer).map_err(bad_offer)?;
        Self::add_track_and_candidate(&mut pc, ssrc, local, advertised)?;
        let answer = pc.create_answer(None).map_err(bad_offer)?;
        pc.set_local_description(now, answer).map_err(stack)?;
        let sdp = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| stack("no local description after answering"))?;
        let (opus_pt, dtmf_pt) = negotiated_payload_types(&sdp).ok_or(RtcError::NoOpus)?;
        let mut leg = Self::finish(pc, local, advertised, &sdp, ssrc)?;
        leg.opus_pt = opus_pt;
        leg.dtmf_pt = dtmf_pt;
        leg.audio = audio;
        leg.relay_candidates = relay_candidates(offer_sdp);
        let answer = leg.describe(&sdp);
        Ok((leg, answer))
    }

    /// Offers a call to a browser (inbound calls); complete with [`Self::accept_answer`].
    /// `audio` as for [`Self::answer`].
    pub fn offer(
        local: SocketAddr,
        advertised: IpAddr,
        certificate: &DtlsCertificate,
        audio: AudioCaps,
        now: Instant,
    ) -> Result<(BrowserLeg, String), RtcError> {
        let (mut pc, ssrc) = Self::build(certificate, now)?;
        Self::add_track_and_candidate(&mut pc, ssrc, local, advertised)?;
        let offer = pc.create_offer(None).map_err(stack)?;
        pc.set_local_description(now, offer).map_err(stack)?;
        let sdp = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| stack("no local description after offering"))?;
        let mut leg = Self::finish(pc, local, advertised, &sdp, ssrc)?;
        leg.audio = audio;
        let offer = leg.describe(&sdp);
        Ok((leg, offer))
    }

    /// Applies the browser's answer to our offer.
    pub fn accept_answer(&mut self, answer_sdp: &str, now: Instant) -> Result<(), RtcError> {
        let (opus_pt, dtmf_pt) = negotiated_payload_types(answer_sdp).ok_or(RtcError::NoOpus)?;
        let answer = RTCSessionDescription::answer(answer_sdp.to_owned()).map_err(bad_offer)?;
        self.pc
            .set_remote_description(now, answer)
            .map_err(bad_offer)?;
        self.opus_pt = opus_pt;
        self.dtmf_pt = dtmf_pt;
        self.relay_candidates = relay_candidates(answer_sdp);
        self.drain();
        Ok(())
    }

    /// Answers a new offer from the browser on a live call (RFC 8829 §5.3.2), with the audio
    /// caps the trunk side now asks for: one it made because the gateway asked
    /// ([`Self::set_audio`]), or an ICE restart. One with new ICE credentials is an ICE
    /// restart (RFC 8445 §9): the stack draws new local credentials too, so [`Self::ufrag`]
    /// changes and the media port must route the new one, and new checks pick the path. DTLS
    /// and SRTP go on unchanged over it (RFC 8842 §4).
    pub fn renegotiate(&mut self, offer_sdp: &str, now: Instant) -> Result<String, RtcError> {
        // Checked before the stack applies anything: a restart cannot be rolled back.
        negotiated_payload_types(offer_sdp).ok_or(RtcError::NoOpus)?;
        let offer = RTCSessionDescription::offer(offer_sdp.to_owned()).map_err(bad_offer)?;
        self.pc
            .set_remote_description(now, offer)
            .map_err(bad_offer)?;
        let answer = self.pc.create_answer(None).map_err(bad_offer)?;
        self.pc.set_local_description(now, answer).map_err(stack)?;
        let sdp = self
            .pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| stack("no local description after answering"))?;
        let (opus_pt, dtmf_pt) = negotiated_payload_types(&sdp).ok_or(RtcError::NoOpus)?;
        self.opus_pt = opus_pt;
        self.dtmf_pt = dtmf_pt;
        if let Some(ufrag) = ice_ufrag(&sdp) {
            self.ufrag = ufrag.to_owned();
        }
        for relay in relay_candidates(offer_sdp) {
            if !self.relay_candidates.contains(&relay)
                && self.relay_candidates.len() < MAX_VALIDATED
            {
                self.relay_candidates.push(relay);
            }
        }
        self.drain();
        Ok(self.describe(&sdp))
    }

    /// The stack's description `sdp` as the browser is sent it, with [`Self::audio`]'s caps.
    fn describe(&mut self, sdp: &str) -> String {
        let text = cap_audio(sdp, self.opus_pt, self.audio);
        self.told_modes = sdp::opus_modes(&text, self.opus_pt);
        text
    }

    /// Where the browser's DTLS and SRTP last came from.
    pub fn media_source(&self) -> Option<SocketAddr> {
        self.media_from
    }

    /// True when the browser's media comes through a TURN relay: its DTLS and SRTP arrive
    /// from one of its `typ relay` candidates.
    pub fn relayed(&self) -> bool {
        self.media_from
            .is_some_and(|p| self.relay_candidates.contains(&p))
    }

    /// The call's trunk side now carries `audio` (its answer settled on a codec, or a
    /// re-INVITE moved it). True when that differs from what our last description told the
    /// browser: only a new answer re-tells its encoder (RFC 7587 §6.1), so the browser is to be
    /// asked for a new offer, which [`Self::renegotiate`] answers with the new caps.
    pub fn set_audio(&mut self, audio: AudioCaps) -> bool {
        let told = self.told_modes;
        let asked = |c: AudioCaps| (c.hz.min(48_000), c.bitrate(), c.modes.unwrap_or(told));
        let changed = asked(self.audio) != asked(audio);
        self.audio = audio;
        changed
    }

    /// Our ICE username fragment: STUN requests from the browser carry it first in USERNAME.
    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }

    /// Feeds a datagram from `peer` (STUN, DTLS, SRTP or SRTCP). Returns false, and drops
    /// it, when it is DTLS or SRTP from an address no ICE check validated (RFC 8445 §7.3.1.4:
    /// only the valid pair carries media; anything else is a stranger's).
    ///
    /// SRTP is unprotected here with the keys DTLS-SRTP agreed, not by the stack: its
    /// pipeline of queues per packet cost more than the audio's codec work on a relayed
    /// call (vendor/README.md). STUN, DTLS and SRTCP go to the stack.
    pub fn handle_datagram(
        &mut self,
        mut datagram: BytesMut,
        peer: SocketAddr,
        now: Instant,
    ) -> bool {
        if !is_stun(&datagram) {
            if !self.validated.contains(&peer) {
                return false;
            }
            self.media_from = Some(peer);
            if is_rtp(&datagram) {
                match self.unprotect(&mut datagram) {
                    Ok(plain) => {
                        datagram.truncate(plain);
                        self.handle_rtp(datagram.freeze());
                    }
                    Err(e) => tracing::debug!(error = %e, %peer, "browser SRTP refused"),
                }
                return true;
            }
        }
        let message = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: peer,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: datagram,
        };
        if let Err(e) = self.pc.handle_read(message) {
            tracing::debug!(error = %e, %peer, "browser datagram refused");
        }
        self.drain();
        true
    }

    /// Runs due timers: ICE's check that the browser is still heard from, and DTLS's
    /// retransmissions while the handshake runs.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.timers_ran = Some(now);
        if let Err(e) = self.pc.handle_timeout(now) {
            tracing::debug!(error = %e, "browser leg timer");
        }
        self.drain();
    }

    /// When [`Self::handle_timeout`] wants to run.
    ///
    /// Asked of the stack only after it was called: its timers (ICE, DTLS) move
    /// only then, since established audio bypasses it, and asking walks every one of its
    /// handlers and interceptors, which the call did after each of its packets. Once
    /// connected, no sooner than [`CONNECTED_TICK`] after the timers last ran.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let asked = *self
            .stack_deadline
            .get_or_insert_with(|| self.pc.poll_timeout());
        match self.timers_ran {
            Some(ran) if self.connected => asked.map(|at| at.max(ran + CONNECTED_TICK)),
            _ => asked,
        }
    }

    /// The next datagram to send and where.
    pub fn poll_transmit(&mut self) -> Option<(BytesMut, SocketAddr)> {
        let written = self
            .stack_may_write
            .then(|| self.pc.poll_write())
            .flatten()
            .map(|m| (m.message, m.transport.peer_addr));
        let Some((bytes, peer)) = written else {
            self.stack_may_write = false;
            return self.outbox.pop_front();
        };
        self.stack_deadline = None;
        // The stack answers a check with success only when its MESSAGE-INTEGRITY proved the
        // sender knows our ICE password: from then on the address is a validated pair.
        if is_binding_success(&bytes) && !self.validated.contains(&peer) {
            if self.validated.len() == MAX_VALIDATED {
                self.validated.remove(0);
            }
            self.validated.push(peer);
        }
        Some((bytes, peer))
    }

    /// Takes back a datagram [`Self::poll_transmit`] gave once it is sent. Only this leg's
    /// own audio buffers are kept (by their size, at most two): one the stack made may be a
    /// view of a larger buffer, which keeping would keep whole.
    pub fn reuse(&mut self, mut bytes: BytesMut) {
        if bytes.capacity() == audio::PACKET_BUFFER && self.spare.len() < 2 {
            bytes.clear();
            self.spare.push(bytes);
        }
    }

    /// The next event for the call.
    pub fn poll_event(&mut self) -> Option<BrowserEvent> {
        self.events.pop_front()
    }

    /// Collects what the stack reported, after each call into it. The stack only acts when
    /// called (sans-I/O), so [`Self::poll_event`] and [`Self::poll_transmit`] do not pump
    /// its pipeline otherwise: the call polls after every packet, and pumping it for nothing
    /// was a visible share of a call's CPU.
    ///
    /// It also takes ICE's selected pair, which the stack changes only while it is called:
    /// kept here, the audio sent between those calls does not walk the ICE agent's pairs and
    /// candidates for it per packet.
    fn drain(&mut self) {
        self.stack_may_write = true;
        self.stack_deadline = None;
        self.media_to = self.pc.selected_remote();
        while let Some(event) = self.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Connected,
                ) => {
                    self.connected = true;
                    self.events.push_back(BrowserEvent::Connected)
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Disconnected,
                ) => self.events.push_back(BrowserEvent::Interrupted),
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed,
                ) => self.events.push_back(BrowserEvent::Failed),
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(_)) => {}
                _ => {}
            }
        }
        // RTP never reaches the stack (see `handle_datagram`); its RTCP does.
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtcpPacket(_, packets) = message {
                self.receiver_reports(&packets);
            }
        }
    }

    /// Closes the peer connection.
    pub fn close(&mut self) {
        let _ = self.pc.close();
        self.drain();
    }
}

/// The local (first) ufrag of a STUN Binding request's USERNAME (`local:remote`,
/// RFC 8445 §7.2.2), used to find the leg a new browser address belongs to.
pub fn stun_username_ufrag(datagram: &[u8]) -> Option<&str> {
    // RFC 5389 §6: type 0x0001 (Binding request), magic cookie 0x2112A442, 20-byte header.
    if datagram.len() < 20
        || datagram[0..2] != [0x00, 0x01]
        || datagram[4..8] != [0x21, 0x12, 0xA4, 0x42]
    {
        return None;
    }
    let mut at = 20;
    while at + 4 <= datagram.len() {
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]) as usize;
        let value = datagram.get(at + 4..at + 4 + len)?;
        if kind == 0x0006 {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests;
