//! One RTP stream of the trunk leg: a UDP socket from the configured port range, G.711
//! framing, RFC 4733 events both ways, and symmetric RTP (RFC 4961) latching — only to a
//! source the trunk's signalling names ([`RtpSource`]), never to whoever sends first.
//!
//! With SDES keys (RFC 4568) the stream is SRTP: packets are authenticated and decrypted
//! before anything reads them, and encrypted last thing before they leave.
//!
//! Buffers are owned by the stream and reused; nothing allocates per plain RTP packet (the
//! SRTP library returns each protected packet in a buffer of its own).

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use super::MediaDrops;
use super::codec::Codec;
use super::description::RemoteMedia;
use super::dtmf::{DtmfReceiver, DtmfSender};
use super::rtp::{HEADER_LEN, RelayClock, RtpPacket, RtpSender};
use super::srtp::SrtpSession;
use super::{incoming, outgoing};

mod reception;
mod timeline;
use reception::Reception;
use timeline::{Origin, Timeline};

/// Where a trunk's RTP may come from (RTP bleed is the classic SBC hole: a leg that
/// latches to any source hands the call's audio to whoever sprays the port range).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtpSource {
    /// Only from the exact address and port the trunk's SDP names.
    Strict,
    /// From the SDP's IP or the trunk's signalling IP, any port (NAT rewrites ports), latched
    /// to the first such source for the rest of the stream (RFC 4961 symmetric RTP).
    #[default]
    Latch,
}

/// Samples in one 20 ms G.711 frame.
pub const FRAME_SAMPLES: usize = 160;

/// Samples in one 20 ms G.722 frame (16 kHz).
pub const WIDE_FRAME_SAMPLES: usize = 320;

/// A G.722 stream's coder state: ADPCM predicts from the samples before, so each direction
/// keeps one for the life of the stream.
#[derive(Debug, Default)]
struct G722State {
    encoder: crate::media::g722::Encoder,
    decoder: crate::media::g722::Decoder,
}

/// The largest RTP packet sent: a header and an Opus packet (at most 1275 bytes, RFC 6716).
const MAX_PACKET: usize = 1500;

/// Packet counters of one stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RtpStats {
    /// RTP packets sent (audio and events).
    pub sent: u64,
    /// RTP packets received and accepted.
    pub received: u64,
    /// Datagrams dropped: not RTP, or from an unexpected payload type.
    pub dropped: u64,
    /// Datagrams dropped because they came from an address the signalling did not name.
    pub dropped_source: u64,
    /// Datagrams the kernel dropped because the socket was full (a flood between two reads).
    pub dropped_overflow: u64,
    /// Packets the peer sent that never arrived, from sequence gaps (RFC 3550 §6.4.1).
    pub lost: u64,
    /// Interarrival jitter, in 8 kHz timestamp units (RFC 3550 §6.4.1, A.8).
    pub jitter: u32,
}

/// What one received datagram turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Audio decoded into the caller's buffer (8 kHz G.711, 16 kHz G.722).
    Audio {
        /// Samples decoded.
        samples: usize,
        /// RTP timestamp of the first sample (8 kHz clock, G.722 included).
        timestamp: u32,
    },
    /// An encoded frame the gateway relays untouched (Opus): `data[start..start + len]`.
    Encoded {
        /// Where the payload starts in the datagram.
        start: usize,
        /// Its length.
        len: usize,
        /// RTP timestamp (the codec's clock).
        timestamp: u32,
    },
    /// The start of a DTMF event.
    Digit(char),
    /// Nothing usable (continuation of an event, junk, wrong payload type).
    Nothing,
}

/// Whether a stream's socket is connected to the source it latched to (`connect(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Not tried for the latched source, or none latched.
    Untried,
    /// Tried once, and left unconnected.
    Declined,
    /// Connected: the kernel hands the socket that source's datagrams alone.
    Connected,
}

