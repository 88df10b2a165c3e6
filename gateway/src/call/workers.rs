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

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// One worker: its runtime and how many calls it runs.
#[derive(Debug)]
struct Worker {
    handle: Handle,
    calls: Arc<AtomicUsize>,
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

impl MediaWorkers {
    /// Starts `count` worker threads (`media-0`, `media-1` …). Must be called on the shared
    /// runtime, which becomes [`MediaWorkers::control`].
    pub fn start(count: usize) -> std::io::Result<MediaWorkers> {
        let control = Handle::current();
        let mut workers = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("media-{i}-blocking"))
                .build()?;
            let handle = runtime.handle().clone();
            let calls = Arc::new(AtomicUsize::new(0));
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || {
                    // A current-thread runtime runs its tasks while a thread blocks on it.
                    let _ = runtime.block_on(stopped);
                })?;
            workers.push(Worker {
                handle,
                calls,
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
            .min_by_key(|w| w.calls.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.calls.fetch_add(1, Ordering::Relaxed);
        let running = Running(worker.calls.clone());
        // Boxed: an async block awaiting a future it captured keeps room for it twice (the
        // capture and the awaited value), and an outbound call's future is 36 KB: unboxed,
        // `load_ramp.py` measured ~40 KB more per call.
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
            .map(|w| w.calls.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_go_to_the_least_busy_worker_and_run_on_its_thread() {
        let workers = MediaWorkers::start(2).unwrap();
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
}
