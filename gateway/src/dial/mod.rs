//! `gateway dial`: one real call through a configured trunk, with a probe tone and optional
//! DTMF, reporting what happened on the SIP and RTP level. An operator's first check of a
//! trunk, and the end-to-end tests' driver of the trunk leg: the call runs on the same
//! machine and driver as a browser's, with a tone caller in the browser's place.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::call::Metrics;
use crate::call::caller::{Caller, ToneCaller};
use crate::call::driver::{Start, Wiring, drive};
use crate::call::machine::{Call, CallEvent, CallSettings, Route};
use crate::call::resolve;
use crate::config::Config;
use crate::media::dtmf::validate_digits;
use crate::media::session::RtpStream;
use crate::media::srtp::LocalSrtp;
use crate::sip::endpoint::{Endpoint, EndpointConfig};
use crate::sip::message::response_to;
use crate::sip::sdp::{self, Direction, LocalMedia};
use crate::sip::transaction::Timers;
use crate::sip::trunks::Trunks;
use crate::sip::uac::CallRequest;

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
            peers: Vec::new(),
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
    // The probe tone is G.711: `dial` offers the trunk's G.711 codecs only.
    let g711: Vec<_> = trunk
        .codecs
        .iter()
        .copied()
        .filter(|c| c.g711().is_some())
        .collect();
    if g711.is_empty() {
        return Err(DialError::Setup(format!(
            "trunk `{}` lists no G.711 codec; `gateway dial` sends a G.711 probe tone",
            options.trunk
        )));
    }
    let rtp = RtpStream::bind(config.rtp.ip, config.rtp.port_min, config.rtp.port_max)
        .map_err(|e| DialError::Setup(e.to_string()))?;
    let local = LocalMedia {
        ip: config.rtp_advertised_ip(endpoint.advertised_ip()),
        port: rtp.local_port(),
        codecs: g711,
        session_id: rand::random::<u32>() as u64,
        srtp: LocalSrtp::new(trunk.srtp),
    };
    let request = CallRequest {
        to: options.to.clone(),
        from_user: options.from.clone(),
        sdp_offer: sdp::offer(&local, 1, Direction::SendRecv),
        headers: Vec::new(),
        failover: Vec::new(),
    };
    let candidates = resolve(&trunks, &options.trunk, &[]).await;
    let route = Route {
        request,
        candidates,
        local,
    };
    let settings = CallSettings {
        ring_timeout: options.answer_timeout,
        ..Default::default()
    };
    let call = Call::outbound(
        "dial",
        settings,
        endpoint.local().clone(),
        trunks.clone(),
        Instant::now(),
    );
    let caller = Caller::Tone(Box::new(ToneCaller::new(
        options.tone_hz,
        digits,
        options.seconds,
    )));
    let (sink, mut events) = mpsc::unbounded_channel();
    // `dial` hangs up by itself after `seconds`; nobody sends it commands.
    let (_commands, command_rx) = crate::call::command_channel();
    let (_shutdown, shutdown) = watch::channel(false);
    let metrics = Metrics::default();
    let wiring = Wiring {
        endpoint: &endpoint,
        metrics: &metrics,
        shutdown,
    };
    let start = Start {
        routing: Some(Box::pin(async move { (Ok(route), None) })),
        ..Default::default()
    };
    let outcome = drive(
        wiring,
        call,
        caller,
        rtp,
        start,
        crate::call::EventSink::new(sink),
        command_rx,
    )
    .await;

    let mut report = DialReport {
        sip_code: 0,
        reason: String::new(),
        connected: outcome.call.answered_at().is_some(),
        trunk_used: outcome.call.trunk_used().map(str::to_string),
        setup_ms: outcome.setup.map(|d| d.as_secs_f64() * 1000.0),
        provisional: vec![],
        early_rtp_received: outcome.early_rtp_received,
        early_tone_detected: false,
        rtp_sent: outcome.rtp.sent,
        rtp_received: outcome.rtp.received,
        tone_detected: false,
        tone_snr_db: None,
        dtmf_sent: String::new(),
        dtmf_received: String::new(),
        reinvites: 0,
        frames_held: 0,
        ended_by: "none".into(),
        call_id: None,
    };
    while let Ok(item) = events.try_recv() {
        match item.1 {
            CallEvent::Ringing => report.provisional.push(180),
            CallEvent::Progress { code } => report.provisional.push(code),
            CallEvent::TrunkReinvite => report.reinvites += 1,
            _ => {}
        }
    }
    if report.connected {
        report.sip_code = 200;
        report.reason = "OK".into();
        report.call_id = outcome.call.sip_call_id().map(str::to_string);
        report.ended_by = match outcome.call.end().map(|(r, _)| r.as_str()) {
            Some("remote_hangup") => "trunk",
            _ => "gateway",
        }
        .into();
    } else if let Some(failure) = outcome.call.failure() {
        report.sip_code = failure.sip_code();
        report.reason = failure.to_string();
    } else if let Some((reason, code)) = outcome.call.end() {
        report.sip_code = *code;
        report.reason = reason.clone();
    }
    if let Caller::Tone(tone) = &outcome.caller {
        report.dtmf_sent = tone.dtmf_sent.clone();
        report.dtmf_received = tone.dtmf_received.clone();
        report.frames_held = tone.frames_held;
        report.early_tone_detected = tone.early.report().snr_db >= TONE_DETECT_SNR_DB;
        let after = tone.answered.report();
        report.tone_snr_db = after
            .snr_db
            .is_finite()
            .then_some((after.snr_db * 10.0).round() / 10.0);
        report.tone_detected = after.snr_db >= TONE_DETECT_SNR_DB;
    }
    Ok(report)
}
