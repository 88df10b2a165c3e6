//! Reading the datagrams waiting on a media socket with one `recvmmsg(2)`, without the read
//! that only says `EAGAIN`.
//!
//! Why: tokio's readiness is edge-triggered, so a task that read a datagram had to read again
//! until the socket said `EAGAIN` before it could wait. A call's socket seldom holds more
//! than one datagram a turn, so every datagram cost two system calls (at 50 relayed calls
//! 10,100 `recvfrom` a second for 5,050 datagrams, docs/benchmarks-history.md §2). A `recvmmsg`
//! that asks for more datagrams than it finds has seen the queue empty in the same call: the
//! readiness is then cleared as that `EAGAIN` would have cleared it.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::libc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A media socket a call reads, registered with its worker's reactor for reading only
/// ([`receiver`]). Shared: what the call sends on the same socket holds it too
/// ([`crate::media::outgoing::send`]), so it needs no second descriptor.
pub type Receiver = AsyncFd<Arc<std::net::UdpSocket>>;

/// Registers `socket` with the current runtime's reactor for reading only. Why not as a
/// tokio `UdpSocket`: that registers for writing too, and a trunk's socket sends 50 datagrams
/// a second (`outgoing::send`): each send whose buffer the kernel freed then posted an
/// `EPOLLOUT` event, which the worker's `epoll_wait` polled the socket for and its reactor
/// handled, for nothing — no task ever waits to write.
pub fn receiver(socket: Arc<std::net::UdpSocket>) -> std::io::Result<Receiver> {
    socket.set_nonblocking(true)?;
    // SAFETY: the socket's descriptor stays open while the `AsyncFd` holds its share, and
    // `as_raw_fd` always names it (what `register_with_interest` asks of its caller). The
    // `AsyncFd` deregisters it when dropped; a send still held elsewhere closes it later.
    Ok(unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?)
}

/// The most datagrams one read takes. A socket read as it becomes readable holds one datagram
/// in most 2 ms turns (50 a second); a trunk's socket read once a 20 ms tick holds one, or two
/// where the trunk's packets arrive close to the tick. A read that takes fewer than it asked
/// for has found the socket drained, so these need one `recvmmsg` each.
pub const BATCH: usize = 4;

/// Room for one datagram: media datagrams are far smaller, and a larger one is cut short
/// (and then refused by whatever parses it).
pub const DATAGRAM: usize = 2048;

/// Room for one datagram.
pub type Buffer = [u8; DATAGRAM];

/// Buffers for one read.
pub type Buffers = [Buffer; BATCH];

/// Room for the audio one datagram decodes to: 20 ms of G.711 is 160 samples, of G.722 320;
/// a trunk that packs more into a packet (a longer `ptime`) still fits.
pub const PCM: usize = 1500;

/// Where a reader puts what it reads and what that decodes to.
pub struct Scratch {
    /// The datagrams of one read.
    pub datagrams: Buffers,
    /// One datagram's audio, decoded.
    pub pcm: [i16; PCM],
}

impl Scratch {
    fn new() -> Box<Scratch> {
        Box::new(Scratch {
            datagrams: [[0; DATAGRAM]; BATCH],
            pcm: [0; PCM],
        })
    }
}

thread_local! {
    /// The thread's scratch, made on its first read.
    static SCRATCH: RefCell<Option<Box<Scratch>>> = const { RefCell::new(None) };
    /// Where [`hand_out`] copies datagrams: the rest of the thread's current chunk.
    static CHUNK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// The room [`hand_out`] takes at a time: some forty browser audio datagrams (120–200
/// bytes). Small, so that one datagram something keeps for long keeps little else alive.
pub const CHUNK_BYTES: usize = 8 * 1024;

/// A datagram read into the scratch, copied out for whoever takes it on and is done with it
/// soon: the browser leg, which decrypts audio in place and hands its payload on, as a view
/// of it, to the call's turn.
///
/// Why not a buffer of its own: a browser's datagram then cost two allocations, its own and
/// the shared header `Bytes` makes when a `Vec` shorter than its room (the SRTP tag cut off)
/// is frozen: 80 % of the gateway's `malloc` calls at 100 relayed calls (docs/benchmarks-history.md
/// §2). Here datagrams are cut from a chunk the thread shares out, [`CHUNK_BYTES`] at a time, and
/// a datagram cut from a chunk freezes without allocating. Once every datagram of a chunk is
/// gone, as after each turn of a worker, the chunk is used again from its start; one kept
/// for long keeps its chunk, so what may be kept needs a buffer of its own.
pub fn hand_out(datagram: &[u8]) -> BytesMut {
    CHUNK.with(|chunk| {
        let mut chunk = chunk.borrow_mut();
        if chunk.capacity() < datagram.len() {
            // Reclaims the chunk when nothing else holds it, else starts another.
            chunk.reserve(datagram.len().max(CHUNK_BYTES));
        }
        chunk.extend_from_slice(datagram);
        chunk.split()
    })
}

/// Runs `read` with the thread's [`Scratch`]: a media worker's readers share one, reused by
/// every read. Why: on the stack a fresh one was zeroed on every read (7 KB for each trunk
/// packet, 4 KB for each of the browser's), which also pushed the call's own state out of
/// the core's first-level cache; kept in each call it would cost 7 KB a call. A read nested
/// in another's `read` gets a scratch of its own.
pub fn with_scratch<R>(read: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => read(kept.get_or_insert_with(Scratch::new)),
        Err(_) => read(&mut Scratch::new()),
    })
}

