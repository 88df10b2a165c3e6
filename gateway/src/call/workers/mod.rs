//! Media workers: a thread per core, each running the calls given to it — their driver, with
//! the browser leg, the bridge and the trunk's RTP — on a single-threaded runtime of its own.
//!
//! Why: on the gateway's shared multi-threaded runtime a call's task was woken per datagram
//! on whichever thread was idle, and a relayed call's time went mostly to threads sleeping and
//! waking (`perf`: 29 % of all samples in `finish_task_switch` at 100 relayed calls; the same
//! build on one thread used 30 % less CPU per call, docs/benchmarks-history.md). A worker owns its
//! calls: their sockets are registered with its reactor, their timers are on its wheel, and one
//! `epoll_wait` hands it every call that has something to do. Signaling, SIP and plugins stay
//! on the shared runtime ([`MediaWorkers::control`]) and talk to calls over channels.
//!
//! A busy worker also paces its turns ([`Pace`]): it lets the packets of up to one turn
//! (`[media] turn_ms`) gather before it wakes, so one wake-up serves many calls' packets and
//! ticks rather than one each. Where `[media] nap_us` asks, it waits out a turn in short naps
//! ([`sleep_in_naps`]), so that a virtual machine's host does not give its core away.
//!
//! New calls fill the first worker until it is half busy before the next takes any
//! ([`choose`]). Why: a worker's thread costs the same to sleep and wake whether it carries
//! ten calls or a hundred, so calls spread evenly over two workers paid that twice. On the
//! benchmark box one worker carried 50 and 100 relayed calls at 0.122 and 0.097 % of a core
//! per call where two evenly filled ones took 0.17 and 0.13 % (docs/benchmarks-history.md §2). A
//! quiet gateway now wakes one thread, and a busy one still uses every core.
//!
//! New calls are refused before running calls suffer ([`MediaWorkers::has_room`]): each
//! worker's *demand* is measured — the share of time its thread ran or waited for a core
//! (`/proc/thread-self/schedstat`) — and when every worker wants more than `[limits]
//! media_load_pct` of a core, or ran more than [`LATE_SHARE`] of its calls' ticks late in one
//! of its last windows, or carries as many calls as when its ticks last ran late
//! ([`Lateness`]), there is no room. Why demand and not lateness alone: ticks run late
//! only once a worker is already short of a core, and by then the calls let in meanwhile have
//! made it worse (at 500 callers offered on the benchmark box, 343 got in before lateness
//! shed any, and the sampled calls' tone broke, docs/benchmarks-history.md). Waiting counts as well
//! as running because the box is shared: with a PBX beside the gateway, its work leaves the
//! workers less of a core than their own share shows. The same count, against `[limits]
//! economy_load_pct`, puts calls in economy first (`super::load`).

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::load::{LoadMonitor, TickCounts};

mod lateness;
use lateness::{LATE_SHARE, Lateness};
mod priority;

/// One worker: its runtime, and its pace (which counts the calls it runs).
#[derive(Debug)]
struct Worker {
    handle: Handle,
    pace: Arc<Pace>,
    /// The worker thread's `/proc/thread-self/schedstat`, opened by the thread itself; `None`
    /// where the kernel has no scheduler statistics (its demand is then its busy time).
    schedstat: Option<File>,
    /// Its calls' media ticks, and those that ran late (the thread's own counts,
    /// `super::load::count_ticks_here`).
    ticks: Arc<TickCounts>,
    /// Dropped with the workers: the thread's runtime then ends, and the calls on it.
    _stop: oneshot::Sender<()>,
}

/// The media workers, and the shared runtime they were started from.
#[derive(Debug)]
pub struct MediaWorkers {
    workers: Vec<Worker>,
    /// Each worker's load as placement last measured it.
    measured: Mutex<Vec<Measured>>,
    /// Calls economise (Opus at complexity 0, `super::load`).
    economy: AtomicBool,
    control: Handle,
}

