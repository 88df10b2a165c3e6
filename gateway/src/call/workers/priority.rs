//! A media worker's priority: the nice value its thread runs at (`[media] nice`).
//!
//! Why: on a box the gateway shares (the PBX, or the benchmark's load generator and trunk), a
//! worker that wakes for its turn can wait behind other programs' threads, and its ticks then
//! run late while it wants well under a core: in a traced ramp on the benchmark box the workers
//! read 0.61–0.99 of a core while up to 27 % of a second's ticks ran a frame late, and the
//! gate, which closes on late ticks, refused calls they could have carried. Offered 500
//! callers, workers at nice -10 carried 427–489 calls where those at the gateway's own carried
//! 268–408 (docs/benchmarks-history.md, "2026-12-07, early morning"). A lower nice gives a
//! worker a larger share of a contended core (sched(7)); what it takes, the box's other
//! programs lose (there, the generator's jitter and setup time grew), so it is the operator's
//! choice, as rtpengine's `--priority` is. Raising a thread's priority needs an `RLIMIT_NICE`
//! of 20 − nice or more, or `CAP_SYS_NICE` (setpriority(2), getrlimit(2)); without either the
//! workers run at the gateway's own nice and the log says what to grant.

use nix::libc;

/// Sets the calling thread's nice value to `nice` (Linux keeps one per thread); nothing where
/// `nice` is zero, which leaves the thread at the nice it was started with.
pub(super) fn set_for_this_thread(nice: i8) -> std::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    // SAFETY: gettid and setpriority take and return plain integers.
    let done = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice.into())
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's nice value (what the tests read back).
#[cfg(test)]
pub(super) fn of_this_thread() -> i32 {
    // SAFETY: as above. getpriority's -1 is also a valid nice; the value read back is what
    // the tests compare, and a failure (which a thread's own id cannot cause) would show there.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// Says once what the workers' request for `nice` came to: a warning, with what to grant,
/// where the kernel refused it.
pub(super) fn report(nice: i8, got: &[std::io::Result<()>]) {
    if nice == 0 {
        return;
    }
    match got.iter().find_map(|g| g.as_ref().err()) {
        Some(e) => tracing::warn!(
            "the media workers cannot run at nice {nice} ({e}), and run at the gateway's own: \
             raising a thread's priority needs an RLIMIT_NICE of {limit} or more (docker run \
             --ulimit nice={limit}; systemd LimitNICE={nice}) or CAP_SYS_NICE; or set [media] \
             nice = 0",
            // getrlimit(2): the ceiling RLIMIT_NICE allows is 20 - its value.
            limit = 20 - i32::from(nice)
        ),
        None => tracing::info!("media workers run at nice {nice}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::runtime::Handle;
    use tokio::sync::oneshot;

    use super::super::MediaWorkers;
    use super::*;
    use crate::call::load::LoadMonitor;

    /// A thread lowers its priority, which any thread may; zero leaves it as it was.
    #[test]
    fn a_thread_runs_at_the_nice_it_sets_and_zero_leaves_it() {
        let before = of_this_thread();
        std::thread::spawn(|| {
            let own = of_this_thread();
            set_for_this_thread(0).unwrap();
            assert_eq!(of_this_thread(), own, "zero leaves the thread's nice");
            let lower = (own + 5).min(19) as i8;
            set_for_this_thread(lower).unwrap();
            assert_eq!(of_this_thread(), i32::from(lower));
        })
        .join()
        .unwrap();
        assert_eq!(
            of_this_thread(),
            before,
            "the thread set its own nice, not the process's"
        );
    }

    /// The nice value each of `workers`' threads runs at.
    async fn nice_of(workers: &MediaWorkers) -> Vec<i32> {
        let mut nice = Vec::new();
        for w in &workers.workers {
            let (tx, rx) = oneshot::channel();
            w.handle.spawn(async move {
                let _ = tx.send(of_this_thread());
            });
            nice.push(rx.await.unwrap());
        }
        nice
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_worker_runs_at_the_nice_it_was_given_and_the_rest_of_the_gateway_does_not() {
        let own = of_this_thread();
        let start = |nice| {
            MediaWorkers::start(
                &LoadMonitor::default(),
                2,
                Duration::from_millis(2),
                Duration::ZERO,
                true,
                nice,
            )
            .unwrap()
        };
        assert_eq!(
            nice_of(&start(0)).await,
            [own, own],
            "zero leaves the gateway's own"
        );
        // A lower priority, which any thread may take.
        let lower = (own + 3).min(19) as i8;
        assert_eq!(nice_of(&start(lower)).await, [i32::from(lower); 2]);
        // A higher one where this process may raise it (CAP_SYS_NICE, as root usually has);
        // where it may not, the workers run at the gateway's own (and the log says so).
        let higher = (own - 5).max(-20) as i8;
        let may_raise = std::thread::spawn(move || set_for_this_thread(higher).is_ok())
            .join()
            .unwrap();
        let expected = if may_raise { i32::from(higher) } else { own };
        assert_eq!(nice_of(&start(higher)).await, [expected, expected]);
        assert_eq!(of_this_thread(), own, "the control runtime keeps its nice");
    }

    /// Drops `CAP_SYS_NICE` from the calling thread's effective and permitted sets (capabilities
    /// are per thread, and threads it starts inherit them): as an unprivileged gateway, or one in
    /// a container without the capability, runs. Returns whether the thread had it.
    fn drop_sys_nice_here() -> bool {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        const SYS_NICE: u32 = 1 << 23;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget writes two `Data` for version 3, which `data` holds.
        let got = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        assert_eq!(got, 0, "capget: {}", std::io::Error::last_os_error());
        let had = data[0].effective & SYS_NICE != 0;
        data[0].effective &= !SYS_NICE;
        data[0].permitted &= !SYS_NICE;
        // SAFETY: as above; capset only reads them.
        let set = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
        assert_eq!(set, 0, "capset: {}", std::io::Error::last_os_error());
        had
    }

    /// A `Write` into a shared buffer, for reading what the gateway logged.
    #[derive(Clone, Default)]
    struct Logged(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logged {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_refused_a_higher_priority_run_at_the_gateways_own_and_the_log_says_what_to_grant()
     {
        let own = of_this_thread();
        let handle = Handle::current();
        let logged = Logged::default();
        let writer = logged.clone();
        let (workers, had) = std::thread::spawn(move || {
            let _runtime = handle.enter();
            let had = drop_sys_nice_here();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            let workers = tracing::subscriber::with_default(subscriber, || {
                MediaWorkers::start(
                    &LoadMonitor::default(),
                    2,
                    Duration::from_millis(2),
                    Duration::ZERO,
                    true,
                    -5,
                )
            });
            (workers, had)
        })
        .join()
        .unwrap();
        let workers = workers.expect("the workers start at the gateway's own nice");
        eprintln!("this thread had CAP_SYS_NICE before the test dropped it: {had}");
        // Where RLIMIT_NICE allows -5 without the capability, the workers get it all the same.
        let limit = std::fs::read_to_string("/proc/self/limits").unwrap();
        let nice_limit: i32 = limit
            .lines()
            .find(|l| l.starts_with("Max nice priority"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let log = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
        if 20 - nice_limit <= -5 {
            assert_eq!(
                nice_of(&workers).await,
                [-5, -5],
                "RLIMIT_NICE allows it: {log}"
            );
            return;
        }
        assert_eq!(nice_of(&workers).await, [own, own]);
        assert!(log.contains("WARN"), "{log}");
        assert!(
            log.contains("cannot run at nice -5")
                && log.contains("RLIMIT_NICE of 25 or more")
                && log.contains("--ulimit nice=25")
                && log.contains("CAP_SYS_NICE")
                && log.contains("[media] nice = 0"),
            "{log}"
        );
        // And they run calls.
        let (tx, rx) = oneshot::channel();
        workers.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        });
        assert_eq!(rx.await.unwrap().as_deref(), Some("media-0"));
    }
}
