//! Datagrams a media worker sends during one turn, sent together when the turn ends.
//!
//! Why: a `sendto` also hands the datagram to its receiver's socket and, when the receiver
//! sleeps, wakes it; a receiver woken on the worker's core takes the core over on the way
//! back from the system call. A transcoding turn spends tens of microseconds in libopus
//! between two sends, time enough for a receiver to read one datagram and sleep again, so
//! its sends woke and preempted once per datagram. Sent together at the end of the turn they
//! follow each other within microseconds. On the benchmarks' loopback (the browsers'
//! generator and the SIP peer share the box) transcoded calls cost 5–10 % less CPU this way;
//! relayed calls, whose sends already followed each other closely, cost the same
//! (docs/benchmarks-history.md §2).
//!
//! A turn's datagrams, for every socket, go in one `io_uring_enter(2)` ([`ring`]) where the
//! kernel offers io_uring. Elsewhere the datagrams a turn holds for one socket go in one
//! `sendmmsg(2)`, and a socket's lone datagram in a `sendto(2)`.
//!
//! A media worker's thread holds what its calls send ([`hold_on_this_thread`]) and sends it
//! before it parks ([`flush`]); on any other thread [`send`] sends at once. A datagram waits
//! at most for the rest of its turn's work: the batch goes out early once it holds
//! [`MAX_HELD`] datagrams or its first has waited [`MAX_HOLD`], for a worker so busy that it
//! does not park.

use std::cell::RefCell;
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};

mod ring;

/// The most datagrams held at once.
pub const MAX_HELD: usize = 64;

/// The longest a datagram is held.
pub const MAX_HOLD: Duration = Duration::from_millis(1);

/// One held datagram: its socket (kept open until it is sent), where to, and where its bytes
/// are in [`Held::bytes`].
struct Datagram {
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    start: usize,
    end: usize,
}

/// What a worker's thread holds.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    datagrams: Vec<Datagram>,
    since: Option<Instant>,
    /// `sendmmsg`'s headers, made on the first flush that needs them.
    headers: Option<MultiHeaders<SockaddrStorage>>,
    /// The thread's submission ring, where it has one.
    ring: Option<ring::Ring>,
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// From now on this thread holds what [`send`] is given until [`flush`]: a media worker's
/// thread, which flushes before it parks. With `use_ring` it sends each turn's datagrams
/// through an io_uring submission ring where the kernel lets it have one (`[media] io_uring`).
pub fn hold_on_this_thread(use_ring: bool) {
    let ring = use_ring
        .then(|| ring::Ring::new(MAX_HELD as u32))
        .and_then(|made| {
            made.inspect_err(|e| {
                tracing::info!(
                    error = %e,
                    "media sends: no io_uring for this worker; it sends with sendmmsg and sendto"
                );
            })
            .ok()
        });
    HELD.with(|h| {
        *h.borrow_mut() = Some(Held {
            ring,
            ..Held::default()
        })
    });
}

/// Tests: from now on this thread holds what [`send`] is given, to send through `ring`.
#[cfg(test)]
fn hold_with_ring(ring: ring::Ring) {
    HELD.with(|h| {
        *h.borrow_mut() = Some(Held {
            ring: Some(ring),
            ..Held::default()
        })
    });
}

/// After a fault while this thread sent its turn (a panic: a bug; `crate::fault`): what it
/// held is dropped, and it sends without a ring from now on, so that a fault on the ring's
/// path does not come back every turn.
pub fn reset_after_fault() {
    HELD.with(|h| {
        if let Ok(mut h) = h.try_borrow_mut()
            && let Some(held) = h.as_mut()
        {
            *held = Held::default();
        }
    });
}

/// Whether this thread sends its turns through a submission ring.
pub fn sends_with_ring() -> bool {
    HELD.with(|h| h.borrow().as_ref().is_some_and(|held| held.ring.is_some()))
}

