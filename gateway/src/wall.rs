//! The wall clock, for what carries a date: CDRs, the plugins' calls and clock, token expiry.
//! Timers, media and SIP run on [`std::time::Instant`], which a step of the wall clock (NTP,
//! an operator) cannot move.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch; zero for a clock set before it.
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// Whole seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_seconds_read_the_same_clock_after_2020() {
        let (secs, ms) = (unix_secs(), unix_ms());
        assert!(secs > 1_577_836_800, "2020-01-01 has passed: {secs}");
        assert!(
            ms / 1000 >= secs && ms / 1000 <= secs + 1,
            "{ms} ms against {secs} s"
        );
    }
}