/// One datagram a read took: its length, where it came from, and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    /// Its length in the read's buffer.
    pub len: usize,
    /// Its source.
    pub source: SocketAddr,
    /// When the kernel received it, where the socket asks for that ([`stamp_arrivals`]);
    /// else when it was read.
    pub at: Instant,
    /// How many datagrams the kernel had dropped on the socket, full, when this one was
    /// queued; where the socket asks ([`count_overflows`]) and any were. The kernel's own
    /// count, from the socket's start: it only grows.
    pub overflows: Option<u32>,
    /// The address it was sent to, where the socket asks ([`note_destinations`]).
    pub to: Option<IpAddr>,
}

impl Got {
    /// A slot for a read to fill.
    pub fn empty() -> Got {
        // Any time will do, and one read once costs no clock reading per slot.
        static SOME_TIME: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        Got {
            len: 0,
            source: SocketAddr::from(([0, 0, 0, 0], 0)),
            at: *SOME_TIME,
            overflows: None,
            to: None,
        }
    }
}

/// Asks the kernel to stamp each datagram `socket` receives with the time it arrived
/// (`SO_TIMESTAMPNS`, socket(7)), which [`recv_waiting`] and [`recv_unwatched`] then give as
/// [`Got::at`].
///
/// Why: a call that reads its trunk's RTP once a tick (`call::driver`) reads a datagram up
/// to 20 ms after it arrived, and the interarrival jitter it reports (RFC 3550 §6.4.1) must
/// be the network's, not its own reading's.
///
/// The kernel stamps arrivals only while some socket asks, and turns that on from a work
/// item (`net_enable_timestamp`, net/core/dev.c): datagrams that arrive in the moment after
/// the first such socket opens are stamped when read. A call's socket opens with its offer,
/// well before its trunk's media.
pub fn stamp_arrivals(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .map_err(std::io::Error::from)
}

/// Asks the kernel to say, with each datagram `socket` receives, how many it dropped on it
/// for want of room (`SO_RXQ_OVFL`, socket(7)), which the reads give as [`Got::overflows`].
///
/// Why: a call that reads its trunk's socket once a tick leaves a flood to its receive
/// buffer, and the kernel drops what does not fit; the operator should see that it did.
pub fn count_overflows(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RxqOvfl, &1)
        .map_err(std::io::Error::from)
}

/// Asks the kernel to say, with each datagram `socket` receives, the address it was sent to
/// (`IP_PKTINFO`, ip(7); `IPV6_RECVPKTINFO`, ipv6(7)), which the reads give as [`Got::to`].
///
/// Why: a socket bound to every address that is then connected to its peer hears only what
/// arrives at the one address the route to that peer leaves from. Before connecting, the
/// caller checks that its peer sends there (`media::session`).
pub fn note_destinations(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let v4 = setsockopt(socket, sockopt::Ipv4PacketInfo, &true);
    match socket.local_addr()? {
        SocketAddr::V4(_) => v4,
        // An IPv6 socket hears IPv4 peers too, as mapped addresses, told with `IP_PKTINFO`.
        SocketAddr::V6(_) => setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true),
    }
    .map_err(std::io::Error::from)
}

/// Connects `socket` to `peer`, whose datagram was sent to `to`, so that it hears `peer`
/// alone; whether it did. Bound to every address, a connected socket hears only on the one the
/// route to its peer leaves from (the kernel fixes it at `connect`): the connect is undone when
/// that is not `to`, or `to` is unknown ([`note_destinations`]).
pub fn hear_only(
    socket: &std::net::UdpSocket,
    peer: SocketAddr,
    to: Option<IpAddr>,
) -> std::io::Result<bool> {
    let everywhere = socket.local_addr()?.ip().is_unspecified();
    if everywhere && to.is_none() {
        return Ok(false);
    }
    socket.connect(peer)?;
    let heard_at = socket.local_addr()?.ip().to_canonical();
    if everywhere && Some(heard_at) != to.map(|ip| ip.to_canonical()) {
        disconnect(socket)?;
        return Ok(false);
    }
    Ok(true)
}