/// How busy a worker may be expected to get (a share of its thread's time) and still take a
/// new call ahead of the workers after it. Half, so that a worker that took the calls of a
/// quiet hour has room for their bursts of set-up work and for late ticks to catch up.
const FILL_TO: f64 = 0.5;

/// What a call placed since its worker was last measured is taken to add to its share: more
/// than a running call costs (0.1–0.5 % of a core on the benchmark box,
/// docs/benchmarks-history.md), because setting a call up (ICE, DTLS, the plugins' answers) costs
/// more. A burst of new calls therefore puts at most 50 on an idle worker before the next one takes
/// some.
const NEW_CALL_SHARE: f64 = 0.01;

/// While calls economise, how many quiet windows (no call placed on the worker) the gate
/// reads before it lets their demand lower a worker's demand per call, and then the highest
/// of the last this many: one window that reads low does not open the gate.
const QUIET_WINDOWS: usize = 4;

/// The share of its full cost a call demands while it economises (Opus at complexity 0):
/// offered 500 callers, the benchmark box carried 274 and 250 at complexity 0 where it
/// carried 233 and 213 at complexity 1 (docs/benchmarks-history.md §2, "calls economise before new
/// calls are refused"). A relayed call, which codes nothing, saves nothing and is counted a
/// little above its cost.
const ECONOMY_COST: f64 = 0.85;

/// How often placement measures a worker's busy share (when a call is placed).
const MEASURE_EVERY: Duration = Duration::from_millis(500);

/// The weight of the latest window in a worker's demand per call. Smoothed because half a
/// second of a busy worker reads anywhere from 0.6 to 1.0 of a core (250 calls on the
/// benchmark box): one window's spike (calls set up or hung up together) is not a full
/// worker.
const DEMAND_WEIGHT: f64 = 0.3;

/// A worker's load as placement and the admission gate see it.
#[derive(Debug, Clone, Copy)]
struct Measured {
    at: Instant,
    /// The worker's busy time ([`Pace::busy_ns`]) then.
    busy_ns: u64,
    /// The share of its thread's time it was busy over the last measurement's window.
    share: f64,
    /// The worker's demand time ([`demand_ns`]) then.
    demand_ns: u64,
    /// The share of a core its thread ran or waited for in the last window.
    demand: f64,
    /// What one of its calls adds to its demand: the windows' demand per call, smoothed
    /// ([`DEMAND_WEIGHT`]); [`NEW_CALL_SHARE`] until a window with calls has been measured.
    /// While calls economise ([`MediaWorkers::set_economy`]) it counts them at their full
    /// cost: it holds, and only quiet windows' demand, scaled up to full cost, may change it
    /// (`quiet`).
    per_call: f64,
    /// Whether `per_call` has been measured.
    learned: bool,
    /// While calls economise: the demand per call, at full cost ([`ECONOMY_COST`]), of the
    /// last [`QUIET_WINDOWS`] windows in which the worker took no new call, latest last, and
    /// how many there were (at most that). Why: a worker learns mostly during bursts of new
    /// calls, whose set-up (ICE, DTLS) its demand then includes; held through economy, that
    /// estimate kept the gate shut at 251 calls that wanted only 0.55–0.70 of each core once
    /// set up (docs/benchmarks-history.md §2, the traced run). Quiet windows show what the calls
    /// cost.
    quiet: [f64; QUIET_WINDOWS],
    quiet_seen: usize,
    /// Calls given to it since.
    placed: u32,
    /// The share of its calls' ticks in the last window that ran late (`[limits]
    /// late_tick_ms`), and its tick counts then ([`TickCounts::ticks`]).
    late: f64,
    ticks_seen: u64,
    late_seen: u64,
    /// What its late windows say about its room.
    lateness: Lateness,
}

impl Measured {
    fn new(at: Instant) -> Measured {
        Measured {
            at,
            busy_ns: 0,
            share: 0.0,
            demand_ns: 0,
            demand: 0.0,
            per_call: NEW_CALL_SHARE,
            learned: false,
            quiet: [0.0; QUIET_WINDOWS],
            quiet_seen: 0,
            placed: 0,
            late: 0.0,
            ticks_seen: 0,
            late_seen: 0,
            lateness: Lateness::ON_TIME,
        }
    }

