//! Media: G.711, G.722, RTP, RFC 4733 DTMF, test tones, and the RTP sessions of the trunk leg
//! (SRTP keyed by SDES where the trunk asks for it).

pub mod bridge;
pub mod codec;
pub mod description;
pub mod dtmf;
pub mod g711;
pub mod g722;
pub mod incoming;
pub mod jitter;
pub mod opus;
pub mod outgoing;
pub mod rtp;
pub mod session;
pub mod srtp;
pub mod tone;
pub mod wideband;

use std::sync::atomic::{AtomicU64, Ordering};

/// Media datagrams refused, all calls, for `/metrics` (`gateway_media_dropped_total`).
#[derive(Debug, Default)]
pub struct MediaDrops {
    /// Trunk-side datagrams from an address the trunk's SDP did not name, before its stream
    /// latched: after that the call's socket is connected and the kernel refuses them.
    pub trunk_source: AtomicU64,
    /// Trunk-side datagrams that were not RTP of a negotiated payload type.
    pub trunk_malformed: AtomicU64,
    /// Trunk-side datagrams the kernel dropped because the call's socket was full: a flood
    /// sent faster than the call reads, once a tick (`SO_RXQ_OVFL`, socket(7)).
    pub trunk_overflow: AtomicU64,
    /// Browser-side DTLS/SRTP from an address that is not an ICE-validated pair.
    pub browser_source: AtomicU64,
    /// Browser Opus that does not parse as a packet, kept from an Opus trunk.
    pub browser_malformed: AtomicU64,
}

impl MediaDrops {
    /// `(leg, reason, count)` rows for the metrics page.
    pub fn rows(&self) -> [(&'static str, &'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("trunk", "source", get(&self.trunk_source)),
            ("trunk", "malformed", get(&self.trunk_malformed)),
            ("trunk", "overflow", get(&self.trunk_overflow)),
            ("browser", "source", get(&self.browser_source)),
            ("browser", "malformed", get(&self.browser_malformed)),
        ]
    }
}
