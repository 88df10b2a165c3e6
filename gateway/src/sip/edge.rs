//! The SIP side's edge policy, sans-IO: which sources are served at all, and how fast.
//!
//! A gateway on the internet is probed by scanners and used as a reflector with spoofed
//! sources. Requests from addresses that are no trunk are therefore decided before any
//! parsing or transaction state: dropped, or answered with one stateless 403 (never a
//! retransmitted reply, never a 100 Trying). Every source, trunks included, is held to a
//! request rate; above it the address is ignored for a while.

use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Requests per second from one address before it is ignored: far above what a trunk sends
/// (a busy carrier trunk with 500 calls of 3-minute average sends ~10/s), far below a flood.
pub const DEFAULT_SIP_RATE_LIMIT: u32 = 200;

/// What the SIP side does with a request from an address that is no trunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSources {
    /// Nothing: no reply, no state. Scanners learn nothing and a spoofed source is sent
    /// nothing (no reflection). The default: every legitimate peer is a configured trunk.
    #[default]
    Drop,
    /// One stateless 403 per request (no transaction, never retransmitted); for operators
    /// who want a misconfigured peer to see why it is refused.
    Reject,
}

/// How long a source that went over the rate is ignored.
pub const BAN: Duration = Duration::from_secs(10);

/// Sources tracked at once; a flood from many (spoofed) addresses cannot grow it further.
const MAX_TRACKED: usize = 65_536;

/// Which sources the endpoint serves.
#[derive(Debug, Clone)]
pub struct EdgePolicy {
    /// Source IPs whose requests are processed; `None` serves every source (the demo trunk
    /// and test peers, which are not on the internet).
    pub trusted: Option<HashSet<IpAddr>>,
    /// The other gateways of a cluster (`[cluster] peers`), served as trunks are: they
    /// forward the trunks' INVITEs for browsers connected here.
    pub peers: Vec<ipnet::IpNet>,
    /// What other sources get.
    pub unknown_sources: UnknownSources,
    /// Requests per second per source before it is ignored for [`BAN`].
    pub rate_limit: u32,
}

impl Default for EdgePolicy {
    fn default() -> Self {
        EdgePolicy {
            trusted: None,
            peers: Vec::new(),
            unknown_sources: UnknownSources::default(),
            rate_limit: DEFAULT_SIP_RATE_LIMIT,
        }
    }
}

/// What to do with one received request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Process it.
    Serve,
    /// Answer it with one stateless 403 and keep nothing.
    Refuse,
    /// Ignore it.
    Drop,
}

/// Requests the edge kept from the transaction layer, for `/metrics`.
#[derive(Debug, Default)]
pub struct EdgeCounters {
    /// Requests from sources that are no trunk, dropped silently.
    pub unknown_dropped: AtomicU64,
    /// Requests from sources that are no trunk, answered with one stateless 403.
    pub unknown_refused: AtomicU64,
    /// Requests ignored because their source went over the rate limit.
    pub rate_limited: AtomicU64,
    /// Sources that went over the rate limit (each time a ban started).
    pub sources_banned: AtomicU64,
    /// Faults the endpoint survived (a panic: a bug; `crate::fault`): each dropped the message,
    /// the call's request, the connection's event or the timers' run it happened in.
    pub faults: AtomicU64,
    /// Requests the gateway took and dropped without a final response (a bug, or a call's
    /// task that faulted), answered 500 in their place (`endpoint::Responder`).
    pub unanswered: AtomicU64,
}

impl EdgeCounters {
    /// `(reason, count)` rows for `gateway_sip_refused_total`.
    pub fn rows(&self) -> [(&'static str, u64); 3] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("unknown_source_dropped", get(&self.unknown_dropped)),
            ("unknown_source_403", get(&self.unknown_refused)),
            ("rate_limited", get(&self.rate_limited)),
        ]
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    requests: u32,
    banned_until: Option<Instant>,
}

/// The edge decision for every request, with its per-source rate windows.
#[derive(Debug)]
pub struct Edge {
    policy: EdgePolicy,
    windows: HashMap<IpAddr, Window>,
    last_sweep: Option<Instant>,
}

impl Edge {
    /// An edge applying `policy`.
    pub fn new(policy: EdgePolicy) -> Edge {
        Edge {
            policy,
            windows: HashMap::new(),
            last_sweep: None,
        }
    }

    /// True when `ip` is a configured peer (or every source is served).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.policy.trusted.as_ref().is_none_or(|t| t.contains(&ip))
            || self.policy.peers.iter().any(|net| net.contains(&ip))
    }

    /// Decides one request from `ip` and counts the decision in `counters`.
    pub fn handle_request(
        &mut self,
        ip: IpAddr,
        now: Instant,
        counters: &EdgeCounters,
    ) -> Admission {
        let trusted = self.is_trusted(ip);
        if !trusted && self.policy.unknown_sources == UnknownSources::Drop {
            // Nothing is tracked for a source we never answer: it costs one lookup.
            counters.unknown_dropped.fetch_add(1, Ordering::Relaxed);
            return Admission::Drop;
        }
        if self.over_rate(ip, now, counters) {
            counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Admission::Drop;
        }
        if trusted {
            Admission::Serve
        } else {
            counters.unknown_refused.fetch_add(1, Ordering::Relaxed);
            Admission::Refuse
        }
    }