/// An RTP stream towards one trunk peer.
#[derive(Debug)]
pub struct RtpStream {
    /// The socket as the runtime's reactor knows it, registered on the first wait for a
    /// datagram ([`Self::poll_readable`]): with the reactor of the call's media worker, which
    /// runs the call (`call::workers`), not the one of the task that happened to bind it.
    /// `None` while nothing waits on it ([`Self::unwatch`]).
    socket: Option<incoming::Receiver>,
    /// The same socket, shared, for sending: a plain non-blocking send never waits for the
    /// reactor to learn the socket is writable, so no frame is lost at start-up.
    sender_socket: Arc<std::net::UdpSocket>,
    remote: Option<RemoteMedia>,
    /// Where the peer's RTP actually comes from; we send there (symmetric RTP, RFC 4961).
    latched: Option<SocketAddr>,
    /// Whether the socket is connected to the latched source ([`Self::handle_received`]).
    connection: Connection,
    /// Which sources may be latched to.
    source: RtpSource,
    /// The trunk's SIP address: behind NAT its media comes from there, not from the SDP's IP.
    signalling_ip: Option<IpAddr>,
    /// Gateway-wide drop counters, when the stream belongs to a running gateway.
    drops: Option<Arc<MediaDrops>>,
    sender: RtpSender,
    dtmf_out: DtmfSender,
    dtmf_in: DtmfReceiver,
    event_timestamp: u32,
    reception: Option<Reception>,
    /// Packets lost by the sources before the current one's `reception`.
    lost_before: u64,
    /// The kernel's count of datagrams it dropped on the socket, full, as last told.
    overflows: u32,
    /// The trunk's sources on one clock.
    timeline: Timeline,
    /// Relayed frames ([`Self::send_encoded`]) on our clock.
    relay: RelayClock,
    /// Coder state while the trunk speaks G.722. Boxed: 0.9 KB the other calls would carry
    /// unused.
    g722: Option<Box<G722State>>,
    /// SRTP contexts while the SDP carries keys.
    srtp: Option<SrtpSession>,
    out: [u8; MAX_PACKET],
    /// Counters.
    pub stats: RtpStats,
}

