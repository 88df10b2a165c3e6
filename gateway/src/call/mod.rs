//! One call: binds the browser leg, the trunk leg and the bridge. The decisions live in the
//! sans-IO [`state::CallState`]; [`run_outbound`] is the thin task that does the I/O.

pub mod cdr;
pub mod state;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::media::bridge::Bridge;
use crate::media::opus::EncoderSettings;
use crate::media::session::{FRAME_SAMPLES, Received, RtpStream};
use crate::rtc::mux::{Datagram, MediaMux};
use crate::rtc::{BrowserEvent, BrowserLeg};
use crate::signal::protocol::ServerMessage;
use crate::sip::endpoint::Endpoint;
use crate::sip::sdp::{self, Direction, LocalMedia};
use crate::sip::trunk::{CallRequest, InDialog, Progress, TrunkCall, Trunks, place_call};
use cdr::{Cdr, CdrLog, unix_ms};
use state::{CallState, Input, Output};

/// Everything a call needs from the running gateway.
#[derive(Debug)]
pub struct CallContext {
    /// The configuration.
    pub config: Config,
    /// SIP endpoint.
    pub endpoint: Endpoint,
    /// Trunks.
    pub trunks: Arc<Trunks>,
    /// The shared browser media port.
    pub mux: MediaMux,
    /// The IP browsers send media to (public IP behind NAT).
    pub media_ip: IpAddr,
    /// CDR log, if configured.
    pub cdr: Option<CdrLog>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Set on SIGTERM: no new calls.
    pub draining: AtomicBool,
    /// Turns true when running calls must end (drain deadline).
    pub shutdown: watch::Sender<bool>,
}

/// Gateway-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Calls in progress.
    pub active_calls: AtomicU64,
    /// Calls started.
    pub calls_total: AtomicU64,
    /// Calls answered.
    pub calls_answered: AtomicU64,
    /// Sum of setup times (INVITE → 2xx), µs, for the average.
    pub setup_us_sum: AtomicU64,
    /// Ended calls by reason.
    pub ended: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Browser frames recovered from FEC, all calls.
    pub fec_recovered: AtomicU64,
    /// Trunk frames concealed, all calls.
    pub trunk_concealed: AtomicU64,
}

/// What the signaling side can ask of a running call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    /// Hang up.
    Hangup,
    /// Send DTMF digits to the trunk.
    Dtmf(String),
}

/// An outbound call as requested over signaling.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Gateway call id.
    pub call_id: String,
    /// Caller (token subject or `anonymous`).
    pub from: String,
    /// What the browser asked for (target name or number).
    pub to: String,
    /// Trunk to use first.
    pub trunk: String,
    /// Number to dial on it.
    pub number: String,
}

