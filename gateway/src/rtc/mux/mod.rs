//! One UDP port for all browser media (ICE mux). The mux task owns the socket's receive
//! side and routes each datagram to its call: by the peer's address once known, else by the
//! ufrag in a STUN Binding request's USERNAME (RFC 8445 §7.2.2). Sending needs no routing:
//! calls send through a shared non-blocking handle of the same socket, or their direct path.
//!
//! Once a browser's media flows from an address, its call opens a socket of its own on the
//! same port, connected to that address ([`MediaMux::connect`], a [`DirectPath`]): the
//! kernel delivers a connected UDP socket the datagrams of its 4-tuple ahead of the port's
//! other sockets (`SO_REUSEPORT`; connected sockets are never picked by the group's hash), so
//! the call's media worker reads them itself — no hop through the mux task, no wake-up of a
//! second thread per datagram. Checks from the browser's other candidates still come through
//! the mux. Only processes of the gateway's own user may join the port's group (Linux
//! `SO_REUSEPORT` rule).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::sync::mpsc;

use super::stun_username_ufrag;
use crate::media::{incoming, outgoing};

/// A datagram for one call.
pub type Datagram = (BytesMut, SocketAddr);

#[derive(Default)]
struct Routes {
    /// Each call's queue, and how many browser addresses route to it.
    by_ufrag: HashMap<String, (mpsc::Sender<Datagram>, usize)>,
    by_addr: HashMap<SocketAddr, mpsc::Sender<Datagram>>,
}

/// Browser addresses one call may be reached from (its candidates): a host that learnt the
/// ufrag cannot grow the table by sending from many ports.
const MAX_ADDRS_PER_CALL: usize = 8;

/// A call's route on the mux: its datagrams arrive here, and the route is removed when this
/// is dropped, however the call ends.
pub struct MuxRoute {
    rx: mpsc::Receiver<Datagram>,
    mux: MediaMux,
    ufrag: String,
}

impl MuxRoute {
    /// The next datagram for the call.
    pub async fn recv(&mut self) -> Option<Datagram> {
        self.rx.recv().await
    }

    /// The next datagram for the call, if one waits; `cx` is woken when one arrives.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Datagram>> {
        self.rx.poll_recv(cx)
    }

    /// After an ICE restart the browser's checks name `ufrag`. The call's known addresses are
    /// forgotten but `keep`, where its media flows until the new checks select a path, so a
    /// browser that restarts again and again cannot grow the table.
    pub fn rekey(&mut self, ufrag: &str, keep: Option<SocketAddr>) {
        let mut routes = self.mux.routes.lock().unwrap_or_else(|e| e.into_inner());
        let Some((tx, _)) = routes.by_ufrag.remove(&self.ufrag) else {
            return;
        };
        routes
            .by_addr
            .retain(|addr, t| !t.same_channel(&tx) || Some(*addr) == keep);
        let kept = keep.map_or(0, |a| usize::from(routes.by_addr.contains_key(&a)));
        routes.by_ufrag.insert(ufrag.to_string(), (tx, kept));
        self.ufrag = ufrag.to_string();
    }
}

impl Drop for MuxRoute {
    fn drop(&mut self) {
        self.mux.unregister(&self.ufrag);
    }
}

/// The shared browser media socket.
#[derive(Clone)]
pub struct MediaMux {
    send: Arc<std::net::UdpSocket>,
    local: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    /// Direct paths open.
    direct: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for MediaMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MediaMux({})", self.local)
    }
}

/// Per-call queue depth: at 50 packets/s plus STUN and RTCP, a second of backlog.
const QUEUE: usize = 64;

