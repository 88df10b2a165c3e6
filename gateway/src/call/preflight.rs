//! The pre-call test (`preflight`): a browser checks its path to the gateway before it calls.
//! Its offer is answered like a call's, but nothing is dialled: the browser's audio comes
//! straight back (Opus relayed as it came, on the gateway's own stream) for at most
//! [`PREFLIGHT_SECONDS`], so the page sees ICE, DTLS and SRTP complete, and measures the
//! round trip, loss and jitter of the real media path.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{CallContext, CallSlot};
use crate::rtc::mux::{MediaMux, MuxRoute};
use crate::rtc::{BrowserEvent, BrowserLeg, RtcError};

/// How long a preflight echoes: enough for the connection and a few seconds of statistics.
pub const PREFLIGHT_SECONDS: u64 = 10;

/// Answers a preflight `offer` and echoes its audio in a task of its own, which holds `slot`
/// (a preflight costs what a relayed call costs) until it ends. Returns the SDP answer.
pub fn start_preflight(
    ctx: &Arc<CallContext>,
    slot: CallSlot,
    offer: &str,
) -> Result<String, RtcError> {
    let now = Instant::now();
    // Answered as a call's offer is, so the path is measured with the traffic a call sends:
    // as wide as the widest trunk's (no trunk is dialled yet).
    let (leg, answer) = ctx.answer_browser(
        offer,
        crate::rtc::AudioCaps::up_to(ctx.trunks.widest_audio_hz()),
        now,
    )?;
    let route = ctx.mux.register(leg.ufrag());
    ctx.metrics.preflights_total.fetch_add(1, Ordering::Relaxed);
    let until = now + Duration::from_secs(PREFLIGHT_SECONDS);
    let mux = ctx.mux.clone();
    ctx.workers.spawn(async move {
        echo(leg, route, mux, until).await;
        drop(slot);
    });
    Ok(answer)
}

/// Drives the leg until `until`, its failure, or the media port's end: each Opus packet goes
/// back to the browser as it came.
async fn echo(mut leg: BrowserLeg, mut route: MuxRoute, mux: MediaMux, until: Instant) {
    let mut packets = 0u64;
    loop {
        let now = Instant::now();
        while let Some(event) = leg.poll_event() {
            match event {
                BrowserEvent::Opus {
                    payload, timestamp, ..
                } => {
                    packets += 1;
                    // Only Opus goes back, as the trunk relay would send it.
                    let Some(ticks) = crate::media::opus::relayable_ticks(&payload) else {
                        continue;
                    };
                    if let Err(e) = leg.relay_opus(&payload, timestamp, ticks) {
                        tracing::debug!(error = %e, "preflight echo");
                    }
                }
                BrowserEvent::Failed => {
                    tracing::info!(packets, "preflight: the browser's media failed");
                    return;
                }
                _ => {}
            }
        }
        while let Some((bytes, to)) = leg.poll_transmit() {
            mux.send(&bytes, to);
            leg.reuse(bytes);
        }
        if now >= until {
            break;
        }
        let wake = leg.poll_timeout().map_or(until, |t| t.min(until));
        tokio::select! {
            datagram = route.recv() => match datagram {
                Some((bytes, from)) => {
                    leg.handle_datagram(bytes, from, Instant::now());
                }
                None => break,
            },
            _ = tokio::time::sleep_until(wake.into()) => leg.handle_timeout(Instant::now()),
        }
    }
    leg.close();
    while let Some((bytes, to)) = leg.poll_transmit() {
        mux.send(&bytes, to);
    }
    tracing::info!(packets, "preflight over");
}
