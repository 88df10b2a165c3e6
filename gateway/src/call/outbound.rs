//! An outbound call, browser → trunk: the plugins decide where it goes (on the blocking
//! pool), the trunk table and DNS give the addresses to try, and the driver runs it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::cdr::{MediaSummary, Parties, Placed, record, record_outcome};
use super::driver::{Routing, Start, contain_task, drive};
use super::machine::{Call, Route};
use super::{CallContext, CallSlot, EventSink};
use crate::media::srtp::LocalSrtp;
use crate::plugin::{CallHooks, CallInfo, Decision, Direction};
use crate::rtc::BrowserLeg;
use crate::rtc::mux::MuxRoute;
use crate::sip::sdp;
use crate::sip::trunks::Trunks;
use crate::sip::uac::{CallRequest, Candidate, Uac};

/// Who a browser's call is from and where it asked to go.
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

/// Starts an outbound call from a browser's WebRTC `offer`: our leg answers it, its route
/// on the shared media port is set up, and the call runs in its own task. Returns the SDP
/// answer for the browser, or what is wrong with the offer (nothing is started then).
pub fn start_outbound(
    ctx: &Arc<CallContext>,
    slot: CallSlot,
    call: Outbound,
    offer: &str,
    events: EventSink,
    commands: super::CommandReceiver,
) -> Result<String, crate::rtc::RtcError> {
    let audio = crate::rtc::AudioCaps::up_to(ctx.trunks.audio_hz_for(&call.trunk));
    let (leg, answer) = ctx.answer_browser(offer, audio, Instant::now())?;
    let route = ctx.mux.register(leg.ufrag());
    let placed = Placed {
        parties: Parties {
            call_id: call.call_id.clone(),
            from: call.from.clone(),
            to: call.to.clone(),
        },
        direction: Direction::Outbound,
        sip_call_id: None,
        started_ms: crate::wall::unix_ms(),
    };
    let sink = events.clone();
    // Boxed: a call's future keeps its arguments for its whole life, even once moved on, and
    // the leg is 8.8 KB that the driver keeps again (boxed, in its caller).
    // Boxed too: the guard's future would otherwise keep it twice (captured, and awaited).
    let task = Box::pin(run_outbound(
        ctx.clone(),
        placed.clone(),
        call,
        Box::new(leg),
        route,
        events,
        commands,
    ));
    let guarded = ctx.clone();
    // The slot is held until the call's record is written, whether or not the task faults.
    ctx.workers.spawn(async move {
        contain_task(placed, sink, true, &guarded, task).await;
        drop(slot);
    });
    Ok(answer)
}

/// Runs an outbound call from a browser whose offer `leg` has answered, until it ends.
///
/// Each stage's future is boxed and built by a plain function: an `async fn` keeps room for
/// every stage's state at once and for each value it moved into a stage, and inline this
/// future was 19.8 KB a call (`-Zprint-type-sizes`), most of it the driver's and copies of
/// what the driver holds.
async fn run_outbound(
    ctx: Arc<CallContext>,
    Placed {
        parties,
        started_ms,
        ..
    }: Placed,
    call: Outbound,
    leg: Box<BrowserLeg>,
    route: MuxRoute,
    events: EventSink,
    commands: super::CommandReceiver,
) {
    ctx.metrics.calls_total.fetch_add(1, Ordering::Relaxed);
    #[cfg(any(test, feature = "fault-injection"))]
    crate::fault::injection::call_set_up(&call.to);
    let outcome = match driving(&ctx, call, leg, route, events, commands) {
        Ok(driving) => Box::new(driving.await),
        Err(machine) => {
            let summary = MediaSummary::default();
            return Box::pin(record(&ctx, &parties, started_ms, &machine, summary, None)).await;
        }
    };
    Box::pin(record_outcome(&ctx, &parties, started_ms, *outcome)).await;
}

/// The call's driver; or, when the gateway has no trunk media to give it, the call refused
/// (its machine, to be recorded).
fn driving<'a>(
    ctx: &'a Arc<CallContext>,
    call: Outbound,
    leg: Box<BrowserLeg>,
    route: MuxRoute,
    events: EventSink,
    commands: super::CommandReceiver,
) -> Result<std::pin::Pin<Box<impl Future<Output = super::driver::Outcome> + 'a>>, Box<Call>> {
    let mut machine = Call::outbound(
        &call.call_id,
        ctx.call_settings(),
        ctx.endpoint.local().clone(),
        ctx.trunks.clone(),
        Instant::now(),
    );
    let rtp = match ctx.trunk_media() {
        Ok(media) => media,
        Err(why) => {
            tracing::warn!(call_id = %call.call_id, why, "call not placed");
            machine.handle_route(Err(("trunk_unavailable", 503)), Instant::now());
            while let Some(event) = machine.poll_event() {
                events.send((call.call_id.clone(), event));
            }
            return Err(Box::new(machine));
        }
    };
    let routing = routing(ctx.clone(), call, rtp.local_port());
    Ok(Box::pin(drive(
        ctx.wiring(),
        machine,
        ctx.browser_caller(leg, route),
        rtp,
        Start {
            routing: Some(routing),
            ..Default::default()
        },
        events,
        commands,
    )))
}

