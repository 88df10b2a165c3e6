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
use std::io::{ErrorKind, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::BytesMut;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
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

/// The most datagrams one read takes. A call's socket gathers one datagram in most 2 ms turns
/// (50 a second); when it holds two, the next read drains the rest.
pub const BATCH: usize = 2;

/// Room for one datagram: media datagrams are far smaller, and a larger one is cut short
/// (and then refused by whatever parses it).
pub const DATAGRAM: usize = 2048;

/// Buffers for one read.
pub type Buffers = [[u8; DATAGRAM]; BATCH];

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
    /// `recvmmsg`'s headers, made on the thread's first read.
    static HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> = const { RefCell::new(None) };
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

/// Reads the datagrams waiting on `socket` into `bufs`, each one's length and source into
/// `got`, and returns how many: none when none waited. Fewer than [`BATCH`] means the socket
/// is drained and its readiness cleared: the task is woken through `poll_read_ready` when
/// the next one arrives.
pub fn recv_waiting(
    socket: &Receiver,
    bufs: &mut Buffers,
    got: &mut [(usize, SocketAddr); BATCH],
) -> std::io::Result<usize> {
    // Each datagram read, in the order of `bufs`: its length and source (none when it named
    // no source, which UDP always does).
    let mut read = [None; BATCH];
    let result = socket.try_io(Interest::READABLE, |socket| {
        let mut taken = 0;
        HEADERS.with(|h| {
            let mut h = h.borrow_mut();
            let headers = h.get_or_insert_with(|| MultiHeaders::preallocate(BATCH, None));
            let mut slices = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
            let results = recvmmsg(
                socket.as_raw_fd(),
                headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )?;
            for (slot, message) in read.iter_mut().zip(results) {
                taken += 1;
                *slot = Some(
                    message
                        .address
                        .as_ref()
                        .and_then(socket_addr)
                        .map(|from| (message.bytes.min(DATAGRAM), from)),
                );
            }
            Ok::<(), std::io::Error>(())
        })?;
        // Short of what was asked (whether or not each one named its source).
        if taken < BATCH {
            // Drained: let tokio clear the readiness, as an `EAGAIN` would.
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    // The datagrams that named a source, moved to the front so that `bufs[i]` is `got[i]`'s.
    let mut count = 0;
    for (i, datagram) in read.into_iter().flatten().enumerate() {
        if let Some(source) = datagram {
            bufs.swap(count, i);
            got[count] = source;
            count += 1;
        }
    }
    match result {
        Err(e) if e.kind() != ErrorKind::WouldBlock && count == 0 => Err(e),
        _ => Ok(count),
    }
}

fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;
    use std::time::Duration;

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
        let mut got = [(0, to); BATCH];

        // More than one read takes: the first fills its batch and leaves the socket readable.
        for i in 0..BATCH as u8 + 1 {
            peer.send_to(&[i; 3], to).unwrap();
        }
        // Dropped, the guard leaves the readiness as it is.
        drop(socket.readable().await.unwrap());
        assert_eq!(recv_waiting(&socket, &mut bufs, &mut got).unwrap(), BATCH);
        assert_eq!(got[0], (3, peer.local_addr().unwrap()));
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
        assert_eq!(&bufs[0][..got[0].0], b"next");

        // Nothing waiting: none read, not an error.
        assert_eq!(recv_waiting(&socket, &mut bufs, &mut got).unwrap(), 0);
    }
}
