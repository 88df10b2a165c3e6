//! The one driver of a call: a thin task that feeds the SIP endpoint's messages, media, the
//! caller's commands and time into the sans-IO [`Call`] and carries out what it asks. No
//! network round trip is awaited here: a BYE or a re-INVITE is a transaction whose answer
//! arrives as one more input while media keeps flowing. `gateway run` drives browser calls
//! with it and `gateway dial` a tone caller, so the trunk suite proves the browser's path.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};

mod clock;
mod fault;
mod media;
mod sources;
mod turns;

pub(super) use fault::contain_task;

use super::caller::Caller;
use super::machine::{Call, CallCommand, CallEvent, Route};
use super::tap::AudioTap;
use super::{EventSink, Metrics};
use crate::media::session::RtpStream;
use crate::plugin::{CallHooks, Event, Party};
use crate::sip::Transmit;
use crate::sip::endpoint::{
    Endpoint, IncomingRequest, RequestReceiver, RequestSender, Responder, TaggedEvent,
};

/// An outbound call's route, being decided (plugins on the blocking pool, DNS).
pub type Routing =
    Pin<Box<dyn Future<Output = (Result<Route, (&'static str, u16)>, Option<CallHooks>)> + Send>>;

/// What a call runs with from the gateway.
pub struct Wiring<'a> {
    /// The SIP endpoint.
    pub endpoint: &'a Endpoint,
    /// Counters.
    pub metrics: &'a Metrics,
    /// Turns true at the drain deadline.
    pub shutdown: watch::Receiver<bool>,
}

/// A finished call, for the CDR and reports.
pub struct Outcome {
    /// The machine, ended.
    pub call: Call,
    /// The trunk stream's statistics.
    pub rtp: crate::media::session::RtpStats,
    /// RTP packets received before the answer.
    pub early_rtp_received: u64,
    /// Route decided → answer.
    pub setup: Option<Duration>,
    /// The caller side, for its figures.
    pub caller: Caller,
    /// The plugins that saw the call start.
    pub hooks: Option<CallHooks>,
    /// Opus frames relayed between browser and trunk untouched (both ways).
    pub relayed: u64,
    /// The trunk leg's codec, once negotiated.
    pub trunk_codec: Option<crate::media::codec::Codec>,
    /// The trunk leg's SRTP suite, when its media was SRTP.
    pub trunk_srtp: Option<crate::media::srtp::CryptoSuite>,
}

/// Everything the loop owns besides the machine.
struct Run<'a> {
    wiring: Wiring<'a>,
    call_id: String,
    sink: EventSink,
    rtp: RtpStream,
    caller: Caller,
    hooks: Option<CallHooks>,
    tap: AudioTap,
    tapping: bool,
    browser_party: Party,
    trunk_party: Party,
    responders: HashMap<u64, Responder>,
    listening: Vec<String>,
    next_request: u64,
    responses: mpsc::Sender<TaggedEvent>,
    requests: RequestSender,
    routed_at: Option<Instant>,
    setup: Option<Duration>,
    early_rtp_received: u64,
    answered_at: Option<Instant>,
    ended: bool,
    relayed: u64,
    /// A trunk asked to transfer the call: the plugins are to be asked, then the target
    /// trunk's addresses resolved.
    transfer_to: Option<crate::plugin::TransferRequest>,
}

/// How a call starts: outbound calls wait for their route, inbound ones hold the trunk's
/// INVITE (the machine answers it as request 0) and the plugins that accepted it.
#[derive(Default)]
pub struct Start {
    /// The route being decided.
    pub routing: Option<Routing>,
    /// The trunk's INVITE.
    pub invite: Option<IncomingRequest>,
    /// The plugins that saw the call start.
    pub hooks: Option<CallHooks>,
    /// A channel the trunk's requests for this call already arrive on (inbound calls route
    /// their Call-ID before the plugins decide, so an early CANCEL is not lost).
    pub requests: Option<(RequestSender, RequestReceiver)>,
}

