//! Media workers: a thread per core, each running the calls given to it — their driver, with
//! the browser leg, the bridge and the trunk's RTP — on a single-threaded runtime of its own.
//!
//! Why: on the gateway's shared multi-threaded runtime a call's task was woken per datagram
//! on whichever thread was idle, and a relayed call's time went mostly to threads sleeping and
//! waking (`perf`: 29 % of all samples in `finish_task_switch` at 100 relayed calls; the same
//! build on one thread used 30 % less CPU per call, BENCHMARKS.md). A worker owns its calls:
//! their sockets are registered with its reactor, their timers are on its wheel, and one
//! `epoll_wait` hands it every call that has something to do. Signaling, SIP and plugins stay
//! on the shared runtime ([`MediaWorkers::control`]) and talk to calls over channels.
//!
//! A busy worker also paces its turns ([`Pace`]): it lets the packets of up to one turn
//! (`[media] turn_ms`) gather before it wakes, so one wake-up serves many calls' packets and
//! ticks rather than one each.
//!
//! New calls fill the first worker until it is half busy before the next takes any
//! ([`choose`]). Why: a worker's thread costs the same to sleep and wake whether it carries
//! ten calls or a hundred, so calls spread evenly over two workers paid that twice. On the
//! benchmark box one worker carried 50 and 100 relayed calls at 0.122 and 0.097 % of a core
//! per call where two evenly filled ones took 0.17 and 0.13 % (BENCHMARKS.md §2). A quiet
//! gateway now wakes one thread, and a busy one still uses every core.
//!
//! New calls are refused before running calls suffer ([`MediaWorkers::has_room`]): each
//! worker's *demand* is measured — the share of time its thread ran or waited for a core
//! (`/proc/thread-self/schedstat`) — and when every worker wants more than `[limits]
//! media_load_pct` of a core, there is no room. Why demand and not lateness: ticks run late
//! only once a worker is already short of a core, and by then the calls let in meanwhile have
//! made it worse (at 500 callers offered on the benchmark box, 343 got in before lateness
//! shed any, and the sampled calls' tone broke, BENCHMARKS.md). Waiting counts as well as
//! running because the box is shared: with a PBX beside the gateway, its work leaves the
//! workers less of a core than their own share shows.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// One worker: its runtime, and its pace (which counts the calls it runs).
#[derive(Debug)]
struct Worker {
    handle: Handle,
    pace: Arc<Pace>,
    /// The worker thread's `/proc/thread-self/schedstat`, opened by the thread itself; `None`
    /// where the kernel has no scheduler statistics (its demand is then its busy time).
    schedstat: Option<File>,
    /// Dropped with the workers: the thread's runtime then ends, and the calls on it.
    _stop: oneshot::Sender<()>,
}

/// The media workers, and the shared runtime they were started from.
#[derive(Debug)]
pub struct MediaWorkers {
    workers: Vec<Worker>,
    /// Each worker's load as placement last measured it.
    measured: Mutex<Vec<Measured>>,
    control: Handle,
}

/// How busy a worker may be expected to get (a share of its thread's time) and still take a
/// new call ahead of the workers after it. Half, so that a worker that took the calls of a
/// quiet hour has room for their bursts of set-up work and for late ticks to catch up.
const FILL_TO: f64 = 0.5;

/// What a call placed since its worker was last measured is taken to add to its share: more
/// than a running call costs (0.1–0.5 % of a core on the benchmark box, BENCHMARKS.md),
/// because setting a call up (ICE, DTLS, the plugins' answers) costs more. A burst of new
/// calls therefore puts at most 50 on an idle worker before the next one takes some.
const NEW_CALL_SHARE: f64 = 0.01;

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
    per_call: f64,
    /// Calls given to it since.
    placed: u32,
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
            placed: 0,
        }
    }

    /// Its share with one more call.
    fn expected(&self) -> f64 {
        self.share + NEW_CALL_SHARE * f64::from(self.placed + 1)
    }

    /// Measures the worker, now running `calls`, again once a window has passed.
    fn update(&mut self, now: Instant, busy_ns: u64, demand_ns: u64, calls: usize) {
        let window = now.saturating_duration_since(self.at);
        if window < MEASURE_EVERY {
            return;
        }
        let window = window.as_nanos() as f64;
        let demand = demand_ns.saturating_sub(self.demand_ns) as f64 / window;
        let per_call = if calls == 0 {
            self.per_call
        } else {
            self.per_call * (1.0 - DEMAND_WEIGHT) + DEMAND_WEIGHT * demand / calls as f64
        };
        *self = Measured {
            at: now,
            busy_ns,
            share: busy_ns.saturating_sub(self.busy_ns) as f64 / window,
            demand_ns,
            demand,
            per_call,
            placed: 0,
        };
    }
}

