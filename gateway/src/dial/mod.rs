//! `gateway dial`: one real call through a configured trunk, with a probe tone and optional
//! DTMF, reporting what happened on the SIP and RTP level. An operator's first check of a
//! trunk, and the end-to-end tests' driver of the trunk leg.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::media::dtmf::validate_digits;
use crate::media::session::{FRAME_SAMPLES, Received, RtpStream};
use crate::media::tone::{ToneDetector, ToneGenerator};
use crate::sip::endpoint::{Endpoint, EndpointConfig};
use crate::sip::message::response_to;
use crate::sip::sdp::{self, Direction, LocalMedia};
use crate::sip::transaction::Timers;
use crate::sip::trunk::{CallRequest, InDialog, Progress, Trunks, place_call};

/// SNR above which the probe tone counts as detected. Plain G.711 round trips measure
/// 30-40 dB; anything under 10 dB is not the tone we sent.
pub const TONE_DETECT_SNR_DB: f64 = 10.0;

/// What to dial.
#[derive(Debug, Clone)]
pub struct DialOptions {
    /// Trunk to use first (its failover chain follows).
    pub trunk: String,
    /// Number to call.
    pub to: String,
    /// Caller ID user part; the trunk's `from_user` by default.
    pub from: Option<String>,
    /// How long to stay connected.
    pub seconds: f64,
    /// Probe tone frequency in Hz.
    pub tone_hz: f64,
    /// DTMF digits to send (RFC 4733) once connected.
    pub dtmf: Option<String>,
    /// Give up (CANCEL) if not answered within this long.
    pub answer_timeout: Duration,
}

/// The outcome of one dial, printed as JSON with `--json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DialReport {
    /// Final SIP status of the INVITE (200 when connected).
    pub sip_code: u16,
    /// Reason, in words.
    pub reason: String,
    /// The call was answered.
    pub connected: bool,
    /// The trunk that answered (or the last one tried).
    pub trunk_used: Option<String>,
    /// INVITE sent → 2xx received, milliseconds (failover attempts included).
    pub setup_ms: Option<f64>,
    /// Provisional responses seen, in order (e.g. `[180, 183]`).
    pub provisional: Vec<u16>,
    /// RTP packets received before the answer (early media).
    pub early_rtp_received: u64,
    /// The probe tone came back before the answer.
    pub early_tone_detected: bool,
    /// RTP packets sent.
    pub rtp_sent: u64,
    /// RTP packets received.
    pub rtp_received: u64,
    /// The probe tone came back after the answer (echo endpoints).
    pub tone_detected: bool,
    /// Median SNR of the returned tone, dB (absent when nothing audible came back).
    pub tone_snr_db: Option<f64>,
    /// Digits sent.
    pub dtmf_sent: String,
    /// Digits received (RFC 4733 or SIP INFO).
    pub dtmf_received: String,
    /// Re-INVITEs from the trunk that were answered.
    pub reinvites: u32,
    /// 20 ms frames not sent because the trunk put the call on hold.
    pub frames_held: u64,
    /// Who ended the call: `gateway`, `trunk`, or `none` when it never connected.
    pub ended_by: String,
    /// Trunk-side Call-ID.
    pub call_id: Option<String>,
}

/// Errors before any call is attempted.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// `--trunk` names nothing in the file.
    #[error("{0}")]
    UnknownTrunk(String),
    /// `--dtmf` has a character that is not a DTMF digit.
    #[error("`{0}` is not a DTMF digit; use 0-9, *, #, A-D")]
    BadDigit(char),
    /// A socket could not be bound or a TLS setting is unusable.
    #[error("{0}")]
    Setup(String),
}

