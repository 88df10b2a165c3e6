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
//! (BENCHMARKS.md §2).
//!
//! A media worker's thread holds what its calls send ([`hold_on_this_thread`]) and sends it
//! before it parks ([`flush`]); on any other thread [`send`] sends at once. A datagram waits
//! at most for the rest of its turn's work: the batch goes out early once it holds
//! [`MAX_HELD`] datagrams or its first has waited [`MAX_HOLD`], for a worker so busy that it
//! does not park.

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most datagrams held at once.
pub const MAX_HELD: usize = 64;

/// The longest a datagram is held.
pub const MAX_HOLD: Duration = Duration::from_millis(1);

/// One held datagram: its socket (kept open until it is sent), where to, and where its bytes
/// end in [`Held::bytes`].
struct Datagram {
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    end: usize,
}

/// What a worker's thread holds.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    datagrams: Vec<Datagram>,
    since: Option<Instant>,
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// From now on this thread holds what [`send`] is given until [`flush`]: a media worker's
/// thread, which flushes before it parks.
pub fn hold_on_this_thread() {
    HELD.with(|h| *h.borrow_mut() = Some(Held::default()));
}

/// Sends `bytes` on `socket`, to `to` or (`None`) to the peer it is connected to: at the end
/// of the worker's turn on a media worker's thread, else now. A send that fails later is
/// logged, as one that fails now is by the caller.
pub fn send(socket: &Arc<UdpSocket>, bytes: &[u8], to: Option<SocketAddr>) -> std::io::Result<()> {
    let full = HELD.with(|h| {
        let mut h = h.borrow_mut();
        let held = h.as_mut()?;
        held.bytes.extend_from_slice(bytes);
        held.datagrams.push(Datagram {
            socket: socket.clone(),
            to,
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

/// Sends what this thread holds, in the order it was given.
pub fn flush() {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let Some(Held {
            bytes,
            datagrams,
            since,
        }) = h.as_mut()
        else {
            return;
        };
        let mut start = 0;
        for d in datagrams.drain(..) {
            if let Err(e) = send_now(&d.socket, &bytes[start..d.end], d.to) {
                tracing::debug!(error = %e, to = ?d.to, "media send failed");
            }
            start = d.end;
        }
        bytes.clear();
        *since = None;
    });
}

fn send_now(socket: &UdpSocket, bytes: &[u8], to: Option<SocketAddr>) -> std::io::Result<()> {
    match to {
        Some(to) => socket.send_to(bytes, to).map(drop),
        None => socket.send(bytes).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_worker_thread_holds_its_datagrams_until_its_turn_ends_and_keeps_their_order() {
        std::thread::spawn(|| {
            let (connected, a) = pair();
            let (unconnected, b) = pair();
            hold_on_this_thread();
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
        })
        .join()
        .unwrap();
    }

    #[test]
    fn any_other_thread_sends_at_once() {
        let (connected, a) = pair();
        send(&connected, b"now", None).unwrap();
        assert_eq!(received(&a), vec![b"now".to_vec()]);
    }
}
