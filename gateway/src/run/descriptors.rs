//! The process's file descriptor table, grown once at start-up to what its calls will need.
//!
//! Why: Linux grows a process's descriptor table by doubling it when a new descriptor does not
//! fit, and in a process of more than one thread it waits for an RCU grace period before it
//! lets the old table go (`expand_fdtable`, fs/file.c). The thread that opens the descriptor
//! waits. On the benchmark box a media worker copying a new call's RTP socket (`dup`; calls
//! now share the socket instead) crossed 256 descriptors and took 12 ms (`perf trace
//! --duration 2 -t <media-0>`), and every call on that worker waited with it: the set-up p99
//! of 100 relayed calls read 16–21 ms in half the runs instead of 7–9 (BENCHMARKS.md §3). A
//! worker opening a call's direct path crosses the same lines. Grown at start-up, the table
//! does not grow while calls run.

use std::io;
use std::os::fd::AsRawFd;

use nix::libc;

/// Descriptors a call may hold: its trunk RTP socket, its browser leg's direct path, and its
/// share of a WebSocket.
pub const PER_CALL: usize = 3;

/// Descriptors besides the calls': listeners, SIP connections, plugins, logs.
pub const BESIDES_CALLS: usize = 256;

/// Grows this process's descriptor table to hold `wanted` descriptors, or as many as its soft
/// `RLIMIT_NOFILE` allows; returns how many it holds room for.
pub fn reserve(wanted: usize) -> io::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let room = wanted.min(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX));
    let Some(highest) = room.checked_sub(1) else {
        return Ok(0);
    };
    let highest = libc::c_int::try_from(highest).unwrap_or(libc::c_int::MAX);
    let probe = std::fs::File::open("/dev/null")?;
    // A copy at the lowest free descriptor from `highest` up: the table grows to hold it, and
    // keeps its size once the copy is closed.
    // SAFETY: fcntl(2) on a descriptor this function owns; the copy is closed at once.
    let copy = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is this function's own, unused elsewhere.
    unsafe { libc::close(copy) };
    Ok(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of this process's descriptor table (`FDSize`, proc(5)).
    fn table_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    #[test]
    fn the_table_holds_what_was_reserved_and_no_more_than_the_limit_allows() {
        let wanted = (table_size() * 4).max(4096);
        let room = reserve(wanted).unwrap();
        assert!(room > 0);
        assert!(
            table_size() >= room,
            "the table holds {} after reserving {room}",
            table_size()
        );

        // Beyond the soft limit the copy would fail (EINVAL): asking for more gets the limit.
        // (One test: the table is the process's, and only grows.)
        let room = reserve(usize::MAX).unwrap();
        assert!(room >= 64, "the soft limit is {room}");
        assert!(table_size() >= room);
    }
}
