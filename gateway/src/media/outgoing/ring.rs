//! A turn's datagrams for every socket in one system call: an io_uring submission ring
//! (io_uring(7)) per media worker, one `IORING_OP_SENDMSG` entry per datagram.
//!
//! Why: `sendmmsg(2)` batches one socket's datagrams, but a transcoded call sends through
//! two sockets of its own — its trunk RTP socket and the browser path — so a turn of 50 calls
//! made some 50 system calls. Each send to a receiver that sleeps wakes it, and a receiver
//! woken on the worker's core takes the core over when the system call returns: the worker
//! was switched out at the return of one `sendto` after another (`perf`: 5 % of a transcoded
//! call's samples in `finish_task_switch` under `sendto`, BENCHMARKS.md §3). One
//! `io_uring_enter(2)` sends them all before it returns, so the receivers it woke run after
//! the turn rather than between its sends.
//!
//! Every entry carries `MSG_DONTWAIT`: io_uring then fails a send that would block with
//! `EAGAIN`, as a non-blocking `sendmsg` does, rather than waiting for room in the socket's
//! buffer and sending it later (io_uring/net.c: `MSG_DONTWAIT` sets `REQ_F_NOWAIT`). So each
//! send is done, or has failed, when the submission returns: nothing is sent out of order or
//! from a buffer the worker has reused. The ring still waits for every completion before the
//! batch's buffers are let go.
//!
//! Where the kernel has no io_uring for the gateway (`kernel.io_uring_disabled`, a
//! container's seccomp profile that refuses `io_uring_setup`, a kernel built without it or
//! older than 5.6, which cannot say whether its ring sends datagrams),
//! [`Ring::new`] says why and the worker sends as before, with `sendmmsg` and `sendto`. A
//! ring the kernel stops taking, or whose sends it refuses where `sendmsg(2)` goes, is
//! dropped by the worker (`super::flush`), which then sends the same way.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};
use nix::libc;
use nix::sys::socket::{SockaddrLike, SockaddrStorage};

use super::Datagram;

/// A media worker's submission ring, and room for the headers of one batch.
pub(super) struct Ring {
    ring: IoUring,
    /// How many entries the ring takes at once.
    entries: usize,
    headers: Vec<libc::msghdr>,
    slices: Vec<libc::iovec>,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl Ring {
    /// A ring for batches of up to `entries` datagrams, on this thread only.
    pub(super) fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::builder()
            // An entry the kernel cannot take fails alone; the rest are still sent (5.18).
            .setup_submit_all()
            // Completions need no interrupt of the worker's thread: it reaps them itself (5.19).
            .setup_coop_taskrun()
            // Only this thread submits, so the kernel need not lock for others (6.0).
            .setup_single_issuer()
            .build(entries)
            // An older kernel refuses those flags (EINVAL) but has the ring without them: an
            // entry it cannot take then stops the submission, and `send_batch` submits the
            // rest again.
            .or_else(|_| IoUring::new(entries))?;
        Ring::probed(ring, entries)
    }

    /// A ring whose every `IORING_OP_SENDMSG` entry the kernel refuses (`EACCES`), though
    /// its probe says the kernel has them: io_uring's restrictions (5.10) let it run no-ops
    /// alone, as a security module or a kernel that refuses entries for reasons of its own
    /// would.
    #[cfg(test)]
    pub(super) fn refusing_sends(entries: u32) -> io::Result<Ring> {
        use io_uring::register::Restriction;
        let ring = IoUring::builder().setup_r_disabled().build(entries)?;
        ring.submitter().register_restrictions(&mut [
            Restriction::sqe_op(opcode::Nop::CODE),
            // IORING_REGISTER_PROBE (include/uapi/linux/io_uring.h), which `probed` asks.
            Restriction::register_op(8),
        ])?;
        ring.submitter().register_enable_rings()?;
        Ring::probed(ring, entries)
    }

    /// `ring`, where its kernel says it sends datagrams.
    fn probed(ring: IoUring, entries: u32) -> io::Result<Ring> {
        // Linux 5.1 and 5.2 have rings but no `IORING_OP_SENDMSG` (5.3): there every entry
        // would fail, and the worker's datagrams with it. Probing needs 5.6; a kernel that
        // cannot say is taken for one without.
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot ask the ring what it supports: {e}"),
            )
        })?;
        if !probe.is_supported(opcode::SendMsg::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring cannot send datagrams (no IORING_OP_SENDMSG)",
            ));
        }
        let entries = entries as usize;
        Ok(Ring {
            ring,
            entries,
            headers: Vec::with_capacity(entries),
            slices: Vec::with_capacity(entries),
            addrs: Vec::with_capacity(entries),
        })
    }

    /// Sends `datagrams` (their bytes in `bytes`), each socket's in the order given, and
    /// reports each one that failed to `failed`. An error is the ring's own (io_uring_enter(2)
    /// refused): the ring must then be dropped, not used again, since entries it did not take
    /// point into this batch.
    pub(super) fn send(
        &mut self,
        datagrams: &[Datagram],
        bytes: &[u8],
        failed: &mut dyn FnMut(&Datagram, io::Error),
    ) -> io::Result<()> {
        for batch in datagrams.chunks(self.entries) {
            self.send_batch(batch, bytes, failed)?;
        }
        Ok(())
    }

    fn send_batch(
        &mut self,
        batch: &[Datagram],
        bytes: &[u8],
        failed: &mut dyn FnMut(&Datagram, io::Error),
    ) -> io::Result<()> {
        // Every header is built before any is pointed at: the vectors do not move meanwhile.
        self.addrs.clear();
        self.addrs
            .extend(batch.iter().map(|d| d.to.map(SockaddrStorage::from)));
        self.slices.clear();
        self.slices.extend(batch.iter().map(|d| libc::iovec {
            iov_base: bytes[d.start..d.end].as_ptr() as *mut libc::c_void,
            iov_len: d.end - d.start,
        }));
        self.headers.clear();
        for (slice, addr) in self.slices.iter_mut().zip(&self.addrs) {
            // SAFETY: msghdr is plain old data; all-zero is an empty header.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = slice;
            header.msg_iovlen = 1;
            if let Some(addr) = addr {
                header.msg_name = addr.as_ptr() as *mut libc::c_void;
                header.msg_namelen = addr.len();
            }
            self.headers.push(header);
        }
        {
            let mut queue = self.ring.submission();
            for (i, (d, header)) in batch.iter().zip(&self.headers).enumerate() {
                let entry = opcode::SendMsg::new(types::Fd(d.socket.as_raw_fd()), header)
                    .flags(libc::MSG_DONTWAIT as u32)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the header, its address and slice, the bytes and the socket (held
                // by `batch`) outlive the entry: this call waits for every completion below.
                unsafe { queue.push(&entry) }
                    .map_err(|_| io::Error::other("the submission ring is full"))?;
            }
        }
        let mut done = 0;
        while done < batch.len() {
            match self.ring.submit_and_wait(batch.len() - done) {
                Ok(_) => {}
                // Interrupted before it submitted anything, or while it waited: asked again,
                // it submits what is left and waits for the rest.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for completion in self.ring.completion() {
                done += 1;
                if completion.result() < 0 {
                    let d = &batch[completion.user_data() as usize];
                    failed(d, io::Error::from_raw_os_error(-completion.result()));
                }
            }
        }
        Ok(())
    }
}