    /// Its share with one more call.
    fn expected(&self) -> f64 {
        self.share + NEW_CALL_SHARE * f64::from(self.placed + 1)
    }

    /// Measures the worker, now running `calls`, again once a window has passed; while calls
    /// `economise`, its demand per call once learned changes only as quiet windows say
    /// (`quiet`).
    fn update(
        &mut self,
        now: Instant,
        busy_ns: u64,
        demand_ns: u64,
        calls: usize,
        economise: bool,
    ) {
        let window = now.saturating_duration_since(self.at);
        if window < MEASURE_EVERY {
            return;
        }
        let window = window.as_nanos() as f64;
        let demand = demand_ns.saturating_sub(self.demand_ns) as f64 / window;
        let (mut quiet, mut quiet_seen) = (self.quiet, self.quiet_seen);
        if !economise {
            quiet_seen = 0;
        }
        let reading = (calls > 0).then(|| demand / calls as f64);
        let per_call = match reading {
            None => self.per_call,
            Some(reading) if !(economise && self.learned) => {
                self.per_call * (1.0 - DEMAND_WEIGHT) + DEMAND_WEIGHT * reading
            }
            // A window with new calls: their set-up is in its demand.
            Some(_) if self.placed > 0 => self.per_call,
            Some(reading) => {
                quiet.rotate_left(1);
                quiet[QUIET_WINDOWS - 1] = reading / ECONOMY_COST;
                quiet_seen = (quiet_seen + 1).min(QUIET_WINDOWS);
                if quiet_seen < QUIET_WINDOWS {
                    self.per_call
                } else {
                    quiet.iter().copied().fold(0.0, f64::max)
                }
            }
        };
        *self = Measured {
            at: now,
            busy_ns,
            share: busy_ns.saturating_sub(self.busy_ns) as f64 / window,
            demand_ns,
            demand,
            per_call,
            learned: self.learned || reading.is_some(),
            quiet,
            quiet_seen,
            placed: 0,
            ..*self
        };
    }

    /// Takes the worker's tick counts so far (all its calls' ticks, and those that ran late)
    /// at the window [`Measured::update`] just measured, in which it carried `calls`: the
    /// window's share of late ticks, and what that says of its room ([`Lateness`]).
    fn count_ticks(&mut self, ticks: u64, late: u64, calls: usize) {
        let window_ticks = ticks.saturating_sub(self.ticks_seen);
        let window_late = late.saturating_sub(self.late_seen);
        self.late = if window_ticks == 0 {
            0.0
        } else {
            window_late as f64 / window_ticks as f64
        };
        (self.ticks_seen, self.late_seen) = (ticks, late);
        self.lateness.handle_window(self.late > LATE_SHARE, calls);
    }
}

/// Calls a worker takes whatever its demand. Fewer cannot fill a core with their own work,
/// so a demand above the limit there comes from other programs on the box, and the ticks'
/// lateness ([`super::load`]) is the judge of that.
const GATED_FROM_CALLS: usize = PACED_FROM_CALLS;

/// Whether a worker running `calls` has room for one more: its last window's demand and its
/// calls' expected demand with it both stay within `up_to` (a share of a core), and its
/// late windows leave it room ([`Lateness`]); or it runs fewer than [`GATED_FROM_CALLS`].
///
/// Counted per call, so that calls let in since the last window count at once: a burst of
/// 100 calls a second is over before a measured demand alone would show it. And the measured
/// demand too, because a call's demand grows as the box fills (waiting for a core counts, and
/// the box's other programs want more of it too): in a traced run on the benchmark box a
/// worker's demand per call read 0.0022 of a core at 45 calls and 0.0042 at 227, so the
/// per-call count, learned on the way up and held while calls economise, let a worker that
/// had just read 0.954 take 35 more calls in the next half second (docs/benchmarks-history.md,
/// "2026-12-06, evening").
fn has_room(measured: &Measured, calls: usize, up_to: f64) -> bool {
    calls < GATED_FROM_CALLS
        || (measured.demand <= up_to
            && measured.lateness.has_room(calls)
            && (calls + 1) as f64 * measured.per_call <= up_to)
}

