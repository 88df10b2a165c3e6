//! The gateway's media load: as the media workers fill, calls first code Opus at the cheapest
//! complexity (economy), then new calls are refused before running calls degrade.
//! `/metrics` and `/healthz` show it, so a load balancer or the cluster sends calls elsewhere.
//!
//! Two measures decide it, once a second ([`LoadMonitor::handle_timeout`]), each with
//! hysteresis so a single busy second does not flap it:
//! - the workers' demand ([`Demand`], from `call::workers`): calls economise while no worker
//!   has room within `[limits] economy_load_pct` of a core. Why: economy carries ~15 % more
//!   calls (500 callers offered on the benchmark box: 274 and 250 carried at complexity 0
//!   against 233 and 213 at 1, docs/benchmarks-history.md), so it must come before the refusals at
//!   `media_load_pct`, not after them. The gate goes on counting economising calls at their
//!   full cost (`call::workers::MediaWorkers::set_economy`): economy buys the running calls
//!   headroom, not room for more;
//! - the calls' tick lateness (drivers count their ticks, [`LoadMonitor::handle_tick`]): the
//!   backstop for what demand does not see. Late ticks economise, and ticks still late in
//!   economy refuse new calls (shedding).
//!
//! Every tick's lateness also goes into a histogram (`gateway_media_tick_lateness_seconds`),
//! which says how late the gateway sends each frame — the delay it adds to the audio beyond
//! the network's — whatever the thresholds above. Why: at saturation the browsers' jitter is
//! what callers hear, but the browsers share the box (or the network) with the gateway, so
//! their jitter alone cannot say whose lateness it was.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How loaded the media is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoadLevel {
    /// Ticks on time.
    #[default]
    Normal = 0,
    /// The workers full (`economy_load_pct`) or ticks late: every call codes Opus at
    /// complexity 0.
    Economy = 1,
    /// Still late in economy: new calls are refused.
    Shedding = 2,
}

/// How full the media workers are against `[limits] economy_load_pct`, as the admission gate
/// counts it (`call::workers::MediaWorkers::has_room`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// Some worker has room for a call within [`CALM_SHARE`] of it (or no worker is measured
    /// full yet).
    Calm,
    /// Between.
    Steady,
    /// No worker has room for a call within it: calls economise.
    High,
}

/// Economy ends once some worker has room within this share of `economy_load_pct`, for
/// [`CALM_AFTER`] seconds. Below 0.85: economy itself lowers a call's demand by ~15 %, so an
/// end at the threshold itself would turn it straight back on.
pub const CALM_SHARE: f64 = 0.75;

/// Late seconds in a row, at economy, before new calls are refused.
const SHED_AFTER: u32 = 2;
/// Calm seconds in a row before the level steps down.
const CALM_AFTER: u32 = 3;

#[derive(Debug, Default)]
struct Hysteresis {
    /// The level the ticks' lateness alone decides.
    late_level: LoadLevel,
    late_seconds: u32,
    calm_seconds: u32,
    /// Calls economise for their workers' demand.
    demand_high: bool,
    /// Seconds in a row the demand was calm.
    demand_calm_seconds: u32,
    /// All ticks, and the late ones, as the last second counted them.
    ticks_seen: u64,
    late_seen: u64,
}

/// Upper bounds, seconds, of the tick-lateness histogram (`+Inf` is implied): a 2 ms turn,
/// a worker's phase (5 ms), half a frame, a frame (20 ms, `[limits] late_tick_ms`' default),
/// and beyond, where a browser's jitter buffer has run dry.
pub const TICK_LATENESS_BUCKETS: [f64; 7] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1];

/// The ticks of the calls one thread runs, counted by that thread alone: a media worker's
/// (`call::workers`), or every other thread's together ([`LoadMonitor`]'s own). Why per
/// thread: counted in one shared place, each of the 25,000 ticks a second of 500 calls moved
/// the counters' cache line between the workers' cores.
#[derive(Debug, Default)]
pub struct TickCounts {
    ticks: AtomicU64,
    late: AtomicU64,
    /// Ticks by lateness, per bucket of [`TICK_LATENESS_BUCKETS`] (not cumulative).
    buckets: [AtomicU64; TICK_LATENESS_BUCKETS.len()],
    /// The ticks' lateness summed, µs.
    lateness_us_sum: AtomicU64,
}

