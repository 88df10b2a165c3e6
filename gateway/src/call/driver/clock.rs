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
//!
//! A busy worker's frame is split into [`PHASES`] phases, [`PHASE`] apart ([`Phases`]): a
//! call joins the first phase whose calls' ticks are expected to fit in a phase with it, by
//! what a tick has taken on the thread lately. Why: calls that tick together run one after
//! another, so the last of them ticks as late as all the others take, some 12 ms at 200
//! calls a worker (60–110 µs a tick on the benchmark box). Offered 500 callers there, in four
//! alternated rounds the browsers' jitter p99 read 1.58–2.20 ms (median 1.85) with phases
//! against 2.06–3.47 ms (median 2.84) with one (BENCHMARKS.md, "a busy worker's frame in
//! phases"). A worker of 50 calls still ticks them all in one phase, once a frame.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The media tick's period: one 20 ms frame.
pub(super) const TICK: Duration = Duration::from_millis(20);

/// The phases of a worker's frame ([`Phases`]), [`PHASE`] apart.
pub(super) const PHASES: usize = 4;

/// The time from one phase of a worker's frame to the next, and what a phase's ticks, all its
/// calls one after another, may be expected to take before the next call goes to the next
/// phase: its last call then ticks before the next phase is due.
pub(super) const PHASE: Duration = Duration::from_millis(5);

/// What a tick is taken to cost before the thread has timed one: about a transcoded call's
/// on the benchmark box, cold caches included.
const FIRST_TICK_COST: Duration = Duration::from_micros(60);

/// The weight of the latest tick in the thread's tick cost: at 50 calls, about the last half
/// second's ticks, so that one slow frame (the host took the core) does not send the next
/// call to another phase.
const TICK_COST_WEIGHT: f64 = 1.0 / 1024.0;

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
    /// Whether it ticks on its worker's clock.
    on_worker: bool,
    /// Its phase of the worker's frame and the instant its ticks are a whole number of frames
    /// from, while it ticks on its worker's clock.
    seat: Option<(usize, Instant)>,
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
            on_worker: false,
            seat: None,
            together: false,
        }
    }

    /// A clock that ticks on the thread's worker clock (the module's text): in a phase of the
    /// thread's frame ([`Phases::join`]), a whole number of frames after the phase's epoch,
    /// its first tick at the first such instant from `now`.
    pub(super) fn on_worker_clock(now: Instant) -> Clock {
        let mut clock = Clock::new(now);
        clock.on_worker = true;
        clock.seat = with_phases(Phases::join);
        clock.tick = Some(clock.align(now));
        clock
    }

    /// Its phase of the worker's frame, while it ticks on the worker's clock.
    #[cfg(test)]
    fn phase(&self) -> Option<usize> {
        self.seat.map(|(phase, _)| phase)
    }

    /// A tick of this call ran from `since` (its timer's firing) to now (its audio sent): what
    /// the thread's phases are filled by ([`Phases::record_tick`]). Timed only on the worker's
    /// clock: other calls' ticks fill no phase.
    pub(super) fn record_tick(&self, since: Instant) {
        if self.seat.is_some() {
            let took = since.elapsed();
            with_phases(|phases| phases.record_tick(took));
        }
    }

    /// Leaves its phase of the worker's frame (it stops ticking, or ends).
    fn leave(&mut self) {
        if let Some((phase, _)) = self.seat.take() {
            with_phases(|phases| phases.leave(phase));
        }
    }

    /// While `together`, the machine's and the leg's deadlines ([`Clock::set`]) wait for the
    /// first tick on the worker's clock at or after them. Why: once media flows, they are
    /// RTCP reports, ICE consent and SIP timers, none of which minds 20 ms, and each one at a
    /// time of its own would wake the worker between its frames (at 50 calls the worker woke
    /// some 150 times a second where its ticks ask for 50). Not while the call sets up: its
    /// handshakes' retransmissions are not held back.
    pub(super) fn set_together(&mut self, together: bool) {
        self.together = together && self.on_worker;
    }

    /// The first tick time at or after `at`.
    fn align(&self, at: Instant) -> Instant {
        let Some((_, epoch)) = self.seat else {
            return at;
        };
        let frames = at
            .saturating_duration_since(epoch)
            .as_nanos()
            .div_ceil(TICK.as_nanos());
        epoch + TICK * u32::try_from(frames).unwrap_or(u32::MAX)
    }

    /// Takes the machine's and the leg's deadlines as they are now, and whether the call ticks.
    /// A call that starts ticking again ticks a period from `now` (on the worker's clock, in
    /// the phase it joins then); one that stops forgets its tick and leaves its phase (a
    /// relayed call sends packets as they arrive, on the browser's clock).
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
            (false, _) => {
                self.leave();
                None
            }
            (true, None) => {
                if self.on_worker && self.seat.is_none() {
                    self.seat = with_phases(Phases::join);
                }
                Some(self.align(now + TICK))
            }
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

impl Drop for Clock {
    fn drop(&mut self) {
        self.leave();
    }
}

/// A worker's frame in phases: the calls ticking in each, and what a tick has cost on the
/// thread lately (the module's text).
#[derive(Debug)]
pub(super) struct Phases {
    /// The instant the first phase's ticks are a whole number of frames from.
    epoch: Instant,
    calls: [u32; PHASES],
    /// What one call's tick took on the thread, smoothed ([`TICK_COST_WEIGHT`]), ns.
    tick_ns: f64,
}

