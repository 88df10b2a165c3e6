use shared::replay_detector::*;

/// A factory for the [`ReplayDetector`] a context
/// should use.
///
/// A factory rather than a value because each SSRC in a session needs its own detector
/// state. Remote contexts default to a 64-packet sliding window; pass a different factory to
/// widen it or to disable replay protection.
pub type ContextOption = Box<dyn Fn() -> Box<dyn ReplayDetector> + Send + Sync>;

pub(crate) const MAX_SEQUENCE_NUMBER: u16 = 65535;
pub(crate) const MAX_SRTCP_INDEX: usize = 0x7FFFFFFF;

/// srtp_replay_protection sets SRTP replay protection window size.
///
/// Gateway patch (vendor/README.md): a window of up to 128 packets is kept in a `u128`
/// ([`WrappedWindow128`]) rather than a `FixedBigInt`, whose bits are on the heap.
pub fn srtp_replay_protection(window_size: usize) -> ContextOption {
    Box::new(move || -> Box<dyn ReplayDetector> {
        if window_size <= WrappedWindow128::MAX_WINDOW {
            Box::new(WrappedWindow128::new(
                window_size,
                MAX_SEQUENCE_NUMBER as u64,
            ))
        } else {
            Box::new(WrappedSlidingWindowDetector::new(
                window_size,
                MAX_SEQUENCE_NUMBER as u64,
            ))
        }
    })
}

/// [`WrappedSlidingWindowDetector`] for a window of at most 128 sequence numbers, its bits
/// in the detector itself: same answers to the same calls, without the heap and the
/// multi-word shift a packet cost there.
pub struct WrappedWindow128 {
    accepted: bool,
    init: bool,
    seq: u64,
    latest_seq: u64,
    max_seq: u64,
    window_size: u64,
    /// Bit `d` set: `latest_seq - d` (wrapped) was accepted.
    mask: u128,
}

impl WrappedWindow128 {
    /// The widest window it keeps.
    pub const MAX_WINDOW: usize = 128;

    /// A detector with a `window_size`-wide window (at most [`Self::MAX_WINDOW`]) over
    /// sequence numbers that wrap after `max_seq`.
    pub fn new(window_size: usize, max_seq: u64) -> Self {
        assert!(window_size <= Self::MAX_WINDOW, "window wider than 128");
        WrappedWindow128 {
            accepted: false,
            init: false,
            seq: 0,
            latest_seq: 0,
            max_seq,
            window_size: window_size as u64,
            mask: 0,
        }
    }

    /// How far `seq` is behind the latest accepted one, wrapped: negative when ahead.
    fn behind(&self, seq: u64) -> i64 {
        let mut diff = self.latest_seq as i64 - seq as i64;
        if diff > self.max_seq as i64 / 2 {
            diff -= (self.max_seq + 1) as i64;
        } else if diff <= -(self.max_seq as i64 / 2) {
            diff += (self.max_seq + 1) as i64;
        }
        diff
    }
}

impl ReplayDetector for WrappedWindow128 {
    fn check(&mut self, seq: u64) -> bool {
        self.accepted = false;
        if seq > self.max_seq {
            return false;
        }
        if !self.init {
            self.latest_seq = if seq != 0 { seq - 1 } else { self.max_seq };
            self.init = true;
        }
        let diff = self.behind(seq);
        if diff >= self.window_size as i64 {
            // Too old.
            return false;
        }
        if diff >= 0 && self.mask >> diff & 1 != 0 {
            // Seen.
            return false;
        }
        self.accepted = true;
        self.seq = seq;
        true
    }

    fn accept(&mut self) {
        if !self.accepted {
            return;
        }
        let diff = self.behind(self.seq);
        if diff < 0 {
            // A new head: the window moves on by the gap.
            self.mask = self.mask.checked_shl((-diff) as u32).unwrap_or(0) | 1;
            self.latest_seq = self.seq;
        } else {
            self.mask |= 1 << diff;
        }
    }
}

/// Sets SRTCP replay protection window size.
pub fn srtcp_replay_protection(window_size: usize) -> ContextOption {
    Box::new(move || -> Box<dyn ReplayDetector> {
        Box::new(WrappedSlidingWindowDetector::new(
            window_size,
            MAX_SRTCP_INDEX as u64,
        ))
    })
}

/// srtp_no_replay_protection disables SRTP replay protection.
pub fn srtp_no_replay_protection() -> ContextOption {
    Box::new(|| -> Box<dyn ReplayDetector> { Box::<NoOpReplayDetector>::default() })
}

/// srtcp_no_replay_protection disables SRTCP replay protection.
pub fn srtcp_no_replay_protection() -> ContextOption {
    Box::new(|| -> Box<dyn ReplayDetector> { Box::<NoOpReplayDetector>::default() })
}