/// The plugins' decision and the addresses it leads to. The plugin chain decides first: it
/// may reject the call or move it to another trunk, number or caller ID. It is decided on the
/// shared runtime: plugins and DNS never hold up a media worker's calls.
fn routing(ctx: Arc<CallContext>, call: Outbound, rtp_port: u16) -> Routing {
    let control = ctx.workers.control().clone();
    let deciding = control.spawn(async move {
        let caller_id = ctx
            .trunks
            .config(&call.trunk)
            .map(|t| t.from_user.clone())
            .unwrap_or_default();
        let info = CallInfo {
            call_id: call.call_id.clone(),
            direction: Direction::Outbound,
            caller: call.from.clone(),
            destination: call.to.clone(),
            trunk: call.trunk.clone(),
            number: call.number.clone(),
            caller_id,
            asserted: None,
            diverted_from: None,
        };
        let (decision, hooks) = decide(&ctx, info).await;
        let route = match decision {
            Decision::Place {
                trunk,
                failover,
                number,
                caller_id,
                headers,
                ..
            } => match ctx.trunks.config(&trunk) {
                None => {
                    tracing::info!(call_id = %call.call_id, %trunk, "a plugin routed to a trunk that does not exist");
                    Err(("trunk_unavailable", 503))
                }
                Some(config) => {
                    // Plugins that take the call's audio need it decoded: no Opus relay.
                    let codecs = playable_codecs(&config.codecs, hooks.as_ref());
                    let local = ctx.local_media(rtp_port, &codecs, LocalSrtp::new(config.srtp));
                    let request = CallRequest {
                        to: number,
                        from_user: Some(caller_id),
                        sdp_offer: sdp::offer(&local, 1, sdp::Direction::SendRecv),
                        headers,
                        failover: failover.clone(),
                    };
                    let candidates = resolve(&ctx.trunks, &trunk, &failover).await;
                    Ok(Route {
                        request,
                        candidates,
                        local,
                    })
                }
            },
            Decision::Reject {
                sip_code,
                reason,
                plugin,
            } => {
                tracing::info!(call_id = %call.call_id, %plugin, sip_code, %reason, "call rejected by plugin");
                Err(("rejected", sip_code))
            }
        };
        (route, hooks)
    });
    Box::pin(async move {
        deciding.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "call routing failed");
            (Err(("trunk_unavailable", 500)), None)
        })
    })
}

/// The addresses to try for a call on `first`, resolved (DNS) in failover order. Every
/// candidate gets the first trunk's SDP offer, so a failover trunk (a plugin may name any)
/// with another `srtp` setting is skipped: its keys or its plain RTP would not fit.
pub async fn resolve(trunks: &Trunks, first: &str, failover: &[String]) -> Vec<Candidate> {
    let srtp = trunks.config(first).map(|c| c.srtp);
    let mut out = Vec::new();
    for (trunk, address) in Uac::order(trunks, first, failover) {
        let target = match trunks.config(&trunk) {
            Some(config) if Some(config.srtp) != srtp => {
                tracing::warn!(%trunk, first, "failover trunk skipped: its srtp setting differs from the first trunk's");
                continue;
            }
            Some(config) => trunks.target(config, &address).await,
            None => None,
        };
        out.push(Candidate {
            trunk,
            address,
            target,
        });
    }
    out
}

/// Runs the plugin chain's call-start hooks for a new call, in a task of their own (a hook
/// waiting on its CRM holds no thread; a panic in the host ends this decision, not the call's
/// task). The call keeps the chain it started with, even if the plugins are reloaded
/// meanwhile.
pub(super) async fn decide(ctx: &CallContext, info: CallInfo) -> (Decision, Option<CallHooks>) {
    let chain = ctx.plugins.current();
    if chain.is_empty() {
        return (
            Decision::Place {
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
    match tokio::spawn(async move { deciding.start_call(info).await }).await {
        Ok((decision, instances)) => {
            let record = matches!(decision, Decision::Place { record: true, .. });
            let hooks = (!instances.is_empty())
                .then(|| CallHooks::spawn(chain, call_id, instances, record));
            (decision, hooks)
        }
        Err(e) => {
            tracing::error!(error = %e, "plugin host failed");
            (
                Decision::Reject {
                    sip_code: 500,
                    reason: "plugin host failed".into(),
                    plugin: String::new(),
                },
                None,
            )
        }
    }
}

/// The trunk codecs a call may use: all configured, but no Opus relay when the call's
/// plugins want its audio (they get decoded frames, which a relayed call never has).
pub(super) fn playable_codecs(
    configured: &[crate::media::codec::Codec],
    hooks: Option<&CallHooks>,
) -> Vec<crate::media::codec::Codec> {
    let wants_audio = hooks.is_some_and(|h| h.wants_audio());
    configured
        .iter()
        .copied()
        .filter(|c| !wants_audio || c.g711().is_some())
        .collect()
}
