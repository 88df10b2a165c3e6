//! A call's three clocks as one deadline: the machine's timer (SIP timers, the ring and media
//! watches), the browser leg's timer (ICE consent, DTLS retransmissions, RTCP reports) and the
//! 20 ms media tick (a transcoded call's audio to the browser, a tone caller's frames).
//!
//! Why one: each was a timer of its own on the worker's wheel, and the tick re-armed its entry
//! every 20 ms. One deadline is one wheel entry a call, re-armed when the earliest moves, and
//! it is what a worker loop of the gateway's own (polling its calls' sockets without tokio)
//! would hand its timer wheel: the clock answers `poll_timeout` and takes `handle_timeout`
//! like the machines it serves.
//!
//! A transcoding call may tick on its worker's clock ([`Clock::on_worker_clock`], `[media]
//! worker_clock`): every such call on the thread ticks at the same instants, a whole number of
//! frames from the thread's [`worker_epoch`], and reads the browser's audio at its tick. Why:
//! on a virtual machine a core that idles more than a fraction of a millisecond is given to
//! other work by the host, and whatever runs next finds the caches emptied. A worker whose
//! calls tick at their own times wakes each 2 ms turn for the few calls due and pays that
//! refill each time; one whose calls tick together wakes about once a frame and pays it once.
//! On the benchmark box 50 calls' coders cost 20 % more woken in ten groups a frame than in
//! one (`opus-paced`), and 50 transcoded calls cost the gateway 4–17 % less so, pair by pair,
//! with both legs' audio read at the tick (BENCHMARKS.md, "a worker's clock"). Ticking together
//! alone, with the browser's audio still read as it arrived, saved nothing: the thread still
//! woke every turn.

use std::time::{Duration, Instant};

/// The media tick's period: one 20 ms frame.
pub(super) const TICK: Duration = Duration::from_millis(20);

/// What came due at a [`Clock::handle_timeout`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Due {
    /// The machine's timer.
    pub call: bool,
    /// The browser leg's timer.
    pub leg: bool,
    /// A tick, this long after its time.
    pub tick: Option<Duration>,
}

/// The call's deadlines.
#[derive(Debug)]
pub(super) struct Clock {
    call: Option<Instant>,
    leg: Option<Instant>,
    /// The next tick's time; `None` while the call does not tick.
    tick: Option<Instant>,
    /// The instant its ticks are a whole number of frames from, when it ticks on its worker's
    /// clock.
    epoch: Option<Instant>,
    /// Whether the machine's and the leg's deadlines wait for the next tick on the worker's
    /// clock too ([`Clock::set_together`]).
    together: bool,
}

impl Clock {
    /// A clock whose first tick is due at once (a call's first frame goes out as it starts).
    pub(super) fn new(now: Instant) -> Clock {
        Clock {
            call: None,
            leg: None,
            tick: Some(now),
            epoch: None,
            together: false,
        }
    }

    /// A clock whose ticks fall a whole number of frames after `epoch` (the worker's, see the
    /// module's text): its first at the first such instant from `now`.
    pub(super) fn on_worker_clock(now: Instant, epoch: Instant) -> Clock {
        let mut clock = Clock::new(now);
        clock.epoch = Some(epoch);
        clock.tick = Some(clock.align(now));
        clock
    }

    /// While `together`, the machine's and the leg's deadlines ([`Clock::set`]) wait for the
    /// first tick on the worker's clock at or after them. Why: once media flows, they are
    /// RTCP reports, ICE consent and SIP timers, none of which minds 20 ms, and each one at a
    /// time of its own would wake the worker between its frames (at 50 calls the worker woke
    /// some 150 times a second where its ticks ask for 50). Not while the call sets up: its
    /// handshakes' retransmissions are not held back.
    pub(super) fn set_together(&mut self, together: bool) {
        self.together = together && self.epoch.is_some();
    }

    /// The first tick time at or after `at`.
    fn align(&self, at: Instant) -> Instant {
        let Some(epoch) = self.epoch else {
            return at;
        };
        let frames = at
            .saturating_duration_since(epoch)
            .as_nanos()
            .div_ceil(TICK.as_nanos());
        epoch + TICK * u32::try_from(frames).unwrap_or(u32::MAX)
    }

    /// Takes the machine's and the leg's deadlines as they are now, and whether the call ticks.
    /// A call that starts ticking again ticks a period from `now`; one that stops forgets its
    /// tick (a relayed call sends packets as they arrive, on the browser's clock).
    pub(super) fn set(
        &mut self,
        call: Option<Instant>,
        leg: Option<Instant>,
        ticking: bool,
        now: Instant,
    ) {
        let (call, leg) = if self.together {
            (call.map(|at| self.align(at)), leg.map(|at| self.align(at)))
        } else {
            (call, leg)
        };
        self.call = call;
        self.leg = leg;
        self.tick = match (ticking, self.tick) {
            (false, _) => None,
            (true, None) => Some(self.align(now + TICK)),
            (true, Some(at)) => Some(at),
        };
    }

    /// The earliest deadline.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        [self.call, self.leg, self.tick].into_iter().flatten().min()
    }

    /// What is due at `now`. A tick that came due moves on by one period from its own time,
    /// not from `now`: a late worker catches up with back-to-back ticks (the jitter buffer and
    /// the tone keep their count of frames), as tokio's `MissedTickBehavior::Burst` did.
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if self.call.is_some_and(|at| at <= now) {
            self.call = None;
            due.call = true;
        }
        if self.leg.is_some_and(|at| at <= now) {
            self.leg = None;
            due.leg = true;
        }
        if let Some(at) = self.tick
            && at <= now
        {
            self.tick = Some(at + TICK);
            due.tick = Some(now - at);
        }
        due
    }
}