/// Undoes `connect(2)` on a datagram socket (an `AF_UNSPEC` address, connect(2)): it hears
/// every source again, on every address it was bound to.
pub fn disconnect(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    // SAFETY: all-zero bytes are a valid `sockaddr`; its family then only changes.
    let mut unspecified: libc::sockaddr = unsafe { std::mem::zeroed() };
    unspecified.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: the address is a live `sockaddr` of the length given.
    let done = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            &unspecified,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if done < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the datagrams waiting on `socket` into `bufs`, each one's length, source and arrival
/// into `got`, and returns how many: none when none waited. Fewer than `bufs` holds (at most
/// [`BATCH`]) means the socket is drained and its readiness cleared: the task is woken
/// through `poll_read_ready` when the next one arrives.
pub fn recv_waiting(
    socket: &Receiver,
    bufs: &mut [Buffer],
    got: &mut [Got],
) -> std::io::Result<usize> {
    let mut count = 0;
    let result = socket.try_io(Interest::READABLE, |socket| {
        let drained;
        (drained, count) = recv_batch(socket.as_raw_fd(), bufs, got)?;
        if drained {
            // Drained: let tokio clear the readiness, as an `EAGAIN` would.
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match result {
        Err(e) if e.kind() != ErrorKind::WouldBlock && count == 0 => Err(e),
        _ => Ok(count),
    }
}

/// [`recv_waiting`] on a socket no reactor watches: a read a call makes at its own time (its
/// tick), not because the socket became readable. `Ok(0)` when none waited.
pub fn recv_unwatched(
    socket: &std::net::UdpSocket,
    bufs: &mut [Buffer],
    got: &mut [Got],
) -> std::io::Result<usize> {
    match recv_batch(socket.as_raw_fd(), bufs, got) {
        Ok((_, count)) => Ok(count),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// Room for the control messages of one datagram: its arrival time (`SCM_TIMESTAMPNS`, 32
/// bytes), the socket's drops (`SO_RXQ_OVFL`, 24) and where it was sent (`IP_PKTINFO`, 32,
/// and on an IPv6 socket `IPV6_PKTINFO`, 40).
const CONTROL: usize = 128;

/// One `recvmmsg(2)` of as many datagrams as `bufs` and `got` have room for, up to [`BATCH`]:
/// whether it took fewer than it asked for (whether or not each one named its source: the
/// socket is drained), and how many named a source, moved to the front so that `bufs[i]` is
/// `got[i]`'s.
///
/// Why by hand and not `nix::sys::socket::recvmmsg`: that keeps each header's address and
/// control lengths as the last read left them, so that a worker's read of an IPv6 peer after
/// an IPv4 one would cut its address short, and a read after one without an arrival time
/// would have no room for one. Here every read sets them afresh.
fn recv_batch(
    fd: std::os::fd::RawFd,
    bufs: &mut [Buffer],
    got: &mut [Got],
) -> std::io::Result<(bool, usize)> {
    let asked = bufs.len().min(got.len()).min(BATCH);
    #[repr(C, align(8))]
    struct Control([u8; CONTROL]);
    // SAFETY (all three): plain C structures for which all-zero bytes are a valid value.
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut controls: [Control; BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    for (iov, buf) in iovs.iter_mut().zip(bufs.iter_mut()) {
        iov.iov_base = buf.as_mut_ptr().cast();
        iov.iov_len = buf.len();
    }
    for (((header, name), control), iov) in headers
        .iter_mut()
        .zip(&mut names)
        .zip(&mut controls)
        .zip(&mut iovs)
    {
        header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
        header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
        header.msg_hdr.msg_iov = iov;
        header.msg_hdr.msg_iovlen = 1;
        header.msg_hdr.msg_control = control.0.as_mut_ptr().cast();
        header.msg_hdr.msg_controllen = CONTROL as _;
    }
    // SAFETY: every header points at live buffers of the lengths it names, all of which
    // outlive the call; no timeout.
    let taken = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            asked as _,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if taken < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let taken = taken as usize;
    let read_at = Instant::now();
    let mut wall = None;
    let mut count = 0;
    for i in 0..taken {
        let header = &headers[i];
        let Some(source) = socket_addr(&names[i], header.msg_hdr.msg_namelen) else {
            continue;
        };
        let told = control(&header.msg_hdr);
        let at = told
            .stamp
            .map_or(read_at, |stamp| since(stamp, read_at, &mut wall));
        bufs.swap(count, i);
        got[count] = Got {
            len: (header.msg_len as usize).min(DATAGRAM),
            source,
            at,
            overflows: told.overflows,
            to: told.to,
        };
        count += 1;
    }
    Ok((taken < asked, count))
}

/// What the kernel told with a datagram.
#[derive(Default)]
struct Told {
    /// Its arrival time ([`stamp_arrivals`]).
    stamp: Option<libc::timespec>,
    /// The socket's drops ([`count_overflows`]).
    overflows: Option<u32>,
    /// Where it was sent ([`note_destinations`]).
    to: Option<IpAddr>,
}

/// What the kernel told with a datagram, in its control messages.
fn control(header: &libc::msghdr) -> Told {
    let mut told = Told::default();
    // SAFETY: `header` is one `recvmmsg` filled: its control pointer and length name what
    // the kernel wrote, and the CMSG macros stay within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                    told.stamp = Some(std::ptr::read_unaligned(data.cast::<libc::timespec>()))
                }
                (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) => {
                    told.overflows = Some(std::ptr::read_unaligned(data.cast::<u32>()))
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    // The header's destination (`ipi_addr`), its bytes in network order.
                    told.to = Some(IpAddr::from(info.ipi_addr.s_addr.to_ne_bytes()));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    told.to = Some(IpAddr::from(info.ipi6_addr.s6_addr));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    told
}

/// The [`Instant`] of a kernel's arrival stamp (the system's wall clock), read at `read_at`;
/// `wall` is the wall clock then, taken once a read. A stamp ahead of the wall clock or
/// more than a second behind it (the clock was set meanwhile) counts as `read_at`.
fn since(
    stamp: libc::timespec,
    read_at: Instant,
    wall: &mut Option<std::time::SystemTime>,
) -> Instant {
    let wall = *wall.get_or_insert_with(std::time::SystemTime::now);
    let stamped = std::time::UNIX_EPOCH
        + Duration::new(
            stamp.tv_sec.max(0) as u64,
            stamp.tv_nsec.clamp(0, 999_999_999) as u32,
        );
    match wall.duration_since(stamped) {
        Ok(age) if age <= Duration::from_secs(1) => read_at.checked_sub(age).unwrap_or(read_at),
        _ => read_at,
    }
}

/// The address a read wrote, `len` bytes of it.
fn socket_addr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match name.ss_family as libc::c_int {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a `sockaddr_in` there, as its family and length say.
            let v4 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a `sockaddr_in6`.
            let v6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                v6.sin6_addr.s6_addr.into(),
                u16::from_be(v6.sin6_port),
                u32::from_be(v6.sin6_flowinfo),
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;

    #[test]
    fn handed_out_datagrams_share_a_chunk_that_is_used_again_once_they_are_gone() {
        // On a thread of its own: a fresh chunk.
        std::thread::spawn(|| {
            let first = hand_out(&[1; 150]);
            let second = hand_out(&[2; 150]);
            assert_eq!(&first[..], &[1; 150]);
            assert_eq!(&second[..], &[2; 150]);
            // Cut one after the other from the same chunk.
            assert_eq!(second.as_ptr(), first.as_ptr().wrapping_add(150));
            let start = first.as_ptr();

            // Decrypted in place and cut to its plaintext, then frozen as the browser leg does:
            // still a view of the chunk, not a copy.
            let mut datagram = hand_out(&[3; 170]);
            datagram[0] = 9;
            datagram.truncate(160);
            let frozen = datagram.freeze();
            assert_eq!(frozen.as_ptr(), start.wrapping_add(300));
            assert_eq!(frozen.slice(12..).as_ptr(), start.wrapping_add(312));
            assert_eq!(frozen[0], 9);

            // While one datagram is kept, a full chunk is followed by another.
            let kept = frozen;
            let mut taken = 470;
            while taken + 150 <= CHUNK_BYTES {
                drop(hand_out(&[4; 150]));
                taken += 150;
            }
            let next = hand_out(&[5; 150]);
            assert_ne!(
                next.as_ptr(),
                start,
                "the kept datagram's chunk is not reused"
            );
            assert_eq!(&kept[1..], &[3; 159]);
            assert_eq!(&next[..], &[5; 150]);

            // Once all of a chunk's datagrams are gone, it is used again from its start.
            let second_chunk = next.as_ptr();
            drop((first, second, kept, next));
            let mut reused = false;
            for _ in 0..CHUNK_BYTES / 150 + 1 {
                let d = hand_out(&[6; 150]);
                reused |= d.as_ptr() == second_chunk;
            }
            assert!(reused, "the chunk was not used again");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_read_after_another_of_a_different_kind_gets_its_whole_address_and_arrival() {
        // One thread's reads go to sockets of both families, stamped and not.
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let Ok(v6) = std::net::UdpSocket::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here: nothing checked");
            return;
        };
        stamp_arrivals(&v6).unwrap();
        until_stamping_is_on();
        let (peer4, peer6) = (
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            std::net::UdpSocket::bind("[::1]:0").unwrap(),
        );
        let mut bufs = [[0u8; DATAGRAM]; BATCH];
        let mut got = [Got::empty(); BATCH];
        for _ in 0..2 {
            peer4.send_to(b"four", v4.local_addr().unwrap()).unwrap();
            let sent = Instant::now();
            peer6.send_to(b"six", v6.local_addr().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(recv_unwatched(&v4, &mut bufs, &mut got).unwrap(), 1);
            assert_eq!(got[0].source, peer4.local_addr().unwrap());
            assert_eq!(recv_unwatched(&v6, &mut bufs, &mut got).unwrap(), 1);
            assert_eq!(
                (got[0].source, &bufs[0][..got[0].len]),
                (peer6.local_addr().unwrap(), &b"six"[..])
            );
            assert!(
                got[0].at <= sent + Duration::from_millis(5),
                "stamped on arrival, not on reading: {:?} after sending",
                got[0].at.saturating_duration_since(sent)
            );
        }
    }

    /// Returns once the kernel stamps datagrams as they arrive (see [`stamp_arrivals`]).
    pub(crate) fn until_stamping_is_on() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        stamp_arrivals(&socket).unwrap();
        let to = socket.local_addr().unwrap();
        let (mut bufs, mut got) = ([[0u8; DATAGRAM]; BATCH], [Got::empty(); BATCH]);
        for _ in 0..200 {
            socket.send_to(b"probe", to).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            let read_at = Instant::now();
            if recv_unwatched(&socket, &mut bufs, &mut got).unwrap() == 1
                && read_at.saturating_duration_since(got[0].at) >= Duration::from_millis(4)
            {
                return;
            }
        }
        panic!("the kernel never stamped a datagram's arrival");
    }

    /// Whether tokio still holds the socket readable (no system call: its own state).
    async fn still_readable(socket: &Receiver) -> bool {
        poll_fn(|cx| Poll::Ready(socket.poll_read_ready(cx).is_ready())).await
    }

    #[tokio::test]
    async fn a_short_read_drains_the_socket_without_a_read_that_finds_nothing() {
        let socket = receiver(Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())).unwrap();
        let to = socket.get_ref().local_addr().unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut bufs = [[0u8; DATAGRAM]; BATCH];
        let mut got = [Got::empty(); BATCH];

        // More than one read takes: the first fills its batch and leaves the socket readable.
        for i in 0..BATCH as u8 + 1 {
            peer.send_to(&[i; 3], to).unwrap();
        }
        // Dropped, the guard leaves the readiness as it is.
        drop(socket.readable().await.unwrap());
        assert_eq!(recv_waiting(&socket, &mut bufs, &mut got).unwrap(), BATCH);
        assert_eq!((got[0].len, got[0].source), (3, peer.local_addr().unwrap()));
        assert_eq!(&bufs[1][..3], &[1; 3]);
        assert!(
            still_readable(&socket).await,
            "a full batch may have left more"
        );

        // The rest comes short: drained, and tokio knows it without another read.
        assert_eq!(recv_waiting(&socket, &mut bufs, &mut got).unwrap(), 1);
        assert_eq!(&bufs[0][..3], &[BATCH as u8; 3]);
        assert!(
            !still_readable(&socket).await,
            "readiness cleared by the short read"
        );

        // The next datagram wakes the reader again.
        peer.send_to(b"next", to).unwrap();
        drop(
            tokio::time::timeout(Duration::from_secs(1), socket.readable())
                .await
                .expect("readable again")
                .unwrap(),
        );
        assert_eq!(recv_waiting(&socket, &mut bufs, &mut got).unwrap(), 1);
        assert_eq!(&bufs[0][..got[0].len], b"next");

        // Nothing waiting: none read, not an error.
        assert_eq!(recv_waiting(&socket, &mut bufs, &mut got).unwrap(), 0);
    }
}
