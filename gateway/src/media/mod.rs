//! Media: G.711, RTP, RFC 4733 DTMF, test tones, and the RTP sessions of the trunk leg.

pub mod bridge;
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod opus;
pub mod rtp;
pub mod session;
pub mod tone;
