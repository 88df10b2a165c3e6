//! Receive-side bookkeeping of one RTP source: loss and interarrival jitter (RFC 3550
//! appendix A.1, A.8).

/// Receive-side bookkeeping for loss and jitter (RFC 3550 appendix A.1, A.8).
#[derive(Debug, Clone, Copy)]
pub(super) struct Reception {
    /// Highest sequence seen, extended with wrap-arounds, relative to the first.
    highest: u32,
    last_sequence: u16,
    received: u64,
    last_transit: Option<i64>,
    pub(super) jitter: f64,
    /// The RTP clock, Hz.
    clock: u32,
    started: std::time::Instant,
}

impl Reception {
    pub(super) fn new(sequence: u16, clock: u32, now: std::time::Instant) -> Self {
        Reception {
            highest: 0,
            last_sequence: sequence,
            received: 0,
            last_transit: None,
            jitter: 0.0,
            clock,
            started: now,
        }
    }

    pub(super) fn handle_packet(
        &mut self,
        sequence: u16,
        timestamp: Option<u32>,
        now: std::time::Instant,
    ) {
        self.received += 1;
        let delta = sequence.wrapping_sub(self.last_sequence);
        if delta < 0x8000 {
            self.highest = self.highest.wrapping_add(delta as u32);
            self.last_sequence = sequence;
        }
        let Some(timestamp) = timestamp else { return };
        // Transit time in timestamp units; only its variation matters, not its origin.
        let arrival = (now - self.started).as_micros() as i64 * self.clock as i64 / 1_000_000;
        let transit = arrival - timestamp as i64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub(super) fn lost(&self) -> u64 {
        (self.highest as u64 + 1).saturating_sub(self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_jitter_follow_rfc3550() {
        let t0 = std::time::Instant::now();
        let mut r = Reception::new(65530, 8000, t0);
        // Ten packets 20 ms apart, sequence wrapping, two of them lost.
        for i in 0..10u16 {
            if i == 3 || i == 7 {
                continue;
            }
            r.handle_packet(
                65530u16.wrapping_add(i),
                Some(1000 + i as u32 * 160),
                t0 + std::time::Duration::from_millis(20 * i as u64),
            );
        }
        assert_eq!(r.lost(), 2);
        assert!(
            r.jitter < 1.0,
            "perfectly paced packets have no jitter: {}",
            r.jitter
        );
        // Arrivals alternately on time and 20 ms late: consecutive transits differ by 160
        // units, so the estimate converges to 160 (20 ms).
        let mut r = Reception::new(0, 8000, t0);
        for i in 0..200u16 {
            let skew = if i % 2 == 0 { 0 } else { 20 };
            r.handle_packet(
                i,
                Some(i as u32 * 160),
                t0 + std::time::Duration::from_millis(20 * i as u64 + skew),
            );
        }
        assert!(r.jitter > 150.0 && r.jitter < 165.0, "{}", r.jitter);
    }
}
