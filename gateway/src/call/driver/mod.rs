//! The one driver of a call: a thin task that feeds the SIP endpoint's messages, media, the
//! caller's commands and time into the sans-IO [`Call`] and carries out what it asks. No
//! network round trip is awaited here: a BYE or a re-INVITE is a transaction whose answer
//! arrives as one more input while media keeps flowing. `gateway run` drives browser calls
//! with it and `gateway dial` a tone caller, so the trunk suite proves the browser's path.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

mod clock;
mod media;
mod sources;

use super::caller::Caller;
use super::machine::{Call, CallCommand, CallEvent, Route};
use super::tap::AudioTap;
use super::{EventSink, Metrics};
use crate::media::session::RtpStream;
use crate::plugin::{CallHooks, Event, Party};
use crate::rtc::mux::Datagram;
use crate::sip::Transmit;
use crate::sip::endpoint::{
    Endpoint, IncomingRequest, RequestReceiver, RequestSender, Responder, TaggedEvent,
};
use crate::sip::transaction::ClientEvent;
use clock::Clock;
use sources::{Source, Sources};

/// An outbound call's route, being decided (plugins on the blocking pool, DNS).
pub type Routing =
    Pin<Box<dyn Future<Output = (Result<Route, (&'static str, u16)>, Option<CallHooks>)> + Send>>;

/// A trunk transfer's target addresses, being resolved (DNS).
/// A trunk transfer's target addresses, or the SIP status a plugin refused it with.
type TransferRoute =
    Pin<Box<dyn Future<Output = Result<Vec<crate::sip::uac::Candidate>, u16>> + Send>>;

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
        let mut clock = match &run.caller {
            Caller::Browser(b) if b.on_worker_clock => Clock::on_worker_clock(Instant::now()),
            _ => Clock::new(Instant::now()),
        };
        // One Sleep for the clock's deadline, re-armed when it moves, rather than a new
        // timer-wheel entry on every turn of the loop.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut transfer_route: Option<TransferRoute> = None;
        let mut shutdown = Some(shutdown_signal(run.wiring.shutdown.clone()));
        let mut sources = Sources::new();
        let mut reads_at_tick = false;
        loop {
            run.carry_out(&mut call);
            if call.is_finished() {
                break;
            }
            if let Some(request) = run.transfer_to.take() {
                let trunks = call.trunks().clone();
                let trunk = request.trunk.clone();
                let verdict = run.hooks.as_ref().map(|h| h.transfer(request));
                transfer_route = Some(Box::pin(async move {
                    // The plugins first: a refusal never resolves, let alone dials, the target.
                    if let Some(verdict) = verdict
                        && let Ok(Some(refusal)) = verdict.await
                    {
                        return Err(refusal.sip_code);
                    }
                    Ok(super::outbound::resolve(&trunks, &trunk, &[]).await)
                }));
                sources.mark(Source::Transfer);
            }
            let media = !run.ended;
            let leg_deadline = match &mut run.caller {
                Caller::Browser(b) if media => b.leg.poll_timeout(),
                _ => None,
            };
            // A relayed call has no clock of its own: packets go on as they arrive, so its task
            // is not woken every 20 ms for nothing. The clock starts afresh if the trunk moves
            // to a transcoded codec (re-INVITE).
            let ticking = media && !(run.relaying() && matches!(run.caller, Caller::Browser(_)));
            // A call on its worker's clock reads the browser's audio at its tick too, and its
            // own timers wait for the tick, so that the worker wakes once a frame for all its
            // calls (`clock`). Its direct path is watched again once the call stops ticking
            // (it relays, or ends).
            let at_tick = ticking
                && matches!(&run.caller, Caller::Browser(b) if b.on_worker_clock && b.has_direct_path());
            if at_tick != reads_at_tick {
                reads_at_tick = at_tick;
                if !at_tick {
                    sources.mark(Source::DirectPath);
                }
            }
            clock.set_together(at_tick);
            clock.set(call.poll_timeout(), leg_deadline, ticking, Instant::now());
            // A ticking call reads its trunk's RTP at each tick, not as each datagram arrives:
            // the tick is when the trunk's audio is played out (a transcoded call's jitter
            // buffer, a tone caller's recording), so reading it earlier gains nothing, and a
            // call then wakes once a frame for the trunk's side, not twice. The kernel stamps
            // each datagram's arrival, so the jitter the call reports is the network's. Only
            // a relayed call, which forwards each packet as it comes, watches the socket.
            let watch_rtp = media && !ticking;
            if watch_rtp != run.rtp.is_watched() {
                if watch_rtp {
                    sources.mark(Source::Rtp);
                } else {
                    run.rtp.unwatch();
                }
            }
            let next = clock.poll_timeout();
            if next != armed {
                armed = next;
                if let Some(at) = next {
                    timer.as_mut().reset(at.into());
                }
                sources.mark(Source::Timer);
            }
            let input = std::future::poll_fn(|cx| {
            let mut turn = sources.turn(cx.waker());
            for source in turn.order() {
                let ready = match source {
                    Source::Routing => turn.poll(source, routing.is_some(), |cx| {
                        let routing = routing.as_mut().expect("enabled");
                        routing.as_mut().poll(cx).map(Input::Routed)
                    }),
                    Source::Transfer => turn.poll(source, transfer_route.is_some(), |cx| {
                        let route = transfer_route.as_mut().expect("enabled");
                        route.as_mut().poll(cx).map(Input::Transferred)
                    }),
                    // The channels below never close while the call holds their senders; a
                    // closed one waits for good.
                    Source::Response => turn.poll(source, true, |cx| {
                        some(response_rx.poll_recv(cx)).map(|e| Input::Response(*e))
                    }),
                    Source::Request => turn.poll(source, true, |cx| {
                        some(request_rx.poll_recv(cx)).map(Input::Request)
                    }),
                    Source::Timer => turn.poll(source, armed.is_some(), |cx| {
                        timer.as_mut().poll(cx).map(|()| Input::Timer)
                    }),
                    Source::MuxRoute => turn.poll(source, media, |cx| match &mut run.caller {
                        Caller::Browser(b) => some(b.poll_route(cx)).map(Input::Browser),
                        Caller::Tone(_) => Poll::Pending,
                    }),
                    Source::DirectPath => turn.poll(source, media && !at_tick, |cx| match &mut run.caller {
                        Caller::Browser(b) => b.poll_direct(cx).map(Input::Browser),
                        Caller::Tone(_) => Poll::Pending,
                    }),
                    Source::Rtp => turn.poll(source, watch_rtp, |cx| {
                        match run.rtp.poll_readable(cx) {
                            Poll::Ready(Ok(())) => Poll::Ready(Input::Rtp),
                            Poll::Ready(Err(e)) => {
                                tracing::warn!(error = %e, "the trunk's RTP socket cannot be read; no audio from the trunk");
                                Poll::Pending
                            }
                            Poll::Pending => Poll::Pending,
                        }
                    }),
                    Source::Command => turn.poll(source, media, |cx| {
                        commands.poll_recv(cx).map(Input::Command)
                    }),
                    Source::Shutdown => turn.poll(source, media && shutdown.is_some(), |cx| {
                        let signal = shutdown.as_mut().expect("enabled");
                        signal.as_mut().poll(cx).map(|()| Input::Shutdown)
                    }),
                };
                if ready.is_ready() {
                    return ready;
                }
            }
            Poll::Pending
        })
        .await;
            match input {
                Input::Routed((route, hooks)) => {
                    routing = None;
                    run.tapping = hooks.as_ref().is_some_and(|h| h.wants_audio());
                    run.hooks = hooks;
                    run.routed_at = Some(Instant::now());
                    call.handle_route(route, Instant::now());
                }
                Input::Transferred(decided) => {
                    transfer_route = None;
                    match decided {
                        Ok(candidates) => {
                            call.handle_transfer_candidates(candidates, Instant::now())
                        }
                        Err(code) => call.handle_transfer_refused(code),
                    }
                }
                Input::Response((tx, event)) => call.handle_sip_response(tx, event, Instant::now()),
                Input::Request(incoming) => {
                    let id = run.next_request;
                    run.next_request += 1;
                    if let Some(r) = incoming.responder {
                        run.responders.insert(id, r);
                    }
                    call.handle_sip_request(id, incoming.request, incoming.source, Instant::now());
                }
                Input::Timer => {
                    // Fired: re-armed next turn even if the deadline stays where it was.
                    armed = None;
                    let now = Instant::now();
                    let due = clock.handle_timeout(now);
                    if due.call {
                        call.handle_timeout(now);
                    }
                    if due.leg
                        && let Caller::Browser(b) = &mut run.caller
                    {
                        b.leg.handle_timeout(now);
                    }
                    if let Some(lateness) = due.tick {
                        run.wiring.metrics.load.handle_tick(lateness);
                        if at_tick {
                            // The browser's audio of the frame, to the trunk first.
                            run.read_browser(&mut call);
                        }
                        if !run.rtp.is_watched() {
                            // What the trunk sent since the last tick, before this tick plays.
                            run.read_trunk(&mut call);
                        }
                        run.tick(&mut call);
                        clock.record_tick(now);
                    }
                }
                Input::Browser(datagram) => {
                    if run.browser_datagram(&mut call, datagram) {
                        sources.mark(Source::DirectPath);
                    }
                }
                Input::Rtp => run.read_trunk(&mut call),
                Input::Command(command) => run.command(&mut call, command),
                Input::Shutdown => {
                    shutdown = None;
                    call.handle_shutdown(Instant::now());
                }
            }
            run.caller_events(&mut call);
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

/// What woke the call.
enum Input {
    Routed((Result<Route, (&'static str, u16)>, Option<CallHooks>)),
    Transferred(Result<Vec<crate::sip::uac::Candidate>, u16>),
    Response((u64, ClientEvent)),
    Request(Box<IncomingRequest>),
    /// The clock's deadline came.
    Timer,
    Browser(Datagram),
    Rtp,
    Command(Option<CallCommand>),
    Shutdown,
}

/// A channel's next message; a closed channel waits for good (it registered no waker).
fn some<T>(poll: Poll<Option<T>>) -> Poll<T> {
    match poll {
        Poll::Ready(Some(message)) => Poll::Ready(message),
        Poll::Ready(None) | Poll::Pending => Poll::Pending,
    }
}

/// Ready once the gateway's drain deadline has come (or the gateway is gone). One future for
/// the call's life: it waits on the watch without locking it again on every wake-up.
fn shutdown_signal(mut rx: watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
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