/// Tests: the socket and address of each datagram this thread holds, in order.
#[cfg(test)]
pub(crate) fn held() -> Vec<(std::os::fd::RawFd, Option<SocketAddr>)> {
    HELD.with(|h| {
        h.borrow().as_ref().map_or(Vec::new(), |held| {
            held.datagrams
                .iter()
                .map(|d| (d.socket.as_raw_fd(), d.to))
                .collect()
        })
    })
}

/// Sends `bytes` on `socket`, to `to` or (`None`) to the peer it is connected to: at the end
/// of the worker's turn on a media worker's thread, else now. A send that fails later is
/// logged, as one that fails now is by the caller.
pub fn send(socket: &Arc<UdpSocket>, bytes: &[u8], to: Option<SocketAddr>) -> std::io::Result<()> {
    let full = HELD.with(|h| {
        let mut h = h.borrow_mut();
        let held = h.as_mut()?;
        let start = held.bytes.len();
        held.bytes.extend_from_slice(bytes);
        held.datagrams.push(Datagram {
            socket: socket.clone(),
            to,
            start,
            end: held.bytes.len(),
        });
        let since = *held.since.get_or_insert_with(Instant::now);
        Some(held.datagrams.len() >= MAX_HELD || since.elapsed() >= MAX_HOLD)
    });
    match full {
        None => send_now(socket, bytes, to),
        Some(true) => {
            flush();
            Ok(())
        }
        Some(false) => Ok(()),
    }
}

/// Sends what this thread holds, each socket's datagrams in the order they were given: all in
/// one system call through the thread's ring, else one system call per socket.
pub fn flush() {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let Some(held) = h.as_mut() else {
            return;
        };
        #[cfg(any(test, feature = "fault-injection"))]
        for d in &held.datagrams {
            crate::fault::injection::media_send(d.to);
        }
        let mut ring_refused = None;
        let by_ring = held.ring.as_mut().map(|ring| {
            ring.send(&held.datagrams, &held.bytes, &mut |d, e| {
                let again = refused_by_ring(&e)
                    .then(|| send_now(&d.socket, &held.bytes[d.start..d.end], d.to));
                match again {
                    // Sent the plain way where the ring would not: the ring is at fault.
                    Some(Ok(())) => ring_refused = Some(e),
                    Some(Err(plain)) => log_failure(Err(plain), d.to),
                    None => log_failure(Err(e), d.to),
                }
            })
        });
        if let Some(e) = ring_refused {
            // Every datagram it refused went the plain way; the next turns' go that way too,
            // rather than each failing first.
            held.ring = None;
            tracing::warn!(
                error = %e,
                "media sends: the io_uring ring refused datagrams that sendmsg sent; this \
                 worker sends with sendmmsg and sendto from now on"
            );
        }
        let sent = match by_ring {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                // Dropped before the batch's bytes are: entries it did not take point into
                // them. The batch goes the other way; a datagram the ring sent before it
                // failed may go twice, which RTP and SRTP receivers discard.
                held.ring = None;
                tracing::warn!(
                    error = %e,
                    "media sends: the io_uring ring failed; this worker sends with sendmmsg \
                     and sendto from now on"
                );
                false
            }
            None => false,
        };
        if !sent {
            // Stable: a socket's datagrams keep their order (a flow's packets must not swap).
            held.datagrams
                .sort_by_key(|d| Arc::as_ptr(&d.socket) as usize);
            for group in held
                .datagrams
                .chunk_by(|a, b| Arc::ptr_eq(&a.socket, &b.socket))
            {
                match group {
                    [one] => log_failure(
                        send_now(&one.socket, &held.bytes[one.start..one.end], one.to),
                        one.to,
                    ),
                    _ => send_together(&mut held.headers, group, &held.bytes),
                }
            }
        }
        held.datagrams.clear();
        held.bytes.clear();
        held.since = None;
    });
}