thread_local! {
    /// The thread's frame clock: when it first asked (a worker's thread asks as its first
    /// call on the worker's clock starts).
    static EPOCH: Instant = Instant::now();
}

/// The instant every call on this thread that ticks on its worker's clock counts its frames
/// from ([`Clock::on_worker_clock`]).
pub(super) fn worker_epoch() -> Instant {
    EPOCH.with(|epoch| *epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_earliest_of_the_three_deadlines_is_the_calls_one_and_only_what_is_due_fires() {
        let t0 = Instant::now();
        let mut clock = Clock::new(t0);
        assert_eq!(
            clock.poll_timeout(),
            Some(t0),
            "the first tick is due at once"
        );
        assert_eq!(clock.handle_timeout(t0).tick, Some(Duration::ZERO));
        clock.set(Some(t0 + ms(5)), Some(t0 + ms(30)), true, t0);
        assert_eq!(clock.poll_timeout(), Some(t0 + ms(5)));
        assert_eq!(
            clock.handle_timeout(t0 + ms(4)),
            Due::default(),
            "nothing due yet"
        );
        let due = clock.handle_timeout(t0 + ms(6));
        assert_eq!((due.call, due.leg, due.tick), (true, false, None));
        assert_eq!(clock.poll_timeout(), Some(t0 + ms(20)), "the tick is next");
        let due = clock.handle_timeout(t0 + ms(31));
        assert_eq!((due.call, due.leg, due.tick), (false, true, Some(ms(11))));
        assert_eq!(clock.poll_timeout(), Some(t0 + ms(40)));
    }

    #[test]
    fn a_late_tick_catches_up_back_to_back_from_its_own_time() {
        let t0 = Instant::now();
        let mut clock = Clock::new(t0);
        clock.handle_timeout(t0);
        // The worker was away for 50 ms: the ticks of 20 and 40 ms are owed.
        let now = t0 + ms(50);
        assert_eq!(clock.handle_timeout(now).tick, Some(ms(30)));
        assert_eq!(clock.poll_timeout(), Some(t0 + ms(40)), "due already");
        assert_eq!(clock.handle_timeout(now).tick, Some(ms(10)));
        assert_eq!(clock.handle_timeout(now).tick, None, "caught up");
        assert_eq!(clock.poll_timeout(), Some(t0 + ms(60)));
    }

    #[test]
    fn calls_on_a_workers_clock_tick_together_a_whole_number_of_frames_from_its_epoch() {
        let epoch = Instant::now();
        let mut first = Clock::on_worker_clock(epoch + ms(3), epoch);
        let mut second = Clock::on_worker_clock(epoch + ms(17), epoch);
        assert_eq!(first.poll_timeout(), Some(epoch + ms(20)));
        assert_eq!(
            second.poll_timeout(),
            Some(epoch + ms(20)),
            "the same instant"
        );
        assert_eq!(
            Clock::on_worker_clock(epoch + ms(40), epoch).poll_timeout(),
            Some(epoch + ms(40)),
            "on the clock already: due at once"
        );
        for clock in [&mut first, &mut second] {
            assert_eq!(clock.handle_timeout(epoch + ms(21)).tick, Some(ms(1)));
            assert_eq!(clock.poll_timeout(), Some(epoch + ms(40)));
        }
        // A call that stops ticking (it relays) and starts again rejoins the clock.
        first.set(None, None, false, epoch + ms(45));
        first.set(None, None, true, epoch + ms(51));
        assert_eq!(first.poll_timeout(), Some(epoch + ms(80)));
        // Its own deadlines are not moved onto the clock while it sets up …
        first.set(Some(epoch + ms(52)), None, true, epoch + ms(51));
        assert_eq!(first.poll_timeout(), Some(epoch + ms(52)));
        // … and wait for its next tick once it reads at the tick.
        first.set_together(true);
        first.set(
            Some(epoch + ms(52)),
            Some(epoch + ms(75)),
            true,
            epoch + ms(51),
        );
        assert_eq!(first.poll_timeout(), Some(epoch + ms(60)));
        let due = first.handle_timeout(epoch + ms(60));
        assert_eq!((due.call, due.leg), (true, false), "the leg's is due at 80");
        first.set_together(false);
        first.set(None, Some(epoch + ms(75)), true, epoch + ms(61));
        assert_eq!(first.poll_timeout(), Some(epoch + ms(75)));
    }

    #[test]
    fn a_call_that_stops_ticking_forgets_its_tick_and_starts_a_period_later() {
        let t0 = Instant::now();
        let mut clock = Clock::new(t0);
        clock.set(None, None, false, t0);
        assert_eq!(
            clock.poll_timeout(),
            None,
            "a relayed call has no clock of its own"
        );
        assert_eq!(clock.handle_timeout(t0 + ms(100)), Due::default());
        clock.set(None, None, true, t0 + ms(100));
        assert_eq!(clock.poll_timeout(), Some(t0 + ms(120)));
        // Still ticking: the tick keeps its time.
        clock.set(None, None, true, t0 + ms(110));
        assert_eq!(clock.poll_timeout(), Some(t0 + ms(120)));
    }
}
