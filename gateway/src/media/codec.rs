//! The codecs the trunk side speaks: G.711 (transcoded to and from the browser's Opus at
//! 8 kHz), G.722 (HD voice, transcoded at 16 kHz) and Opus itself (relayed as the browser
//! sent it, no transcoding), with their RTP and SDP names.

use super::g711::G711;

/// A trunk-side audio codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
    /// G.722 (ITU-T G.722, 64 kbit/s), static payload type 9: 16 kHz audio on an 8 kHz RTP
    /// clock (RFC 3551 §4.5.2).
    G722,
    /// Opus (RFC 7587): `opus/48000/2`, relayed between browser and trunk untouched.
    Opus,
}

/// The dynamic payload type we offer Opus on (the one browsers use).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

impl Codec {
    /// The payload type we send it with.
    pub const fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
            Codec::Opus => OPUS_PAYLOAD_TYPE,
        }
    }

    /// The SDP encoding name.
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The RTP clock rate: 8 kHz for G.711, and for G.722 although it samples at 16 kHz (an
    /// error in RFC 1890 kept for compatibility, RFC 3551 §4.5.2); 48 kHz for Opus whatever it
    /// codes (RFC 7587 §4.1).
    pub const fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => 48000,
        }
    }

    /// Audio samples per second the codec carries.
    pub const fn sample_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => 16000,
            Codec::Opus => 48000,
        }
    }

    /// The widest audio any of `codecs` carries, samples a second: as much as a browser bridged
    /// to them needs to code (8 kHz for G.711, 16 kHz for G.722, 48 kHz where Opus is relayed).
    /// 48 kHz when the list is empty: nothing is known to limit it.
    pub fn widest_audio_hz(codecs: impl IntoIterator<Item = Codec>) -> u32 {
        codecs
            .into_iter()
            .map(Codec::sample_rate)
            .max()
            .unwrap_or(48_000)
    }

    /// RTP timestamp ticks in one 20 ms frame.
    pub const fn frame_ticks(self) -> u32 {
        self.clock_rate() / 50
    }

    /// The `a=rtpmap` value after the payload type.
    pub fn rtpmap(self) -> String {
        match self {
            Codec::Opus => "opus/48000/2".into(),
            other => format!("{}/8000", other.encoding_name()),
        }
    }

    /// The G.711 law, for the codecs the gateway transcodes.
    pub const fn g711(self) -> Option<G711> {
        match self {
            Codec::Pcmu => Some(G711::Pcmu),
            Codec::Pcma => Some(G711::Pcma),
            Codec::G722 | Codec::Opus => None,
        }
    }

    /// The codec named in a trunk's `codecs` list (case-insensitive).
    pub fn from_name(name: &str) -> Option<Codec> {
        [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus]
            .into_iter()
            .find(|c| c.encoding_name().eq_ignore_ascii_case(name))
    }

    /// The codec an `a=rtpmap` names (RFC 4566 §6: names are case-insensitive). A clock
    /// rate of 0 means the line gave none.
    pub fn from_rtpmap(name: &str, clock_rate: u32) -> Option<Codec> {
        let codec = Codec::from_name(name)?;
        (clock_rate == codec.clock_rate() || clock_rate == 0).then_some(codec)
    }

    /// The codec of a static payload type (RFC 3551 table 4), if any.
    pub const fn from_static_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_clocks() {
        assert_eq!(Codec::from_name("OPUS"), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("opus", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("opus", 8000), None);
        assert_eq!(Codec::from_rtpmap("pcma", 8000), Some(Codec::Pcma));
        assert_eq!(Codec::Opus.frame_ticks(), 960);
        assert_eq!(Codec::Pcmu.frame_ticks(), 160);
        assert_eq!(Codec::Opus.rtpmap(), "opus/48000/2");
        assert_eq!(Codec::from_static_payload_type(8), Some(Codec::Pcma));
        // RFC 3551 §4.5.2: G.722 says 8000 in SDP and steps 160 per 20 ms of 16 kHz audio.
        assert_eq!(Codec::from_rtpmap("G722", 8000), Some(Codec::G722));
        assert_eq!(Codec::G722.rtpmap(), "G722/8000");
        assert_eq!(Codec::G722.frame_ticks(), 160);
        assert_eq!(Codec::G722.sample_rate(), 16000);
        assert_eq!(Codec::widest_audio_hz([Codec::Pcma, Codec::Pcmu]), 8000);
        assert_eq!(Codec::widest_audio_hz([Codec::Pcmu, Codec::G722]), 16000);
        assert_eq!(Codec::widest_audio_hz([Codec::Pcmu, Codec::Opus]), 48000);
        assert_eq!(Codec::widest_audio_hz([]), 48000);
    }
}