/// Calls a worker takes whatever its demand. Fewer cannot fill a core with their own work,
/// so a demand above the limit there comes from other programs on the box, and the ticks'
/// lateness ([`super::load`]) is the judge of that.
const GATED_FROM_CALLS: usize = PACED_FROM_CALLS;

/// Whether a worker running `calls` has room for one more: its calls' expected demand with
/// it stays within `up_to` (a share of a core), or it runs fewer than [`GATED_FROM_CALLS`].
/// Counted per call, so that calls let in since the last window count at once: a burst of
/// 100 calls a second is over before a measured demand alone would show it.
fn has_room(measured: &Measured, calls: usize, up_to: f64) -> bool {
    calls < GATED_FROM_CALLS || (calls + 1) as f64 * measured.per_call <= up_to
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

/// The worker a new call goes to: the first whose expected share stays within [`FILL_TO`]
/// with it, else the one expected to be least busy.
fn choose(loads: &[Measured]) -> usize {
    loads
        .iter()
        .position(|m| m.expected() <= FILL_TO)
        .or_else(|| {
            (0..loads.len()).min_by(|&a, &b| loads[a].expected().total_cmp(&loads[b].expected()))
        })
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
/// wake-up, and sleeping and waking was 13 % of the gateway's CPU (`perf`, BENCHMARKS.md §2).
/// With 2 ms turns a worker wakes at most 500 times a second, whatever its load: relayed
/// calls cost 17 % less, transcoded 1–4 % less. The price is up to one turn of delay on a
/// packet's way through, and a tick up to one turn late: both far inside a jitter buffer.
/// A worker with few calls is not paced (their packets rarely coincide).
#[derive(Debug)]
struct Pace {
    turn: Duration,
    /// Calls running on the worker.
    calls: Arc<AtomicUsize>,
    woke: Mutex<Instant>,
    /// Times the worker's thread woke (for `/metrics`).
    wakeups: AtomicU64,
    /// Time the worker's thread was awake, ns: from waking to the end of its turn's work
    /// (the paced wait not included).
    busy_ns: AtomicU64,
}

impl Pace {
    fn new(turn: Duration) -> Pace {
        Pace {
            turn,
            calls: Arc::new(AtomicUsize::new(0)),
            woke: Mutex::new(Instant::now()),
            wakeups: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
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
        if self.turn.is_zero() || self.calls.load(Ordering::Relaxed) < PACED_FROM_CALLS {
            return;
        }
        if let Some(rest) = self.turn.checked_sub(awake) {
            std::thread::sleep(rest);
        }
    }

    /// After the worker wakes: a turn starts.
    fn after_unpark(&self) {
        *self.woke.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }
}

impl MediaWorkers {
    /// Starts `count` worker threads (`media-0`, `media-1` …), each paced by `turn` once it is
    /// busy ([`Pace`]; zero wakes per event). Must be called on the shared runtime, which
    /// becomes [`MediaWorkers::control`].
    pub fn start(count: usize, turn: Duration) -> std::io::Result<MediaWorkers> {
        let control = Handle::current();
        let mut workers = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let pace = Arc::new(Pace::new(turn));
            let (parked, unparked) = (pace.clone(), pace.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("media-{i}-blocking"))
                .on_thread_park(move || {
                    // The turn's datagrams go before any wait for the next.
                    crate::media::outgoing::flush();
                    parked.before_park()
                })
                .on_thread_unpark(move || unparked.after_unpark())
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let (opened, schedstat) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || {
                    // `thread-self` names this thread only when the thread itself opens it.
                    let _ = opened.send(File::open("/proc/thread-self/schedstat").ok());
                    crate::media::outgoing::hold_on_this_thread();
                    // A current-thread runtime runs its tasks while a thread blocks on it.
                    let _ = runtime.block_on(stopped);
                    crate::media::outgoing::flush();
                })?;
            workers.push(Worker {
                handle,
                pace,
                schedstat: schedstat.recv().ok().flatten(),
                _stop: stop,
            });
        }
        let measured = Mutex::new(vec![Measured::new(Instant::now()); workers.len()]);
        Ok(MediaWorkers {
            workers,
            measured,
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
            );
        }
        measured
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

    /// Runs a call on the first worker with room for it ([`choose`]). Everything the call's
    /// task creates (sockets, timers, tasks it spawns) belongs to that worker.
    pub fn spawn<F>(&self, call: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = {
            let mut measured = self.measure();
            let chosen = choose(&measured);
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

    /// Calls per worker (for `/metrics`).
    pub fn calls(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.pace.calls.load(Ordering::Relaxed))
            .collect()
    }

    /// Times each worker's thread woke since it started (for `/metrics`): with paced turns
    /// at most one a turn, however many packets and ticks its calls have.
    pub fn wakeups(&self) -> Vec<u64> {
        self.workers
            .iter()
            .map(|w| w.pace.wakeups.load(Ordering::Relaxed))
            .collect()
    }

    /// Seconds each worker's thread has been busy since it started (for `/metrics`).
    pub fn busy_seconds(&self) -> Vec<f64> {
        self.workers
            .iter()
            .map(|w| Duration::from_nanos(w.pace.busy_ns.load(Ordering::Relaxed)).as_secs_f64())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns a call on `workers` that reports the thread it runs on, then waits for `held`.
    async fn spawn_held(
        workers: &MediaWorkers,
        held: &tokio::sync::watch::Receiver<bool>,
    ) -> String {
        let (tx, rx) = oneshot::channel();
        let mut held = held.clone();
        workers.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_string));
            let _ = held.wait_for(|r| *r).await;
        });
        rx.await.unwrap().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_fill_the_first_worker_until_it_is_busy_then_go_to_the_next() {
        let workers = MediaWorkers::start(2, Duration::from_millis(2)).unwrap();
        let (release, held) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            assert_eq!(spawn_held(&workers, &held).await, "media-0");
        }
        assert_eq!(workers.calls(), [4, 0], "a quiet gateway wakes one thread");

        // A call that keeps the first worker's thread busy: 40 ms of work, 1 ms of rest.
        let mut hog_held = held.clone();
        workers.spawn(async move {
            while !*hog_held.borrow_and_update() {
                std::thread::sleep(Duration::from_millis(40));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert_eq!(workers.calls(), [5, 0]);
        tokio::time::sleep(MEASURE_EVERY + Duration::from_millis(300)).await;
        for _ in 0..2 {
            assert_eq!(
                spawn_held(&workers, &held).await,
                "media-1",
                "the first worker is measured busy: {:?} s",
                workers.busy_seconds()
            );
        }
        assert_eq!(workers.calls(), [5, 2]);
        let busy = workers.busy_seconds();
        assert!(busy[0] > 0.5 && busy[1] < 0.1, "busy seconds {busy:?}");

        release.send(true).unwrap();
        for _ in 0..100 {
            if workers.calls() == [0, 0] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "calls still counted after they ended: {:?}",
            workers.calls()
        );
    }

    #[test]
    fn placement_fills_a_worker_to_half_then_takes_the_least_busy() {
        let t0 = Instant::now();
        let mut loads = vec![Measured::new(t0); 2];
        let place = |loads: &mut [Measured]| {
            let i = choose(loads);
            loads[i].placed += 1;
            i
        };
        // Unmeasured calls count NEW_CALL_SHARE each: the first worker takes a burst's first
        // 40 calls whole.
        for _ in 0..40 {
            assert_eq!(place(&mut loads), 0);
        }
        // Measured: the first worker was 60 % busy in the last window, the second 10.5 %.
        let busy = |share: f64| (MEASURE_EVERY.as_nanos() as f64 * share) as u64;
        loads[0].update(t0 + MEASURE_EVERY, busy(0.6), busy(0.6), 40);
        loads[1].update(t0 + MEASURE_EVERY, busy(0.105), busy(0.105), 0);
        assert!((loads[0].share - 0.6).abs() < 1e-9 && loads[0].placed == 0);
        assert!((loads[1].share - 0.105).abs() < 1e-9);
        // The second has room for 39 more (10.5 % + 39 × 1 % ≤ 50 %).
        for _ in 0..39 {
            assert_eq!(place(&mut loads), 1);
        }
        // Neither has room: the one expected least busy takes the call.
        assert_eq!(place(&mut loads), 1, "0.6 + 0.01 against 0.105 + 0.40");
        assert_eq!(loads[1].placed, 40);
        for _ in 0..20 {
            place(&mut loads);
        }
        assert!((loads[0].expected() - loads[1].expected()).abs() <= NEW_CALL_SHARE + 1e-9);

        // A window not yet over leaves the measurement as it is.
        let before = loads[0];
        loads[0].update(
            t0 + MEASURE_EVERY + MEASURE_EVERY / 2,
            u64::MAX,
            u64::MAX,
            40,
        );
        assert_eq!(loads[0].placed, before.placed);
        assert_eq!(loads[0].share, before.share);
    }

    #[test]
    fn the_gate_counts_every_running_call_at_its_measured_demand() {
        let t0 = Instant::now();
        let mut m = Measured::new(t0);
        let few = GATED_FROM_CALLS - 1;
        assert!(has_room(&m, few, 0.0), "a worker with few calls takes one");
        // Unmeasured, a call is taken to want NEW_CALL_SHARE: 90 calls fit in 90 %.
        assert!(has_room(&m, 89, 0.9));
        assert!(!has_room(&m, 90, 0.9));
        // Measured: 100 calls wanted 60 % of a core, 0.6 % each; smoothed from 1 %.
        let ns = |share: f64| (MEASURE_EVERY.as_nanos() as f64 * share) as u64;
        m.update(t0 + MEASURE_EVERY, ns(0.5), ns(0.6), 100);
        assert!((m.demand - 0.6).abs() < 1e-9);
        let per_call = 0.01 * (1.0 - DEMAND_WEIGHT) + DEMAND_WEIGHT * 0.006;
        assert!((m.per_call - per_call).abs() < 1e-12);
        let fit = (0.9 / per_call) as usize; // 102
        assert!(has_room(&m, fit - 1, 0.9));
        assert!(!has_room(&m, fit, 0.9), "calls let in since count at once");
        // A window without calls leaves the estimate as it was.
        m.update(t0 + MEASURE_EVERY * 2, ns(0.5), ns(0.6), 0);
        assert!((m.per_call - per_call).abs() < 1e-12 && m.demand == 0.0);
    }

    #[test]
    fn a_worker_threads_demand_is_its_run_and_wait_time() {
        let file = File::open("/proc/thread-self/schedstat").ok();
        let busy = 7;
        let first = demand_ns(file.as_ref(), busy);
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        let second = demand_ns(file.as_ref(), busy);
        if file.is_some() {
            assert!(second >= first + 15_000_000, "{first} then {second}");
        } else {
            assert_eq!((first, second), (busy, busy));
        }
        assert_eq!(demand_ns(None, busy), busy);
    }

    /// Wake-up times of a task on a worker that reads 60 datagrams sent 300 µs apart, while
    /// `held` other calls sit idle on the same worker.
    async fn reader_wakes(turn: Duration, held: usize) -> Vec<Instant> {
        let workers = MediaWorkers::start(1, turn).unwrap();
        let (release, hold) = tokio::sync::watch::channel(false);
        for _ in 0..held {
            let mut hold = hold.clone();
            workers.spawn(async move {
                let _ = hold.wait_for(|r| *r).await;
            });
        }
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        receiver.set_nonblocking(true).unwrap();
        let (tx, rx) = oneshot::channel();
        workers.spawn(async move {
            let socket = tokio::net::UdpSocket::from_std(receiver).unwrap();
            let (mut wakes, mut got, mut buf) = (Vec::new(), 0, [0u8; 64]);
            while got < 60 {
                socket.readable().await.unwrap();
                wakes.push(Instant::now());
                while socket.try_recv(&mut buf).is_ok() {
                    got += 1;
                }
            }
            let _ = tx.send(wakes);
        });
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tokio::task::spawn_blocking(move || {
            for _ in 0..60 {
                sender.send_to(b"rtp", to).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
        })
        .await
        .unwrap();
        let wakes = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("every datagram read")
            .unwrap();
        release.send(true).unwrap();
        wakes
    }

    fn median_gap(wakes: &[Instant]) -> Duration {
        let mut gaps: Vec<Duration> = wakes.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort();
        gaps.get(gaps.len() / 2).copied().unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_worker_gathers_packets_into_turns() {
        let turn = Duration::from_millis(2);
        let wakes = reader_wakes(turn, PACED_FROM_CALLS).await;
        // A turn at least between two wake-ups (less the moment from waking to the read).
        assert!(
            median_gap(&wakes) >= turn * 3 / 4,
            "a paced worker woke {} times for 60 datagrams, median gap {:?}",
            wakes.len(),
            median_gap(&wakes)
        );
    }

    #[test]
    fn a_worker_with_few_calls_or_no_turn_never_waits() {
        let turn = Duration::from_millis(300);
        let pace = |calls: usize, turn: Duration| {
            let pace = Pace::new(turn);
            pace.calls.store(calls, Ordering::Relaxed);
            pace
        };
        let waited = |pace: Pace| {
            pace.after_unpark();
            let start = Instant::now();
            pace.before_park();
            start.elapsed()
        };
        assert!(waited(pace(PACED_FROM_CALLS - 1, turn)) < turn / 2);
        assert!(waited(pace(1000, Duration::ZERO)) < turn / 2);
        assert!(waited(pace(PACED_FROM_CALLS, turn)) >= turn / 2);
    }
}
