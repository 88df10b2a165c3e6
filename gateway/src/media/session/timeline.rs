//! The trunk's media clock as the gateway plays it: the RTP timestamps of one source after
//! another made into one timeline.
//!
//! Why: a PBX that transfers a call, plays hold music from a media server, or answers after
//! early media from another box starts a new source (RFC 3550 §8.2: a new SSRC, with its own
//! random sequence and timestamp bases, RFC 3550 §5.1). Taken as they came, its timestamps
//! jumped by a random amount: the jitter buffer dropped the new source's audio as late until
//! it gave up and started again (up to half a second of silence), and a relayed call's
//! browser saw its stream's clock leap. Here a new source continues where the last one
//! stopped, plus the time since, rounded to whole frames.
//!
//! The source before the current one keeps its place: its packets still in flight when the
//! new one starts (or a PBX that alternates two) land where they belong instead of moving
//! the timeline each time.

use std::time::Instant;

use crate::media::codec::Codec;

/// One source's place on the timeline.
#[derive(Debug, Clone, Copy)]
struct Placed {
    ssrc: u32,
    /// Added to the source's own timestamps.
    offset: u32,
}

/// Which source a packet came from, as [`Timeline::place`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The source of the packets before it (or the first one).
    Current,
    /// One not heard before: its loss and jitter count afresh.
    New,
    /// The one before the current source: its stragglers.
    Previous,
}

/// The timeline; see the module's comment.
#[derive(Debug, Default)]
pub struct Timeline {
    current: Option<Placed>,
    previous: Option<Placed>,
    /// The last audio packet's timestamp on the timeline, and when it came.
    last_audio: Option<(u32, Instant)>,
}

impl Timeline {
    /// Places a packet of `ssrc` stamped `timestamp` on `codec`'s RTP clock. `audio` is false
    /// for RFC 4733 events, whose timestamp is their start rather than the clock's position
    /// (RFC 4733 §2.3.5).
    pub fn place(
        &mut self,
        ssrc: u32,
        timestamp: u32,
        audio: bool,
        codec: Codec,
        now: Instant,
    ) -> (u32, Origin) {
        let source = match (self.current, self.previous) {
            (Some(c), _) if c.ssrc == ssrc => Origin::Current,
            (None, _) => {
                self.current = Some(Placed { ssrc, offset: 0 });
                Origin::Current
            }
            (Some(_), Some(p)) if p.ssrc == ssrc => {
                return (timestamp.wrapping_add(p.offset), Origin::Previous);
            }
            (Some(c), _) => {
                // Where the last source's audio stopped, plus the time since in whole frames
                // (at least one): the new source's first packet follows it.
                let offset = match self.last_audio {
                    Some((last, at)) => {
                        let frame = u64::from(codec.frame_ticks());
                        let elapsed = now.saturating_duration_since(at).as_micros() as u64
                            * u64::from(codec.clock_rate())
                            / 1_000_000;
                        let ticks = ((elapsed + frame / 2) / frame).max(1) * frame;
                        last.wrapping_add(ticks as u32).wrapping_sub(timestamp)
                    }
                    None => c.offset,
                };
                self.previous = Some(c);
                self.current = Some(Placed { ssrc, offset });
                Origin::New
            }
        };
        let offset = self.current.map_or(0, |c| c.offset);
        let placed = timestamp.wrapping_add(offset);
        if audio {
            self.last_audio = Some((placed, now));
        }
        (placed, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PCMU: Codec = Codec::Pcmu;

    #[test]
    fn a_new_source_continues_the_timeline_where_the_last_stopped() {
        let t0 = Instant::now();
        let mut line = Timeline::default();
        // The first source is taken as it comes.
        for i in 0..10u32 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            assert_eq!(
                line.place(1, 5000 + 160 * i, true, PCMU, at),
                (5000 + 160 * i, Origin::Current)
            );
        }
        // 60 ms after the last packet (stamped 6440) a new source starts at a random base.
        let at = t0 + Duration::from_millis(180 + 60);
        assert_eq!(
            line.place(2, 3_000_000_000, true, PCMU, at),
            (6440 + 3 * 160, Origin::New)
        );
        let at = at + Duration::from_millis(20);
        assert_eq!(
            line.place(2, 3_000_000_160, true, PCMU, at),
            (6440 + 4 * 160, Origin::Current)
        );
        // A straggler of the first source lands where it belonged, and moves nothing.
        assert_eq!(
            line.place(1, 5000 + 160 * 10, true, PCMU, at),
            (5000 + 160 * 10, Origin::Previous)
        );
        assert_eq!(
            line.place(2, 3_000_000_320, true, PCMU, at + Duration::from_millis(20)),
            (6440 + 5 * 160, Origin::Current)
        );
    }

    #[test]
    fn a_source_that_starts_at_once_is_a_frame_on_and_events_do_not_move_the_clock() {
        let t0 = Instant::now();
        let mut line = Timeline::default();
        let opus = Codec::Opus;
        assert_eq!(line.place(7, 100, true, opus, t0).0, 100);
        // An event's timestamp is its start, repeated while it lasts: not the clock.
        assert_eq!(
            line.place(7, 100, false, opus, t0 + Duration::from_millis(500))
                .0,
            100
        );
        // The next source starts in the same instant as the last audio: one frame on.
        assert_eq!(
            line.place(8, 0xffff_fff0, true, opus, t0),
            (1060, Origin::New)
        );
        // A third source: the first is forgotten and counts as new.
        let at = t0 + Duration::from_millis(1000);
        assert_eq!(
            line.place(9, 5, true, opus, at),
            (1060 + 50 * 960, Origin::New)
        );
        assert_eq!(line.place(7, 200, true, opus, at).1, Origin::New);
    }
}
