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

use std::future::Future;
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
    /// Dropped with the workers: the thread's runtime then ends, and the calls on it.
    _stop: oneshot::Sender<()>,
}

/// The media workers, and the shared runtime they were started from.
#[derive(Debug)]
pub struct MediaWorkers {
    workers: Vec<Worker>,
    control: Handle,
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
}

impl Pace {
    /// Before the worker parks: wait out the rest of the turn, if it is busy enough.
    fn before_park(&self) {
        if self.turn.is_zero() || self.calls.load(Ordering::Relaxed) < PACED_FROM_CALLS {
            return;
        }
        let woke = *self.woke.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rest) = self.turn.checked_sub(woke.elapsed()) {
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
            let pace = Arc::new(Pace {
                turn,
                calls: Arc::new(AtomicUsize::new(0)),
                woke: Mutex::new(Instant::now()),
                wakeups: AtomicU64::new(0),
            });
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
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || {
                    crate::media::outgoing::hold_on_this_thread();
                    // A current-thread runtime runs its tasks while a thread blocks on it.
                    let _ = runtime.block_on(stopped);
                    crate::media::outgoing::flush();
                })?;
            workers.push(Worker {
                handle,
                pace,
                _stop: stop,
            });
        }
        Ok(MediaWorkers { workers, control })
    }

    /// The shared runtime: signaling, SIP, plugins and DNS run there, never on a worker.
    pub fn control(&self) -> &Handle {
        &self.control
    }

    /// Runs a call on the worker with the fewest calls. Everything the call's task creates
    /// (sockets, timers, tasks it spawns) belongs to that worker.
    pub fn spawn<F>(&self, call: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.pace.calls.load(Ordering::Relaxed))
            .expect("at least one worker");
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_go_to_the_least_busy_worker_and_run_on_its_thread() {
        let workers = MediaWorkers::start(2, Duration::from_millis(2)).unwrap();
        let (release, held) = tokio::sync::watch::channel(false);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let (tx, mut held) = (tx.clone(), held.clone());
            workers.spawn(async move {
                let thread = std::thread::current().name().map(str::to_string);
                let _ = tx.send(thread);
                let _ = held.wait_for(|r| *r).await;
            });
        }
        let mut threads = Vec::new();
        for _ in 0..4 {
            threads.push(rx.recv().await.unwrap().unwrap());
        }
        threads.sort();
        assert_eq!(threads, ["media-0", "media-0", "media-1", "media-1"]);
        assert_eq!(workers.calls(), [2, 2]);
        release.send(true).unwrap();
        for _ in 0..100 {
            if workers.calls() == [0, 0] {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "calls still counted after they ended: {:?}",
            workers.calls()
        );
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
        let pace = |calls: usize, turn: Duration| Pace {
            turn,
            calls: Arc::new(AtomicUsize::new(calls)),
            woke: Mutex::new(Instant::now()),
            wakeups: AtomicU64::new(0),
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