/// Sends datagrams of one socket with `sendmmsg(2)`. A call stops at a datagram the kernel
/// refuses, having sent those before it (sendmmsg(2), RETURN VALUE): that one is tried alone
/// (its error logged) and the rest go in the next call.
fn send_together(
    headers: &mut Option<MultiHeaders<SockaddrStorage>>,
    group: &[Datagram],
    bytes: &[u8],
) {
    let headers = headers.get_or_insert_with(|| MultiHeaders::preallocate(MAX_HELD, None));
    let fd = group[0].socket.as_raw_fd();
    let mut rest = group;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MAX_HELD)];
        let mut slices = [[IoSlice::new(&[])]; MAX_HELD];
        let mut addrs = [None; MAX_HELD];
        for ((d, slice), addr) in batch.iter().zip(&mut slices).zip(&mut addrs) {
            *slice = [IoSlice::new(&bytes[d.start..d.end])];
            *addr = d.to.map(SockaddrStorage::from);
        }
        let sent = sendmmsg(
            fd,
            headers,
            &slices[..batch.len()],
            &addrs[..batch.len()],
            [],
            MsgFlags::empty(),
        )
        .map(|results| results.count());
        let sent = match sent {
            Ok(n) if n == batch.len() => n,
            // The datagram after the last one sent was refused.
            Ok(n) => {
                log_failure(
                    send_now(
                        &batch[n].socket,
                        &bytes[batch[n].start..batch[n].end],
                        batch[n].to,
                    ),
                    batch[n].to,
                );
                n + 1
            }
            Err(e) => {
                log_failure(Err(e.into()), batch[0].to);
                1
            }
        };
        rest = &rest[sent..];
    }
}

/// Whether a datagram's failure in the ring may be the ring's own rather than the network's:
/// an entry the kernel's io_uring would not run — an operation it lacks (`EINVAL`,
/// `EOPNOTSUPP`) or one its restrictions or a security module deny (`EACCES`) — where
/// `sendmsg(2)` may well succeed. A failure the socket reports (`ECONNREFUSED` after an
/// ICMP error, `EAGAIN` on a full buffer) is not tried again: a second send would succeed
/// for reasons of its own and blame the ring.
fn refused_by_ring(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EINVAL | nix::libc::EOPNOTSUPP | nix::libc::EACCES)
    )
}

fn log_failure(sent: std::io::Result<()>, to: Option<SocketAddr>) {
    if let Err(e) = sent {
        tracing::debug!(error = %e, ?to, "media send failed");
    }
}

