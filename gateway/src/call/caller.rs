//! The caller's side of a call: a browser over WebRTC (Opus, bridged to the trunk's codec or
//! relayed), or `gateway dial`'s tone caller. The driver moves their media; this file owns
//! what each keeps.

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::Refusal;
use crate::media::bridge::LazyBridge;
use crate::media::tone::{ToneDetector, ToneGenerator};
use crate::media::wideband::LazyWide;
use crate::rtc::BrowserLeg;
use crate::rtc::mux::{Datagram, DirectPath, MediaMux, MuxRoute};

/// The caller's side of the call.
pub enum Caller {
    /// A browser over WebRTC: Opus ⇄ G.711 through the bridge.
    Browser(Box<BrowserCaller>),
    /// `gateway dial`: a probe tone out, tone detection and DTMF on what comes back.
    Tone(Box<ToneCaller>),
}

/// A browser's WebRTC leg and its route on the shared media port.
pub struct BrowserCaller {
    pub(super) leg: BrowserLeg,
    route: MuxRoute,
    mux: MediaMux,
    /// The call's own socket for the address the browser's media comes from.
    direct: Option<DirectPath>,
    /// When a direct path was last opened (or failed to): a browser whose media hops between
    /// addresses gets a new socket at most once per [`REDIRECT_AFTER`].
    direct_opened: Option<Instant>,
    /// Opus ⇄ G.711, with its statistics for the CDR: made when the trunk's audio is G.711.
    pub bridge: LazyBridge,
    /// Opus at 16 kHz ⇄ G.722, made when a trunk answers G.722.
    pub wide: LazyWide,
    pub(super) talkspurt: bool,
    pub(super) connected: bool,
    renegotiations: Renegotiations,
    /// Whether the call, while it transcodes, ticks on its worker's clock and reads the
    /// browser's audio at its tick (`[media] worker_clock`, `super::driver::clock`).
    pub(super) on_worker_clock: bool,
}

/// Renegotiations (ICE restarts) a browser may make in a minute: a network change takes one
/// or two; more is a page gone wrong, and each costs the gateway a new ICE session.
const RENEGOTIATIONS_PER_MINUTE: usize = 10;

/// The browser's renegotiations in the last minute, against [`RENEGOTIATIONS_PER_MINUTE`].
/// The one that answers the gateway's own `renegotiation_needed` is not the browser's doing
/// and is not counted: a browser that restarted ICE through a bad minute of network still
/// gets the band its trunk settled on, rather than coding full band for a G.711 trunk. The
/// gateway's own asks have the same limit, so a trunk that flips its codec by re-INVITE over
/// and over cannot keep the browser renegotiating.
#[derive(Debug, Default)]
struct Renegotiations {
    recent: VecDeque<Instant>,
    /// The gateway asked for a new offer, and none came since.
    asked: bool,
    /// When the gateway asked, in the last minute.
    asks: VecDeque<Instant>,
}

/// Drops the times a minute or more before `now`.
fn within_a_minute(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        times.pop_front();
    }
}

impl Renegotiations {
    /// Whether the gateway may ask the browser for a new offer at `now`; if so, the one that
    /// comes is not counted. Asking twice before it comes still leaves one uncounted: one
    /// offer answers with the latest caps.
    fn ask(&mut self, now: Instant) -> bool {
        within_a_minute(&mut self.asks, now);
        if self.asks.len() >= RENEGOTIATIONS_PER_MINUTE {
            return false;
        }
        self.asks.push_back(now);
        self.asked = true;
        true
    }

    /// Whether a renegotiation at `now` may go ahead; counts it if so.
    fn admit(&mut self, now: Instant) -> Result<(), (Refusal, String)> {
        if std::mem::take(&mut self.asked) {
            return Ok(());
        }
        within_a_minute(&mut self.recent, now);
        if self.recent.len() >= RENEGOTIATIONS_PER_MINUTE {
            return Err((
                Refusal::TooManyRenegotiations,
                format!(
                    "{RENEGOTIATIONS_PER_MINUTE} renegotiations in the last minute already; \
                     wait before renegotiating again"
                ),
            ));
        }
        self.recent.push_back(now);
        Ok(())
    }
}

/// The least time between two direct paths of one call.
const REDIRECT_AFTER: Duration = Duration::from_secs(1);

