//! RTP fixed header (RFC 3550 §5.1): parsing without copying, writing into a reused buffer.

use thiserror::Error;

/// The 12-byte fixed header; CSRCs and extensions are skipped on parse, never written.
pub const HEADER_LEN: usize = 12;

/// Why an incoming datagram is not an RTP packet we can use.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the fixed header.
    #[error("RTP packet of {0} bytes is shorter than the 12-byte header")]
    TooShort(usize),
    /// Version bits are not 2 (RFC 3550 §5.1).
    #[error("RTP version {0} is not 2")]
    BadVersion(u8),
    /// CSRC list, extension or padding run past the end of the packet.
    #[error("RTP header fields run past the end of the {0}-byte packet")]
    Truncated(usize),
}

/// A parsed view of an RTP packet borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The marker bit (start of a talkspurt or of a DTMF event).
    pub marker: bool,
    /// Payload type, 7 bits.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp in clock-rate units.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// The payload, without padding.
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses `buf`, skipping CSRCs and a header extension and removing padding.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        if buf.len() < HEADER_LEN {
            return Err(RtpError::TooShort(buf.len()));
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let padding = buf[0] & 0x20 != 0;
        let extension = buf[0] & 0x10 != 0;
        let csrc_count = (buf[0] & 0x0F) as usize;
        let mut start = HEADER_LEN + 4 * csrc_count;
        if extension {
            if buf.len() < start + 4 {
                return Err(RtpError::Truncated(buf.len()));
            }
            let words = u16::from_be_bytes([buf[start + 2], buf[start + 3]]) as usize;
            start += 4 + 4 * words;
        }
        let mut end = buf.len();
        if padding {
            let pad = buf[end - 1] as usize;
            if pad == 0 || pad > end {
                return Err(RtpError::Truncated(buf.len()));
            }
            end -= pad;
        }
        if start > end {
            return Err(RtpError::Truncated(buf.len()));
        }
        Ok(RtpPacket {
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7F,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[start..end],
        })
    }
}

/// Writes a fixed header into `out[..12]` and returns the slice after it for the payload.
pub fn write_header(
    out: &mut [u8],
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
) -> &mut [u8] {
    out[0] = 0x80;
    out[1] = (payload_type & 0x7F) | if marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&sequence.to_be_bytes());
    out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    &mut out[HEADER_LEN..]
}

/// The sending side of one RTP stream: sequence and timestamp bookkeeping.
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Set after a pause in sending so the next packet carries the marker bit
    /// (start of a talkspurt, RFC 3551 §4.1).
    talkspurt: bool,
}

impl RtpSender {
    /// A stream with random SSRC, sequence and timestamp origin (RFC 3550 §5.1).
    pub fn new() -> Self {
        RtpSender {
            ssrc: rand::random(),
            sequence: rand::random(),
            timestamp: rand::random(),
            talkspurt: true,
        }
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The timestamp the next packet will carry.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// Writes the header of the next packet into `out`, advances the clock by `samples`
    /// and returns the header length.
    pub fn next_header(&mut self, out: &mut [u8], payload_type: u8, samples: u32) -> usize {
        let marker = std::mem::take(&mut self.talkspurt);
        write_header(
            out,
            marker,
            payload_type,
            self.sequence,
            self.timestamp,
            self.ssrc,
        );
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
        HEADER_LEN
    }

    /// Writes a header with an explicit timestamp and marker (used for RFC 4733 events,
    /// whose packets share the event's start timestamp); only the sequence advances.
    pub fn event_header(
        &mut self,
        out: &mut [u8],
        payload_type: u8,
        marker: bool,
        timestamp: u32,
    ) -> usize {
        write_header(
            out,
            marker,
            payload_type,
            self.sequence,
            timestamp,
            self.ssrc,
        );
        self.sequence = self.sequence.wrapping_add(1);
        HEADER_LEN
    }

    /// Puts the clock at `timestamp` for the next packet.
    pub fn set_clock(&mut self, timestamp: u32) {
        self.timestamp = timestamp;
    }

    /// Marks the next packet as the start of a talkspurt (RFC 3551 §4.1), where the clock is.
    pub fn start_talkspurt(&mut self) {
        self.talkspurt = true;
    }

    /// Advances the media clock without sending (silence, hold, or time spent on an event).
    pub fn skip(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
        self.talkspurt = true;
    }
}

impl Default for RtpSender {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a relayed frame goes on the stream it is relayed onto ([`RelayClock::place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The first frame relayed: where the stream's clock stands, starting a talkspurt.
    Start,
    /// Where the stream's clock stands: the frame follows the last one.
    Next,
    /// This many ticks past the clock: the source left a gap (a frame lost, or not sent in
    /// silence), which the clock runs over, and the frame starts a talkspurt (RFC 3551 §4.1).
    After(u32),
    /// At this timestamp, behind the clock: a reordered frame keeps its place, and the clock
    /// stays where it was.
    Late(u32),
}

/// A relayed frame as its sender sends it ([`RelayClock::place_frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The frame's timestamp on our stream.
    pub at: u32,
    /// It starts a talkspurt (RFC 3551 §4.1): the first frame relayed, or the one after a gap.
    pub marker: bool,
    /// Where our stream's clock stands after it: past the frame, or where it was for a late
    /// one.
    pub resume: u32,
}

/// How far behind our clock a relayed frame may be and still be a reordered one: a second on
/// Opus's 48 kHz clock (the one codec relayed), longer than any jitter buffer waits. A frame
/// further behind means the source's clock jumped back (a new stream from it), and the relay
/// starts anew ([`Place::Start`]) rather than send the rest of the stream that far behind.
const LATE_LIMIT: u32 = 48_000;

/// Relays a source's frames onto a stream of ours with the source's timing: each frame at
/// its own timestamp moved by an offset fixed at the first, so a gap the source left (loss,
/// DTX) stays a gap the receiver's decoder conceals, rather than the next frame played early,
/// and a reordered frame keeps its place. Both relays of an Opus call use it: the browser's
/// frames to the trunk and the trunk's to the browser.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayClock {
    /// Our clock minus the source's, fixed at the first frame.
    offset: Option<u32>,
}

impl RelayClock {
    /// Where the frame the source stamped `timestamp` goes, when our stream's next frame
    /// would be at `next`.
    fn place(&mut self, next: u32, timestamp: u32) -> Place {
        let Some(offset) = self.offset else {
            self.offset = Some(next.wrapping_sub(timestamp));
            return Place::Start;
        };
        let at = timestamp.wrapping_add(offset);
        match at.wrapping_sub(next) as i32 {
            0 => Place::Next,
            gap if gap > 0 => Place::After(gap as u32),
            behind if behind.unsigned_abs() <= LATE_LIMIT => Place::Late(at),
            _ => {
                self.offset = None;
                self.place(next, timestamp)
            }
        }
    }

