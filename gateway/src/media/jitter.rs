//! Jitter buffer for the trunk → browser path, sans-IO: RTP audio goes in as it arrives
//! (any packet size, out of order), one 20 ms frame comes out per tick of the browser leg's
//! clock, with concealment for gaps. Fixed storage, no allocation after construction.

/// Samples per output frame (20 ms at 8 kHz).
pub const FRAME: usize = 160;
/// The most frames of storage, and how far behind the playout point a packet may be to count
/// as late rather than as the far end's clock restarting: one second.
const MAX_SLOTS: usize = 50;
/// The fewest frames of storage: 320 ms.
const MIN_SLOTS: usize = 16;

/// What [`JitterBuffer::pop`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout {
    /// Received audio.
    Audio,
    /// Nothing arrived for this frame: the previous frame, faded, stands in for it.
    Concealed,
    /// Nothing to play (before the stream starts, or after a long gap): silence.
    Silence,
}

/// Counters for metrics and CDRs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct JitterStats {
    /// Frames played from received audio.
    pub played: u64,
    /// Frames concealed.
    pub concealed: u64,
    /// Packets that arrived after their playout time.
    pub late: u64,
    /// Times the buffer resynchronised (clock drift, a timestamp jump, or a long gap).
    pub resyncs: u64,
}

/// The jitter buffer.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    /// A ring of frames, sized to the depth ([`JitterBuffer::new`]).
    pcm: Box<[[i16; FRAME]]>,
    filled: Box<[u16]>,
    /// RTP timestamp of the next frame to play; `None` until the first packet.
    next_ts: Option<u32>,
    /// Timestamp that frame boundaries are counted from (the first packet's).
    origin: u32,
    /// Frames to hold before playing, to absorb jitter.
    depth: u32,
    priming: bool,
    last: [i16; FRAME],
    losses_in_a_row: u32,
    /// Counters.
    pub stats: JitterStats,
}

/// Concealment gives up after this many frames in a row (60 ms) and plays silence.
const MAX_CONCEALED: u32 = 3;

impl JitterBuffer {
    /// A buffer that holds `depth_ms` of audio before playing (rounded to 20 ms frames).
    ///
    /// It stores four times its depth, at least 320 ms and at most a second: room for the
    /// depth, jitter beyond it and a long packet, where a fixed second of storage was 16 KB
    /// a call, two thirds of it never used at the default depth (60 ms). A far end whose
    /// clock runs ahead of ours is resynchronised once it is a ring ahead, which also bounds
    /// the delay that drift can build up.
    pub fn new(depth_ms: u32) -> Self {
        let depth = (depth_ms / 20).clamp(1, MAX_SLOTS as u32 / 2);
        let slots = (depth as usize * 4).clamp(MIN_SLOTS, MAX_SLOTS);
        JitterBuffer {
            pcm: vec![[0; FRAME]; slots].into_boxed_slice(),
            filled: vec![0; slots].into_boxed_slice(),
            next_ts: None,
            origin: 0,
            depth,
            priming: true,
            last: [0; FRAME],
            losses_in_a_row: 0,
            stats: JitterStats::default(),
        }
    }

    fn slot(&self, ts: u32) -> usize {
        (ts.wrapping_sub(self.origin) / FRAME as u32) as usize % self.pcm.len()
    }

    fn clear(&mut self) {
        self.filled.fill(0);
    }

    /// Frames buffered ahead of the playout point.
    pub fn buffered(&self) -> u32 {
        let Some(next) = self.next_ts else { return 0 };
        (0..self.pcm.len() as u32)
            .filter(|i| self.filled[self.slot(next.wrapping_add(i * FRAME as u32))] > 0)
            .count() as u32
    }