impl RtpStream {
    /// Binds an even port in `port_min..=port_max` on `ip` (RFC 3550 §11: RTP on even ports),
    /// starting at a random place so concurrent calls do not collide on retries.
    pub fn bind(ip: IpAddr, port_min: u16, port_max: u16) -> std::io::Result<RtpStream> {
        let first = port_min + (port_min % 2);
        let slots = ((port_max.saturating_sub(first)) / 2 + 1) as u32;
        let start: u32 = rand::random::<u32>() % slots.max(1);
        for i in 0..slots {
            let port = first as u32 + 2 * ((start + i) % slots);
            if let Ok(socket) = std::net::UdpSocket::bind(SocketAddr::new(ip, port as u16)) {
                return Self::with_socket(socket);
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "no free even RTP port in {port_min}..={port_max} on {ip}; widen [rtp] port_min/port_max"
            ),
        ))
    }

    fn with_socket(socket: std::net::UdpSocket) -> std::io::Result<RtpStream> {
        socket.set_nonblocking(true)?;
        if let Err(e) = incoming::stamp_arrivals(&socket) {
            // Then a datagram's arrival is when it was read, and jitter reads that much higher.
            tracing::warn!(error = %e, "RTP arrival times unavailable (SO_TIMESTAMPNS)");
        }
        if let Err(e) = incoming::count_overflows(&socket) {
            tracing::warn!(error = %e, "RTP socket drops not counted (SO_RXQ_OVFL)");
        }
        // Bound to every address, the socket must learn where its trunk sends before it may
        // connect (`Self::connect`); bound to one, it is told nothing it does not know.
        let everywhere = socket.local_addr()?.ip().is_unspecified();
        if let Err(e) = everywhere
            .then(|| incoming::note_destinations(&socket))
            .transpose()
        {
            tracing::warn!(error = %e, "RTP datagrams' destinations unknown (IP_PKTINFO)");
        }
        Ok(RtpStream {
            socket: None,
            sender_socket: Arc::new(socket),
            remote: None,
            latched: None,
            connection: Connection::Untried,
            source: RtpSource::default(),
            signalling_ip: None,
            drops: None,
            sender: RtpSender::new(),
            dtmf_out: DtmfSender::new(100, 60),
            dtmf_in: DtmfReceiver::new(),
            event_timestamp: 0,
            reception: None,
            lost_before: 0,
            overflows: 0,
            timeline: Timeline::default(),
            relay: RelayClock::default(),
            g722: None,
            srtp: None,
            out: [0; MAX_PACKET],
            stats: RtpStats::default(),
        })
    }

    /// The bound port.
    pub fn local_port(&self) -> u16 {
        self.sender_socket
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// Sets where the peer's RTP may come from: `signalling_ip` is the address the trunk's
    /// SIP came from, accepted as a media source in [`RtpSource::Latch`] mode.
    pub fn set_source_policy(&mut self, source: RtpSource, signalling_ip: Option<IpAddr>) {
        self.source = source;
        self.signalling_ip = signalling_ip;
    }

    /// Counts this stream's drops in `drops` too.
    pub fn set_drop_counters(&mut self, drops: Arc<MediaDrops>) {
        self.drops = Some(drops);
    }

    /// True when a datagram from `source` may be this stream's media. The first acceptable
    /// source is latched; after that only it is (a stranger cannot take the stream over).
    fn accepts(&self, source: SocketAddr, remote: &RemoteMedia) -> bool {
        if let Some(latched) = self.latched {
            return latched == source;
        }
        match self.source {
            RtpSource::Strict => source == remote.addr,
            RtpSource::Latch => {
                source.ip() == remote.addr.ip() || Some(source.ip()) == self.signalling_ip
            }
        }
    }

    fn drop_datagram(&mut self, from_stranger: bool) -> Received {
        if from_stranger {
            self.stats.dropped_source += 1;
        } else {
            self.stats.dropped += 1;
        }
        if let Some(drops) = &self.drops {
            let counter = if from_stranger {
                &drops.trunk_source
            } else {
                &drops.trunk_malformed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Received::Nothing
    }

    /// Points the stream at the peer described by SDP (answer, early media, or a re-INVITE
    /// that moved the media: a new `c=`/port is followed at once).
    pub fn set_remote(&mut self, remote: RemoteMedia) {
        if self.remote.is_some_and(|r| r.addr != remote.addr) {
            self.latched = None;
            self.disconnect();
        }
        if self.remote.is_none_or(|r| r.codec != remote.codec) {
            self.dtmf_out.set_frame_ticks(remote.codec.frame_ticks());
            // Jitter is measured on the new clock from here, and its timestamps are taken as
            // they come.
            self.end_reception();
            self.timeline = Timeline::default();
            self.relay.restart();
            self.g722 = (remote.codec == Codec::G722).then(Box::default);
        }
        // New keys (a re-INVITE may rekey, RFC 4568 §7.1.4) get new contexts; the same keys
        // keep theirs, with the rollover counters and replay lists they have built.
        if remote.srtp != self.srtp.as_ref().map(|s| *s.keys()) {
            self.srtp = remote.srtp.and_then(|keys| match SrtpSession::new(keys) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "SRTP contexts not created: the stream is silent");
                    None
                }
            });
        }
        self.remote = Some(remote);
    }

    /// Closes the current source's loss count into the stream's: the next packet starts a
    /// new one.
    fn end_reception(&mut self) {
        if let Some(reception) = self.reception.take() {
            self.lost_before += reception.lost();
        }
    }

    /// True when the stream's media is SRTP.
    pub fn is_secure(&self) -> bool {
        self.srtp.is_some()
    }

    /// The peer as last described.
    pub fn remote(&self) -> Option<RemoteMedia> {
        self.remote
    }

    /// Queues DTMF digits to be sent as RFC 4733 events.
    pub fn send_digits(&mut self, digits: &str) {
        self.dtmf_out.push_digits(digits);
    }

    /// True when no digits are queued or playing.
    pub fn digits_idle(&self) -> bool {
        self.dtmf_out.is_idle()
    }

    /// Sends one 20 ms frame of audio to a G.711 trunk (see [`Self::send_encoded`] for
    /// Opus): an event packet while a digit plays, else the audio. Nothing is sent when the
    /// peer does not want media (hold: it said sendonly or inactive).
    /// G.722 takes 320 samples at 16 kHz, G.711 160 at 8 kHz.
    pub fn send_frame(&mut self, pcm: &[i16]) {
        // Taken out while it codes into the packet (`send_with` borrows the whole session).
        if let Some(mut g722) = self.g722.take() {
            // 64 kbit/s, a byte per pair of 16 kHz samples: RFC 3551 §4.5.2.
            let n = WIDE_FRAME_SAMPLES.min(pcm.len());
            self.send_with(|out| g722.encoder.encode(&pcm[..n], out));
            self.g722 = Some(g722);
            return;
        }
        let Some(law) = self.remote.and_then(|r| r.codec.g711()) else {
            return;
        };
        self.send_with(|out| {
            law.encode(&pcm[..FRAME_SAMPLES], &mut out[..FRAME_SAMPLES]);
            FRAME_SAMPLES
        });
    }

    /// Sends one frame already encoded in the trunk's codec (Opus relayed from the browser),
    /// or an event packet in its place while a digit plays. `timestamp` is the frame's on
    /// the browser's clock (48 kHz, Opus's RTP clock on both legs) and `ticks` how long it
    /// plays ([`crate::media::opus::relayable_ticks`]): the stream keeps the browser's timing
    /// ([`RelayClock`]), so a frame the browser lost or did not send (DTX) is a gap the
    /// trunk's decoder conceals (or fills from the next packet's in-band FEC, RFC 6716
    /// §2.1.7), not the next frame played early, and a reordered frame keeps its place.
    pub fn send_encoded(&mut self, payload: &[u8], timestamp: u32, ticks: u32) {
        let next = self.sender.timestamp();
        let len = payload.len().min(MAX_PACKET - HEADER_LEN);
        let write = |out: &mut [u8]| {
            out[..len].copy_from_slice(&payload[..len]);
            len
        };
        let placed = self.relay.place_frame(next, timestamp, ticks);
        self.sender.set_clock(placed.at);
        if placed.marker {
            self.sender.start_talkspurt();
        }
        self.send_with(write);
        // However the frame went (audio, an event in its place, nothing on hold), the clock
        // covers its length, not the codec's usual frame.
        self.sender.set_clock(placed.resume);
    }

    /// The one sending path: `write` puts the audio payload after the header and says how
    /// long it is.
    fn send_with(&mut self, write: impl FnOnce(&mut [u8]) -> usize) {
        let Some(remote) = self.remote else { return };
        let ticks = remote.codec.frame_ticks();
        let dest = self.latched.unwrap_or(remote.addr);
        if !remote.direction.peer_receives() || dest.ip().is_unspecified() {
            self.sender.skip(ticks);
            return;
        }
        let len = match (remote.dtmf_payload_type, self.dtmf_out.next_frame()) {
            (Some(pt), Some(event)) => {
                if event.marker {
                    self.event_timestamp = self.sender.timestamp();
                }
                let n =
                    self.sender
                        .event_header(&mut self.out, pt, event.marker, self.event_timestamp);
                event.payload.write(&mut self.out[n..]);
                // The media clock keeps running under the event (RFC 4733 §2.5.1.2); audio
                // after it starts a new talkspurt.
                self.sender.skip(ticks);
                n + 4
            }
            _ => {
                let n = self
                    .sender
                    .next_header(&mut self.out, remote.payload_type, ticks);
                n + write(&mut self.out[n..])
            }
        };
        // A connected socket sends without an address: the kernel keeps the route it found at
        // `connect` rather than looking it up for every datagram.
        let to = (self.connection != Connection::Connected).then_some(dest);
        let sent = match (remote.srtp, self.srtp.as_mut()) {
            (None, _) => outgoing::send(&self.sender_socket, &self.out[..len], to),
            (Some(_), Some(srtp)) => match srtp.protect(&mut self.out, len) {
                Ok(n) => outgoing::send(&self.sender_socket, &self.out[..n], to),
                Err(e) => {
                    tracing::debug!(error = %e, "RTP packet not protected");
                    return;
                }
            },
            // Keys that made no contexts: nothing goes out in the clear instead.
            (Some(_), None) => return,
        };
        if sent.is_ok() {
            self.stats.sent += 1;
        }
    }

    /// Waits for the next datagram into `buf`; returns its length and source.
    pub async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        let socket = self.receiver()?;
        loop {
            let mut ready = socket.readable().await?;
            if let Ok(got) = ready.try_io(|s| s.get_ref().recv_from(buf)) {
                return got;
            }
        }
    }

    /// Ready when [`Self::recv_waiting`] may find a datagram; `cx` is woken when one arrives. A
    /// call's task waits here rather than in a receive, so that no receive buffer lives in its
    /// future between packets (each call's future is one allocation; 1.5 KB of buffer was 1.5
    /// KB per call).
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.receiver() {
            Ok(socket) => socket.poll_read_ready(cx).map_ok(drop),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// The datagrams waiting, into `bufs`, each one's length, source and arrival into `got`;
    /// how many ([`crate::media::incoming::recv_waiting`]: fewer than asked for when drained).
    /// Reads whether or not the reactor watches the socket.
    pub fn recv_waiting(
        &mut self,
        bufs: &mut [incoming::Buffer],
        got: &mut [incoming::Got],
    ) -> std::io::Result<usize> {
        let count = match &self.socket {
            Some(watched) => incoming::recv_waiting(watched, bufs, got),
            None => incoming::recv_unwatched(&self.sender_socket, bufs, got),
        }?;
        for overflows in got[..count].iter().filter_map(|g| g.overflows) {
            let new = overflows.wrapping_sub(self.overflows);
            self.overflows = overflows;
            self.stats.dropped_overflow += u64::from(new);
            if let Some(drops) = &self.drops {
                drops
                    .trunk_overflow
                    .fetch_add(u64::from(new), Ordering::Relaxed);
            }
        }
        Ok(count)
    }

    /// Takes the socket off the reactor until the next [`Self::poll_readable`]: a call that
    /// reads its datagrams at its own time is then not woken, nor its worker's thread, by
    /// each one that arrives.
    pub fn unwatch(&mut self) {
        self.socket = None;
    }

    /// Whether the reactor watches the socket.
    pub fn is_watched(&self) -> bool {
        self.socket.is_some()
    }

    /// The receiving socket, registered with the runtime of the first task that receives:
    /// the call's media worker.
    fn receiver(&mut self) -> std::io::Result<&incoming::Receiver> {
        Ok(match &mut self.socket {
            Some(socket) => socket,
            empty => empty.insert(incoming::receiver(self.sender_socket.clone())?),
        })
    }

    /// [`Self::handle_datagram`] for a datagram [`Self::recv_waiting`] read; once the stream
    /// latches, the socket is connected to its source.
    ///
    /// Why: a connected UDP socket is handed its peer's datagrams alone (udp(7)). A call
    /// checked each sender itself, so a stranger's flood took the worker's time to read and
    /// refuse, and filled the socket until the kernel dropped the trunk's own packets. Now the
    /// kernel refuses a stranger's datagram as at a closed port (`UdpNoPorts` in `nstat`), and
    /// the call's sends keep the route found at `connect`. Until the trunk's first packet,
    /// strangers' are still read and counted as `source` drops.
    pub fn handle_received(
        &mut self,
        data: &mut [u8],
        got: &incoming::Got,
        pcm: &mut [i16],
    ) -> Received {
        let heard = self.handle_datagram(data, got.source, got.at, pcm);
        if self.latched == Some(got.source) && self.connection == Connection::Untried {
            self.connection = match incoming::hear_only(&self.sender_socket, got.source, got.to) {
                Ok(true) => Connection::Connected,
                Ok(false) => {
                    tracing::debug!(peer = %got.source, to = ?got.to, "RTP socket left unconnected: its trunk sends to another of our addresses");
                    Connection::Declined
                }
                Err(e) => {
                    tracing::debug!(peer = %got.source, error = %e, "RTP socket not connected to its trunk");
                    Connection::Declined
                }
            };
        }
        heard
    }

    /// Undoes [`Self::handle_received`]'s connect: every source is heard, the next latch tried.
    fn disconnect(&mut self) {
        let was = std::mem::replace(&mut self.connection, Connection::Untried);
        if was == Connection::Connected
            && let Err(e) = incoming::disconnect(&self.sender_socket)
        {
            tracing::warn!(error = %e, "RTP socket not disconnected from its old peer");
        }
    }

    /// Interprets a datagram that arrived `at`; audio is decoded into `pcm` (at least 160
    /// samples). SRTP is decrypted in place, so `data` holds the plain packet afterwards.
    pub fn handle_datagram(
        &mut self,
        data: &mut [u8],
        source: SocketAddr,
        at: std::time::Instant,
        pcm: &mut [i16],
    ) -> Received {
        // Before the trunk's SDP, nobody's media is expected.
        let Some(remote) = self.remote else {
            return self.drop_datagram(true);
        };
        if !self.accepts(source, &remote) {
            return self.drop_datagram(true);
        }
        let data = match (remote.srtp, self.srtp.as_mut()) {
            (None, _) => &data[..],
            (Some(_), Some(srtp)) => match srtp.unprotect(data) {
                Ok(n) => &data[..n],
                Err(e) => {
                    tracing::debug!(%source, error = %e, "SRTP packet refused");
                    return self.drop_datagram(false);
                }
            },
            (Some(_), None) => return self.drop_datagram(false),
        };
        let Ok(packet) = RtpPacket::parse(data) else {
            return self.drop_datagram(false);
        };
        // The peer sends with the payload type our SDP gave the codec; some mirror theirs.
        let is_audio = packet.payload_type == remote.codec.payload_type()
            || packet.payload_type == remote.payload_type;
        let is_event = Some(packet.payload_type) == remote.dtmf_payload_type;
        if !is_audio && !is_event {
            return self.drop_datagram(false);
        }
        self.stats.received += 1;
        // Audio and RFC 4733 events share one sequence space; only audio has a steadily
        // advancing timestamp (an event keeps its start time), so only audio feeds jitter.
        let clock = remote.codec.clock_rate();
        let (timestamp, from) =
            self.timeline
                .place(packet.ssrc, packet.timestamp, is_audio, remote.codec, at);
        if from == Origin::New {
            // A new source has its own sequence numbers (RFC 3550 §8.2).
            self.end_reception();
        }
        if from != Origin::Previous {
            let reception = self
                .reception
                .get_or_insert_with(|| Reception::new(packet.sequence, clock, at));
            reception.handle_packet(packet.sequence, is_audio.then_some(timestamp), at);
            self.stats.lost = self.lost_before + reception.lost();
            // Kept in 8 kHz units whatever the codec's clock, so every call's figure reads alike.
            let per_8k = clock / 8000;
            self.stats.jitter = (reception.jitter / per_8k as f64) as u32;
        }
        self.latched = Some(source);
        if is_event {
            return self
                .dtmf_in
                .handle_packet(timestamp, packet.payload)
                .map_or(Received::Nothing, Received::Digit);
        }
        if let Some(g722) = self.g722.as_mut() {
            let samples = g722.decoder.decode(packet.payload, pcm);
            return Received::Audio { samples, timestamp };
        }
        let Some(law) = remote.codec.g711() else {
            let start = packet.payload.as_ptr() as usize - data.as_ptr() as usize;
            return Received::Encoded {
                start,
                len: packet.payload.len(),
                timestamp,
            };
        };
        let n = packet.payload.len().min(pcm.len());
        law.decode(&packet.payload[..n], &mut pcm[..n]);
        Received::Audio {
            samples: n,
            timestamp,
        }
    }
}

#[cfg(test)]
mod tests;