    /// Where the frame the source stamped `timestamp`, `ticks` long, goes when our stream's
    /// next frame would be at `next`: its timestamp, whether it starts a talkspurt, and where
    /// the clock stands after it.
    pub fn place_frame(&mut self, next: u32, timestamp: u32, ticks: u32) -> Placed {
        let (at, marker) = match self.place(next, timestamp) {
            Place::Start => (next, true),
            Place::Next => (next, false),
            Place::After(gap) => (next.wrapping_add(gap), true),
            Place::Late(at) => {
                return Placed {
                    at,
                    marker: false,
                    resume: next,
                };
            }
        };
        Placed {
            at,
            marker,
            resume: at.wrapping_add(ticks),
        }
    }

    /// The next frame starts anew: our stream sent frames of its own meanwhile (transcoded),
    /// or the source's clock changed (a new codec).
    pub fn restart(&mut self) {
        self.offset = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_header_parses_back() {
        let mut buf = [0u8; 12 + 160];
        let mut sender = RtpSender::new();
        let ts = sender.timestamp();
        let n = sender.next_header(&mut buf, 0, 160);
        let pkt = RtpPacket::parse(&buf[..n + 160]).unwrap();
        assert!(pkt.marker, "first packet starts a talkspurt");
        assert_eq!(pkt.payload_type, 0);
        assert_eq!(pkt.timestamp, ts);
        assert_eq!(pkt.ssrc, sender.ssrc());
        assert_eq!(pkt.payload.len(), 160);
        let n = sender.next_header(&mut buf, 0, 160);
        let pkt = RtpPacket::parse(&buf[..n]).unwrap();
        assert!(!pkt.marker);
        assert_eq!(pkt.timestamp, ts.wrapping_add(160));
    }

    #[test]
    fn csrcs_extension_and_padding_are_skipped() {
        let mut buf = vec![0xB1, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        buf.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        buf.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // extension, one word
        buf.extend_from_slice(&[0xAA, 0xBB, 0, 2]); // payload + 2 bytes of padding
        let pkt = RtpPacket::parse(&buf).unwrap();
        assert_eq!(pkt.payload, &[0xAA, 0xBB]);
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(RtpError::TooShort(5)));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::BadVersion(1)));
        let mut csrc_overrun = [0u8; 12];
        csrc_overrun[0] = 0x8F;
        assert_eq!(
            RtpPacket::parse(&csrc_overrun),
            Err(RtpError::Truncated(12))
        );
        let mut pad_overrun = [0u8; 13];
        pad_overrun[0] = 0xA0;
        pad_overrun[12] = 200;
        assert_eq!(RtpPacket::parse(&pad_overrun), Err(RtpError::Truncated(13)));
    }

    #[test]
    fn a_relay_keeps_the_sources_gaps_and_order_on_our_clock() {
        let mut clock = RelayClock::default();
        // Our stream at 1000, the source's clock at 4_294_966_000 (about to wrap).
        let base = 4_294_966_000u32;
        assert_eq!(clock.place(1000, base), Place::Start);
        assert_eq!(clock.place(1960, base.wrapping_add(960)), Place::Next);
        // A frame lost: the one after it is one frame past our clock.
        assert_eq!(
            clock.place(2920, base.wrapping_add(2880)),
            Place::After(960)
        );
        // Reordered: the later frame first, then the earlier one behind the clock.
        assert_eq!(
            clock.place(4840, base.wrapping_add(4800)),
            Place::After(960)
        );
        assert_eq!(
            clock.place(6760, base.wrapping_add(3840)),
            Place::Late(4840)
        );
        assert_eq!(clock.place(6760, base.wrapping_add(5760)), Place::Next);
        // A second behind is still a late frame; further behind, the source started over.
        assert_eq!(
            clock.place(7720, base.wrapping_add(6720).wrapping_sub(LATE_LIMIT)),
            Place::Late(7720u32.wrapping_sub(LATE_LIMIT))
        );
        assert_eq!(clock.place(7720, base.wrapping_sub(50_000)), Place::Start);
        assert_eq!(clock.place(8680, base.wrapping_sub(49_040)), Place::Next);
        // Frames of our own went out meanwhile: the next relayed one starts where we are.
        clock.restart();
        assert_eq!(clock.place(9000, 7), Place::Start);
        assert_eq!(clock.place(9960, 967), Place::Next);
    }
}