    /// Stores received PCM that starts at RTP `timestamp` (8 kHz clock).
    pub fn push(&mut self, timestamp: u32, pcm: &[i16]) {
        let next = match self.next_ts {
            Some(n) => n,
            None => {
                // The first packet fixes the frame grid and the playout point; playing
                // starts once `depth` frames are buffered.
                self.origin = timestamp;
                self.next_ts = Some(timestamp);
                self.priming = true;
                timestamp
            }
        };
        let ahead = timestamp.wrapping_sub(next) as i32;
        if ahead < 0 && ahead > -(MAX_SLOTS as i32 * FRAME as i32) {
            self.stats.late += 1;
            return;
        }
        if ahead < 0 || ahead as usize + pcm.len() > (self.pcm.len() - 1) * FRAME {
            // Too far behind or ahead to be jitter: the far end restarted its clock or ours
            // drifted. Start again from this packet.
            self.stats.resyncs += 1;
            self.clear();
            self.next_ts = None;
            return self.push(timestamp, pcm);
        }
        // Copied a frame's part at a time: a packet's samples fill one frame, or straddle two
        // when its timestamps are not on the frame grid (10 or 30 ms packets).
        let mut done = 0;
        while done < pcm.len() {
            let ts = timestamp.wrapping_add(done as u32);
            let slot = self.slot(ts);
            let offset = (ts.wrapping_sub(self.origin) % FRAME as u32) as usize;
            let n = (FRAME - offset).min(pcm.len() - done);
            self.pcm[slot][offset..offset + n].copy_from_slice(&pcm[done..done + n]);
            self.filled[slot] = (self.filled[slot] + n as u16).min(FRAME as u16);
            done += n;
        }
    }