/// The receive buffer asked for the port. Every call's browser audio arrives on this one
/// socket, 50 datagrams a second per call: the kernel's default (208 KiB, a few hundred small
/// datagrams) held ~10 ms of 400 calls' traffic, and a receive task that late on a busy box lost
/// datagrams — DTLS handshakes among them, whose retransmissions (1, 2, 4, 8 s) then outlasted
/// the call's connect timeout (seen as `RcvbufErrors` and the socket's drop count in
/// `ss -uam`). Memory is only taken while datagrams wait.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Asks for [`RECEIVE_BUFFER`] and says so when the kernel's `net.core.rmem_max` grants less.
fn enlarge_receive_buffer(socket: &std::net::UdpSocket) -> std::io::Result<usize> {
    let socket = socket2::SockRef::from(socket);
    socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
    // Linux reports twice what it reserves for data (socket(7), SO_RCVBUF).
    let granted = socket.recv_buffer_size()? / 2;
    if granted < RECEIVE_BUFFER {
        tracing::warn!(
            granted_bytes = granted,
            wanted_bytes = RECEIVE_BUFFER,
            "the browser media port's receive buffer is smaller than wanted: under load it \
             drops datagrams; raise it with `sysctl -w net.core.rmem_max={RECEIVE_BUFFER}`"
        );
    }
    Ok(granted)
}

/// A non-blocking UDP socket on `addr` that other sockets of this process may share.
fn shared_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// The port's first socket. Port 0 is first resolved to a port no socket holds: Linux picks
/// an ephemeral port for a `SO_REUSEPORT` socket without skipping the ports other such
/// sockets of the same user hold (`udp_lib_lport_inuse`), so two gateways of one process or
/// user that both asked for port 0 could share a port, and the kernel would split each one's
/// browsers between them. A plain socket's pick skips every port in use.
fn first_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    if addr.port() != 0 {
        return shared_socket(addr);
    }
    let mut tries = 0;
    loop {
        let free = std::net::UdpSocket::bind(addr)?.local_addr()?;
        match shared_socket(free) {
            // Someone took the port between the two binds: pick again.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 8 => tries += 1,
            bound => return bound,
        }
    }
}

