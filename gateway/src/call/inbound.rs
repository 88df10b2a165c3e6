//! An inbound call, trunk → browser: the dialled number's route, the plugins' say, the
//! browser registered for it, then the driver runs the call while the browser rings.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rsip::prelude::*;

use super::CallContext;
use super::cdr::{Parties, Placed, record_outcome};
use super::driver::{Start, contain_task, drive};
use super::machine::{Call, CallEvent, InboundInvite, inbound_session};
use super::outbound::decide;
use crate::media::codec::Codec;
use crate::media::srtp::LocalSrtp;
use crate::plugin::{CallEnd, CallInfo, Decision, Direction};
use crate::rtc::BrowserLeg;
use crate::sip::endpoint::IncomingRequest;
use crate::sip::extensions;
use crate::sip::message::{random_token, refusal, response_to, uri_user};
use crate::sip::sdp;

/// How an inbound INVITE reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// From the trunk itself.
    Direct,
    /// Forwarded by another node of the cluster, for a browser connected here; its source
    /// and transport are already the trunk's. Never forwarded again (no loops).
    Forwarded,
}

/// Offers a call from a trunk to the browser registered for the dialled number, and runs
/// it. `invite` is the trunk's INVITE (already answered 100 by the endpoint). In a cluster,
/// a browser connected to another node gets the INVITE forwarded there.
pub async fn run_inbound(
    ctx: Arc<CallContext>,
    trunk: String,
    invite: IncomingRequest,
    arrival: Arrival,
) {
    let Some(responder) = invite.responder.clone() else {
        return;
    };
    let request = &invite.request;
    // A 503 (draining, at capacity, out of call slots, trunk channels or media ports) says
    // when to try again.
    let refuse = |code: u16| responder.respond(refusal(request, code, BUSY_RETRY_AFTER_SECONDS));
    // An INVITE that requires an extension the gateway lacks (100rel, timer …) is refused
    // with the extensions named, so the trunk can retry without them (§8.2.2.3).
    if let Some(unsupported) = extensions::bad_extension(request) {
        tracing::info!(%trunk, %unsupported, "inbound INVITE requires an unsupported extension: 420");
        let mut response = response_to(request, 420, Some(&random_token()));
        response.headers.push(unsupported);
        return responder.respond(response);
    }
    // RFC 4028 §5: a session interval below ours is refused with 422 and our Min-SE.
    let ours = ctx.trunks.config(&trunk).map_or(0, |c| c.session_expires);
    if let Err(min) = inbound_session(request, ours) {
        tracing::info!(%trunk, "inbound INVITE's Session-Expires is below {min} s: 422");
        let mut response = response_to(request, 422, Some(&random_token()));
        response
            .headers
            .push(rsip::Header::Other("Min-SE".into(), min.to_string()));
        return responder.respond(response);
    }
    let dialled = uri_user(&request.uri).unwrap_or_default();
    // §21.4.5: 404 when the number is routed nowhere; 480 when its browser is not connected.
    let Some(identity) = ctx.config.inbound.get(&dialled).cloned() else {
        tracing::info!(%trunk, number = %dialled, "inbound call to an unrouted number: 404");
        return refuse(404);
    };
    // §21.4.5's 480 is for a browser connected nowhere: one connected to another node of
    // the cluster gets the INVITE there, and the dialog and media are that node's.
    if arrival == Arrival::Direct
        && let Some(cluster) = &ctx.cluster
        && !ctx
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&identity)
        && let Some(node) = cluster.locate(&identity).await
    {
        let endpoint = ctx.endpoint.clone();
        return super::forward::run(endpoint, cluster.clone(), trunk, invite, node).await;
    }
    // A gateway that drains or is at capacity refuses before its plugins run or anything is
    // set up, as `/ws` does (`signal::admission`): a refusal under load must cost little.
    if refused_for_load(&ctx, &trunk) {
        return refuse(503);
    }
    let from = request
        .from_header()
        .ok()
        .and_then(|f| f.typed().ok())
        .and_then(|f| uri_user(&f.uri))
        .unwrap_or_else(|| "anonymous".into());
    let call_id = format!("c-{}", random_token());
    let started_ms = crate::wall::unix_ms();
    // The trunk may give up (CANCEL) while the plugins decide: its requests for this call
    // are routed here from now on, and the call reads them once it runs.
    let sip_call_id = crate::sip::message::call_id(request).unwrap_or_default();
    let requests = crate::sip::endpoint::request_channel();
    ctx.endpoint.route_dialog(&sip_call_id, requests.0.clone());
    // RFC 3325 and RFC 5806/7044: who the trunk vouches for, and where the call was
    // diverted from; for the plugins and the browser's `incoming`.
    let asserted = extensions::identity_user(&request.headers, "P-Asserted-Identity");
    let diverted_from = extensions::identity_user(&request.headers, "Diversion")
        .or_else(|| extensions::identity_user(&request.headers, "History-Info"))
        .filter(|n| *n != dialled);
    // Plugins decide before anything rings: they may refuse the call or pick another browser.
    let info = CallInfo {
        call_id: call_id.clone(),
        direction: Direction::Inbound,
        caller: from.clone(),
        destination: dialled.clone(),
        trunk: trunk.clone(),
        number: identity,
        caller_id: from.clone(),
        asserted: asserted.clone(),
        diverted_from: diverted_from.clone(),
    };
    let (decision, hooks) = decide(&ctx, info).await;
    let setup = || -> Result<_, u16> {
        let identity = match decision {
            Decision::Place { number, .. } => number,
            Decision::Reject {
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
        // Again: the plugins may have taken a while.
        if refused_for_load(&ctx, &trunk) {
            return Err(503);
        }
        let slot = ctx.take_call_slot().ok_or(503u16)?;
        let (Some(config), Some(channel)) =
            (ctx.trunks.config(&trunk), ctx.trunks.take_channel(&trunk))
        else {
            return Err(503);
        };
        let codecs = super::outbound::playable_codecs(&config.codecs, hooks.as_ref());
        // An INVITE without a body is a late offer: our 200 offers, the ACK answers
        // (RFC 3264 §5, RFC 3261 §13.2.1).
        let srtp = LocalSrtp::new(config.srtp);
        let remote = if request.body.is_empty() {
            None
        } else {
            Some(
                sdp::parse_remote(&request.body, &codecs, &srtp, false).map_err(|e| {
                    tracing::warn!(error = %e, "inbound offer unusable: 488");
                    488u16
                })?,
            )
        };
        // Too short an interval was refused with 422 before (checked on arrival).
        let session = inbound_session(request, config.session_expires).unwrap_or((0, false));
        let rtp = ctx.trunk_media().map_err(|_| 503u16)?;
        let local = ctx.local_media(rtp.local_port(), &codecs, srtp);
        // The browser codes no wider than the codec the trunk's offer settled on, or, for a
        // late offer, the widest this trunk may pick. Where the trunk later settles on another
        // width (the late offer's answer, a re-INVITE), the driver asks the browser for a new
        // offer (`renegotiation_needed`) and answers it with the new caps.
        let audio = match &remote {
            Some(remote) => crate::rtc::AudioCaps::of_trunk(remote),
            None => crate::rtc::AudioCaps::up_to(Codec::widest_audio_hz(codecs.iter().copied())),
        };
        let (leg, offer) = BrowserLeg::offer(
            ctx.mux.local_addr(),
            ctx.media_ip,
            &ctx.dtls,
            audio,
            Instant::now(),
        )
        .map_err(|_| 500u16)?;
        let invite = InboundInvite {
            id: 0,
            request: request.clone(),
            source: invite.source,
            transport: invite.transport,
            trunk: trunk.clone(),
            rtp_source: config.rtp_source,
            channel,
            remote,
            local,
            session,
        };
        Ok((slot, browser, invite, rtp, leg, offer))
    };
    let (slot, browser, inbound, rtp, leg, offer) = match setup() {
        Ok(parts) => parts,
        Err(code) => {
            refuse(code);
            ctx.endpoint.forget_dialog(&sip_call_id);
            if let Some(hooks) = hooks {
                hooks
                    .end(CallEnd {
                        reason: super::machine::failure_reason(code).into(),
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
    // From here the call runs on a media worker (`call::workers`): its browser leg, bridge
    // and trunk RTP are driven there; the plugins' hooks stay where they were started.
    let worker_ctx = ctx.clone();
    // Boxed: the task's future keeps what it captured for its whole life, even once moved
    // on, and the leg and RTP stream (11 KB) are kept again by the driver.
    let (leg, rtp) = (Box::new(leg), Box::new(rtp));
    let events = super::EventSink::new(browser.events.clone());
    let placed = Placed {
        parties: Parties {
            call_id: call_id.clone(),
            from: from.clone(),
            to: dialled.clone(),
        },
        direction: Direction::Inbound,
        sip_call_id: Some(sip_call_id),
        started_ms,
    };
    let (sink, guarded) = (events.clone(), ctx.clone());
    let task = Box::pin(async move {
        let rtp = *rtp;
        let ctx = worker_ctx;
        ctx.metrics.calls_total.fetch_add(1, Ordering::Relaxed);
        #[cfg(any(test, feature = "fault-injection"))]
        crate::fault::injection::call_set_up(&dialled);
        let machine = Call::inbound(
            &call_id,
            ctx.call_settings(),
            ctx.endpoint.local().clone(),
            ctx.trunks.clone(),
            inbound,
            Instant::now(),
        );
        let route = ctx.mux.register(leg.ufrag());
        let (commands_tx, commands) = super::command_channel();
        let _ = browser
            .calls
            .send(Box::new((call_id.clone(), commands_tx, events.clone())));
        events.send((
            call_id.clone(),
            CallEvent::Offered {
                from: from.clone(),
                to: dialled.clone(),
                sdp: offer,
                asserted,
                diverted_from,
            },
        ));
        // The driver and the record boxed, as an outbound call's (`outbound::run_outbound`):
        // inline, this future kept room for both and for the values moved into them (10 KB).
        let outcome = Box::pin(drive(
            ctx.wiring(),
            machine,
            ctx.browser_caller(leg, route),
            rtp,
            Start {
                routing: None,
                invite: Some(invite),
                hooks,
                requests: Some(requests),
            },
            events,
            commands,
        ));
        let outcome = Box::new(outcome.await);
        let parties = Parties {
            call_id,
            from,
            to: dialled,
        };
        Box::pin(record_outcome(&ctx, &parties, started_ms, *outcome)).await;
    });
    // A fault on the worker before the browser was offered the call tells it nothing; the
    // trunk's INVITE is answered 500 all the same (`contain_task`). The slot is held until the
    // call's record is written, whether or not the task faults.
    ctx.workers.spawn(async move {
        contain_task(placed, sink, false, &guarded, task).await;
        drop(slot);
    });
}

/// Whether the gateway takes no new call now: it drains, or it is at capacity (counted as a
/// call shed).
fn refused_for_load(ctx: &CallContext, trunk: &str) -> bool {
    if ctx.is_draining() {
        return true;
    }
    let Some(why) = ctx.media_full() else {
        return false;
    };
    tracing::info!(%trunk, why, "inbound call refused for load: 503");
    ctx.metrics.load.calls_shed.fetch_add(1, Ordering::Relaxed);
    true
}

/// Seconds a trunk is asked to wait after a 503 (RFC 3261 §21.5.4), so that it sends its
/// calls to another gateway meanwhile: the load level steps down only after three calm
/// seconds (`super::load`), so a retry sooner would most likely be refused again.
const BUSY_RETRY_AFTER_SECONDS: u32 = 5;