    /// Produces the next 20 ms frame into `out`.
    pub fn pop(&mut self, out: &mut [i16; FRAME]) -> Playout {
        let Some(next) = self.next_ts else {
            out.fill(0);
            return Playout::Silence;
        };
        if self.priming {
            if self.buffered() < self.depth {
                out.fill(0);
                return Playout::Silence;
            }
            self.priming = false;
        }
        let slot = self.slot(next);
        let result = if self.filled[slot] > 0 {
            out.copy_from_slice(&self.pcm[slot]);
            self.last.copy_from_slice(out);
            self.losses_in_a_row = 0;
            self.stats.played += 1;
            Playout::Audio
        } else if self.losses_in_a_row < MAX_CONCEALED {
            // Repeat the last frame at half the level each time: simple, and it avoids the
            // click a sudden gap makes.
            self.losses_in_a_row += 1;
            for (o, l) in out.iter_mut().zip(self.last.iter_mut()) {
                *l /= 2;
                *o = *l;
            }
            self.stats.concealed += 1;
            Playout::Concealed
        } else {
            self.losses_in_a_row += 1;
            out.fill(0);
            Playout::Silence
        };
        self.filled[slot] = 0;
        self.next_ts = Some(next.wrapping_add(FRAME as u32));
        if self.losses_in_a_row > 25 {
            // Half a second of nothing (hold, DTX, a dead trunk): re-prime on the next packet.
            self.next_ts = None;
            self.clear();
            self.stats.resyncs += 1;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(value: i16) -> [i16; FRAME] {
        [value; FRAME]
    }

    fn play(jb: &mut JitterBuffer, n: usize) -> Vec<(Playout, i16)> {
        let mut out = [0i16; FRAME];
        (0..n).map(|_| (jb.pop(&mut out), out[0])).collect()
    }

    #[test]
    fn waits_for_its_depth_then_plays_in_order() {
        let mut jb = JitterBuffer::new(40);
        jb.push(1000, &frame(1));
        assert_eq!(play(&mut jb, 1)[0].0, Playout::Silence, "priming");
        jb.push(1160, &frame(2));
        jb.push(1320, &frame(3));
        let got = play(&mut jb, 5);
        let audio: Vec<i16> = got
            .iter()
            .filter(|(p, _)| *p == Playout::Audio)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(audio, vec![1, 2, 3]);
    }

    #[test]
    fn reordered_packets_come_out_in_timestamp_order() {
        let mut jb = JitterBuffer::new(60);
        for (ts, v) in [(0u32, 1i16), (320, 3), (160, 2), (480, 4)] {
            jb.push(ts, &frame(v));
        }
        let audio: Vec<i16> = play(&mut jb, 8)
            .into_iter()
            .filter(|(p, _)| *p == Playout::Audio)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(audio, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_gap_is_concealed_with_fading_then_silence() {
        let mut jb = JitterBuffer::new(20);
        jb.push(0, &frame(1000));
        let mut out = [0i16; FRAME];
        while jb.pop(&mut out) != Playout::Audio {}
        let next: Vec<(Playout, i16)> = play(&mut jb, 4);
        assert_eq!(
            next,
            vec![
                (Playout::Concealed, 500),
                (Playout::Concealed, 250),
                (Playout::Concealed, 125),
                (Playout::Silence, 0)
            ]
        );
        assert_eq!(jb.stats.concealed, 3);
    }

    #[test]
    fn late_packets_are_dropped_and_counted() {
        let mut jb = JitterBuffer::new(20);
        jb.push(1600, &frame(1));
        let mut out = [0i16; FRAME];
        while jb.pop(&mut out) != Playout::Audio {}
        jb.push(1440, &frame(9));
        assert_eq!(jb.stats.late, 1);
    }

    #[test]
    fn small_packets_fill_whole_frames() {
        let mut jb = JitterBuffer::new(20);
        jb.push(0, &[7i16; 80]);
        jb.push(80, &[7i16; 80]);
        let mut out = [0i16; FRAME];
        while jb.pop(&mut out) != Playout::Audio {}
        assert!(out.iter().all(|s| *s == 7));
    }

    #[test]
    fn packets_off_the_frame_grid_play_every_sample_in_order() {
        // 30 ms packets whose samples count up: each straddles two frames.
        let mut jb = JitterBuffer::new(40);
        let start = 1000u32;
        for p in 0..8u32 {
            let samples: Vec<i16> = (0..240).map(|i| (p * 240 + i) as i16).collect();
            jb.push(start + p * 240, &samples);
        }
        let mut out = [0i16; FRAME];
        while jb.pop(&mut out) != Playout::Audio {}
        let mut played = out.to_vec();
        while played.len() < 8 * 240 && jb.pop(&mut out) == Playout::Audio {
            played.extend_from_slice(&out);
        }
        let expected: Vec<i16> = (0..8 * 240).map(|i| i as i16).collect();
        assert_eq!(played, expected);
    }

    #[test]
    fn storage_follows_the_depth_and_bounds_how_far_ahead_a_clock_may_run() {
        // The default 60 ms holds 16 frames (5 KB), not a second's 50 (16 KB); 500 ms, the
        // deepest, still holds a second.
        assert_eq!(JitterBuffer::new(60).pcm.len(), MIN_SLOTS);
        assert_eq!(JitterBuffer::new(120).pcm.len(), 24);
        assert_eq!(JitterBuffer::new(500).pcm.len(), MAX_SLOTS);
        let mut jb = JitterBuffer::new(60);
        jb.push(0, &frame(1));
        // 14 frames ahead is the last the ring takes (one slot stays free): kept.
        jb.push(14 * FRAME as u32, &frame(2));
        assert_eq!(jb.stats.resyncs, 0);
        // 15 frames ahead (300 ms): the far end's clock has run ahead of ours; start again.
        jb.push(15 * FRAME as u32, &frame(3));
        assert_eq!(jb.stats.resyncs, 1);
        // Half a second behind is still a late packet, not a restart: lateness is counted
        // over a second whatever the ring holds.
        jb.push(17 * FRAME as u32, &frame(4));
        jb.push(18 * FRAME as u32, &frame(5));
        let mut out = [0i16; FRAME];
        assert_eq!(jb.pop(&mut out), Playout::Audio);
        assert_eq!(out[0], 3);
        jb.push(
            (17 * FRAME as u32).wrapping_sub(25 * FRAME as u32),
            &frame(6),
        );
        assert_eq!((jb.stats.late, jb.stats.resyncs), (1, 1));
    }

    #[test]
    fn a_timestamp_jump_resyncs() {
        let mut jb = JitterBuffer::new(20);
        jb.push(0, &frame(1));
        jb.push(4_000_000, &frame(2));
        assert_eq!(jb.stats.resyncs, 1);
        let mut out = [0i16; FRAME];
        let mut seen = vec![];
        for _ in 0..4 {
            if jb.pop(&mut out) == Playout::Audio {
                seen.push(out[0]);
            }
        }
        assert_eq!(seen, vec![2]);
    }
}