/// A worker thread's demand so far, ns: the time it ran plus the time it was runnable but
/// waited for a core (the first two fields of `schedstat`, Documentation/scheduler/
/// sched-stats.rst); its busy time where the kernel keeps no such statistics.
fn demand_ns(schedstat: Option<&File>, busy_ns: u64) -> u64 {
    let Some(file) = schedstat else {
        return busy_ns;
    };
    let mut buf = [0u8; 96];
    let Ok(n) = file.read_at(&mut buf, 0) else {
        return busy_ns;
    };
    let mut fields = std::str::from_utf8(&buf[..n])
        .unwrap_or("")
        .split_ascii_whitespace()
        .map(|f| f.parse::<u64>().ok());
    match (fields.next().flatten(), fields.next().flatten()) {
        (Some(ran), Some(waited)) => ran.saturating_add(waited),
        _ => busy_ns,
    }
}

/// The worker a new call goes to, of those running `calls`: the first whose expected share
/// stays within [`FILL_TO`] with it, else the one expected to be least busy; among the
/// workers whose late ticks leave them room ([`Lateness`]) while any does. Why: the gate lets
/// a call in while some worker has room, and placement by busy share alone could still hand it
/// to one whose ticks run late (waiting for a core is not being busy).
fn choose(loads: &[Measured], calls: &[usize]) -> usize {
    let open = |i: &usize| loads[*i].lateness.has_room(calls[*i]);
    let any_open = (0..loads.len()).any(|i| open(&i));
    let pool = || (0..loads.len()).filter(move |i| !any_open || open(i));
    pool()
        .find(|&i| loads[i].expected() <= FILL_TO)
        .or_else(|| pool().min_by(|&a, &b| loads[a].expected().total_cmp(&loads[b].expected())))
        .unwrap_or(0)
}

/// Counts a call on its worker for as long as the call's task lives.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Calls a worker must carry before it paces its turns. A call brings ~150 wake-ups a
/// second (a browser packet, a trunk packet and a tick per 20 ms); below this a paced worker
/// would wake about as often as an unpaced one and only add delay.
pub const PACED_FROM_CALLS: usize = 8;

/// A worker's pace: when it runs out of work, it waits until a turn has passed since it last
/// woke before it looks for more (the runtime's park hooks).
///
/// Why: on this 2-core box a worker woke ~2,100 times a second at 25 calls, ~1.8 events per
/// wake-up, and sleeping and waking was 13 % of the gateway's CPU (`perf`,
/// docs/benchmarks-history.md §2). With 2 ms turns a worker wakes at most 500 times a second,
/// whatever its load: relayed calls cost 17 % less, transcoded 1–4 % less. The price is up to one
/// turn of delay on a packet's way through, and a tick up to one turn late: both far inside a
/// jitter buffer. A worker with few calls is not paced (their packets rarely coincide).
#[derive(Debug)]
struct Pace {
    turn: Duration,
    /// The longest sleep while the worker waits out a turn; zero: one sleep ([`sleep_in_naps`]).
    nap: Duration,
    /// Sleeps taken waiting out turns (for `/metrics`): one a turn, or one a nap.
    sleeps: AtomicU64,
    /// Calls running on the worker.
    calls: Arc<AtomicUsize>,
    woke: Mutex<Instant>,
    /// Times the worker's thread woke (for `/metrics`).
    wakeups: AtomicU64,
    /// Time the worker's thread was awake, ns: from waking to the end of its turn's work
    /// (the paced wait not included).
    busy_ns: AtomicU64,
    /// Whether the thread sends through an io_uring ring (`media::outgoing`), as of its last
    /// turn: a ring that fails is dropped, and the thread sends without one from then on.
    io_uring: AtomicBool,
}

