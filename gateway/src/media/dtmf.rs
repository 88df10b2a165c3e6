//! DTMF as RFC 4733 telephone events: a sender that turns digits into event packets and a
//! receiver that turns event packets back into digits, both sans-IO.

/// Event duration units per 20 ms frame at `telephone-event/8000`.
const SAMPLES_PER_FRAME: u32 = 160;

/// Maps a DTMF character to its RFC 4733 §3.2 event code.
pub fn event_code(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(12 + (digit as u8 - b'A')),
        'a'..='d' => Some(12 + (digit as u8 - b'a')),
        _ => None,
    }
}

/// Maps an RFC 4733 event code back to its DTMF character.
pub fn event_digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some((b'0' + code) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + code - 12) as char),
        _ => None,
    }
}

/// Checks a digit string before anything is sent, naming the first bad character.
pub fn validate_digits(digits: &str) -> Result<(), char> {
    match digits.chars().find(|c| event_code(*c).is_none()) {
        Some(bad) => Err(bad),
        None => Ok(()),
    }
}

/// One RFC 4733 event payload (§2.3): event, end bit, volume, duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPayload {
    /// Event code (0-15 for DTMF).
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level in -dBm0, 0..=63.
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

impl EventPayload {
    /// Parses the first four bytes of a telephone-event payload.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        if payload.len() < 4 {
            return None;
        }
        Some(EventPayload {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3F,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    /// Writes the payload into `out[..4]`.
    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.event;
        out[1] = (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F);
        out[2..4].copy_from_slice(&self.duration.to_be_bytes());
    }
}

/// One packet the sender wants on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// The first packet of an event carries the RTP marker bit (§2.5.1.1).
    pub marker: bool,
    /// The event payload; all packets of one event share the event's start
    /// timestamp (§2.5.1.2), which the caller fixes when `marker` is set.
    pub payload: EventPayload,
}

/// Digits that may wait to be played; more are dropped.
pub const MAX_QUEUED_DIGITS: usize = 64;

/// Plays a queue of digits as RFC 4733 events, one call per 20 ms frame.
///
/// Each digit lasts `tone_ms`, is ended by three packets with the E bit (§2.5.1.4: the
/// end is sent redundantly because it is what the receiver acts on) and is followed by
/// `gap_ms` of no event, during which the audio stream continues.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    queue: std::collections::VecDeque<u8>,
    tone_frames: u32,
    gap_frames: u32,
    /// Event duration units per 20 ms frame: the audio's RTP clock (RFC 4733 §2.1).
    frame_ticks: u32,
    state: SenderState,
}

#[derive(Debug, Clone, Copy)]
enum SenderState {
    Idle,
    Tone { event: u8, frame: u32 },
    Ending { event: u8, repeats: u8 },
    Gap { frames_left: u32 },
}

impl DtmfSender {
    /// A sender with the given tone and inter-digit gap lengths.
    pub fn new(tone_ms: u32, gap_ms: u32) -> Self {
        DtmfSender {
            queue: Default::default(),
            tone_frames: (tone_ms / 20).max(2),
            gap_frames: (gap_ms / 20).max(1),
            frame_ticks: SAMPLES_PER_FRAME,
            state: SenderState::Idle,
        }
    }

    /// Runs events on the clock of the audio they go with: 160 ticks per frame at 8 kHz,
    /// 960 beside Opus at 48 kHz.
    pub fn set_frame_ticks(&mut self, ticks: u32) {
        self.frame_ticks = ticks;
    }

    /// Queues digits; characters that are not DTMF are skipped (validate first with
    /// [`validate_digits`] to report them).
    pub fn push_digits(&mut self, digits: &str) {
        // Each digit plays for about 160 ms: a queue longer than this is abuse, not dialling.
        let room = MAX_QUEUED_DIGITS.saturating_sub(self.queue.len());
        self.queue
            .extend(digits.chars().filter_map(event_code).take(room));
    }