impl BrowserCaller {
    /// A browser leg whose datagrams arrive on `route`.
    pub fn new(leg: BrowserLeg, route: MuxRoute, mux: MediaMux, bridge: LazyBridge) -> Self {
        BrowserCaller {
            leg,
            route,
            mux,
            direct: None,
            direct_opened: None,
            bridge,
            wide: LazyWide::new(1, 60),
            talkspurt: true,
            connected: false,
            renegotiations: Renegotiations::default(),
            on_worker_clock: false,
        }
    }

    /// Ticks on its worker's clock while it transcodes, reading the browser's audio at its
    /// tick (`[media] worker_clock`).
    pub fn on_worker_clock(mut self, on: bool) -> Self {
        self.on_worker_clock = on;
        self
    }

    /// Answers the browser's new offer on the live call. An ICE restart moves the call's
    /// route on the media port to the new ufrag; media goes on from where it came until the
    /// new checks pick a path.
    pub(super) fn renegotiate(
        &mut self,
        offer: &str,
        now: Instant,
    ) -> Result<String, (Refusal, String)> {
        self.renegotiations.admit(now)?;
        let before = self.leg.ufrag().to_owned();
        let answer = self
            .leg
            .renegotiate(offer, now)
            .map_err(|e| (Refusal::BadOffer, e.to_string()))?;
        if self.leg.ufrag() != before {
            self.route.rekey(self.leg.ufrag(), self.leg.media_source());
        }
        Ok(answer)
    }

    /// Whether the gateway may ask the browser for a new offer (`renegotiation_needed`) at
    /// `now`: the one that answers it is not counted against the browser's limit, and the
    /// gateway asks at most ten times a minute.
    pub(super) fn ask_renegotiation(&mut self, now: Instant) -> bool {
        self.renegotiations.ask(now)
    }

    /// The browser's next datagram through the media port's mux (ICE checks from other
    /// candidates, and everything before media flows on a direct path).
    pub(super) fn poll_route(&mut self, cx: &mut Context<'_>) -> Poll<Option<Datagram>> {
        self.route.poll_recv(cx)
    }

    /// The browser's next datagram on the call's direct path; none before it has one.
    pub(super) fn poll_direct(&mut self, cx: &mut Context<'_>) -> Poll<Datagram> {
        match &mut self.direct {
            Some(direct) => direct.poll_recv(cx),
            None => Poll::Pending,
        }
    }

    /// Whether the browser's media comes on a direct path (which a call may read at its tick).
    pub(super) fn has_direct_path(&self) -> bool {
        self.direct.is_some()
    }

    /// The browser's next datagram waiting on the direct path, read at the call's tick, and
    /// whether more may wait; the path is no longer watched until [`Self::poll_direct`]
    /// ([`DirectPath::try_recv`]).
    pub(super) fn try_recv_direct(&mut self) -> Option<(Datagram, bool)> {
        self.direct.as_mut()?.try_recv()
    }

    /// Sends a datagram to the browser.
    pub(super) fn send(&self, bytes: &[u8], to: std::net::SocketAddr) {
        match &self.direct {
            Some(direct) if direct.peer() == to => direct.send(bytes),
            _ => self.mux.send(bytes, to),
        }
    }

    /// After a datagram: once the browser's media flows from an address (authenticated, see
    /// `BrowserLeg::media_source`), the call reads and writes it on a socket of its own.
    /// True when it opened one.
    pub(super) fn follow_media(&mut self, now: Instant) -> bool {
        let Some(source) = self.leg.media_source() else {
            return false;
        };
        if self.direct.as_ref().is_some_and(|d| d.peer() == source)
            || self
                .direct_opened
                .is_some_and(|t| now.duration_since(t) < REDIRECT_AFTER)
        {
            return false;
        }
        self.direct_opened = Some(now);
        // The old path closes first: its address's datagrams go to the mux again.
        self.direct = None;
        match self.mux.connect(source) {
            Ok(direct) => {
                self.direct = Some(direct);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, %source, "no direct path to the browser; its media goes through the shared port");
                false
            }
        }
    }

    /// Sets up a G.722 call's bridge, when the trunk picks G.722, with this Opus complexity
    /// and jitter depth.
    pub fn with_wideband(mut self, complexity: u8, jitter_ms: u32) -> Self {
        self.wide = LazyWide::new(complexity, jitter_ms);
        self
    }

    /// Both bridges' counters, for the CDR.
    pub fn media_stats(
        &self,
    ) -> (
        crate::media::bridge::BridgeStats,
        crate::media::jitter::JitterStats,
    ) {
        let (mut stats, mut jitter) = self.bridge.stats();
        if let Some(w) = self.wide.made() {
            stats.browser_packets += w.stats.browser_packets;
            stats.browser_packets_sent += w.stats.browser_packets_sent;
            let wj = w.jitter_stats();
            jitter.concealed += wj.concealed / 2;
        }
        (stats, jitter)
    }

    /// The leg, for the inbound answer.
    pub fn leg_mut(&mut self) -> &mut BrowserLeg {
        &mut self.leg
    }
}