impl Pace {
    fn new(turn: Duration, nap: Duration) -> Pace {
        Pace {
            turn,
            nap,
            sleeps: AtomicU64::new(0),
            calls: Arc::new(AtomicUsize::new(0)),
            woke: Mutex::new(Instant::now()),
            wakeups: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            io_uring: AtomicBool::new(false),
        }
    }

    /// Before the worker parks: count the turn's work, then wait out the rest of the turn if
    /// it is busy enough.
    fn before_park(&self) {
        let woke = *self.woke.lock().unwrap_or_else(|e| e.into_inner());
        let awake = woke.elapsed();
        self.busy_ns.fetch_add(
            u64::try_from(awake.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let calls = self.calls.load(Ordering::Relaxed);
        if self.turn.is_zero() || calls < PACED_FROM_CALLS {
            return;
        }
        if let Some(rest) = self.turn.checked_sub(awake) {
            let nap = if calls >= NAP_FROM_CALLS {
                self.nap
            } else {
                Duration::ZERO
            };
            let sleeps = sleep_in_naps(rest, nap);
            self.sleeps.fetch_add(sleeps, Ordering::Relaxed);
        }
    }

    /// After the worker wakes: a turn starts.
    fn after_unpark(&self) {
        *self.woke.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }
}

/// Calls a worker must carry before it naps, where `[media] nap_us` asks it to. A nap costs
/// the same whatever the worker carries, and what it keeps grows with the calls: with the
/// gateway alone on its core, naps of 100 µs cost 10 % more at 10 transcoded calls and saved
/// 13–18 % at 20 (BENCHMARKS.md, "a worker that naps"). Between the two, a guess.
const NAP_FROM_CALLS: usize = 16;

/// Sleeps for `rest`: in one sleep where `nap` is zero, else in naps no longer than `nap`.
/// Returns the sleeps taken.
///
/// Why naps: on a virtual machine a CPU with nothing to run halts, and the host, once it has
/// polled a while for the CPU to want its core back (KVM polls up to 200 µs by default), gives
/// the core to other work, whose data then fills its caches. The worker comes back to them
/// emptied: a chain of 1 MB of lines in random order read 6.3 ns a line back to back, 6.5 ns
/// after a 200 µs sleep, 30 ns after a 2 ms one and 105 ns after 20 ms (`cache-after-sleep
/// --chase`, pinned, on the benchmark box's Intel Xeon host); 2 ms slept in naps of 200 µs
/// read 6.5 ns. A nap costs its thread about 3.3 µs (a system call and a timer), so a worker
/// that naps 100 µs at a time spends about 2 % of a core on it while it waits. That buys back
/// more than it costs only where the worker's core would otherwise go to other work, and only
/// where nothing else of the box's runs on it in between: with the gateway alone on its core,
/// 50 transcoded calls cost 14 % less with naps of 100 µs (median of four pairs, each lower)
/// and 100 relayed ones 13–21 % less; beside the load generator and the trunk on the same two
/// cores, 50 transcoded calls cost 6 % less, 100 relayed ones the same and 10 transcoded ones
/// 15 % more (BENCHMARKS.md, "a worker that naps"). Hence opt-in (`[media] nap_us`), for a
/// virtual machine that carries the gateway alone.
pub fn sleep_in_naps(rest: Duration, nap: Duration) -> u64 {
    if nap.is_zero() {
        std::thread::sleep(rest);
        return 1;
    }
    let until = Instant::now() + rest;
    let mut sleeps = 0;
    while let Some(left) = until
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
    {
        std::thread::sleep(left.min(nap));
        sleeps += 1;
    }
    sleeps
}

impl MediaWorkers {
    /// Starts `count` worker threads (`media-0`, `media-1` …), each paced by `turn` once it is
    /// busy ([`Pace`]; zero wakes per event) and waiting out its turns in naps of `nap`
    /// ([`sleep_in_naps`]; zero: one sleep), sending through io_uring where `use_ring` and the
    /// kernel allow (`media::outgoing`), at `nice` (zero: the gateway's own; [`priority`]).
    /// Must be called on the shared runtime, which becomes [`MediaWorkers::control`]. Each
    /// worker counts its calls' ticks in counts of its own, which `load` sums with the rest.
    pub fn start(
        load: &LoadMonitor,
        count: usize,
        turn: Duration,
        nap: Duration,
        use_ring: bool,
        nice: i8,
    ) -> std::io::Result<MediaWorkers> {
        let control = Handle::current();
        let mut workers = Vec::with_capacity(count);
        let mut prioritised = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let pace = Arc::new(Pace::new(turn, nap));
            let (parked, unparked) = (pace.clone(), pace.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("media-{i}-blocking"))
                .on_thread_park(move || {
                    // The turn's datagrams go before any wait for the next. A fault there (a
                    // panic: a bug) would end the thread, and every call on it without a BYE:
                    // it drops the turn's datagrams instead (`crate::fault`).
                    if let Err(fault) = crate::fault::catch(crate::media::outgoing::flush) {
                        crate::media::outgoing::reset_after_fault();
                        crate::fault::fault_error!(
                            fault,
                            "a fault in the gateway while a media worker sent its turn's \
                             datagrams; they are dropped, the worker sends without io_uring \
                             from now on, and its calls go on. This is a bug in the gateway: \
                             please report it with this log"
                        );
                    }
                    parked
                        .io_uring
                        .store(crate::media::outgoing::sends_with_ring(), Ordering::Relaxed);
                    parked.before_park()
                })
                .on_thread_unpark(move || unparked.after_unpark())
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let (opened, schedstat) = std::sync::mpsc::sync_channel(1);
            let started = pace.clone();
            let ticks = load.thread_counts();
            let own_ticks = ticks.clone();
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || {
                    // `thread-self` names this thread only when the thread itself opens it.
                    let schedstat = File::open("/proc/thread-self/schedstat").ok();
                    let niced = priority::set_for_this_thread(nice);
                    super::load::count_ticks_here(own_ticks);
                    crate::media::outgoing::hold_on_this_thread(use_ring);
                    started
                        .io_uring
                        .store(crate::media::outgoing::sends_with_ring(), Ordering::Relaxed);
                    let _ = opened.send((schedstat, niced));
                    // A current-thread runtime runs its tasks while a thread blocks on it.
                    let _ = runtime.block_on(stopped);
                    crate::media::outgoing::flush();
                })?;
            let (schedstat, niced) = schedstat
                .recv()
                .map_err(|_| std::io::Error::other("a media worker thread ended as it started"))?;
            prioritised.push(niced);
            workers.push(Worker {
                handle,
                pace,
                schedstat,
                ticks,
                _stop: stop,
            });
        }
        priority::report(nice, &prioritised);
        let measured = Mutex::new(vec![Measured::new(Instant::now()); workers.len()]);
        Ok(MediaWorkers {
            workers,
            measured,
            economy: AtomicBool::new(false),
            control,
        })
    }