/// Runs `call` until it is over and its trunk leg has finished.
///
/// Not an `async fn`: its future would keep every argument beside the local it moves into
/// for the call's whole life (the `Call` and the `RtpStream`, 7 KB of a 15.6 KB future, by
/// `-Zprint-type-sizes`). The set-up runs here; the future holds what its loop uses, once.
pub fn drive<'a>(
    wiring: Wiring<'a>,
    mut call: Call,
    caller: Caller,
    rtp: RtpStream,
    start: Start,
    sink: EventSink,
    mut commands: super::CommandReceiver,
) -> impl Future<Output = Outcome> + 'a {
    let Start {
        mut routing,
        invite,
        hooks,
        requests,
    } = start;
    let (responses, mut response_rx) = crate::sip::endpoint::event_channel();
    let (requests, mut request_rx) = requests.unwrap_or_else(crate::sip::endpoint::request_channel);
    // Who is who for plugins: the browser places outbound calls, the trunk inbound ones.
    let (browser_party, trunk_party) = match call.direction() {
        crate::plugin::Direction::Inbound => (Party::Callee, Party::Caller),
        crate::plugin::Direction::Outbound => (Party::Caller, Party::Callee),
    };
    let mut run = Run {
        wiring,
        call_id: call.id().to_string(),
        sink,
        rtp,
        caller,
        tapping: hooks.as_ref().is_some_and(|h| h.wants_audio()),
        hooks,
        tap: AudioTap::default(),
        browser_party,
        trunk_party,
        responders: HashMap::new(),
        listening: Vec::new(),
        next_request: 1,
        responses,
        requests,
        routed_at: None,
        setup: None,
        early_rtp_received: 0,
        answered_at: None,
        ended: false,
        relayed: 0,
        transfer_to: None,
    };
    if let Some(invite) = invite.and_then(|i| i.responder) {
        // The machine answers the trunk's INVITE as request 0.
        run.responders.insert(0, invite);
    }
    if matches!(run.caller, Caller::Tone(_)) {
        call.handle_caller_media(true, Instant::now());
    }
    async move {
        // A fault in the call's task (a panic) ends this call alone: the worker's other calls
        // run on, and this one's legs are hung up (`fault`).
        let mut faults = 0;
        loop {
            let turns = turns::turns(
                &mut run,
                &mut call,
                &mut routing,
                &mut response_rx,
                &mut request_rx,
                &mut commands,
            );
            match AssertUnwindSafe(turns).catch_unwind().await {
                Ok(()) => break,
                Err(panic) => {
                    let what = crate::fault::message(&*panic);
                    if !fault::contain(&mut run, &mut call, what, &mut faults) {
                        break;
                    }
                }
            }
        }
        // A call ended while its plugins still decided: wait for them (bounded by their
        // deadline), so they hear of the end like every call they saw start.
        if let Some(routing) = routing.take() {
            let (_, hooks) = routing.await;
            run.hooks = run.hooks.or(hooks);
        }
        // Nothing of this call may stay routed to it: a leak here would grow the endpoint's
        // tables for ever.
        for call_id in run.listening.drain(..) {
            run.wiring.endpoint.forget_dialog(&call_id);
        }
        Outcome {
            call,
            rtp: run.rtp.stats,
            early_rtp_received: run.early_rtp_received,
            setup: run.setup,
            caller: run.caller,
            hooks: run.hooks,
            relayed: run.relayed,
            trunk_codec: run.rtp.remote().map(|r| r.codec),
            trunk_srtp: run
                .rtp
                .remote()
                .and_then(|r| r.srtp)
                .map(|k| k.theirs.suite),
        }
    }
}