impl TickCounts {
    fn count(&self, lateness: Duration, us: u64, late: bool) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.lateness_us_sum.fetch_add(us, Ordering::Relaxed);
        let secs = lateness.as_secs_f64();
        if let Some(i) = TICK_LATENESS_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        if late {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Its ticks so far, and how many of them ran late (`[limits] late_tick_ms`).
    pub fn ticks(&self) -> (u64, u64) {
        (
            self.ticks.load(Ordering::Relaxed),
            self.late.load(Ordering::Relaxed),
        )
    }
}

/// Every tick counted, by lateness: what `/metrics` shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickLateness {
    /// The count per bucket of [`TICK_LATENESS_BUCKETS`] (not cumulative; ticks later than
    /// the last bound are in `ticks` only).
    pub buckets: [u64; TICK_LATENESS_BUCKETS.len()],
    /// All ticks.
    pub ticks: u64,
    /// Those that ran late (`[limits] late_tick_ms`).
    pub late: u64,
    /// Their lateness summed, seconds.
    pub sum_seconds: f64,
}

thread_local! {
    /// The counts of the thread's ticks, where the thread keeps its own ([`count_ticks_here`]).
    static TICKS_OF_THREAD: std::cell::RefCell<Option<Arc<TickCounts>>> =
        const { std::cell::RefCell::new(None) };
}

/// From now on the ticks of calls this thread runs are counted in `counts` (from
/// [`LoadMonitor::thread_counts`]): a media worker's thread calls it as it starts.
pub fn count_ticks_here(counts: Arc<TickCounts>) {
    TICKS_OF_THREAD.set(Some(counts));
}

/// Counts ticks and decides the level.
#[derive(Debug)]
pub struct LoadMonitor {
    /// The ticks of threads without counts of their own.
    shared: Arc<TickCounts>,
    /// The counts of threads that keep their own ([`LoadMonitor::thread_counts`]).
    threads: Mutex<Vec<Arc<TickCounts>>>,
    /// A tick this much after its time counts as late, µs.
    late_after_us: AtomicU64,
    /// Share of late ticks, percent, at which the gateway economises and then sheds.
    shed_pct: AtomicU32,
    level: AtomicU8,
    /// The last second's share of late ticks, per mille.
    late_permille: AtomicU32,
    /// New calls refused for load.
    pub calls_shed: AtomicU64,
    state: Mutex<Hysteresis>,
}

impl Default for LoadMonitor {
    fn default() -> Self {
        LoadMonitor {
            shared: Arc::default(),
            threads: Mutex::default(),
            late_after_us: AtomicU64::new(20_000),
            shed_pct: AtomicU32::new(10),
            level: AtomicU8::new(0),
            late_permille: AtomicU32::new(0),
            calls_shed: AtomicU64::new(0),
            state: Mutex::new(Hysteresis::default()),
        }
    }
}

impl LoadMonitor {
    /// Sets the thresholds (`[limits] late_tick_ms`, `shed_late_pct`).
    pub fn configure(&self, late_after: Duration, shed_pct: u32) {
        self.late_after_us
            .store(late_after.as_micros() as u64, Ordering::Relaxed);
        self.shed_pct.store(shed_pct, Ordering::Relaxed);
    }

    /// New counts for one thread's ticks ([`count_ticks_here`]), summed with the others'.
    pub fn thread_counts(&self) -> Arc<TickCounts> {
        let counts = Arc::<TickCounts>::default();
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(counts.clone());
        counts
    }

    /// One call's 20 ms tick ran `lateness` after its time: counted in the thread's own
    /// counts where it keeps them ([`count_ticks_here`]), else in the shared ones.
    pub fn handle_tick(&self, lateness: Duration) {
        let us = u64::try_from(lateness.as_micros()).unwrap_or(u64::MAX);
        let late = us > self.late_after_us.load(Ordering::Relaxed);
        TICKS_OF_THREAD.with_borrow(|own| {
            own.as_deref()
                .unwrap_or(&self.shared)
                .count(lateness, us, late)
        });
    }