/// Places the call and reports. Never panics on anything the trunk sends.
pub async fn dial(config: &Config, options: &DialOptions) -> Result<DialReport, DialError> {
    let trunk = config
        .trunk(&options.trunk)
        .map_err(DialError::UnknownTrunk)?;
    let digits = options.dtmf.clone().unwrap_or_default();
    validate_digits(&digits).map_err(DialError::BadDigit)?;
    let trunks = Trunks::new(config.trunks.values().cloned()).map_err(DialError::Setup)?;
    let sources = trunks.sources().await;
    // A one-shot tool binds an ephemeral SIP port so it can run beside a live gateway.
    let (endpoint, mut stray) = Endpoint::start(EndpointConfig {
        udp: std::net::SocketAddr::new(config.sip.udp.ip(), 0),
        tcp: None,
        tls: None,
        public_ip: config.sip.public_ip,
        user_agent: config.sip.user_agent.clone(),
        timers: Timers::default(),
        edge: crate::sip::edge::EdgePolicy {
            trusted: Some(sources.into_keys().collect()),
            unknown_sources: config.sip.unknown_sources,
            rate_limit: config.sip.rate_limit,
        },
    })
    .await
    .map_err(|e| DialError::Setup(format!("cannot bind SIP on {}: {e}", config.sip.udp.ip())))?;
    tokio::spawn(async move {
        while let Some(req) = stray.recv().await {
            if let Some(r) = req.responder {
                r.respond(response_to(&req.request, 403, Some("dial")));
            }
        }
    });
    let mut rtp = RtpStream::bind(config.rtp.ip, config.rtp.port_min, config.rtp.port_max)
        .map_err(|e| DialError::Setup(e.to_string()))?;
    let media_ip = config.rtp_advertised_ip(endpoint.advertised_ip());
    let local = LocalMedia {
        ip: media_ip,
        port: rtp.local_port(),
        codecs: trunk.codecs.clone(),
        session_id: rand::random::<u32>() as u64,
    };
    let mut sdp_version = 1;
    let request = CallRequest {
        to: options.to.clone(),
        from_user: options.from.clone(),
        sdp_offer: sdp::offer(&local, sdp_version, Direction::SendRecv),
        headers: Vec::new(),
        failover: Vec::new(),
    };

    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let (cancel_tx, mut cancel_rx) = watch::channel(false);
    let started = Instant::now();
    let placing = place_call(
        &endpoint,
        &trunks,
        &options.trunk,
        &request,
        &progress_tx,
        &mut cancel_rx,
    );
    tokio::pin!(placing);

    let mut report = DialReport {
        sip_code: 0,
        reason: String::new(),
        connected: false,
        trunk_used: None,
        setup_ms: None,
        provisional: vec![],
        early_rtp_received: 0,
        early_tone_detected: false,
        rtp_sent: 0,
        rtp_received: 0,
        tone_detected: false,
        tone_snr_db: None,
        dtmf_sent: String::new(),
        dtmf_received: String::new(),
        reinvites: 0,
        frames_held: 0,
        ended_by: "none".into(),
        call_id: None,
    };
    let mut tone = ToneGenerator::new(options.tone_hz, 8000, 8000);
    let mut early_detector = ToneDetector::new(options.tone_hz, 8000, 800);
    let mut detector = ToneDetector::new(options.tone_hz, 8000, 800);
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut pcm_in = [0i16; 1500];
    let mut buf = [0u8; 1500];
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut call: Option<crate::sip::trunk::TrunkCall> = None;
    let mut answered_at: Option<Instant> = None;
    let mut digits_queued = false;
    let answer_deadline = tokio::time::sleep(options.answer_timeout);
    tokio::pin!(answer_deadline);

    loop {
        tokio::select! {
            result = &mut placing, if call.is_none() => {
                match result {
                    Ok(answered) => {
                        report.setup_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                        report.sip_code = 200;
                        report.reason = "OK".into();
                        report.connected = true;
                        report.trunk_used = Some(answered.trunk.clone());
                        report.call_id = Some(answered.call_id().to_string());
                        report.early_rtp_received = rtp.stats.received;
                        match sdp::parse_remote(&answered.answer_sdp, &local.codecs, true) {
                            Ok(remote) => rtp.set_remote(remote),
                            Err(e) => tracing::warn!(error = %e, "answer SDP unusable; keeping early-media target"),
                        }
                        answered_at = Some(Instant::now());
                        call = Some(answered);
                    }
                    Err(failure) => {
                        report.sip_code = failure.sip_code();
                        report.reason = failure.to_string();
                        if let crate::sip::trunk::CallFailure::Rejected { trunk, .. } | crate::sip::trunk::CallFailure::Timeout { trunk, .. } = &failure {
                            report.trunk_used = Some(trunk.clone());
                        }
                        break;
                    }
                }
            }
            Some(progress) = progress_rx.recv() => {
                match progress {
                    Progress::Trying { trunk, addr, rtp_source, .. } => {
                        rtp.set_source_policy(rtp_source, Some(addr.ip()));
                        report.trunk_used = Some(trunk);
                    }
                    Progress::Provisional { code, sdp: early } => {
                        report.provisional.push(code);
                        if let Some(body) = early {
                            match sdp::parse_remote(&body, &local.codecs, true) {
                                Ok(remote) => rtp.set_remote(remote),
                                Err(e) => tracing::warn!(error = %e, "early-media SDP unusable"),
                            }
                        }
                    }
                }
            }
            _ = &mut answer_deadline, if call.is_none() && !*cancel_tx.borrow() => {
                let _ = cancel_tx.send(true);
            }
            _ = ticker.tick() => {
                tone.fill(&mut frame);
                let before = rtp.stats.sent;
                let held = rtp.remote().is_some_and(|r| !r.direction.peer_receives());
                rtp.send_frame(&frame);
                if held && rtp.stats.sent == before {
                    report.frames_held += 1;
                }
                if let Some(at) = answered_at {
                    if !digits_queued && !digits.is_empty() && at.elapsed() >= Duration::from_millis(500) {
                        rtp.send_digits(&digits);
                        report.dtmf_sent = digits.clone();
                        digits_queued = true;
                    }
                    let done = at.elapsed().as_secs_f64() >= options.seconds;
                    // Let queued digits finish, but never more than 5 s past the requested length.
                    let digits_pending = !rtp.digits_idle() && at.elapsed().as_secs_f64() < options.seconds + 5.0;
                    if done && !digits_pending {
                        report.ended_by = "gateway".into();
                        break;
                    }
                }
            }
            received = rtp.recv(&mut buf) => {
                let Ok((n, source)) = received else { continue };
                match rtp.on_datagram(&buf[..n], source, &mut pcm_in) {
                    Received::Audio { samples, .. } => {
                        if answered_at.is_some() { detector.push(&pcm_in[..samples]) } else { early_detector.push(&pcm_in[..samples]) }
                    }
                    Received::Digit(d) => report.dtmf_received.push(d),
                    Received::Nothing => {}
                }
            }
            event = async { call.as_mut().expect("guarded").next().await }, if call.is_some() => {
                match event {
                    None | Some(InDialog::Bye) => {
                        report.ended_by = "trunk".into();
                        if let Some(c) = call.take() { c.finish() }
                        break;
                    }
                    Some(InDialog::InfoDtmf(d)) => report.dtmf_received.push(d),
                    Some(InDialog::Reinvite { sdp: offer, request }) => {
                        let c = call.as_ref().expect("guarded");
                        if let Some(remote) = c.handle_reinvite(&request, &offer, &local, &mut sdp_version) {
                            rtp.set_remote(remote);
                        }
                        report.reinvites += 1;
                    }
                }
            }
        }
    }
    if let Some(c) = call.take() {
        let _ = c.hangup().await;
    }
    report.rtp_sent = rtp.stats.sent;
    report.rtp_received = rtp.stats.received;
    let early = early_detector.report();
    report.early_tone_detected = early.snr_db >= TONE_DETECT_SNR_DB;
    let after = detector.report();
    report.tone_snr_db = after
        .snr_db
        .is_finite()
        .then_some((after.snr_db * 10.0).round() / 10.0);
    report.tone_detected = after.snr_db >= TONE_DETECT_SNR_DB;
    Ok(report)
}