impl Run<'_> {
    /// Carries out the machine's transmits and events.
    fn carry_out(&mut self, call: &mut Call) {
        loop {
            let mut progressed = false;
            while let Some(t) = call.poll_transmit() {
                progressed = true;
                self.transmit(t);
            }
            while let Some(event) = call.poll_event() {
                progressed = true;
                let moves = matches!(event, CallEvent::TrunkMedia(_) | CallEvent::Answered);
                if moves && !self.rtp.is_watched() {
                    // What arrived from the trunk before its media moved, or before the answer,
                    // is read as such, as it would have been on arrival: else the old peer's
                    // last packets, read at the next tick, could be the first the moved stream
                    // latches to, and early media would count as the answered call's.
                    self.read_trunk(call);
                }
                self.event(event);
            }
            if !progressed {
                break;
            }
        }
        if let Caller::Browser(b) = &mut self.caller {
            while let Some((bytes, peer)) = b.leg.poll_transmit() {
                b.send(&bytes, peer);
                b.leg.reuse(bytes);
            }
        }
    }

    fn transmit(&mut self, t: Transmit) {
        let endpoint = self.wiring.endpoint;
        match t {
            Transmit::Request {
                tx,
                request,
                target,
            } => endpoint.request_tagged(request, target, tx, self.responses.clone()),
            Transmit::Stateless { request, target } => endpoint.send_stateless(request, target),
            Transmit::Respond { id, response } => {
                let last = response.status_code.code() >= 200;
                let responder = if last {
                    self.responders.remove(&id)
                } else {
                    self.responders.get(&id).cloned()
                };
                if let Some(r) = responder {
                    r.respond(response);
                }
            }
            Transmit::Abandon { request } => endpoint.abandon(&request),
            Transmit::Listen(call_id) => {
                endpoint.route_dialog(&call_id, self.requests.clone());
                self.listening.push(call_id);
            }
            Transmit::Forget(call_id) => {
                endpoint.forget_dialog(&call_id);
                self.listening.retain(|c| *c != call_id);
            }
        }
    }

    fn event(&mut self, event: CallEvent) {
        // The browser to be asked for a new offer, after this event.
        let mut renegotiate = None;
        match &event {
            CallEvent::TrunkMedia(remote) => {
                self.rtp.set_remote(*remote);
                // The browser was told how wide to code before the trunk chose its codec (an
                // outbound call answers the browser at once; an inbound late offer): a trunk
                // that may speak Opus but answered G.711 would otherwise get full-band Opus at
                // 32 kb/s decoded down to 8 kHz, which the trunk hears worse and which cost
                // 0.320 % of a core a call against 0.252 % (docs/benchmarks-history.md,
                // "midday"). An Opus trunk's own limits reach the browser the same way.
                let audio = crate::rtc::AudioCaps::of_trunk(remote);
                if let Caller::Browser(b) = &mut self.caller
                    && !self.ended
                    && b.leg.set_audio(audio)
                {
                    // The caps apply from the browser's next offer either way.
                    let metrics = &self.wiring.metrics;
                    if b.ask_renegotiation(Instant::now()) {
                        metrics.renegotiations_asked.fetch_add(1, Ordering::Relaxed);
                        renegotiate = Some(audio.hz);
                    } else {
                        metrics
                            .renegotiations_withheld
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(call_id = %self.call_id, "the trunk changed the call's codec ten times in a minute; the browser is not asked to renegotiate again yet");
                    }
                }
            }
            CallEvent::TrunkSource { policy, ip } => self.rtp.set_source_policy(*policy, Some(*ip)),
            CallEvent::TransferRequested {
                trunk,
                number,
                referred_by,
            } => {
                self.transfer_to = Some(crate::plugin::TransferRequest {
                    trunk: trunk.clone(),
                    number: number.clone(),
                    referred_by: referred_by.clone(),
                })
            }
            CallEvent::Ringing => self.plugin_event(Event::Ringing),
            CallEvent::Held(hold) => self.plugin_event(Event::Hold(*hold)),
            CallEvent::Dtmf(d) => {
                self.dtmf_event(self.trunk_party, &d.to_string());
                if let Caller::Tone(t) = &mut self.caller {
                    t.dtmf_received.push(*d);
                }
            }
            CallEvent::Answered => {
                let now = Instant::now();
                self.answered_at = Some(now);
                self.early_rtp_received = self.rtp.stats.received;
                if let Some(at) = self.routed_at {
                    let setup = now - at;
                    self.setup = Some(setup);
                    self.wiring.metrics.record_setup(setup);
                }
                self.wiring
                    .metrics
                    .calls_answered
                    .fetch_add(1, Ordering::Relaxed);
                self.plugin_event(Event::Answered);
            }
            CallEvent::Ended { .. } => {
                self.ended = true;
                if let Caller::Browser(b) = &mut self.caller {
                    b.leg.close();
                }
            }
            _ => {}
        }
        self.sink.send((self.call_id.clone(), event));
        if let Some(audio_hz) = renegotiate {
            self.event(CallEvent::RenegotiationNeeded { audio_hz });
        }
    }

    fn plugin_event(&self, event: Event) {
        if let Some(h) = &self.hooks {
            h.event(event);
        }
    }

    /// Tells the call's plugins about DTMF digits and who pressed them.
    fn dtmf_event(&self, party: Party, digits: &str) {
        if let Some(h) = &self.hooks {
            for d in digits.chars() {
                h.event(Event::Dtmf((party, d.to_string())));
            }
        }
    }

    /// A command from the signaling side.
    fn command(&mut self, call: &mut Call, command: Option<CallCommand>) {
        let now = Instant::now();
        match command {
            None => call.handle_command(CallCommand::Hangup, now),
            Some(CallCommand::Dtmf(digits)) => {
                #[cfg(any(test, feature = "fault-injection"))]
                crate::fault::injection::dtmf(&digits);
                self.dtmf_event(self.browser_party, &digits);
                self.rtp.send_digits(&digits);
            }
            Some(CallCommand::Answer(sdp)) => {
                let refused = |message: String, kind| CallEvent::Refused { kind, message };
                let event = match &mut self.caller {
                    Caller::Browser(b) if call.is_offered() => {
                        match b.leg.accept_answer(&sdp, now) {
                            Ok(()) => {
                                call.handle_caller_answered(now);
                                None
                            }
                            Err(e) => Some(refused(e.to_string(), super::Refusal::BadAnswer)),
                        }
                    }
                    _ => Some(refused(
                        "this call was not offered to you: `answer` is for `incoming` calls".into(),
                        super::Refusal::NotOffered,
                    )),
                };
                if let Some(e) = event {
                    self.event(e);
                }
            }
            Some(CallCommand::Renegotiate(sdp)) => {
                let Caller::Browser(b) = &mut self.caller else {
                    return;
                };
                let event = match b.renegotiate(&sdp, now) {
                    Ok(sdp) => {
                        tracing::info!(call_id = %call.id(), ice_ufrag = %b.leg.ufrag(), "the browser renegotiated");
                        CallEvent::Renegotiated { sdp }
                    }
                    Err((kind, message)) => CallEvent::Refused { kind, message },
                };
                self.event(event);
            }
            Some(other) => call.handle_command(other, now),
        }
    }
}
