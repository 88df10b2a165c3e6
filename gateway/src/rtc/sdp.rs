//! What the browser leg says and reads in SDP: the codecs it registers with the stack
//! (Opus and RFC 4733 telephone-event, with our payload type numbers), the numbers an answer
//! settled on, and the addresses of a browser's TURN relay candidates.

use std::net::SocketAddr;

use ::rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_TELEPHONE_EVENT, MediaEngine,
};
use ::rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};

use super::{MAX_VALIDATED, RtcError, stack};
use crate::media::codec::Codec;
use crate::media::description::{OpusModes, RemoteMedia};

/// Payload types we register; an offer's own numbers win in the answer.
pub(super) const OPUS_PT: u8 = 111;
pub(super) const DTMF_PT: u8 = 126;

/// Opus as browsers offer it: 48 kHz clock, two channels in SDP (RFC 7587 §7), FEC on.
pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// RFC 4733 telephone events at 8 kHz, events 0-15 (DTMF).
pub fn telephone_event_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_TELEPHONE_EVENT.to_owned(),
        clock_rate: 8000,
        channels: 0,
        sdp_fmtp_line: "0-15".to_owned(),
        rtcp_feedback: vec![],
    }
}

pub(super) fn media_engine() -> Result<MediaEngine, RtcError> {
    let mut engine = MediaEngine::default();
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )
        .map_err(stack)?;
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: telephone_event_codec(),
                payload_type: DTMF_PT,
            },
            RtpCodecKind::Audio,
        )
        .map_err(stack)?;
    Ok(engine)
}

/// The payload types the answer settled on for Opus and telephone-event.
pub(super) fn negotiated_payload_types(answer: &str) -> Option<(u8, Option<u8>)> {
    let mut opus = None;
    let mut dtmf = None;
    for line in answer.lines() {
        let Some(rest) = line.strip_prefix("a=rtpmap:") else {
            continue;
        };
        let (pt, codec) = rest.split_once(' ')?;
        let pt: u8 = pt.parse().ok()?;
        let name = codec.split('/').next().unwrap_or("");
        if name.eq_ignore_ascii_case("opus") && opus.is_none() {
            opus = Some(pt);
        } else if name.eq_ignore_ascii_case("telephone-event") && dtmf.is_none() {
            dtmf = Some(pt);
        }
    }
    Some((opus?, dtmf))
}

/// The addresses of an SDP's `typ relay` candidates (RFC 8839 §5.1), at most a handful.
pub(super) fn relay_candidates(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .filter_map(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            // foundation component transport priority address port typ type …
            (f.len() >= 8 && f[6] == "typ" && f[7] == "relay")
                .then(|| Some(SocketAddr::new(f[4].parse().ok()?, f[5].parse().ok()?)))
                .flatten()
        })
        .take(MAX_VALIDATED)
        .collect()
}

/// The ICE username fragment of a description (RFC 8839 §5.4): the stack puts one in ours.
pub(super) fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .filter(|u| !u.is_empty())
}

/// What the browser is asked to code at most: the widest audio, samples a second, and for a
/// relayed call the most bits a second its trunk takes and the modes it prefers (RFC 7587
/// §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioCaps {
    /// The widest audio: 8000 for G.711, 16000 for G.722, up to 48000 for Opus.
    pub hz: u32,
    /// An Opus trunk's `maxaveragebitrate`.
    pub max_bitrate: Option<u32>,
    /// An Opus trunk's preferences (FEC, DTX, CBR, stereo); `None` when the gateway decodes
    /// the browser's Opus, which then codes as its own offer said.
    pub modes: Option<OpusModes>,
}

impl AudioCaps {
    /// Up to `hz`, at the bitrate the gateway picks for it.
    pub const fn up_to(hz: u32) -> AudioCaps {
        AudioCaps {
            hz,
            max_bitrate: None,
            modes: None,
        }
    }

    /// What a trunk's stream carries: its codec's width, and for Opus (relayed to the trunk as
    /// the browser codes it) no wider than the trunk's `maxplaybackrate`, nor faster than its
    /// `maxaveragebitrate`, in the modes it prefers.
    pub fn of_trunk(remote: &RemoteMedia) -> AudioCaps {
        let hz = remote.codec.sample_rate();
        AudioCaps {
            hz: remote.opus.max_playback_hz.map_or(hz, |max| max.min(hz)),
            max_bitrate: remote.opus.max_average_bitrate,
            modes: (remote.codec == Codec::Opus).then_some(remote.opus.modes),
        }
    }