    /// Once a second: the workers' `demand` and the share of late ticks since the last call
    /// decide the level.
    pub fn handle_timeout(&self, demand: Demand) -> LoadLevel {
        let counted = self.tick_lateness();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticks = counted.ticks.saturating_sub(state.ticks_seen);
        let late = counted.late.saturating_sub(state.late_seen);
        (state.ticks_seen, state.late_seen) = (counted.ticks, counted.late);
        let permille = (late * 1000).checked_div(ticks).unwrap_or(0) as u32;
        self.late_permille.store(permille, Ordering::Relaxed);
        let threshold = self.shed_pct.load(Ordering::Relaxed) * 10;
        match demand {
            Demand::High => {
                state.demand_high = true;
                state.demand_calm_seconds = 0;
            }
            Demand::Steady => state.demand_calm_seconds = 0,
            Demand::Calm => {
                state.demand_calm_seconds += 1;
                if state.demand_calm_seconds >= CALM_AFTER {
                    state.demand_high = false;
                }
            }
        }
        let level = state.late_level;
        let by_lateness = if ticks > 0 && permille >= threshold {
            state.calm_seconds = 0;
            state.late_seconds += 1;
            match level {
                LoadLevel::Normal => LoadLevel::Economy,
                LoadLevel::Economy if state.late_seconds > SHED_AFTER => LoadLevel::Shedding,
                other => other,
            }
        } else if permille * 2 < threshold || ticks == 0 {
            state.late_seconds = 0;
            state.calm_seconds += 1;
            if state.calm_seconds >= CALM_AFTER && level != LoadLevel::Normal {
                state.calm_seconds = 0;
                match level {
                    LoadLevel::Shedding => LoadLevel::Economy,
                    _ => LoadLevel::Normal,
                }
            } else {
                level
            }
        } else {
            level
        };
        state.late_level = by_lateness;
        // Demand holds economy whatever the ticks say; late ticks in it still shed.
        let next = if state.demand_high {
            by_lateness.max(LoadLevel::Economy)
        } else {
            by_lateness
        };
        let level = self.level();
        if next != level {
            tracing::warn!(from = ?level, to = ?next, late_permille = permille, ?demand, "media load level changed");
        }
        self.level.store(next as u8, Ordering::Relaxed);
        next
    }

    /// The level now.
    pub fn level(&self) -> LoadLevel {
        match self.level.load(Ordering::Relaxed) {
            0 => LoadLevel::Normal,
            1 => LoadLevel::Economy,
            _ => LoadLevel::Shedding,
        }
    }

    /// The last second's share of late ticks, per mille.
    pub fn late_permille(&self) -> u32 {
        self.late_permille.load(Ordering::Relaxed)
    }