    /// True while an event is being sent: the audio stream must pause its own packets.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            SenderState::Tone { .. } | SenderState::Ending { .. }
        )
    }

    /// True when nothing is queued or playing.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, SenderState::Idle) && self.queue.is_empty()
    }

    /// Advances one 20 ms frame and returns the event packet to send in it, if any.
    pub fn next_frame(&mut self) -> Option<EventPacket> {
        loop {
            match self.state {
                SenderState::Idle => {
                    let event = self.queue.pop_front()?;
                    self.state = SenderState::Tone { event, frame: 0 };
                }
                SenderState::Tone { event, frame } => {
                    let frame = frame + 1;
                    let duration = (frame * self.frame_ticks).min(u16::MAX as u32) as u16;
                    self.state = if frame >= self.tone_frames {
                        SenderState::Ending { event, repeats: 0 }
                    } else {
                        SenderState::Tone { event, frame }
                    };
                    return Some(EventPacket {
                        marker: frame == 1,
                        payload: EventPayload {
                            event,
                            end: false,
                            volume: 10,
                            duration,
                        },
                    });
                }
                SenderState::Ending { event, repeats } => {
                    let duration =
                        (self.tone_frames * self.frame_ticks).min(u16::MAX as u32) as u16;
                    self.state = if repeats >= 2 {
                        SenderState::Gap {
                            frames_left: self.gap_frames,
                        }
                    } else {
                        SenderState::Ending {
                            event,
                            repeats: repeats + 1,
                        }
                    };
                    return Some(EventPacket {
                        marker: false,
                        payload: EventPayload {
                            event,
                            end: true,
                            volume: 10,
                            duration,
                        },
                    });
                }
                SenderState::Gap { frames_left } => {
                    self.state = if frames_left <= 1 {
                        SenderState::Idle
                    } else {
                        SenderState::Gap {
                            frames_left: frames_left - 1,
                        }
                    };
                    return None;
                }
            }
        }
    }
}

/// Turns received telephone-event packets into digits, once per event.
///
/// An event is identified by its RTP timestamp (§2.5.2.1); it is reported on its first
/// packet, so a lost end packet cannot lose the digit and the three redundant end
/// packets cannot repeat it.
#[derive(Debug, Default, Clone)]
pub struct DtmfReceiver {
    last_event_timestamp: Option<u32>,
}

impl DtmfReceiver {
    /// A receiver that has seen no event yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one telephone-event packet; returns the digit if this packet starts a new event.
    pub fn handle_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        let event = EventPayload::parse(payload)?;
        if self.last_event_timestamp == Some(timestamp) {
            return None;
        }
        self.last_event_timestamp = Some(timestamp);
        event_digit(event.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_map_to_rfc4733_codes_and_back() {
        for (d, c) in [
            ('0', 0),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('D', 15),
        ] {
            assert_eq!(event_code(d), Some(c));
            assert_eq!(event_digit(c), Some(d));
        }
        assert_eq!(validate_digits("12x3"), Err('x'));
        assert_eq!(validate_digits("123#*"), Ok(()));
    }

    #[test]
    fn sender_emits_marker_growing_duration_and_three_ends() {
        let mut tx = DtmfSender::new(100, 40);
        tx.push_digits("5");
        let mut packets = vec![];
        while let Some(p) = tx.next_frame() {
            packets.push(p);
        }
        assert_eq!(packets.len(), 5 + 3);
        assert!(packets[0].marker);
        assert!(packets[1..].iter().all(|p| !p.marker));
        assert_eq!(packets[0].payload.duration, 160);
        assert_eq!(packets[4].payload.duration, 800);
        assert!(
            packets[5..]
                .iter()
                .all(|p| p.payload.end && p.payload.duration == 800)
        );
        assert!(packets.iter().all(|p| p.payload.event == 5));
    }

    #[test]
    fn receiver_reports_each_event_once_even_with_redundant_ends() {
        let mut tx = DtmfSender::new(60, 40);
        tx.push_digits("1#");
        let mut rx = DtmfReceiver::new();
        let mut ts = 1000u32;
        let mut got = String::new();
        let mut buf = [0u8; 4];
        for _ in 0..40 {
            match tx.next_frame() {
                Some(p) => {
                    if p.marker {
                        ts += 8000;
                    }
                    p.payload.write(&mut buf);
                    got.extend(rx.handle_packet(ts, &buf));
                }
                None if tx.is_idle() => break,
                None => {}
            }
        }
        assert_eq!(got, "1#");
    }
}