    /// The shared runtime: signaling, SIP, plugins and DNS run there, never on a worker.
    pub fn control(&self) -> &Handle {
        &self.control
    }

    /// The workers' measurements, taken again where their window has passed.
    fn measure(&self) -> std::sync::MutexGuard<'_, Vec<Measured>> {
        let mut measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for (m, w) in measured.iter_mut().zip(&self.workers) {
            // The thread's statistics are read only when a window has passed.
            if now.saturating_duration_since(m.at) < MEASURE_EVERY {
                continue;
            }
            let busy_ns = w.pace.busy_ns.load(Ordering::Relaxed);
            let calls = w.pace.calls.load(Ordering::Relaxed);
            m.update(
                now,
                busy_ns,
                demand_ns(w.schedstat.as_ref(), busy_ns),
                calls,
                self.economy.load(Ordering::Relaxed),
            );
            let (ticks, late) = w.ticks.ticks();
            m.count_ticks(ticks, late, calls);
        }
        measured
    }

    /// Whether calls economise now (the load level, `super::load`). While they do, the gate
    /// counts them at their full cost: it holds each worker's demand per call, and lowers it
    /// only by the highest of [`QUIET_WINDOWS`] quiet windows' demand scaled up by
    /// [`ECONOMY_COST`]. Economy buys the running calls headroom, not room for more calls.
    /// Why: counted at their economy cost, 500 callers offered on the benchmark box let in
    /// 312, 399 and 342 calls where the box carries ~270 at complexity 0, and in one run the
    /// sampled tones broke (docs/benchmarks-history.md).
    pub fn set_economy(&self, on: bool) {
        self.economy.store(on, Ordering::Relaxed);
    }

    /// Whether some worker has room for one more call: with it, its calls (those placed since
    /// its last measurement included) are expected to want at most `up_to` of a core
    /// ([`has_room`], and the module's text).
    pub fn has_room(&self, up_to: f64) -> bool {
        let measured = self.measure();
        measured
            .iter()
            .zip(&self.workers)
            .any(|(m, w)| has_room(m, w.pace.calls.load(Ordering::Relaxed), up_to))
    }

    /// Each worker's demand in its last measured window: the share of a core its thread ran
    /// or waited for (for `/metrics`; measured again here if a window has passed).
    pub fn demand(&self) -> Vec<f64> {
        self.measure().iter().map(|m| m.demand).collect()
    }

    /// Runs a call on the worker [`choose`] picks. Everything the call's
    /// task creates (sockets, timers, tasks it spawns) belongs to that worker.
    pub fn spawn<F>(&self, call: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = {
            let mut measured = self.measure();
            let calls = self.calls();
            let chosen = choose(&measured, &calls);
            measured[chosen].placed += 1;
            &self.workers[chosen]
        };
        worker.pace.calls.fetch_add(1, Ordering::Relaxed);
        let running = Running(worker.pace.calls.clone());
        // Boxed: an async block awaiting a future it captured keeps room for it twice (the
        // capture and the awaited value).
        let call = Box::pin(call);
        worker.handle.spawn(async move {
            let _running = running;
            call.await;
        });
    }

    /// `read` of each worker's pace, in the workers' order: what `/metrics` shows of them.
    fn each_pace<T>(&self, read: impl Fn(&Pace) -> T) -> Vec<T> {
        self.workers.iter().map(|w| read(&w.pace)).collect()
    }

    /// Calls per worker (for `/metrics`).
    pub fn calls(&self) -> Vec<usize> {
        self.each_pace(|p| p.calls.load(Ordering::Relaxed))
    }

    /// Times each worker's thread woke since it started (for `/metrics`): with paced turns
    /// at most one a turn, however many packets and ticks its calls have.
    pub fn wakeups(&self) -> Vec<u64> {
        self.each_pace(|p| p.wakeups.load(Ordering::Relaxed))
    }

    /// Sleeps each worker's thread took waiting out its paced turns (for `/metrics`): one a
    /// turn, or one a nap where `[media] nap_us` asks for naps.
    pub fn sleeps(&self) -> Vec<u64> {
        self.each_pace(|p| p.sleeps.load(Ordering::Relaxed))
    }

    /// Whether each worker's thread sends through an io_uring ring (for `/metrics`): not where
    /// `[media] io_uring` is off, the kernel refused the ring, or the ring failed or refused
    /// sends since.
    pub fn io_uring(&self) -> Vec<bool> {
        self.each_pace(|p| p.io_uring.load(Ordering::Relaxed))
    }

    /// Seconds each worker's thread has been busy since it started (for `/metrics`).
    pub fn busy_seconds(&self) -> Vec<f64> {
        self.each_pace(|p| Duration::from_nanos(p.busy_ns.load(Ordering::Relaxed)).as_secs_f64())
    }
}

#[cfg(test)]
mod tests;
