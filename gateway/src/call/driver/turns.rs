//! A call's turns: each carries out what the machine asks, then waits for the first of the
//! call's sources to be ready ([`Sources`]) and feeds it in.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::clock::Clock;
use super::sources::{Source, Sources};
use super::{Routing, Run};
use crate::call::CommandReceiver;
use crate::call::caller::Caller;
use crate::call::machine::{Call, CallCommand, Route};
use crate::plugin::CallHooks;
use crate::rtc::mux::Datagram;
use crate::sip::endpoint::{IncomingRequest, RequestReceiver, TaggedEvent};
use crate::sip::transaction::ClientEvent;

/// A trunk transfer's target addresses, or the SIP status a plugin refused it with.
type TransferRoute =
    Pin<Box<dyn Future<Output = Result<Vec<crate::sip::uac::Candidate>, u16>> + Send>>;

/// The call's turns, until it is over: each carries out what the machine asks, then waits for
/// the first of its sources to be ready and feeds it in.
pub(super) async fn turns(
    run: &mut Run<'_>,
    call: &mut Call,
    routing: &mut Option<Routing>,
    response_rx: &mut mpsc::Receiver<TaggedEvent>,
    request_rx: &mut RequestReceiver,
    commands: &mut CommandReceiver,
) {
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
        run.carry_out(call);
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
                Ok(crate::call::outbound::resolve(&trunks, &trunk, &[]).await)
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
                *routing = None;
                run.tapping = hooks.as_ref().is_some_and(|h| h.wants_audio());
                run.hooks = hooks;
                run.routed_at = Some(Instant::now());
                call.handle_route(route, Instant::now());
            }
            Input::Transferred(decided) => {
                transfer_route = None;
                match decided {
                    Ok(candidates) => call.handle_transfer_candidates(candidates, Instant::now()),
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
                        run.read_browser(call);
                    }
                    if !run.rtp.is_watched() {
                        // What the trunk sent since the last tick, before this tick plays.
                        run.read_trunk(call);
                    }
                    run.tick(call);
                    clock.record_tick(now);
                }
            }
            Input::Browser(datagram) => {
                if run.browser_datagram(call, datagram) {
                    sources.mark(Source::DirectPath);
                }
            }
            Input::Rtp => run.read_trunk(call),
            Input::Command(command) => run.command(call, command),
            Input::Shutdown => {
                shutdown = None;
                call.handle_shutdown(Instant::now());
            }
        }
        run.caller_events(call);
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