impl Phases {
    /// No calls yet; the first phase's ticks fall a whole number of frames after `epoch`.
    pub(super) fn new(epoch: Instant) -> Phases {
        Phases {
            epoch,
            calls: [0; PHASES],
            tick_ns: FIRST_TICK_COST.as_nanos() as f64,
        }
    }

    /// A call joins: the first phase whose calls' ticks with it are expected to take at most
    /// [`PHASE`], else the one with the fewest calls (every phase is full: the worker
    /// is past what its frame holds, and the gate's and the load level's business). Returns
    /// the phase and the instant its ticks count their frames from.
    pub(super) fn join(&mut self) -> (usize, Instant) {
        let budget = PHASE.as_nanos() as f64;
        let phase = (0..PHASES)
            .find(|&p| f64::from(self.calls[p] + 1) * self.tick_ns <= budget)
            .or_else(|| (0..PHASES).min_by_key(|&p| self.calls[p]))
            .unwrap_or(0);
        self.calls[phase] += 1;
        (phase, self.epoch + PHASE * phase as u32)
    }

    /// A call leaves `phase`.
    pub(super) fn leave(&mut self, phase: usize) {
        self.calls[phase] = self.calls[phase].saturating_sub(1);
    }

    /// A call's tick on the thread took `took`.
    pub(super) fn record_tick(&mut self, took: Duration) {
        self.tick_ns += (took.as_nanos() as f64 - self.tick_ns) * TICK_COST_WEIGHT;
    }

    /// The calls in each phase.
    #[cfg(test)]
    fn calls(&self) -> [u32; PHASES] {
        self.calls
    }
}

thread_local! {
    /// The thread's phases: their epoch is when the thread first asked (a worker's thread
    /// asks as its first call on the worker's clock starts).
    static PHASES_OF_THREAD: RefCell<Phases> = RefCell::new(Phases::new(Instant::now()));
}

/// `f` of this thread's [`Phases`]; `None` while the thread ends (a clock dropped with the
/// thread's other locals).
fn with_phases<T>(f: impl FnOnce(&mut Phases) -> T) -> Option<T> {
    PHASES_OF_THREAD
        .try_with(|phases| f(&mut phases.borrow_mut()))
        .ok()
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

    /// The instant this (test) thread's first phase counts its frames from.
    fn thread_epoch() -> Instant {
        with_phases(|phases| phases.epoch).unwrap()
    }

    #[test]
    fn calls_on_a_workers_clock_tick_together_a_whole_number_of_frames_from_its_epoch() {
        let epoch = thread_epoch();
        let mut first = Clock::on_worker_clock(epoch + ms(3));
        let mut second = Clock::on_worker_clock(epoch + ms(17));
        assert_eq!(first.poll_timeout(), Some(epoch + ms(20)));
        assert_eq!(
            second.poll_timeout(),
            Some(epoch + ms(20)),
            "the same instant"
        );
        assert_eq!(
            Clock::on_worker_clock(epoch + ms(40)).poll_timeout(),
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

    #[test]
    fn a_busy_workers_calls_fill_its_frames_phases_by_what_their_ticks_take() {
        let epoch = Instant::now();
        let mut phases = Phases::new(epoch);
        for _ in 0..20_000 {
            phases.record_tick(ms(1));
        }
        // A phase holds five ticks of 1 ms in its 5 ms; the sixth call starts the next
        // phase, 5 ms on.
        let joined: Vec<(usize, Instant)> = (0..6).map(|_| phases.join()).collect();
        assert_eq!(joined[4], (0, epoch));
        assert_eq!(joined[5], (1, epoch + ms(5)));
        for _ in 0..14 {
            phases.join();
        }
        assert_eq!(phases.calls(), [5, 5, 5, 5], "the frame is full");
        assert_eq!(
            phases.join(),
            (0, epoch),
            "past a full frame: the phase with the fewest calls"
        );
        phases.leave(2);
        phases.leave(2);
        assert_eq!(
            phases.join(),
            (2, epoch + ms(10)),
            "the first phase with room again"
        );
        assert_eq!(phases.calls(), [6, 5, 4, 5]);
    }

    #[test]
    fn a_call_ticks_in_the_phase_it_joined_and_leaves_it_when_it_stops_ticking() {
        let epoch = thread_epoch();
        let first = Clock::on_worker_clock(epoch + ms(1));
        assert_eq!(first.phase(), Some(0), "a quiet worker: one phase");
        // Ticks of 2 ms (and the little it takes to time them): the first phase holds two
        // calls.
        for _ in 0..20_000 {
            first.record_tick(Instant::now() - ms(2));
        }
        let second = Clock::on_worker_clock(epoch + ms(1));
        let mut third = Clock::on_worker_clock(epoch + ms(1));
        assert_eq!((second.phase(), third.phase()), (Some(0), Some(1)));
        assert_eq!(
            third.poll_timeout(),
            Some(epoch + ms(5)),
            "the second phase ticks 5 ms into each frame"
        );
        third.set(None, None, false, epoch + ms(30));
        assert_eq!(third.phase(), None);
        assert_eq!(with_phases(|p| p.calls()), Some([2, 0, 0, 0]));
        drop(second);
        // Ticking again, it joins the first phase with room, now the first.
        third.set(None, None, true, epoch + ms(31));
        assert_eq!(third.phase(), Some(0));
        assert_eq!(third.poll_timeout(), Some(epoch + ms(60)));
        drop(first);
        drop(third);
        assert_eq!(with_phases(|p| p.calls()), Some([0; PHASES]));
    }
}
