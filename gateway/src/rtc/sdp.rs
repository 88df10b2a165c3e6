//! What the browser leg says and reads in SDP: the codecs it registers with the stack
//! (Opus and RFC 4733 telephone-event, with our payload type numbers), the numbers an answer
//! settled on, and the addresses of a browser's TURN relay candidates.

use std::net::SocketAddr;

use ::rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_TELEPHONE_EVENT, MediaEngine,
};
use ::rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};

use super::{MAX_VALIDATED, RtcError, stack};

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