/// `gateway dial`'s caller: a tone, digits once answered, and a hang-up after `seconds`.
pub struct ToneCaller {
    pub(super) tone: ToneGenerator,
    /// What came back before the answer.
    pub early: ToneDetector,
    /// What came back after it.
    pub answered: ToneDetector,
    pub(super) digits: String,
    pub(super) seconds: f64,
    /// Digits sent once answered.
    pub dtmf_sent: String,
    /// Digits received (RFC 4733 or SIP INFO).
    pub dtmf_received: String,
    /// Frames not sent because the trunk holds the call.
    pub frames_held: u64,
}

impl ToneCaller {
    /// A caller sending `hz`, pressing `digits` 0.5 s after the answer, hanging up after
    /// `seconds`.
    pub fn new(hz: f64, digits: String, seconds: f64) -> Self {
        ToneCaller {
            tone: ToneGenerator::new(hz, 8000, 8000),
            early: ToneDetector::new(hz, 8000, 800),
            answered: ToneDetector::new(hz, 8000, 800),
            digits,
            seconds,
            dtmf_sent: String::new(),
            dtmf_received: String::new(),
            frames_held: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RENEGOTIATIONS_PER_MINUTE, Refusal, Renegotiations};
    use std::time::{Duration, Instant};

    #[test]
    fn a_browser_may_renegotiate_ten_times_a_minute() {
        let start = Instant::now();
        let mut budget = Renegotiations::default();
        for i in 0..RENEGOTIATIONS_PER_MINUTE {
            assert!(budget.admit(start + Duration::from_secs(i as u64)).is_ok());
        }
        let refused = budget.admit(start + Duration::from_secs(30));
        assert!(
            matches!(refused, Err((Refusal::TooManyRenegotiations, ref m)) if m.contains("10 renegotiations")),
            "{refused:?}"
        );
        // A minute after the first, one more may go.
        assert!(budget.admit(start + Duration::from_secs(60)).is_ok());
        assert!(budget.admit(start + Duration::from_secs(60)).is_err());
    }

    /// The offer that answers the gateway's own request is not the browser's doing: it goes
    /// ahead when the browser's own are used up, and counts against none after it.
    #[test]
    fn the_renegotiation_the_gateway_asked_for_is_not_counted() {
        let start = Instant::now();
        let mut budget = Renegotiations::default();
        for _ in 0..RENEGOTIATIONS_PER_MINUTE {
            budget.admit(start).unwrap();
        }
        assert!(budget.ask(start));
        assert!(budget.ask(start));
        assert!(budget.admit(start + Duration::from_secs(1)).is_ok());
        assert!(budget.admit(start + Duration::from_secs(2)).is_err());
        // Asked for while the browser still had room: still free, so the browser's own
        // count stays where it was.
        let mut budget = Renegotiations::default();
        assert!(budget.ask(start));
        budget.admit(start).unwrap();
        for _ in 0..RENEGOTIATIONS_PER_MINUTE {
            budget.admit(start).unwrap();
        }
        assert!(budget.admit(start).is_err());
    }

    /// A trunk that flips its codec by re-INVITE over and over: the gateway asks the browser
    /// ten times in a minute, then no more until the minute has passed.
    #[test]
    fn the_gateway_asks_at_most_ten_times_a_minute() {
        let start = Instant::now();
        let mut budget = Renegotiations::default();
        for i in 0..RENEGOTIATIONS_PER_MINUTE {
            assert!(budget.ask(start + Duration::from_secs(i as u64)), "ask {i}");
            budget.admit(start + Duration::from_secs(i as u64)).unwrap();
        }
        assert!(!budget.ask(start + Duration::from_secs(30)));
        assert!(
            budget.admit(start + Duration::from_secs(30)).is_ok(),
            "the browser's own ten are untouched"
        );
        assert!(budget.ask(start + Duration::from_secs(60)));
    }
}