impl MediaMux {
    /// Binds the port and starts the receive task.
    pub fn bind(addr: SocketAddr) -> std::io::Result<MediaMux> {
        let socket: std::net::UdpSocket = first_socket(addr)?.into();
        enlarge_receive_buffer(&socket)?;
        let local = socket.local_addr()?;
        let send = Arc::new(socket);
        // Readable only: workers send browsers' datagrams on this socket, and each send that
        // frees room would otherwise wake the receive task's thread (EPOLLOUT).
        let recv = incoming::receiver(send.clone())?;
        let routes = Arc::new(Mutex::new(Routes::default()));
        tokio::spawn(receive_loop(recv, routes.clone()));
        Ok(MediaMux {
            send,
            local,
            routes,
            direct: Default::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Routes datagrams whose STUN USERNAME starts with `ufrag` (and, after that, datagrams
    /// from the same address) to the returned route, until it is dropped.
    pub fn register(&self, ufrag: &str) -> MuxRoute {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_ufrag
            .insert(ufrag.to_string(), (tx, 0));
        MuxRoute {
            rx,
            mux: self.clone(),
            ufrag: ufrag.to_string(),
        }
    }

    /// Forgets a call's routes.
    fn unregister(&self, ufrag: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((tx, _)) = routes.by_ufrag.remove(ufrag) {
            routes.by_addr.retain(|_, t| !t.same_channel(&tx));
        }
    }

    /// Sends a datagram to a browser.
    pub fn send(&self, bytes: &[u8], to: SocketAddr) {
        if let Err(e) = outgoing::send(&self.send, bytes, Some(to)) {
            tracing::debug!(error = %e, %to, "browser media send failed");
        }
    }

    /// A socket of the call's own for the browser address `peer` (see the module's text).
    /// Registered with the runtime it is called on: the call's media worker.
    pub fn connect(&self, peer: SocketAddr) -> std::io::Result<DirectPath> {
        let socket = shared_socket(self.local)?;
        // Until `connect` the socket is one more member of the port's group, and the kernel
        // may hash another browser's datagram to it: `DirectPath::poll_recv` hands such strays on.
        socket.connect(&peer.into())?;
        let socket = Arc::new(std::net::UdpSocket::from(socket));
        let watched = incoming::receiver(socket.clone())?;
        self.direct.fetch_add(1, Ordering::Relaxed);
        Ok(DirectPath {
            socket,
            watched: Some(watched),
            waiting: None,
            more: false,
            peer,
            mux: self.clone(),
        })
    }

    /// Direct paths open (for metrics and tests).
    pub fn direct_paths(&self) -> usize {
        self.direct.load(Ordering::Relaxed)
    }

    /// Calls with routes (for metrics and tests).
    pub fn calls(&self) -> usize {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_ufrag
            .len()
    }
}

/// The most datagrams a direct path's read takes: two, so that one can wait
/// ([`DirectPath::waiting`]). A call that reads at its tick finds one in most ticks.
const READ: usize = 2;

/// A call's own socket for the one browser address its media comes from.
#[derive(Debug)]
pub struct DirectPath {
    /// Connected to the browser: the call reads its media here, and sends on it where its
    /// worker sends through a ring ([`DirectPath::send`]).
    socket: Arc<std::net::UdpSocket>,
    /// The socket's registration with the worker's reactor, while the call waits for its
    /// datagrams ([`DirectPath::poll_recv`]); none while it reads them at its own time
    /// ([`DirectPath::try_recv`]), so that their arrival wakes nothing.
    watched: Option<incoming::Receiver>,
    /// A datagram read with the one before it, handed out next: one read takes at most
    /// [`READ`] (two), so one can wait.
    waiting: Option<Datagram>,
    /// The last read was full: more may wait behind it.
    more: bool,
    peer: SocketAddr,
    mux: MediaMux,
}

impl Drop for DirectPath {
    fn drop(&mut self) {
        self.mux.direct.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DirectPath {
    /// The browser address this path is connected to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The next datagram from the browser, if one waits; `cx` is woken when one arrives.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Datagram> {
        loop {
            if let Some(datagram) = self.waiting.take() {
                return Poll::Ready(datagram);
            }
            let watched = match &mut self.watched {
                Some(watched) => watched,
                unwatched => match incoming::receiver(self.socket.clone()) {
                    Ok(watched) => unwatched.insert(watched),
                    Err(e) => {
                        tracing::warn!(error = %e, peer = %self.peer, "the browser's media socket cannot be watched; no audio from the browser");
                        return Poll::Pending;
                    }
                },
            };
            match watched.poll_read_ready(cx).map_ok(drop) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    // Only when the worker's runtime is shutting down: its calls end with it.
                    tracing::debug!(error = %e, peer = %self.peer, "browser media socket");
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
            if let Some(datagram) = self.read() {
                return Poll::Ready(datagram);
            }
        }
    }

    /// The next datagram from the browser, if one waits, read at the call's own time (its
    /// tick), and whether more may wait behind it: a read that found fewer than it asked for
    /// drained the socket, and asking again would cost a system call for nothing. The socket
    /// is taken off the reactor until the next [`Self::poll_recv`]: its datagrams then wake
    /// neither the call nor its worker's thread as they arrive.
    pub fn try_recv(&mut self) -> Option<(Datagram, bool)> {
        self.watched = None;
        loop {
            if let Some(datagram) = self.waiting.take() {
                return Some((datagram, self.more));
            }
            match self.read() {
                Some(datagram) => return Some((datagram, self.more)),
                None if !self.more => return None,
                // Only other calls' datagrams in a full read: more may wait.
                None => {}
            }
        }
    }

    /// One read of up to [`READ`] datagrams: the first for this call, another kept in
    /// `waiting`, and in `more` whether the read was full (more may wait; a second datagram
    /// kept means it was). Datagrams from other addresses were queued before the socket was
    /// connected: they go to their calls.
    fn read(&mut self) -> Option<Datagram> {
        let peer = self.peer;
        let (ready, waiting, full) = incoming::with_scratch(|scratch| {
            let bufs = &mut scratch.datagrams[..READ];
            let mut got = [incoming::Got::empty(); READ];
            let read = match &self.watched {
                Some(watched) => incoming::recv_waiting(watched, bufs, &mut got),
                None => incoming::recv_unwatched(&self.socket, bufs, &mut got),
            };
            let count = match read {
                Ok(count) => count,
                // A browser gone (its port closed) answers what the call sent on this
                // socket with an ICMP error, which comes back here (`ECONNREFUSED`): it
                // is logged, and the call's ICE consent notices the silence.
                Err(e) => {
                    tracing::debug!(error = %e, %peer, "browser media receive error");
                    0
                }
            };
            let (mut ready, mut waiting) = (None, None);
            for (buf, got) in bufs.iter().zip(&got).take(count) {
                let (n, from) = (got.len, got.source);
                if from != peer {
                    route(&self.mux.routes, &buf[..n], from);
                } else if ready.is_none() {
                    ready = Some((own_copy(&buf[..n]), from));
                } else {
                    waiting = Some((own_copy(&buf[..n]), from));
                }
            }
            (ready, waiting, count == READ)
        });
        self.waiting = waiting;
        self.more = full;
        ready
    }

    /// Sends a datagram to the browser: from this socket where the worker's turns go through
    /// an io_uring ring, else from the port's shared one.
    ///
    /// Why: an unconnected socket looks the route up for every datagram it sends
    /// (`ip_route_output_flow`), a connected one keeps the route it found at `connect` (UDP's
    /// cached destination, net/ipv4/udp.c); on the benchmark box a loopback send through a
    /// ring cost 8–10 % less so (`cargo bench -p gateway --bench udp_send`). A ring sends
    /// every socket's datagrams in one submission, so nothing is lost by using the call's own.
    /// Without a ring, one `sendmmsg` on the shared socket carries all the browsers' datagrams
    /// of a turn ([`outgoing::flush`]): fewer system calls is the larger saving there.
    pub fn send(&self, bytes: &[u8]) {
        if !outgoing::sends_with_ring() {
            return self.mux.send(bytes, self.peer);
        }
        if let Err(e) = outgoing::send(&self.socket, bytes, None) {
            tracing::debug!(error = %e, peer = %self.peer, "browser media send failed");
        }
    }
}

/// A datagram for a call, copied out of the read's buffers. Audio (SRTP) is cut from the
/// thread's shared chunk ([`incoming::hand_out`]): the call decrypts it and is done with it
/// within its turn. The rest (STUN, DTLS, SRTCP) goes to the WebRTC stack, which may keep it
/// for a while; cut from a chunk, it would keep the whole chunk alive (at 100 calls the
/// gateway's memory grew by 0.004 MB a call so), so it gets a buffer of its own.
fn own_copy(data: &[u8]) -> BytesMut {
    if super::is_rtp(data) {
        incoming::hand_out(data)
    } else {
        BytesMut::from(data)
    }
}

async fn receive_loop(socket: incoming::Receiver, routes: Arc<Mutex<Routes>>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let mut ready = match socket.readable().await {
            Ok(ready) => ready,
            // Only when the runtime is shutting down.
            Err(e) => return tracing::debug!(error = %e, "browser media socket"),
        };
        match ready.try_io(|s| s.get_ref().recv_from(&mut buf)) {
            // A fault (a panic: a bug) drops this datagram alone: the task routes every
            // browser's ICE and DTLS, and a panic would end it (`crate::fault`).
            Ok(Ok((n, peer))) => {
                if let Err(fault) = crate::fault::catch(|| route(&routes, &buf[..n], peer)) {
                    crate::fault::fault_error!(
                        %peer,
                        fault,
                        "a fault in the gateway while it routed a browser's datagram; that \
                         datagram is dropped and everything else goes on. This is a bug in the \
                         gateway: please report it with this log"
                    );
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "browser media receive error"),
            Err(_would_block) => {}
        }
    }
}

/// Hands a datagram to its call's queue.
fn route(routes: &Mutex<Routes>, data: &[u8], peer: SocketAddr) {
    #[cfg(any(test, feature = "fault-injection"))]
    crate::fault::injection::browser_datagram(peer);
    let mut table = routes.lock().unwrap_or_else(|e| e.into_inner());
    let table = &mut *table;
    let target = match table.by_addr.get(&peer) {
        Some(tx) => Some(tx),
        None => match stun_username_ufrag(data).and_then(|u| table.by_ufrag.get_mut(u)) {
            Some((tx, addrs)) if *addrs < MAX_ADDRS_PER_CALL => {
                *addrs += 1;
                Some(&*table.by_addr.entry(peer).or_insert_with(|| tx.clone()))
            }
            _ => None,
        },
    };
    match target {
        // A full queue means the call task is stalled: drop rather than stall every call.
        // The one copy a datagram gets before the call authenticates and decrypts it.
        Some(tx) => {
            let _ = tx.try_send((own_copy(data), peer));
        }
        None => tracing::trace!(%peer, "datagram for no call dropped"),
    }
}

#[cfg(test)]
mod tests;
