//! What each side says about its audio stream, in the terms of SDP offer/answer (RFC 3264):
//! the types the trunk's SDP codec (`sip::sdp`) produces and the RTP stream follows.

use std::net::{IpAddr, SocketAddr};

use super::codec::Codec;
use super::srtp::{LocalSrtp, SrtpKeys};

/// Media direction attribute (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Both ways.
    SendRecv,
    /// The describing side only sends.
    SendOnly,
    /// The describing side only receives.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer takes to this offered direction (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// True when the side described by this direction will receive media from us.
    pub fn peer_receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// Our side of the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// Address in `c=` and `o=`.
    pub ip: IpAddr,
    /// RTP port.
    pub port: u16,
    /// Codecs in preference order.
    pub codecs: Vec<Codec>,
    /// Session id for `o=`.
    pub session_id: u64,
    /// SRTP policy and the keys we offer (SDES, RFC 4568).
    pub srtp: LocalSrtp,
}

/// What the peer's SDP says about its audio stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteMedia {
    /// Where to send RTP.
    pub addr: SocketAddr,
    /// The codec to send.
    pub codec: Codec,
    /// The payload type the peer's SDP gives that codec: we send with it (for Opus, a
    /// dynamic number of the peer's choosing).
    pub payload_type: u8,
    /// The peer's telephone-event payload type, if it supports RFC 4733.
    pub dtmf_payload_type: Option<u8>,
    /// The peer's direction.
    pub direction: Direction,
    /// The SRTP keys both sides settled on; `None`: plain RTP.
    pub srtp: Option<SrtpKeys>,
    /// What the peer asks of the Opus it receives, when its codec is Opus.
    pub opus: OpusLimits,
}

/// What a peer asks of the Opus it receives, from its `a=fmtp` line (RFC 7587 §6.1): the
/// sender SHOULD NOT code wider or faster, and should follow its preferences among the
/// codec's modes. A relayed call's sender is the browser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpusLimits {
    /// `maxplaybackrate`: the widest audio it renders, samples a second.
    pub max_playback_hz: Option<u32>,
    /// `maxaveragebitrate`: the most it takes, bits a second.
    pub max_average_bitrate: Option<u32>,
    /// The modes it prefers.
    pub modes: OpusModes,
}

/// A receiver's preferences among Opus's modes (RFC 7587 §6.1), each `1` or `0` on its
/// `a=fmtp` line and `0` when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpusModes {
    /// `useinbandfec`: it decodes in-band FEC, so coding it is worth the bits.
    pub fec: bool,
    /// `usedtx`: it prefers discontinuous transmission.
    pub dtx: bool,
    /// `cbr`: it prefers a constant bitrate.
    pub cbr: bool,
    /// `stereo`: it prefers stereo.
    pub stereo: bool,
}

impl OpusModes {
    /// The parameters' names, as [`Self::flags`] lists them.
    pub const NAMES: [&'static str; 4] = ["useinbandfec", "usedtx", "cbr", "stereo"];

    /// Reads the modes from an Opus `a=fmtp` line's parameters.
    pub fn parse(fmtp: &str) -> OpusModes {
        let on = |name: &str| param(fmtp, name).is_some_and(|v| v == "1");
        OpusModes {
            fec: on("useinbandfec"),
            dtx: on("usedtx"),
            cbr: on("cbr"),
            stereo: on("stereo"),
        }
    }

    /// Each mode's parameter name and whether it is preferred, in [`Self::NAMES`]' order.
    pub fn flags(self) -> [(&'static str, bool); 4] {
        let [fec, dtx, cbr, stereo] = Self::NAMES;
        [
            (fec, self.fec),
            (dtx, self.dtx),
            (cbr, self.cbr),
            (stereo, self.stereo),
        ]
    }
}

/// The value of the parameter `name` (any case) in an `a=fmtp` line's `key=value;…` list.
fn param<'a>(fmtp: &'a str, name: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

impl OpusLimits {
    /// Reads an Opus `a=fmtp` line's parameters (`minptime=10;useinbandfec=1;…`). Values out
    /// of RFC 7587's ranges (8000–48000 Hz, 6000–510000 b/s) are brought into them.
    pub fn parse(fmtp: &str) -> OpusLimits {
        let value = |name: &str| param(fmtp, name).and_then(|v| v.parse::<u32>().ok());
        OpusLimits {
            max_playback_hz: value("maxplaybackrate").map(|hz| hz.clamp(8000, 48_000)),
            max_average_bitrate: value("maxaveragebitrate").map(|b| b.clamp(6000, 510_000)),
            modes: OpusModes::parse(fmtp),
        }
    }
}