fn send_now(socket: &UdpSocket, bytes: &[u8], to: Option<SocketAddr>) -> std::io::Result<()> {
    match to {
        Some(to) => socket.send_to(bytes, to).map(drop),
        None => socket.send(bytes).map(drop),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use nix::libc;

    fn pair() -> (Arc<UdpSocket>, UdpSocket) {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_nonblocking(true).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.connect(receiver.local_addr().unwrap()).unwrap();
        (Arc::new(sender), receiver)
    }

    fn received(socket: &UdpSocket) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        // Loopback delivers within the send; a short wait covers a slow box.
        std::thread::sleep(Duration::from_millis(20));
        while let Ok(n) = socket.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    /// Runs `test` on a worker's thread that sends through a ring where the kernel offers one,
    /// then on one that sends with `sendmmsg` and `sendto`.
    fn on_each_path(test: fn()) {
        for use_ring in [true, false] {
            std::thread::spawn(move || {
                hold_on_this_thread(use_ring);
                test()
            })
            .join()
            .unwrap_or_else(|_| panic!("failed with use_ring = {use_ring}"));
        }
    }

    /// Whether this kernel sends a datagram through a bare io_uring ring: one `SENDMSG` to a
    /// socket of the test's own, said by the datagram arriving.
    fn kernel_sends_through_io_uring() -> bool {
        let Ok(mut bare) = io_uring::IoUring::new(2) else {
            return false;
        };
        let (sender, receiver) = pair();
        let mut slice = libc::iovec {
            iov_base: b"probe".as_ptr() as *mut libc::c_void,
            iov_len: 5,
        };
        // SAFETY: msghdr is plain old data; all-zero is an empty header.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut slice;
        header.msg_iovlen = 1;
        let entry =
            io_uring::opcode::SendMsg::new(io_uring::types::Fd(sender.as_raw_fd()), &header)
                .build();
        // SAFETY: the header, its slice and the socket outlive the entry: waited for below.
        if unsafe { bare.submission().push(&entry) }.is_err() || bare.submit_and_wait(1).is_err() {
            return false;
        }
        received(&receiver) == [b"probe".to_vec()]
    }

    #[test]
    fn a_worker_thread_sends_through_a_ring_where_the_kernel_offers_one() {
        std::thread::spawn(|| {
            let offered = kernel_sends_through_io_uring();
            hold_on_this_thread(true);
            assert_eq!(sends_with_ring(), offered);
            hold_on_this_thread(false);
            assert!(!sends_with_ring());
            if !offered {
                eprintln!("no io_uring here: only the sendmmsg and sendto path is tested");
            }
        })
        .join()
        .unwrap();
    }

    /// From now on this thread's system call `number` fails with `EPERM`, as under a
    /// container's seccomp profile: a filter of this thread alone (seccomp(2),
    /// `SECCOMP_MODE_FILTER` without `TSYNC`). False where the kernel refuses the filter.
    pub(crate) fn refuse_on_this_thread(number: libc::c_long) -> bool {
        let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let filter = [
            // The system call's number (`seccomp_data.nr`, offset 0).
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
            op(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                number as u32,
                0,
                1,
            ),
            op(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                0,
                0,
            ),
            op(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
        ];
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prctl(2) with these options reads only the program given, which outlives
        // the call; both apply to this thread alone.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                && libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) == 0
        }
    }

    /// On this thread, whose ring `fail` makes fail (false where it cannot): a batch of three
    /// datagrams on two sockets each arrives once and in order, the ring is dropped, and the
    /// next batch goes without it.
    fn a_failed_rings_batch_goes_the_plain_way(fail: impl FnOnce() -> bool) {
        let (connected, a) = pair();
        let (unconnected, b) = pair();
        send(&connected, b"one", None).unwrap();
        send(&unconnected, b"two", Some(b.local_addr().unwrap())).unwrap();
        send(&connected, b"three", None).unwrap();
        if !fail() {
            return;
        }
        flush();
        assert_eq!(received(&a), vec![b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(received(&b), vec![b"two".to_vec()]);
        assert!(!sends_with_ring(), "a ring that failed is not used again");
        send(&connected, b"four", None).unwrap();
        flush();
        assert_eq!(received(&a), vec![b"four".to_vec()]);
    }

    /// Runs `test` on a thread of its own that sends through a ring, where the kernel gives
    /// one; elsewhere says so, with what is then `untested`.
    fn on_a_thread_with_a_ring(untested: &'static str, test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            hold_on_this_thread(true);
            if !sends_with_ring() {
                eprintln!("no io_uring here: {untested}");
                return;
            }
            test();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_ring_the_kernel_stops_using_is_dropped_and_its_batch_goes_the_other_way() {
        on_a_thread_with_a_ring("nothing to fail", || {
            a_failed_rings_batch_goes_the_plain_way(|| {
                // A profile that lets a process set a ring up but not use it: the entries
                // the ring did not take go with the batch.
                let refused = refuse_on_this_thread(libc::SYS_io_uring_enter);
                if !refused {
                    eprintln!("no seccomp filter for this test: the ring's failure is not tested");
                }
                refused
            });
        });
    }

    #[test]
    fn a_ring_that_refuses_its_sends_is_dropped_and_what_it_refused_goes_the_plain_way() {
        std::thread::spawn(|| {
            match ring::Ring::refusing_sends(8) {
                Ok(ring) => hold_with_ring(ring),
                Err(e) => {
                    eprintln!("no restricted io_uring here ({e}): the refusal is not tested");
                    return;
                }
            };
            assert!(sends_with_ring());
            a_failed_rings_batch_goes_the_plain_way(|| true);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_peer_that_is_not_listening_does_not_cost_a_worker_its_ring() {
        on_a_thread_with_a_ring("nothing to keep", || {
            // A port nobody listens on: the first send goes, the ICMP port unreachable it
            // meets makes the socket's next send fail with ECONNREFUSED (udp(7)).
            let closed = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.connect(closed).unwrap();
            let socket = Arc::new(socket);
            for _ in 0..3 {
                send(&socket, b"anyone?", None).unwrap();
                flush();
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                sends_with_ring(),
                "a refusal by the network is the network's, not the ring's"
            );
        });
    }

    #[test]
    fn a_worker_whose_kernel_refuses_it_a_ring_sends_without_one() {
        // Docker's default profile refuses `io_uring_setup`; one that allows setting a ring up
        // but not asking it what it supports (`io_uring_register`) leaves the probe unanswered.
        for (name, number) in [
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("io_uring_register", libc::SYS_io_uring_register),
        ] {
            std::thread::spawn(move || {
                if !refuse_on_this_thread(number) {
                    eprintln!("no seccomp filter for this test: nothing refused");
                    return;
                }
                hold_on_this_thread(true);
                assert!(!sends_with_ring(), "{name} refused");
                let (connected, a) = pair();
                send(&connected, b"one", None).unwrap();
                flush();
                assert_eq!(received(&a), vec![b"one".to_vec()]);
            })
            .join()
            .unwrap();
        }
    }

    #[test]
    fn a_worker_thread_holds_its_datagrams_until_its_turn_ends_and_keeps_their_order() {
        on_each_path(|| {
            let (connected, a) = pair();
            let (unconnected, b) = pair();
            send(&connected, b"one", None).unwrap();
            send(&unconnected, b"two", Some(b.local_addr().unwrap())).unwrap();
            send(&connected, b"three", None).unwrap();
            assert!(received(&a).is_empty(), "nothing goes before the turn ends");
            assert!(received(&b).is_empty());
            flush();
            assert_eq!(received(&a), vec![b"one".to_vec(), b"three".to_vec()]);
            assert_eq!(received(&b), vec![b"two".to_vec()]);

            // A turn that sends more than it may hold sends as it goes.
            for i in 0..MAX_HELD {
                send(&connected, &[i as u8], None).unwrap();
            }
            assert_eq!(received(&a).len(), MAX_HELD);

            // A datagram held longer than a turn's work goes with the next one.
            send(&connected, b"early", None).unwrap();
            std::thread::sleep(MAX_HOLD * 2);
            send(&connected, b"late", None).unwrap();
            assert_eq!(received(&a), vec![b"early".to_vec(), b"late".to_vec()]);
        });
    }

    #[test]
    fn one_sockets_datagrams_keep_their_order_and_a_refused_one_loses_no_other() {
        on_each_path(|| {
            let shared = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
            let browsers: Vec<UdpSocket> = (0..3)
                .map(|_| {
                    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
                    b.set_nonblocking(true).unwrap();
                    b
                })
                .collect();
            let to = |i: usize| Some(browsers[i].local_addr().unwrap());
            // An IPv6 address on an IPv4 socket: the kernel refuses it (EAFNOSUPPORT).
            let nowhere = Some("[::1]:9".parse().unwrap());
            let (trunk, trunk_peer) = pair();
            // Refused first in its batch, then in the middle of one.
            send(&shared, b"refused", nowhere).unwrap();
            for round in 0..3u8 {
                for i in 0..3 {
                    send(&shared, &[b'a' + i as u8, round], to(i)).unwrap();
                }
                send(&trunk, &[b't', round], None).unwrap();
                if round == 1 {
                    send(&shared, b"refused", nowhere).unwrap();
                }
            }
            flush();
            for (i, browser) in browsers.iter().enumerate() {
                let c = b'a' + i as u8;
                assert_eq!(
                    received(browser),
                    vec![vec![c, 0], vec![c, 1], vec![c, 2]],
                    "browser {i}: each of its datagrams, in order"
                );
            }
            assert_eq!(
                received(&trunk_peer),
                vec![b"t\0".to_vec(), b"t\x01".to_vec(), b"t\x02".to_vec()]
            );
        });
    }

    #[test]
    fn any_other_thread_sends_at_once() {
        let (connected, a) = pair();
        send(&connected, b"now", None).unwrap();
        assert_eq!(received(&a), vec![b"now".to_vec()]);
    }
}
