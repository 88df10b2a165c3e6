//! The gateway's media load, read from how late the calls' 20 ms ticks run: when media falls
//! behind, calls first code Opus at the cheapest complexity (economy), then new calls are
//! refused (shedding) before running calls degrade. `/metrics` and `/healthz` show it, so a
//! load balancer or the cluster sends calls elsewhere.
//!
//! Drivers count their ticks ([`LoadMonitor::handle_tick`]); once a second the gateway
//! decides the level ([`LoadMonitor::handle_timeout`]) from the share of late ticks, with
//! hysteresis so a single slow second does not flap it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How loaded the media is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoadLevel {
    /// Ticks on time.
    Normal = 0,
    /// Ticks late: every call codes Opus at complexity 0.
    Economy = 1,
    /// Still late in economy: new calls are refused.
    Shedding = 2,
}

/// Late seconds in a row, at economy, before new calls are refused.
const SHED_AFTER: u32 = 2;
/// Calm seconds in a row before the level steps down.
const CALM_AFTER: u32 = 3;

#[derive(Debug, Default)]
struct Hysteresis {
    late_seconds: u32,
    calm_seconds: u32,
}

/// Counts ticks and decides the level.
#[derive(Debug)]
pub struct LoadMonitor {
    ticks: AtomicU64,
    late: AtomicU64,
    /// A tick this much after its time counts as late, µs.
    late_after_us: AtomicU64,
    /// Share of late ticks, percent, at which the gateway economises and then sheds.
    shed_pct: AtomicU32,
    level: AtomicU8,
    /// The last second's share of late ticks, per mille.
    late_permille: AtomicU32,
    /// New calls refused for load.
    pub calls_shed: AtomicU64,
    state: Mutex<Hysteresis>,
}

impl Default for LoadMonitor {
    fn default() -> Self {
        LoadMonitor {
            ticks: AtomicU64::new(0),
            late: AtomicU64::new(0),
            late_after_us: AtomicU64::new(20_000),
            shed_pct: AtomicU32::new(10),
            level: AtomicU8::new(0),
            late_permille: AtomicU32::new(0),
            calls_shed: AtomicU64::new(0),
            state: Mutex::new(Hysteresis::default()),
        }
    }
}

impl LoadMonitor {
    /// Sets the thresholds (`[limits] late_tick_ms`, `shed_late_pct`).
    pub fn configure(&self, late_after: Duration, shed_pct: u32) {
        self.late_after_us
            .store(late_after.as_micros() as u64, Ordering::Relaxed);
        self.shed_pct.store(shed_pct, Ordering::Relaxed);
    }

    /// One call's 20 ms tick ran `lateness` after its time.
    pub fn handle_tick(&self, lateness: Duration) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        if lateness.as_micros() as u64 > self.late_after_us.load(Ordering::Relaxed) {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Once a second: the share of late ticks since the last call decides the level.
    pub fn handle_timeout(&self) -> LoadLevel {
        let ticks = self.ticks.swap(0, Ordering::Relaxed);
        let late = self.late.swap(0, Ordering::Relaxed);
        let permille = (late * 1000).checked_div(ticks).unwrap_or(0) as u32;
        self.late_permille.store(permille, Ordering::Relaxed);
        let threshold = self.shed_pct.load(Ordering::Relaxed) * 10;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let level = self.level();
        let next = if ticks > 0 && permille >= threshold {
            state.calm_seconds = 0;
            state.late_seconds += 1;
            match level {
                LoadLevel::Normal => LoadLevel::Economy,
                LoadLevel::Economy if state.late_seconds > SHED_AFTER => LoadLevel::Shedding,
                other => other,
            }
        } else if permille * 2 < threshold || ticks == 0 {
            state.late_seconds = 0;
            state.calm_seconds += 1;
            if state.calm_seconds >= CALM_AFTER && level != LoadLevel::Normal {
                state.calm_seconds = 0;
                match level {
                    LoadLevel::Shedding => LoadLevel::Economy,
                    _ => LoadLevel::Normal,
                }
            } else {
                level
            }
        } else {
            level
        };
        if next != level {
            tracing::warn!(from = ?level, to = ?next, late_permille = permille, "media load level changed");
        }
        self.level.store(next as u8, Ordering::Relaxed);
        next
    }

    /// The level now.
    pub fn level(&self) -> LoadLevel {
        match self.level.load(Ordering::Relaxed) {
            0 => LoadLevel::Normal,
            1 => LoadLevel::Economy,
            _ => LoadLevel::Shedding,
        }
    }

    /// The last second's share of late ticks, per mille.
    pub fn late_permille(&self) -> u32 {
        self.late_permille.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(m: &LoadMonitor, ticks: u32, late: u32) -> LoadLevel {
        for i in 0..ticks {
            let lateness = if i < late {
                Duration::from_millis(30)
            } else {
                Duration::from_millis(1)
            };
            m.handle_tick(lateness);
        }
        m.handle_timeout()
    }

    #[test]
    fn late_ticks_economise_then_shed_and_calm_steps_back_down() {
        let m = LoadMonitor::default();
        m.configure(Duration::from_millis(10), 5);
        assert_eq!(second(&m, 1000, 10), LoadLevel::Normal, "1 % late is fine");
        assert_eq!(second(&m, 1000, 100), LoadLevel::Economy);
        assert_eq!(m.late_permille(), 100);
        assert_eq!(second(&m, 1000, 100), LoadLevel::Economy);
        assert_eq!(second(&m, 1000, 100), LoadLevel::Shedding);
        // Between half the threshold and the threshold: no change either way.
        assert_eq!(second(&m, 1000, 30), LoadLevel::Shedding);
        assert_eq!(second(&m, 1000, 0), LoadLevel::Shedding);
        assert_eq!(second(&m, 1000, 0), LoadLevel::Shedding);
        assert_eq!(
            second(&m, 1000, 0),
            LoadLevel::Economy,
            "three calm seconds"
        );
        for _ in 0..3 {
            second(&m, 0, 0);
        }
        assert_eq!(m.level(), LoadLevel::Normal, "no calls is calm");
    }

    #[test]
    fn a_zero_lateness_threshold_counts_every_tick() {
        let m = LoadMonitor::default();
        m.configure(Duration::ZERO, 5);
        m.handle_tick(Duration::from_micros(1));
        assert_eq!(m.handle_timeout(), LoadLevel::Economy);
    }
}
