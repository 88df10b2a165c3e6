//! One call: binds the browser leg, the trunk leg and the bridge. The decisions live in the
//! sans-IO [`state::CallState`]; [`run_outbound`] is the thin task that does the I/O.

pub mod cdr;
pub mod state;
mod tap;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::media::bridge::Bridge;
use crate::media::g711::G711;
use crate::media::opus::EncoderSettings;
use crate::media::session::{FRAME_SAMPLES, Received, RtpStream};
use crate::rtc::mux::{MediaMux, MuxRoute};
use crate::rtc::{BrowserEvent, BrowserLeg};
use crate::signal::protocol::{ErrorCode, ServerMessage};
use crate::sip::endpoint::{Endpoint, IncomingRequest};
use crate::sip::message::{random_token, response_to};
use crate::sip::sdp::{self, Direction, LocalMedia};
use crate::sip::trunk::{CallRequest, InDialog, Progress, TrunkCall, Trunks, place_call};
use cdr::{Cdr, CdrLog, unix_ms};
use rsip::prelude::*;
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
    /// The DTLS certificate all browser legs use.
    pub dtls: crate::rtc::DtlsCertificate,
    /// The plugin chain every call passes through (reloadable).
    pub plugins: crate::plugin::PluginHost,
    /// CDR log, if configured.
    pub cdr: Option<CdrLog>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Set on SIGTERM: no new calls.
    pub draining: AtomicBool,
    /// Identities registered for inbound calls, by name.
    pub registered: std::sync::Mutex<std::collections::HashMap<String, Registered>>,
    /// Turns true when running calls must end (drain deadline).
    pub shutdown: watch::Sender<bool>,
}

impl CallContext {
    /// The trunk side's media for a new call: an RTP stream from the configured range, the
    /// transcoding bridge, and what our SDP will say about them.
    fn trunk_media(
        &self,
        codecs: &[G711],
    ) -> Result<(RtpStream, Bridge, LocalMedia), &'static str> {
        let mut rtp = RtpStream::bind(
            self.config.rtp.ip,
            self.config.rtp.port_min,
            self.config.rtp.port_max,
        )
        .map_err(|_| "no free RTP port")?;
        rtp.set_drop_counters(self.metrics.media_drops.clone());
        let settings = EncoderSettings {
            complexity: self.config.media.opus_complexity,
            complexity_under_loss: self.config.media.opus_complexity_under_loss,
            ..Default::default()
        };
        let bridge =
            Bridge::new(settings, self.config.media.jitter_ms).map_err(|_| "Opus unavailable")?;
        let local = LocalMedia {
            ip: self.config.rtp_advertised_ip(self.endpoint.advertised_ip()),
            port: rtp.local_port(),
            codecs: codecs.to_vec(),
            session_id: rand::random::<u32>() as u64,
        };
        Ok((rtp, bridge, local))
    }
}

/// One of the gateway's `limits.max_calls`, held for a call's whole life and given back when
/// dropped, on every exit (a panicking call task included).
#[derive(Debug)]
pub struct CallSlot(Arc<CallContext>);

impl CallContext {
    /// Takes a call slot, or `None` when `limits.max_calls` calls run already. The check and
    /// the increment are one atomic step, so a burst of calls cannot overshoot the limit.
    pub fn take_call_slot(self: &Arc<Self>) -> Option<CallSlot> {
        let max = self.config.limits.max_calls as u64;
        self.metrics
            .active_calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| CallSlot(self.clone()))
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.metrics.active_calls.fetch_sub(1, Ordering::AcqRel);
    }
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
    /// Setup-time histogram: counts per bucket of [`SETUP_BUCKETS`] (cumulative on output).
    pub setup_buckets: [AtomicU64; SETUP_BUCKETS.len()],
    /// Ended calls by reason.
    pub ended: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Browser frames recovered from FEC, all calls.
    pub fec_recovered: AtomicU64,
    /// Trunk frames concealed, all calls.
    pub trunk_concealed: AtomicU64,
    /// RTP packets received from trunks, all ended calls.
    pub trunk_received: AtomicU64,
    /// RTP packets from trunks that never arrived, all ended calls.
    pub trunk_lost: AtomicU64,
    /// Per-call trunk jitter histogram, counts per bucket of [`JITTER_BUCKETS_MS`].
    pub jitter_buckets: [AtomicU64; JITTER_BUCKETS_MS.len()],
    /// Calls with a jitter figure.
    pub jitter_calls: AtomicU64,
    /// Sum of per-call jitter, µs.
    pub jitter_us_sum: AtomicU64,
    /// Media datagrams refused (wrong source, not RTP), live.
    pub media_drops: Arc<crate::media::MediaDrops>,
}