    /// Every tick since the gateway started, by lateness: every thread's counts summed.
    pub fn tick_lateness(&self) -> TickLateness {
        let mut sum = TickLateness {
            buckets: [0; TICK_LATENESS_BUCKETS.len()],
            ticks: 0,
            late: 0,
            sum_seconds: 0.0,
        };
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let mut lateness_us = 0u64;
        for counts in threads.iter().chain([&self.shared]) {
            let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
            for (total, bucket) in sum.buckets.iter_mut().zip(&counts.buckets) {
                *total += load(bucket);
            }
            sum.ticks += load(&counts.ticks);
            sum.late += load(&counts.late);
            lateness_us = lateness_us.saturating_add(load(&counts.lateness_us_sum));
        }
        sum.sum_seconds = lateness_us as f64 / 1e6;
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(m: &LoadMonitor, ticks: u32, late: u32) -> LoadLevel {
        for i in 0..ticks {
            let lateness = if i < late {
                Duration::from_millis(30)
            } else {
                Duration::from_millis(1)
            };
            m.handle_tick(lateness);
        }
        m.handle_timeout(Demand::Calm)
    }

    #[test]
    fn late_ticks_economise_then_shed_and_calm_steps_back_down() {
        let m = LoadMonitor::default();
        m.configure(Duration::from_millis(10), 5);
        assert_eq!(second(&m, 1000, 10), LoadLevel::Normal, "1 % late is fine");
        assert_eq!(second(&m, 1000, 100), LoadLevel::Economy);
        assert_eq!(m.late_permille(), 100);
        assert_eq!(second(&m, 1000, 100), LoadLevel::Economy);
        assert_eq!(second(&m, 1000, 100), LoadLevel::Shedding);
        // Between half the threshold and the threshold: no change either way.
        assert_eq!(second(&m, 1000, 30), LoadLevel::Shedding);
        assert_eq!(second(&m, 1000, 0), LoadLevel::Shedding);
        assert_eq!(second(&m, 1000, 0), LoadLevel::Shedding);
        assert_eq!(
            second(&m, 1000, 0),
            LoadLevel::Economy,
            "three calm seconds"
        );
        for _ in 0..3 {
            second(&m, 0, 0);
        }
        assert_eq!(m.level(), LoadLevel::Normal, "no calls is calm");
    }

    #[test]
    fn every_tick_is_counted_by_its_lateness_whatever_the_thresholds() {
        let m = LoadMonitor::default();
        m.configure(Duration::from_millis(10), 5);
        for us in [0, 1_000, 1_001, 4_000, 19_000, 150_000] {
            m.handle_tick(Duration::from_micros(us));
        }
        let counted = m.tick_lateness();
        // ≤ 1 ms twice, ≤ 2 ms, ≤ 5 ms, ≤ 20 ms; 150 ms past the last bound.
        assert_eq!(counted.buckets, [2, 1, 1, 0, 1, 0, 0]);
        assert_eq!((counted.ticks, counted.late), (6, 2));
        let sum = counted.sum_seconds;
        assert!((sum - 0.175_001).abs() < 1e-9, "{sum}");
        // The level's second reads the ticks since the last one; the histogram keeps them all.
        assert_eq!(m.handle_timeout(Demand::Calm), LoadLevel::Economy);
        assert_eq!(m.late_permille(), 333, "two of six later than 10 ms");
        m.handle_tick(Duration::ZERO);
        m.handle_timeout(Demand::Calm);
        assert_eq!(m.late_permille(), 0, "one tick, on time");
        assert_eq!(m.tick_lateness().ticks, 7);
    }

    #[test]
    fn threads_with_counts_of_their_own_are_summed_with_the_rest() {
        let m = Arc::new(LoadMonitor::default());
        m.configure(Duration::from_millis(10), 5);
        m.handle_tick(Duration::from_millis(30));
        let counts: Vec<Arc<TickCounts>> = (0..2).map(|_| m.thread_counts()).collect();
        let threads: Vec<_> = counts
            .iter()
            .enumerate()
            .map(|(i, own)| {
                let (m, own) = (m.clone(), own.clone());
                std::thread::spawn(move || {
                    count_ticks_here(own);
                    for _ in 0..=i {
                        m.handle_tick(Duration::from_millis(3));
                    }
                    m.handle_tick(Duration::from_millis(15));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Each thread's ticks in its own counts; the test thread's in the shared ones.
        assert_eq!(counts[0].ticks(), (2, 1));
        assert_eq!(counts[1].ticks(), (3, 1));
        assert_eq!(m.shared.ticks(), (1, 1));
        let counted = m.tick_lateness();
        assert_eq!(counted.buckets, [0, 0, 3, 0, 2, 1, 0]);
        assert_eq!((counted.ticks, counted.late), (6, 3));
        assert!((counted.sum_seconds - 0.069).abs() < 1e-9);
        assert_eq!(m.handle_timeout(Demand::Calm), LoadLevel::Economy);
        assert_eq!(
            m.late_permille(),
            500,
            "three of six, from all three places"
        );
    }

    #[test]
    fn a_zero_lateness_threshold_counts_every_tick() {
        let m = LoadMonitor::default();
        m.configure(Duration::ZERO, 5);
        m.handle_tick(Duration::from_micros(1));
        assert_eq!(m.handle_timeout(Demand::Calm), LoadLevel::Economy);
    }

    /// A second of `demand` with every tick on time.
    fn demand_second(m: &LoadMonitor, demand: Demand) -> LoadLevel {
        m.handle_tick(Duration::ZERO);
        m.handle_timeout(demand)
    }

    #[test]
    fn full_workers_economise_at_once_and_only_calm_ones_end_it() {
        let m = LoadMonitor::default();
        assert_eq!(demand_second(&m, Demand::Steady), LoadLevel::Normal);
        assert_eq!(demand_second(&m, Demand::High), LoadLevel::Economy);
        // Economy lowered the demand, not below the calm line: it holds.
        for _ in 0..5 {
            assert_eq!(demand_second(&m, Demand::Steady), LoadLevel::Economy);
        }
        assert_eq!(demand_second(&m, Demand::Calm), LoadLevel::Economy);
        assert_eq!(demand_second(&m, Demand::Calm), LoadLevel::Economy);
        assert_eq!(
            demand_second(&m, Demand::Steady),
            LoadLevel::Economy,
            "calm seconds must run in a row"
        );
        for _ in 0..2 {
            assert_eq!(demand_second(&m, Demand::Calm), LoadLevel::Economy);
        }
        assert_eq!(demand_second(&m, Demand::Calm), LoadLevel::Normal);
    }

    #[test]
    fn late_ticks_in_economy_for_demand_shed_and_calm_ticks_keep_it() {
        let m = LoadMonitor::default();
        m.configure(Duration::from_millis(10), 5);
        let late_second = |demand| {
            for _ in 0..10 {
                m.handle_tick(Duration::from_millis(30));
            }
            m.handle_timeout(demand)
        };
        assert_eq!(late_second(Demand::High), LoadLevel::Economy);
        assert_eq!(late_second(Demand::High), LoadLevel::Economy);
        assert_eq!(late_second(Demand::High), LoadLevel::Shedding);
        // The ticks calm down; the demand stays high: back to economy, not below it.
        for _ in 0..10 {
            demand_second(&m, Demand::High);
        }
        assert_eq!(m.level(), LoadLevel::Economy);
    }
}