/// Runs an outbound call from a browser whose offer `leg` has answered, until it ends.
pub async fn run_outbound(
    ctx: Arc<CallContext>,
    call: Outbound,
    mut leg: BrowserLeg,
    mut browser_rx: mpsc::Receiver<Datagram>,
    events: mpsc::UnboundedSender<ServerMessage>,
    mut commands: mpsc::UnboundedReceiver<CallCommand>,
) {
    let started_ms = unix_ms();
    ctx.metrics.calls_total.fetch_add(1, Ordering::Relaxed);
    ctx.metrics.active_calls.fetch_add(1, Ordering::Relaxed);
    let mut state = CallState::new(&call.call_id);
    let send = |m: ServerMessage| {
        let _ = events.send(m);
    };
    let setup = async {
        let trunk = ctx.trunks.config(&call.trunk).ok_or("trunk vanished")?;
        let rtp = RtpStream::bind(
            ctx.config.rtp.ip,
            ctx.config.rtp.port_min,
            ctx.config.rtp.port_max,
        )
        .map_err(|_| "no free RTP port")?;
        let bridge = Bridge::new(
            EncoderSettings {
                complexity: ctx.config.media.opus_complexity,
                ..Default::default()
            },
            ctx.config.media.jitter_ms,
        )
        .map_err(|_| "Opus unavailable")?;
        let ip = ctx
            .config
            .sip
            .public_ip
            .unwrap_or(if ctx.config.rtp.ip.is_unspecified() {
                ctx.endpoint.advertised_ip()
            } else {
                ctx.config.rtp.ip
            });
        let local = LocalMedia {
            ip,
            port: rtp.local_port(),
            codecs: trunk.codecs.clone(),
            session_id: rand::random::<u32>() as u64,
        };
        Ok::<_, &str>((rtp, bridge, local))
    };
    let (mut rtp, mut bridge, local) = match setup.await {
        Ok(parts) => parts,
        Err(why) => {
            tracing::error!(call_id = %call.call_id, why, "call setup failed");
            for o in state.on(Input::Failed(503), Instant::now()) {
                if let Output::Send(m) = o {
                    send(m);
                }
            }
            finish(
                &ctx,
                &call,
                &state,
                None,
                started_ms,
                None,
                &leg_stats(None),
                &rtp_stats_none(),
            )
            .await;
            ctx.mux.unregister(leg.ufrag());
            return;
        }
    };
    let mut sdp_version = 1;
    let request = CallRequest {
        to: call.number.clone(),
        from_user: None,
        sdp_offer: sdp::offer(&local, sdp_version, Direction::SendRecv),
    };
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let (cancel_tx, mut cancel_rx) = watch::channel(false);
    let mut shutdown = ctx.shutdown.subscribe();
    let dial_started = Instant::now();
    let placing = place_call(
        &ctx.endpoint,
        &ctx.trunks,
        &call.trunk,
        &request,
        &progress_tx,
        &mut cancel_rx,
    );
    tokio::pin!(placing);
    let mut trunk: Option<TrunkCall> = None;
    let mut trunk_used: Option<String> = None;
    let mut placing_done = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pcm_in = [0i16; 1500];
    let mut rtp_buf = [0u8; 1500];
    let mut talkspurt = true;
    // ICE must complete within this long, or the browser is gone.
    let connect_deadline = tokio::time::sleep(Duration::from_secs(15));
    tokio::pin!(connect_deadline);
    let mut browser_connected = false;

    loop {
        let mut inputs: Vec<Input> = Vec::new();
        let leg_timer = leg.poll_timeout();
        tokio::select! {
            result = &mut placing, if !placing_done => {
                placing_done = true;
                match result {
                    Ok(answered) => {
                        ctx.metrics.setup_us_sum.fetch_add(dial_started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        ctx.metrics.calls_answered.fetch_add(1, Ordering::Relaxed);
                        trunk_used = Some(answered.trunk.clone());
                        if let Ok(remote) = sdp::parse_remote(&answered.answer_sdp, &local.codecs, true) {
                            rtp.set_remote(remote);
                        }
                        trunk = Some(answered);
                        inputs.push(Input::Answered);
                    }
                    Err(failure) => inputs.push(Input::Failed(failure.sip_code())),
                }
            }
            Some(progress) = progress_rx.recv() => {
                match progress {
                    Progress::Trying { trunk, .. } => trunk_used = Some(trunk),
                    Progress::Provisional { code, sdp: early } => {
                        let early_media = match early.as_deref().map(|b| sdp::parse_remote(b, &local.codecs, true)) {
                            Some(Ok(remote)) => {
                                rtp.set_remote(remote);
                                true
                            }
                            _ => false,
                        };
                        inputs.push(Input::Progress { code, early_media });
                    }
                }
            }
            Some((datagram, peer)) = browser_rx.recv() => {
                leg.handle_datagram(&datagram, peer, Instant::now());
            }
            _ = sleep_until_opt(leg_timer) => {
                leg.handle_timeout(Instant::now());
            }
            _ = ticker.tick() => {
                match bridge.to_browser() {
                    Some(packet) if browser_connected => {
                        let packet = packet.to_vec();
                        if let Err(e) = leg.send_opus(&packet, std::mem::take(&mut talkspurt), Instant::now()) {
                            tracing::debug!(error = %e, "Opus to browser");
                        }
                    }
                    _ => {
                        leg.skip_frame();
                        talkspurt = true;
                    }
                }
            }
            received = rtp.recv(&mut rtp_buf) => {
                if let Ok((n, source)) = received {
                    match rtp.on_datagram(&rtp_buf[..n], source, &mut pcm_in) {
                        Received::Audio { samples, timestamp } => bridge.from_trunk(timestamp, &pcm_in[..samples]),
                        Received::Digit(d) => send(ServerMessage::Dtmf { call_id: call.call_id.clone(), digit: d.to_string() }),
                        Received::Nothing => {}
                    }
                }
            }
            event = async { trunk.as_mut().expect("guarded").next().await }, if trunk.is_some() => {
                match event {
                    None | Some(InDialog::Bye) => {
                        if let Some(t) = trunk.take() { t.finish() }
                        inputs.push(Input::TrunkHangup);
                    }
                    Some(InDialog::InfoDtmf(d)) => send(ServerMessage::Dtmf { call_id: call.call_id.clone(), digit: d.to_string() }),
                    Some(InDialog::Reinvite { sdp: offer, request }) => {
                        let t = trunk.as_ref().expect("guarded");
                        if let Some(remote) = t.handle_reinvite(&request, &offer, &local, &mut sdp_version) {
                            rtp.set_remote(remote);
                        }
                    }
                }
            }
            command = commands.recv() => {
                match command {
                    Some(CallCommand::Dtmf(digits)) => rtp.send_digits(&digits),
                    Some(CallCommand::Hangup) | None => inputs.push(Input::BrowserHangup),
                }
            }
            _ = &mut connect_deadline, if !browser_connected => inputs.push(Input::BrowserLost),
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    inputs.push(Input::Shutdown);
                }
            }
        }
        while let Some(event) = leg.poll_event() {
            match event {
                BrowserEvent::Connected => browser_connected = true,
                BrowserEvent::Disconnected => inputs.push(Input::BrowserLost),
                BrowserEvent::Opus {
                    sequence, payload, ..
                } => {
                    let rtp = &mut rtp;
                    bridge.from_browser(sequence, &payload, |pcm| {
                        rtp.send_frame(&pcm[..FRAME_SAMPLES])
                    });
                }
                BrowserEvent::Dtmf(d) => rtp.send_digits(&d.to_string()),
            }
        }
        while let Some((bytes, peer)) = leg.poll_transmit() {
            ctx.mux.send(&bytes, peer);
        }
        for input in inputs {
            for output in state.on(input, Instant::now()) {
                match output {
                    Output::Send(m) => send(m),
                    Output::EndTrunk => {
                        if let Some(t) = trunk.take() {
                            let _ = t.hangup().await;
                        } else {
                            let _ = cancel_tx.send(true);
                        }
                    }
                }
            }
        }
        if state.end.is_some() {
            break;
        }
    }
    // A cancelled INVITE still has to finish its transaction (487 + ACK) before we forget it.
    if !placing_done
        && let Ok(Ok(late)) = tokio::time::timeout(Duration::from_secs(5), &mut placing).await
    {
        let _ = late.hangup().await;
    }
    leg.close();
    while let Some((bytes, peer)) = leg.poll_transmit() {
        ctx.mux.send(&bytes, peer);
    }
    ctx.mux.unregister(leg.ufrag());
    let sip_call_id = trunk.as_ref().map(|t| t.call_id().to_string());
    finish(
        &ctx,
        &call,
        &state,
        trunk_used,
        started_ms,
        sip_call_id,
        &leg_stats(Some(&bridge)),
        &rtp.stats,
    )
    .await;
}

