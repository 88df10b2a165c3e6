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
             raising a thread's priority needs an RLIMIT_NICE of {} or more (docker run \
             --ulimit nice={}; systemd LimitNICE={nice}) or CAP_SYS_NICE; or set [media] \
             nice = 0",
            20 - i32::from(nice),
            20 - i32::from(nice)
        ),
        None => tracing::info!("media workers run at nice {nice}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
