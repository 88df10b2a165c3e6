//! What a media worker's late ticks say about its room for new calls (the admission gate,
//! `super::has_room`).

use super::GATED_FROM_CALLS;

/// At most this share of a worker's ticks in a window may run late (`[limits] late_tick_ms`)
/// for the window to count as on time ([`Lateness`]). Why: a worker's demand is a half
/// second's average, and it can read within the limit while its calls' frames already go out a
/// frame late. Offered 500 callers on the benchmark box, workers admitted up to 0.9 of a core
/// each, then read 0.6–1.0 with no call added, and up to 71 % of a second's ticks ran 20 ms
/// late (`gateway_late_ticks_ratio`, traced); 250 calls, which fit, ran at most 0.7 % late
/// until the box slowed (docs/benchmarks-history.md, "2026-12-06, night"). One tick in a
/// hundred a frame late is a worker already falling behind, not one with room for more.
pub(super) const LATE_SHARE: f64 = 0.01;

/// What a worker's late windows (more than [`LATE_SHARE`] of its ticks late) say about its
/// room: none until [`ON_TIME_TO_REOPEN`] windows in a row have run on time, and none beyond
/// the calls it carried when its ticks last ran late until [`ON_TIME_TO_FORGET`] have.
/// Placement passes it over too while another worker has room (`super::choose`).
///
/// Why: at saturation lateness comes in bursts. Offered 25 callers a second on the benchmark
/// box, the workers' ticks ran late at 341 calls, and each half second that happened to run
/// on time in between let the next dozen callers in: the workers reached 389 calls while 3–27 %
/// of each second's ticks ran late, and up to 50 % later on (docs/benchmarks-history.md,
/// "2026-12-06, late night"). The calls a worker carried when it ran late are what it is
/// known not to carry on time, as the box is now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lateness {
    /// Windows in a row whose ticks ran on time (at most [`ON_TIME_TO_FORGET`]).
    pub(super) on_time: u32,
    /// The fewest calls it carried in a late window since it last forgot.
    pub(super) late_with: Option<usize>,
}

/// On-time windows in a row (2 s) before a worker whose ticks ran late takes calls again.
pub(super) const ON_TIME_TO_REOPEN: u32 = 4;

/// On-time windows in a row (a minute) before a worker forgets the calls it ran late with: the
/// box may have been slow for a while (another program's burst, a host that took the core).
pub(super) const ON_TIME_TO_FORGET: u32 = 120;

impl Lateness {
    /// A worker that has not run late.
    pub(super) const ON_TIME: Lateness = Lateness {
        on_time: ON_TIME_TO_FORGET,
        late_with: None,
    };

    /// One more window, `late` or not, in which the worker carried `calls`.
    pub(super) fn handle_window(&mut self, late: bool, calls: usize) {
        if late {
            self.on_time = 0;
            self.late_with = Some(self.late_with.map_or(calls, |c| c.min(calls)));
        } else {
            self.on_time = (self.on_time + 1).min(ON_TIME_TO_FORGET);
            if self.on_time == ON_TIME_TO_FORGET {
                self.late_with = None;
            }
        }
    }

    /// Whether it lets a worker carrying `calls` take one more: always below
    /// [`GATED_FROM_CALLS`], whose calls cannot have made the ticks late themselves.
    pub(super) fn has_room(&self, calls: usize) -> bool {
        calls < GATED_FROM_CALLS
            || (self.on_time >= ON_TIME_TO_REOPEN
                && self.late_with.is_none_or(|late| calls + 1 < late))
    }
}