fn leg_stats(
    bridge: Option<&Bridge>,
) -> (
    crate::media::bridge::BridgeStats,
    crate::media::jitter::JitterStats,
) {
    bridge
        .map(|b| (b.stats, b.jitter_stats()))
        .unwrap_or_default()
}

fn rtp_stats_none() -> crate::media::session::RtpStats {
    Default::default()
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    ctx: &CallContext,
    call: &Outbound,
    state: &CallState,
    trunk: Option<String>,
    started_ms: u64,
    sip_call_id: Option<String>,
    media: &(
        crate::media::bridge::BridgeStats,
        crate::media::jitter::JitterStats,
    ),
    rtp: &crate::media::session::RtpStats,
) {
    ctx.metrics.active_calls.fetch_sub(1, Ordering::Relaxed);
    let (reason, code) = state.end.clone().unwrap_or_else(|| ("hangup".into(), 200));
    *ctx.metrics
        .ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(reason.clone())
        .or_default() += 1;
    ctx.metrics
        .fec_recovered
        .fetch_add(media.0.browser_fec_recovered, Ordering::Relaxed);
    ctx.metrics
        .trunk_concealed
        .fetch_add(media.1.concealed, Ordering::Relaxed);
    let ended_ms = unix_ms();
    let answered_ms = state
        .answered_at()
        .map(|at| ended_ms.saturating_sub(at.elapsed().as_millis() as u64));
    let record = Cdr {
        call_id: call.call_id.clone(),
        sip_call_id,
        direction: "outbound",
        from: call.from.clone(),
        to: call.to.clone(),
        trunk,
        started_ms,
        answered_ms,
        ended_ms,
        duration_s: answered_ms.map_or(0.0, |a| (ended_ms - a) as f64 / 1000.0),
        sip_code: code,
        end_reason: reason,
        browser_packets_in: media.0.browser_packets,
        browser_packets_out: media.0.browser_packets_sent,
        browser_fec_recovered: media.0.browser_fec_recovered,
        trunk_packets_out: rtp.sent,
        trunk_packets_in: rtp.received,
        trunk_concealed: media.1.concealed,
    };
    if let Some(log) = &ctx.cdr
        && let Err(e) = log.append(&record).await
    {
        tracing::error!(error = %e, call_id = %call.call_id, "CDR could not be written");
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