/// Upper bounds, ms, of the per-call jitter histogram (`+Inf` is implied).
pub const JITTER_BUCKETS_MS: [f64; 6] = [1.0, 5.0, 10.0, 20.0, 50.0, 100.0];

/// Upper bounds, seconds, of the setup-time histogram (`+Inf` is implied).
pub const SETUP_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

impl Metrics {
    fn record_setup(&self, setup: Duration) {
        self.setup_us_sum
            .fetch_add(setup.as_micros() as u64, Ordering::Relaxed);
        if let Some(i) = SETUP_BUCKETS.iter().position(|b| setup.as_secs_f64() <= *b) {
            self.setup_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the signaling side can ask of a running call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    /// Hang up.
    Hangup,
    /// Send DTMF digits to the trunk.
    Dtmf(String),
    /// The browser accepted an inbound call with this SDP answer.
    Answer(String),
    /// Hold (true) or resume (false).
    Hold(bool),
}

/// A connection that registered an identity for inbound calls.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Messages to the browser.
    pub out: mpsc::UnboundedSender<ServerMessage>,
    /// Hands the connection a new call's id and command channel.
    pub calls: mpsc::UnboundedSender<(String, mpsc::UnboundedSender<CallCommand>)>,
}

/// Who and what a call is about.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// `outbound` (browser → trunk) or `inbound` (trunk → browser).
    pub direction: &'static str,
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
#[allow(clippy::too_many_arguments)]
pub async fn run_outbound(
    ctx: Arc<CallContext>,
    _slot: CallSlot,
    mut call: Outbound,
    leg: BrowserLeg,
    browser_rx: MuxRoute,
    events: mpsc::UnboundedSender<ServerMessage>,
    commands: mpsc::UnboundedReceiver<CallCommand>,
) {
    let started_ms = unix_ms();
    ctx.metrics.calls_total.fetch_add(1, Ordering::Relaxed);
    let mut state = CallState::new(&call.call_id);
    let send = |m: ServerMessage| {
        let _ = events.send(m);
    };
    // The plugin chain decides first: it may reject the call or move it to another trunk,
    // number or caller ID before anything is dialled.
    let caller_id = ctx
        .trunks
        .config(&call.trunk)
        .map(|t| t.from_user.clone())
        .unwrap_or_default();
    let info = crate::plugin::CallInfo {
        call_id: call.call_id.clone(),
        direction: crate::plugin::Direction::Outbound,
        caller: call.from.clone(),
        destination: call.to.clone(),
        trunk: call.trunk.clone(),
        number: call.number.clone(),
        caller_id,
    };
    let (decision, hooks) = decide(&ctx, info).await;
    let mut headers = Vec::new();
    let mut failover = Vec::new();
    let (from_user, refusal) = match decision {
        crate::plugin::Decision::Place {
            trunk,
            failover: order,
            number,
            caller_id,
            headers: extra,
            ..
        } => {
            call.trunk = trunk;
            call.number = number;
            headers = extra;
            failover = order;
            (Some(caller_id), None)
        }
        crate::plugin::Decision::Reject {
            sip_code,
            reason,
            plugin,
        } => {
            tracing::info!(call_id = %call.call_id, %plugin, sip_code, %reason, "call rejected by plugin");
            (None, Some(sip_code))
        }
    };
    let setup = async {
        if let Some(code) = refusal {
            return Err(("rejected by a plugin", Input::Refused(code)));
        }
        let trunk = ctx.trunks.config(&call.trunk).ok_or((
            "a plugin routed to a trunk that does not exist",
            Input::Failed(503),
        ))?;
        ctx.trunk_media(&trunk.codecs)
            .map_err(|why| (why, Input::Failed(503)))
    };
    let (rtp, bridge, local) = match setup.await {
        Ok(parts) => parts,
        Err((why, input)) => {
            tracing::info!(call_id = %call.call_id, why, "call not placed");
            for o in state.on(input, Instant::now()) {
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
                hooks,
            )
            .await;
            return;
        }
    };
    let request = CallRequest {
        to: call.number.clone(),
        from_user,
        sdp_offer: sdp::offer(&local, 1, Direction::SendRecv),
        headers,
        failover,
    };
    let (progress_tx, progress_rx) = mpsc::unbounded_channel();
    let (cancel_tx, mut cancel_rx) = watch::channel(false);
    let placing = Box::pin(place_call(
        &ctx.endpoint,
        &ctx.trunks,
        &call.trunk,
        &request,
        &progress_tx,
        &mut cancel_rx,
    ));
    let parts = Parts {
        leg,
        browser_rx,
        events: events.clone(),
        commands,
        rtp,
        bridge,
        local,
        progress_rx,
        cancel_tx,
        browser_answered: None,
        hooks,
    };
    drive(&ctx, &call, state, started_ms, parts, placing).await;
}

/// Runs the plugin chain's call-start hooks for a new call. Hooks are synchronous wasm calls
/// (bounded by their deadline) and WASI's stdio blocks: they run on the blocking pool, never
/// on the threads that drive media. The call keeps the chain it started with, even if the
/// plugins are reloaded meanwhile.
async fn decide(
    ctx: &CallContext,
    info: crate::plugin::CallInfo,
) -> (crate::plugin::Decision, Option<crate::plugin::CallHooks>) {
    let chain = ctx.plugins.current();
    if chain.is_empty() {
        return (
            crate::plugin::Decision::Place {
                trunk: info.trunk,
                failover: Vec::new(),
                number: info.number,
                caller_id: info.caller_id,
                headers: Vec::new(),
                record: false,
            },
            None,
        );
    }
    let call_id = info.call_id.clone();
    let deciding = chain.clone();
    match tokio::task::spawn_blocking(move || deciding.start_call(info)).await {
        Ok((decision, instances)) => {
            let record = matches!(
                decision,
                crate::plugin::Decision::Place { record: true, .. }
            );
            let hooks = (!instances.is_empty())
                .then(|| crate::plugin::CallHooks::spawn(chain, call_id, instances, record));
            (decision, hooks)
        }
        Err(e) => {
            tracing::error!(error = %e, "plugin host failed");
            (
                crate::plugin::Decision::Reject {
                    sip_code: 500,
                    reason: "plugin host failed".into(),
                    plugin: String::new(),
                },
                None,
            )
        }
    }
}

/// The pieces a call runs with once set up.
struct Parts {
    leg: BrowserLeg,
    browser_rx: MuxRoute,
    events: mpsc::UnboundedSender<ServerMessage>,
    commands: mpsc::UnboundedReceiver<CallCommand>,
    rtp: RtpStream,
    bridge: Bridge,
    local: LocalMedia,
    progress_rx: mpsc::UnboundedReceiver<Progress>,
    cancel_tx: watch::Sender<bool>,
    /// Inbound calls: fired when the browser accepts, so the trunk gets its 200.
    browser_answered: Option<tokio::sync::oneshot::Sender<()>>,
    /// The plugin instances that saw the call start, for its later events and audio.
    hooks: Option<crate::plugin::CallHooks>,
}

type Placing<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<TrunkCall, crate::sip::trunk::CallFailure>>
            + Send
            + 'a,
    >,
>;

/// The call's event loop: media both ways, trunk and browser events, until it ends.
async fn drive(
    ctx: &Arc<CallContext>,
    call: &Outbound,
    mut state: CallState,
    started_ms: u64,
    parts: Parts,
    mut placing: Placing<'_>,
) {
    let Parts {
        mut leg,
        mut browser_rx,
        events,
        mut commands,
        mut rtp,
        mut bridge,
        local,
        mut progress_rx,
        cancel_tx,
        mut browser_answered,
        mut hooks,
    } = parts;
    // Who is who for plugins: the browser places outbound calls, the trunk inbound ones.
    let (browser_party, trunk_party) = if call.direction == "inbound" {
        (crate::plugin::Party::Callee, crate::plugin::Party::Caller)
    } else {
        (crate::plugin::Party::Caller, crate::plugin::Party::Callee)
    };
    let mut tap = tap::AudioTap::default();
    // Only calls whose plugins asked for audio collect it (the profile showed the copies).
    let tapping = hooks.as_ref().is_some_and(|h| h.wants_audio());
    let send = |m: ServerMessage| {
        let _ = events.send(m);
    };
    let mut sdp_version = 1;
    let mut held = false;
    let mut shutdown = ctx.shutdown.subscribe();
    let dial_started = Instant::now();
    let mut trunk: Option<TrunkCall> = None;
    let mut trunk_used: Option<String> = None;
    // Kept apart from `trunk`, which hanging up consumes before the CDR is written.
    let mut sip_call_id: Option<String> = None;
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
    // The browser leg's next timer; one Sleep re-armed when the stack's deadline moves rather
    // than a new timer-wheel entry on every turn of the loop (three turns per 20 ms).
    let leg_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(leg_timer);
    let mut leg_deadline: Option<Instant> = None;

    loop {
        let mut inputs: Vec<Input> = Vec::new();
        let next = leg.poll_timeout();
        if next != leg_deadline {
            leg_deadline = next;
            if let Some(at) = next {
                leg_timer.as_mut().reset(at.into());
            }
        }
        tokio::select! {
            result = placing.as_mut(), if !placing_done => {
                placing_done = true;
                match result {
                    Ok(answered) => {
                        ctx.metrics.record_setup(dial_started.elapsed());
                        ctx.metrics.calls_answered.fetch_add(1, Ordering::Relaxed);
                        trunk_used = Some(answered.trunk.clone());
                        sip_call_id = Some(answered.call_id().to_string());
                        if let Ok(remote) = sdp::parse_remote(&answered.answer_sdp, &local.codecs, true) {
                            rtp.set_remote(remote);
                        }
                        trunk = Some(answered);
                        inputs.push(Input::Answered);
                    }
                    Err(crate::sip::trunk::CallFailure::Cancelled) if call.direction == "inbound" => inputs.push(Input::TrunkCancelled),
                    Err(failure) => inputs.push(Input::Failed(failure.sip_code())),
                }
            }
            Some(progress) = progress_rx.recv() => {
                match progress {
                    Progress::Trying { trunk, addr, rtp_source, .. } => {
                        rtp.set_source_policy(rtp_source, Some(addr.ip()));
                        trunk_used = Some(trunk);
                    }
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
                if !leg.handle_datagram(datagram, peer, Instant::now()) {
                    ctx.metrics.media_drops.browser_source.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = &mut leg_timer, if leg_deadline.is_some() => {
                leg_deadline = None;
                leg.handle_timeout(Instant::now());
            }
            _ = ticker.tick() => {
                if let Some(h) = hooks.as_mut().filter(|h| h.wants_audio())
                    && state.answered_at().is_some()
                {
                    h.audio(tap.frame(browser_party == crate::plugin::Party::Caller));
                }
                match bridge.to_browser() {
                    Some(packet) if browser_connected => {
                        if let Err(e) = leg.send_opus(packet, std::mem::take(&mut talkspurt), Instant::now()) {
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
                        Received::Audio { samples, timestamp } if !held => {
                            bridge.from_trunk(timestamp, &pcm_in[..samples]);
                            if tapping {
                                tap.trunk(&pcm_in[..samples]);
                            }
                        }
                        Received::Audio { .. } => {}
                        Received::Digit(d) => {
                            dtmf_event(&hooks, trunk_party, &d.to_string());
                            send(ServerMessage::Dtmf { call_id: call.call_id.clone(), digit: d.to_string() });
                        }
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
                    Some(InDialog::InfoDtmf(d)) => {
                        dtmf_event(&hooks, trunk_party, &d.to_string());
                        send(ServerMessage::Dtmf { call_id: call.call_id.clone(), digit: d.to_string() });
                    }
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
                    Some(CallCommand::Dtmf(digits)) => {
                        dtmf_event(&hooks, browser_party, &digits);
                        rtp.send_digits(&digits);
                    }
                    Some(CallCommand::Hold(hold)) => match trunk.as_mut() {
                        Some(t) if hold != held => {
                            sdp_version += 1;
                            let direction = if hold { Direction::SendOnly } else { Direction::SendRecv };
                            // The media pauses for the round trip; a trunk that does not answer
                            // within 4 s leaves the call as it was.
                            match t.reinvite(sdp::offer(&local, sdp_version, direction), Duration::from_secs(4)).await {
                                Ok(answer) => {
                                    if let Ok(remote) = sdp::parse_remote(&answer, &local.codecs, true) {
                                        rtp.set_remote(remote);
                                    }
                                    held = hold;
                                    if let Some(h) = &hooks {
                                        h.event(crate::plugin::Event::Hold(hold));
                                    }
                                }
                                Err(code) => send(ServerMessage::Error { code: ErrorCode::Internal, message: format!("the trunk refused the {} re-INVITE with {code}", if hold { "hold" } else { "resume" }), call_id: Some(call.call_id.clone()) }),
                            }
                        }
                        Some(_) => {}
                        None => send(ServerMessage::Error { code: ErrorCode::BadMessage, message: "hold and unhold need an answered call".into(), call_id: Some(call.call_id.clone()) }),
                    },
                    Some(CallCommand::Answer(sdp)) => match (browser_answered.take(), leg.accept_answer(&sdp, Instant::now())) {
                        (Some(answered), Ok(())) => {
                            let _ = answered.send(());
                        }
                        (None, _) => send(ServerMessage::Error { code: ErrorCode::BadMessage, message: "this call was not offered to you: `answer` is for `incoming` calls".into(), call_id: Some(call.call_id.clone()) }),
                        (Some(answered), Err(e)) => {
                            browser_answered = Some(answered);
                            send(ServerMessage::Error { code: ErrorCode::BadSdp, message: e.to_string(), call_id: Some(call.call_id.clone()) });
                        }
                    },
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
                    let (rtp, tap) = (&mut rtp, &mut tap);
                    // On hold the browser's audio is decoded (to keep the decoder's state) but
                    // not forwarded.
                    bridge.from_browser(sequence, &payload, |pcm| {
                        if !held {
                            rtp.send_frame(&pcm[..FRAME_SAMPLES]);
                            if tapping {
                                tap.browser(&pcm[..FRAME_SAMPLES]);
                            }
                        }
                    });
                }
                BrowserEvent::Dtmf(d) => {
                    dtmf_event(&hooks, browser_party, &d.to_string());
                    rtp.send_digits(&d.to_string());
                }
                BrowserEvent::ReceiverReport { fraction_lost } => {
                    bridge.on_browser_report(fraction_lost)
                }
            }
        }
        while let Some((bytes, peer)) = leg.poll_transmit() {
            ctx.mux.send(&bytes, peer);
        }
        for input in inputs {
            for output in state.on(input, Instant::now()) {
                match output {
                    Output::Send(m) => {
                        if let Some(h) = &hooks {
                            match m {
                                ServerMessage::Ringing { .. } => {
                                    h.event(crate::plugin::Event::Ringing)
                                }
                                ServerMessage::Answered { .. } => {
                                    h.event(crate::plugin::Event::Answered)
                                }
                                _ => {}
                            }
                        }
                        send(m)
                    }
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
    // The browser's mux route goes with `browser_rx`, dropped at the end of this function.
    finish(
        ctx,
        call,
        &state,
        trunk_used,
        started_ms,
        sip_call_id,
        &leg_stats(Some(&bridge)),
        &rtp.stats,
        hooks,
    )
    .await;
}

/// Offers a call from a trunk to the browser registered for the dialled number, and runs
/// it. `invite` is the trunk's INVITE (already answered 100 by the endpoint).
pub async fn run_inbound(ctx: Arc<CallContext>, trunk: String, invite: IncomingRequest) {
    let Some(responder) = invite.responder.clone() else {
        return;
    };
    let request = &invite.request;
    let tag = random_token();
    let refuse = |code: u16| responder.respond(response_to(request, code, Some(&tag)));
    let dialled = crate::sip::message::uri_user(&request.uri).unwrap_or_default();
    // §21.4.5: 404 when the number is routed nowhere; 480 when its browser is not connected.
    let Some(identity) = ctx.config.inbound.get(&dialled).cloned() else {
        tracing::info!(%trunk, number = %dialled, "inbound call to an unrouted number: 404");
        return refuse(404);
    };
    let from = request
        .from_header()
        .ok()
        .and_then(|f| f.typed().ok())
        .and_then(|f| crate::sip::message::uri_user(&f.uri))
        .unwrap_or_else(|| "anonymous".into());
    let call_id = format!("c-{}", random_token());
    let started_ms = unix_ms();
    // Plugins decide before anything rings: they may refuse the call or pick another browser.
    let info = crate::plugin::CallInfo {
        call_id: call_id.clone(),
        direction: crate::plugin::Direction::Inbound,
        caller: from.clone(),
        destination: dialled.clone(),
        trunk: trunk.clone(),
        number: identity,
        caller_id: from.clone(),
    };
    let (decision, hooks) = decide(&ctx, info).await;
    let setup = || -> Result<_, u16> {
        let identity = match decision {
            crate::plugin::Decision::Place { number, .. } => number,
            crate::plugin::Decision::Reject {
                sip_code,
                reason,
                plugin,
            } => {
                tracing::info!(%call_id, %plugin, sip_code, %reason, "inbound call rejected by plugin");
                return Err(sip_code);
            }
        };
        let browser = ctx
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&identity)
            .cloned()
            .ok_or(480u16)?;
        if ctx.draining.load(Ordering::Relaxed) {
            return Err(503);
        }
        let slot = ctx.take_call_slot().ok_or(503u16)?;
        let (Some(trunk_config), Some(channel)) =
            (ctx.trunks.config(&trunk), ctx.trunks.take_channel(&trunk))
        else {
            return Err(503);
        };
        let remote = match sdp::parse_remote(&request.body, &trunk_config.codecs, false) {
            Ok(r) => r,
            Err(e) => {
                // An INVITE without an offer would need our offer in the 200 (RFC 3264 §5);
                // trunks send offers, so this is refused rather than half-supported.
                tracing::warn!(error = %e, "inbound offer unusable: 488");
                return Err(488);
            }
        };
        let (mut rtp, bridge, local) = ctx.trunk_media(&trunk_config.codecs).map_err(|_| 503u16)?;
        rtp.set_source_policy(trunk_config.rtp_source, Some(invite.source.ip()));
        rtp.set_remote(remote);
        let (leg, offer) = BrowserLeg::offer(
            ctx.mux.local_addr(),
            ctx.media_ip,
            &ctx.dtls,
            Instant::now(),
        )
        .map_err(|_| 500u16)?;
        let sip_call_id = crate::sip::message::call_id(request).ok_or(400u16)?;
        Ok((
            slot,
            browser,
            channel,
            remote,
            rtp,
            bridge,
            local,
            leg,
            offer,
            sip_call_id,
        ))
    };
    let (_slot, browser, channel, remote, rtp, bridge, local, leg, offer, sip_call_id) =
        match setup() {
            Ok(parts) => parts,
            Err(code) => {
                refuse(code);
                if let Some(hooks) = hooks {
                    hooks
                        .end(crate::plugin::CallEnd {
                            reason: crate::call::state::failure_reason(code).into(),
                            sip_code: code,
                            duration_ms: 0,
                            trunk: Some(trunk),
                            sip_call_id: None,
                            started_ms,
                            answered_ms: None,
                        })
                        .await;
                }
                return;
            }
        };
    let dialog_rx = ctx.endpoint.register_dialog(&sip_call_id);
    let browser_rx = ctx.mux.register(leg.ufrag());
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let _ = browser.calls.send((call_id.clone(), commands_tx));
    let _ = browser.out.send(ServerMessage::Incoming {
        call_id: call_id.clone(),
        from: from.clone(),
        to: dialled.clone(),
        sdp: offer,
    });
    responder.respond(response_to(request, 180, Some(&tag)));
    ctx.metrics.calls_total.fetch_add(1, Ordering::Relaxed);
    let (answered_tx, answered_rx) = tokio::sync::oneshot::channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (_, progress_rx) = mpsc::unbounded_channel();
    let target = crate::sip::transport::Target {
        addr: invite.source,
        transport: invite.transport,
        host: invite.source.ip().to_string(),
        tls: None,
    };
    let accepted = Accepting {
        endpoint: ctx.endpoint.clone(),
        tag,
        local: local.clone(),
        remote,
        trunk: trunk.clone(),
        channel,
        target,
    };
    let placing = Box::pin(accepted.run(invite, answered_rx, cancel_rx, dialog_rx));
    let info = Outbound {
        direction: "inbound",
        call_id: call_id.clone(),
        from,
        to: dialled.clone(),
        trunk,
        number: dialled,
    };
    let parts = Parts {
        leg,
        browser_rx,
        events: browser.out.clone(),
        commands,
        rtp,
        bridge,
        local,
        progress_rx,
        cancel_tx,
        browser_answered: Some(answered_tx),
        hooks,
    };
    drive(
        &ctx,
        &info,
        CallState::new(&call_id),
        started_ms,
        parts,
        placing,
    )
    .await;
}

/// The trunk side of an inbound call while the browser rings.
struct Accepting {
    endpoint: Endpoint,
    tag: String,
    local: LocalMedia,
    remote: sdp::RemoteMedia,
    trunk: String,
    channel: crate::sip::trunk::ChannelGuard,
    target: crate::sip::transport::Target,
}

/// How long a browser may ring before the caller hears 480.
const RING_TIMEOUT: Duration = Duration::from_secs(60);

impl Accepting {
    async fn run(
        self,
        invite: IncomingRequest,
        answered: tokio::sync::oneshot::Receiver<()>,
        mut cancel: watch::Receiver<bool>,
        mut dialog: mpsc::UnboundedReceiver<IncomingRequest>,
    ) -> Result<TrunkCall, crate::sip::trunk::CallFailure> {
        use crate::sip::trunk::CallFailure;
        let responder = invite.responder.clone().ok_or(CallFailure::Cancelled)?;
        let request = &invite.request;
        let reject = |code: u16, reason: &str| {
            responder.respond(response_to(request, code, Some(&self.tag)));
            CallFailure::Rejected {
                trunk: self.trunk.clone(),
                code,
                reason: reason.into(),
            }
        };
        let ring = tokio::time::sleep(RING_TIMEOUT);
        tokio::pin!(ring);
        tokio::pin!(answered);
        loop {
            tokio::select! {
                result = &mut answered => {
                    if result.is_err() {
                        return Err(reject(603, "declined"));
                    }
                    let mut ok = response_to(request, 200, Some(&self.tag));
                    ok.headers.push(rsip::Header::Contact(rsip::headers::Contact::new(format!("<{}>", self.endpoint.contact_uri("gw", self.target.transport)))));
                    ok.headers.push(rsip::Header::ContentType(rsip::headers::ContentType::new("application/sdp")));
                    ok.body = sdp::answer(&self.local, 1, &self.remote).into_bytes();
                    responder.respond(ok);
                    let Some(state) = crate::sip::dialog::Dialog::from_uas(request, &self.tag) else {
                        return Err(reject(400, "INVITE without Contact or From tag"));
                    };
                    return Ok(TrunkCall::inbound(self.endpoint, self.target, state, dialog, self.trunk, self.channel));
                }
                changed = cancel.changed() => {
                    if changed.is_err() || *cancel.borrow() {
                        return Err(reject(603, "declined"));
                    }
                }
                incoming = dialog.recv() => {
                    match incoming {
                        // The endpoint has already answered the CANCEL and sent 487 (§9.2).
                        Some(r) if r.request.method == rsip::Method::Cancel => return Err(CallFailure::Cancelled),
                        Some(r) => {
                            if let Some(resp) = r.responder {
                                resp.respond(response_to(&r.request, 491, None));
                            }
                        }
                        None => return Err(CallFailure::Cancelled),
                    }
                }
                _ = &mut ring => return Err(reject(480, "nobody answered")),
            }
        }
    }
}

/// Tells the call's plugins about DTMF digits and who pressed them.
fn dtmf_event(hooks: &Option<crate::plugin::CallHooks>, party: crate::plugin::Party, digits: &str) {
    if let Some(h) = hooks {
        for d in digits.chars() {
            h.event(crate::plugin::Event::Dtmf((party, d.to_string())));
        }
    }
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
    hooks: Option<crate::plugin::CallHooks>,
) {
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
    ctx.metrics
        .trunk_received
        .fetch_add(rtp.received, Ordering::Relaxed);
    ctx.metrics
        .trunk_lost
        .fetch_add(rtp.lost, Ordering::Relaxed);
    if rtp.received > 0 {
        let jitter_ms = rtp.jitter as f64 / 8.0;
        if let Some(i) = JITTER_BUCKETS_MS.iter().position(|b| jitter_ms <= *b) {
            ctx.metrics.jitter_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        ctx.metrics.jitter_calls.fetch_add(1, Ordering::Relaxed);
        ctx.metrics
            .jitter_us_sum
            .fetch_add((jitter_ms * 1000.0) as u64, Ordering::Relaxed);
    }
    let ended_ms = unix_ms();
    let answered_ms = state
        .answered_at()
        .map(|at| ended_ms.saturating_sub(at.elapsed().as_millis() as u64));
    let record = Cdr {
        call_id: call.call_id.clone(),
        sip_call_id,
        direction: call.direction,
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
        browser_reports: media.0.browser_reports,
        browser_reported_loss_pct: media.0.browser_reported_loss_pct(),
        trunk_packets_out: rtp.sent,
        trunk_packets_in: rtp.received,
        trunk_concealed: media.1.concealed,
        trunk_packets_lost: rtp.lost,
        trunk_jitter_ms: rtp.jitter as f64 / 8.0,
    };
    if let Some(hooks) = hooks {
        // Plugins finish their work (a recording's file) before the call is over.
        hooks
            .end(crate::plugin::CallEnd {
                reason: record.end_reason.clone(),
                sip_code: record.sip_code,
                duration_ms: answered_ms.map_or(0, |a| ended_ms.saturating_sub(a)),
                trunk: record.trunk.clone(),
                sip_call_id: record.sip_call_id.clone(),
                started_ms,
                answered_ms,
            })
            .await;
    }
    if let Some(log) = &ctx.cdr
        && let Err(e) = log.append(&record).await
    {
        tracing::error!(error = %e, call_id = %call.call_id, "CDR could not be written");
    }
}