    /// The bitrate the browser is asked for: 24 kb/s for narrowband, 32 kb/s for wideband
    /// (the evidence is on [`cap_audio`]), none (the browser's own choice) above; never more
    /// than the trunk takes.
    pub fn bitrate(self) -> Option<u32> {
        let ours = match self.hz {
            ..=8000 => Some(24_000),
            8001..=16_000 => Some(32_000),
            _ => None,
        };
        match (ours, self.max_bitrate) {
            (Some(ours), Some(max)) => Some(ours.min(max)),
            (ours, max) => ours.or(max),
        }
    }

    /// The width and bitrate asked for, when they are asked for at all.
    fn rate(self) -> Option<(u32, Option<u32>)> {
        let hz = self.hz.min(48_000);
        (hz < 48_000 || self.max_bitrate.is_some()).then(|| (hz, self.bitrate()))
    }
}

/// The Opus modes `sdp`'s line for payload type `opus_pt` prefers.
pub fn opus_modes(sdp: &str, opus_pt: u8) -> OpusModes {
    let fmtp = format!("a=fmtp:{opus_pt} ");
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(&fmtp))
        .map(OpusModes::parse)
        .unwrap_or_default()
}

/// Caps the audio the browser codes at `caps`: `caps.hz`, the widest the call's trunk side
/// carries, by the Opus line's `maxplaybackrate` (RFC 7587 §6.1: the most the receiver will
/// render, which the sender's encoder should not exceed) and `sprop-maxcapturerate` (the most
/// our own encoder codes), and sets the bitrate it codes at (`maxaveragebitrate`, which
/// libwebrtc takes as its bitrate: [`AudioCaps::bitrate`]). A relayed call's Opus goes to
/// the trunk as the browser codes it, so the trunk's own preferences among Opus's modes
/// (`useinbandfec`, `usedtx`, `cbr`, `stereo`) replace the ones the answer would otherwise
/// repeat from the browser's offer: a carrier that asks for constant bitrate gets it, and
/// one that cannot use in-band FEC is not sent its bits. A call the gateway decodes asks for
/// mono whatever the browser offered (Firefox offers `stereo=1`); open caps (48 kHz, no trunk
/// bitrate) change nothing else.
///
/// Why (docs/benchmarks-history.md §1): a browser told nothing codes full band at 32 kb/s, and the
/// gateway decodes that to 8 kHz for G.711 at 22–26 µs a frame. Told 8 kHz, Chromium codes
/// narrowband, but at 12 kb/s, which scores 0.21 lower (PESQ of speech through to the
/// trunk, 3.72 against 3.93); at 24 kb/s it scores 4.04, above its full-band default, the
/// browser's uplink carries a quarter less, and decoding takes 6.4–7.2 µs. For
/// G.722 calls (16 kHz), wideband at 32 kb/s scores 3.32 (PESQ WB) where the full-band
/// default scores 3.25 and libwebrtc's wideband default (20 kb/s) 3.23, and decodes to
/// 16 kHz in 13 µs a frame against 24.
///
/// The stack's answer repeats the offer's Opus parameters rather than ours, and the stack
/// takes no local description but the one it wrote, so the text the browser is sent is
/// rewritten here and the stack keeps its own. These parameters say what we receive, which
/// the stack's own sending does not read. The line's other parameters stay; the ones
/// written here go first.
pub fn cap_audio(sdp: &str, opus_pt: u8, caps: AudioCaps) -> String {
    let mut written: Vec<&str> = Vec::new();
    let mut params: Vec<String> = Vec::new();
    if let Some((hz, bitrate)) = caps.rate() {
        written.extend([
            "maxplaybackrate",
            "sprop-maxcapturerate",
            "maxaveragebitrate",
        ]);
        params.push(format!("maxplaybackrate={hz};sprop-maxcapturerate={hz}"));
        if let Some(bitrate) = bitrate {
            params.push(format!("maxaveragebitrate={bitrate}"));
        }
    }
    match caps.modes {
        Some(modes) => {
            written.extend(OpusModes::NAMES);
            // Absent is 0 (RFC 7587 §6.1): only the preferred ones are written.
            params.extend(
                modes
                    .flags()
                    .iter()
                    .filter(|(_, on)| *on)
                    .map(|(name, _)| format!("{name}=1")),
            );
        }
        // The gateway decodes to mono: a browser that offers `stereo=1` (Firefox) is not
        // asked for stereo back, which would spend the call's bits on a second channel.
        None => written.push("stereo"),
    }
    let caps = params.join(";");
    let fmtp = format!("a=fmtp:{opus_pt} ");
    let rtpmap = format!("a=rtpmap:{opus_pt} ");
    let has_fmtp = sdp.lines().any(|l| l.starts_with(&fmtp));
    let mut out = String::with_capacity(sdp.len() + caps.len() + 16);
    for line in sdp.split_inclusive('\n') {
        let (text, end) = match line.strip_suffix("\r\n") {
            Some(text) => (text, "\r\n"),
            None => line.strip_suffix('\n').map_or((line, ""), |t| (t, "\n")),
        };
        if let Some(params) = text.strip_prefix(&fmtp) {
            let kept = params.split(';').map(str::trim).filter(|p| {
                let name = p.split('=').next().unwrap_or("").trim();
                !p.is_empty() && !written.iter().any(|w| name.eq_ignore_ascii_case(w))
            });
            let line: Vec<&str> = kept
                .chain([caps.as_str()])
                .filter(|p| !p.is_empty())
                .collect();
            if line.is_empty() {
                // Nothing left to say: no line rather than one without parameters.
                continue;
            }
            out.push_str(&fmtp);
            out.push_str(&line.join(";"));
            out.push_str(end);
            continue;
        }
        out.push_str(line);
        if !has_fmtp && !caps.is_empty() && text.starts_with(&rtpmap) {
            if end.is_empty() {
                out.push_str("\r\n");
            }
            out.push_str(&fmtp);
            out.push_str(&caps);
            out.push_str(if end.is_empty() { "\r\n" } else { end });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{AudioCaps, cap_audio, opus_modes};

    fn cap_audio_rate(sdp: &str, opus_pt: u8, hz: u32) -> String {
        cap_audio(sdp, opus_pt, AudioCaps::up_to(hz))
    }

    const ANSWER: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 109 126\r\na=rtpmap:109 opus/48000/2\r\n\
                          a=fmtp:109 minptime=10;useinbandfec=1;maxplaybackrate=48000\r\n\
                          a=rtpmap:126 telephone-event/8000\r\na=fmtp:126 0-15\r\n";

    #[test]
    fn the_opus_line_gets_the_trunk_sides_rate_and_keeps_its_other_parameters() {
        let capped = cap_audio_rate(ANSWER, 109, 8000);
        assert!(
            capped.contains(
                "a=fmtp:109 minptime=10;useinbandfec=1;maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000\r\n"
            ),
            "{capped}"
        );
        assert!(
            !capped.contains("48000;"),
            "the earlier cap is gone: {capped}"
        );
        assert!(capped.contains("a=fmtp:126 0-15\r\n"), "{capped}");
        assert_eq!(capped.lines().count(), ANSWER.lines().count());
        // HD voice (G.722) calls need 16 kHz; a trunk that takes Opus needs everything.
        assert!(cap_audio_rate(ANSWER, 109, 16000).contains(
            "maxplaybackrate=16000;sprop-maxcapturerate=16000;maxaveragebitrate=32000\r\n"
        ));
        assert_eq!(cap_audio_rate(ANSWER, 109, 48000), ANSWER);
    }

    /// An Opus trunk's own limits (RFC 7587 §6.1) reach the browser: never wider than the
    /// trunk renders, nor faster than it takes.
    #[test]
    fn an_opus_trunks_limits_cap_the_browser() {
        use crate::media::codec::Codec;
        use crate::media::description::{Direction, OpusLimits, OpusModes, RemoteMedia};
        let trunk = |codec, opus| {
            AudioCaps::of_trunk(&RemoteMedia {
                addr: "127.0.0.1:4000".parse().unwrap(),
                codec,
                payload_type: 96,
                dtmf_payload_type: None,
                direction: Direction::SendRecv,
                srtp: None,
                opus,
            })
        };
        let limits = |hz, bitrate| OpusLimits {
            max_playback_hz: hz,
            max_average_bitrate: bitrate,
            modes: OpusModes::default(),
        };
        let plain = trunk(Codec::Opus, OpusLimits::default());
        assert_eq!(
            plain,
            AudioCaps {
                modes: Some(OpusModes::default()),
                ..AudioCaps::up_to(48_000)
            }
        );
        assert_eq!(cap_audio(ANSWER, 109, AudioCaps::up_to(48_000)), ANSWER);
        // A trunk that said nothing of FEC does not decode it (RFC 7587 §6.1: absent is 0).
        assert_eq!(
            cap_audio(ANSWER, 109, plain),
            ANSWER.replace("useinbandfec=1;", "")
        );
        let wide = trunk(Codec::Opus, limits(Some(16000), Some(20_000)));
        assert_eq!((wide.hz, wide.bitrate()), (16000, Some(20_000)));
        assert!(cap_audio(ANSWER, 109, wide).contains(
            "maxplaybackrate=16000;sprop-maxcapturerate=16000;maxaveragebitrate=20000\r\n"
        ));
        // A trunk that takes more than we would ask for gets what we ask for.
        let generous = trunk(Codec::Opus, limits(Some(8000), Some(64_000)));
        assert_eq!(generous.bitrate(), Some(24_000));
        // Full band at the trunk's bitrate; the browser's own bitrate otherwise.
        let fast = trunk(Codec::Opus, limits(None, Some(40_000)));
        assert!(cap_audio(ANSWER, 109, fast).contains(
            "maxplaybackrate=48000;sprop-maxcapturerate=48000;maxaveragebitrate=40000\r\n"
        ));
        // A transcoded trunk's codec decides; Opus parameters it never sent change nothing.
        assert_eq!(
            trunk(Codec::G722, OpusLimits::default()),
            AudioCaps::up_to(16000)
        );
    }

    /// A relayed call's trunk decodes the browser's Opus: its preferences among Opus's modes
    /// replace the ones the answer repeats from the browser's offer, with or without rate
    /// caps. A call the gateway decodes keeps the browser's own.
    #[test]
    fn an_opus_trunks_modes_replace_the_browsers_own() {
        use crate::media::description::OpusModes;
        let modes = |fmtp| Some(OpusModes::parse(fmtp));
        let full = AudioCaps {
            modes: modes("useinbandfec=1;usedtx=1;cbr=1"),
            ..AudioCaps::up_to(48_000)
        };
        let text = cap_audio(ANSWER, 109, full);
        assert!(
            text.contains(
                "a=fmtp:109 minptime=10;maxplaybackrate=48000;useinbandfec=1;usedtx=1;cbr=1\r\n"
            ),
            "{text}"
        );
        assert_eq!(opus_modes(&text, 109), full.modes.unwrap());
        let narrow = AudioCaps {
            hz: 16000,
            max_bitrate: Some(20_000),
            modes: modes("usedtx=1; stereo=0"),
        };
        let text = cap_audio(ANSWER, 109, narrow);
        assert!(
            text.contains(
                "a=fmtp:109 minptime=10;maxplaybackrate=16000;sprop-maxcapturerate=16000;\
                 maxaveragebitrate=20000;usedtx=1\r\n"
            ),
            "{text}"
        );
        // A line left with nothing goes (RFC 4566 §6: an `a=fmtp` line carries parameters).
        let bare =
            "v=0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\na=sendrecv\r\n";
        let plain = AudioCaps {
            modes: modes(""),
            ..AudioCaps::up_to(48_000)
        };
        assert_eq!(
            cap_audio(bare, 111, plain),
            "v=0\r\na=rtpmap:111 opus/48000/2\r\na=sendrecv\r\n"
        );
        // The browser offered stereo and DTX; a call the gateway decodes keeps DTX and asks
        // for mono, full band included.
        let stereo = ANSWER.replace("useinbandfec=1", "useinbandfec=1;stereo=1;usedtx=1");
        for (hz, rest) in [
            (8000, ";maxplaybackrate=8000"),
            (48_000, ";maxplaybackrate=48000"),
        ] {
            let text = cap_audio(&stereo, 109, AudioCaps::up_to(hz));
            assert!(
                text.contains(&format!(
                    "a=fmtp:109 minptime=10;useinbandfec=1;usedtx=1{rest}"
                )),
                "{text}"
            );
            assert_eq!(
                opus_modes(&text, 109),
                OpusModes {
                    fec: true,
                    dtx: true,
                    cbr: false,
                    stereo: false
                }
            );
        }
    }

    #[test]
    fn an_opus_line_without_parameters_gets_a_line_of_its_own() {
        let sdp = "v=0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(
            cap_audio_rate(sdp, 111, 8000),
            "v=0\r\na=rtpmap:111 opus/48000/2\r\n\
             a=fmtp:111 maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000\r\n\
             a=rtpmap:0 PCMU/8000\r\n"
        );
        // Only the Opus payload type's line: another codec's parameters are not touched.
        assert_eq!(cap_audio_rate(sdp, 112, 8000), sdp);
    }
}