    fn over_rate(&mut self, ip: IpAddr, now: Instant, counters: &EdgeCounters) -> bool {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&ip) {
            self.sweep(now);
            if self.windows.len() >= MAX_TRACKED {
                // Full of live sources: the newcomer is served untracked rather than
                // refused, so a flood of spoofed sources cannot lock out a trunk.
                return false;
            }
        }
        let window = self.windows.entry(ip).or_insert(Window {
            started: now,
            requests: 0,
            banned_until: None,
        });
        if let Some(until) = window.banned_until {
            if now < until {
                return true;
            }
            window.banned_until = None;
            window.started = now;
            window.requests = 0;
        }
        if now.duration_since(window.started) >= Duration::from_secs(1) {
            window.started = now;
            window.requests = 0;
        }
        window.requests += 1;
        if window.requests > self.policy.rate_limit {
            window.banned_until = Some(now + BAN);
            counters.sources_banned.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(source = %ip, limit = self.policy.rate_limit, ban_s = BAN.as_secs(), "SIP source over its request rate; ignored for a while");
            return true;
        }
        false
    }

    /// Forgets sources that are neither banned nor active in the last second; at most once
    /// a second, so a full table does not cost a sweep per request.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.windows.retain(|_, w| {
            w.banned_until.is_some_and(|u| u > now)
                || now.duration_since(w.started) < Duration::from_secs(1)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(trusted: &[&str], unknown: UnknownSources, rate: u32) -> Edge {
        Edge::new(EdgePolicy {
            trusted: Some(trusted.iter().map(|t| t.parse().unwrap()).collect()),
            peers: vec!["10.1.0.0/16".parse().unwrap()],
            unknown_sources: unknown,
            rate_limit: rate,
        })
    }

    #[test]
    fn strangers_are_dropped_or_refused_as_configured_and_trunks_served() {
        let counters = EdgeCounters::default();
        let now = Instant::now();
        let trunk: IpAddr = "192.0.2.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();
        let mut drop = edge(&["192.0.2.1"], UnknownSources::Drop, 100);
        assert_eq!(drop.handle_request(trunk, now, &counters), Admission::Serve);
        let node: IpAddr = "10.1.4.2".parse().unwrap();
        assert_eq!(
            drop.handle_request(node, now, &counters),
            Admission::Serve,
            "another node of the cluster is served as a trunk is"
        );
        assert_eq!(
            drop.handle_request(stranger, now, &counters),
            Admission::Drop
        );
        assert!(
            !drop.windows.contains_key(&stranger),
            "nothing kept for a dropped stranger"
        );
        let mut reject = edge(&["192.0.2.1"], UnknownSources::Reject, 100);
        assert_eq!(
            reject.handle_request(stranger, now, &counters),
            Admission::Refuse
        );
        assert_eq!(counters.unknown_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(counters.unknown_refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_source_over_its_rate_is_ignored_for_the_ban_then_served_again() {
        let counters = EdgeCounters::default();
        let t0 = Instant::now();
        let trunk: IpAddr = "192.0.2.1".parse().unwrap();
        let mut e = edge(&["192.0.2.1"], UnknownSources::Drop, 5);
        for i in 0..5 {
            assert_eq!(
                e.handle_request(trunk, t0, &counters),
                Admission::Serve,
                "{i}"
            );
        }
        assert_eq!(e.handle_request(trunk, t0, &counters), Admission::Drop);
        // The ban holds even in later seconds at a modest rate...
        let later = t0 + Duration::from_secs(3);
        assert_eq!(e.handle_request(trunk, later, &counters), Admission::Drop);
        // ...and ends after BAN.
        let after = t0 + BAN + Duration::from_millis(1);
        assert_eq!(e.handle_request(trunk, after, &counters), Admission::Serve);
        assert_eq!(counters.sources_banned.load(Ordering::Relaxed), 1);
        assert_eq!(counters.rate_limited.load(Ordering::Relaxed), 2);
        // A steady 5 per second is never limited.
        let mut e = edge(&["192.0.2.1"], UnknownSources::Drop, 5);
        for s in 0..10u64 {
            for _ in 0..5 {
                let at = t0 + Duration::from_secs(s);
                assert_eq!(e.handle_request(trunk, at, &counters), Admission::Serve);
            }
        }
    }

    #[test]
    fn a_spoofed_flood_from_many_sources_keeps_the_table_bounded() {
        let counters = EdgeCounters::default();
        let t0 = Instant::now();
        let mut e = Edge::new(EdgePolicy {
            trusted: None,
            peers: Vec::new(),
            unknown_sources: UnknownSources::Drop,
            rate_limit: 10,
        });
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            let ip = IpAddr::from(0x0a00_0000u32.wrapping_add(i).to_be_bytes());
            e.handle_request(ip, t0, &counters);
        }
        assert!(e.windows.len() <= MAX_TRACKED);
        // A second later the stale entries make room again.
        let ip: IpAddr = "192.0.2.200".parse().unwrap();
        e.handle_request(ip, t0 + Duration::from_secs(2), &counters);
        assert!(e.windows.contains_key(&ip));
    }
}
