//! SDP for the trunk leg (RFC 4566 syntax via `rtc-sdp`, RFC 3264 offer/answer semantics):
//! one audio stream, G.711 and `telephone-event/8000`, ptime 20.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use rtc_sdp::SessionDescription;
use rtc_sdp::description::common::{Address, Attribute, ConnectionInformation};
use rtc_sdp::description::media::{MediaDescription, MediaName, RangedPort};
use rtc_sdp::description::session::{Origin, TimeDescription, Timing};
use thiserror::Error;

use crate::media::codec::Codec;
pub use crate::media::description::{Direction, LocalMedia, OpusLimits, OpusModes, RemoteMedia};
use crate::media::srtp::{LocalSrtp, SdesKey, SrtpKeys, SrtpPolicy};

/// Payload type we offer for RFC 4733 events at 8 kHz (dynamic range, the common choice).
pub const DTMF_PAYLOAD_TYPE: u8 = 101;

/// Payload type we offer for RFC 4733 events at 48 kHz, beside Opus: events run on the
/// clock of the audio they go with (RFC 4733 §2.1).
pub const DTMF_48K_PAYLOAD_TYPE: u8 = 110;

/// Why a peer's SDP cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SdpError {
    /// Not parseable as SDP.
    #[error("SDP does not parse: {0}")]
    Syntax(String),
    /// No `m=audio` line with a usable port.
    #[error("SDP has no audio stream")]
    NoAudio,
    /// No connection address for the audio stream.
    #[error("SDP audio stream has no usable c= address")]
    NoAddress,
    /// None of the peer's formats is one the trunk is configured for.
    #[error(
        "no common codec: the peer offers payload types {0:?}, the trunk is configured for others (PCMU, PCMA, opus)"
    )]
    NoCommonCodec(Vec<String>),
    /// The trunk has `srtp = "required"` and the peer's SDP has no usable `a=crypto`.
    #[error(
        "the trunk requires SRTP (srtp = \"required\") but the peer's SDP has no usable a=crypto line (AES_CM_128_HMAC_SHA1_80 or _32, without MKI)"
    )]
    SrtpRequired,
    /// The peer asks for SRTP (RTP/SAVP) the trunk is not set up for, or with no crypto
    /// suite we can use.
    #[error(
        "the peer's SDP asks for SRTP (RTP/SAVP) but the trunk has srtp = \"off\" or no a=crypto line is usable; set srtp = \"optional\" or \"required\" on the trunk"
    )]
    SrtpRefused,
}

/// The SDES part of an SDP: whether the profile is RTP/SAVP, and the `a=crypto` lines.
struct Crypto<'a> {
    secure_profile: bool,
    lines: &'a [SdesKey],
}

/// `dtmf` lists the telephone-event payload types and their clock rates.
fn build(
    local: &LocalMedia,
    version: u64,
    codecs: &[(Codec, u8)],
    dtmf: &[(u8, u32)],
    direction: Direction,
    crypto: Crypto<'_>,
) -> String {
    let (addr_type, ip) = match local.ip {
        IpAddr::V4(ip) => ("IP4", ip.to_string()),
        IpAddr::V6(ip) => ("IP6", ip.to_string()),
    };
    let mut formats: Vec<String> = codecs.iter().map(|(_, pt)| pt.to_string()).collect();
    formats.extend(dtmf.iter().map(|(pt, _)| pt.to_string()));
    let mut attributes: Vec<Attribute> = Vec::new();
    for (c, pt) in codecs {
        attributes.push(Attribute::new(
            "rtpmap".into(),
            Some(format!("{pt} {}", c.rtpmap())),
        ));
        if *c == Codec::Opus {
            // RFC 7587 §7: in-band FEC is what keeps Opus audible through loss.
            attributes.push(Attribute::new(
                "fmtp".into(),
                Some(format!("{pt} minptime=10;useinbandfec=1")),
            ));
        }
    }
    for (pt, clock) in dtmf {
        attributes.push(Attribute::new(
            "rtpmap".into(),
            Some(format!("{pt} telephone-event/{clock}")),
        ));
        attributes.push(Attribute::new("fmtp".into(), Some(format!("{pt} 0-15"))));
    }
    attributes.push(Attribute::new("ptime".into(), Some("20".into())));
    attributes.push(Attribute::new(direction.attribute().into(), None));
    for key in crypto.lines {
        attributes.push(Attribute::new("crypto".into(), Some(key.attribute_value())));
    }
    let connection = ConnectionInformation {
        network_type: "IN".into(),
        address_type: addr_type.into(),
        address: Some(Address {
            address: ip.clone(),
            ttl: None,
            range: None,
        }),
    };
    let sdp = SessionDescription {
        version: 0,
        origin: Origin {
            username: "-".into(),
            session_id: local.session_id,
            session_version: version,
            network_type: "IN".into(),
            address_type: addr_type.into(),
            unicast_address: ip,
        },
        session_name: "gateway".into(),
        connection_information: Some(connection),
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: vec![],
        }],
        media_descriptions: vec![MediaDescription {
            media_name: MediaName {
                media: "audio".into(),
                port: RangedPort {
                    value: local.port as isize,
                    range: None,
                },
                protos: vec![
                    "RTP".into(),
                    if crypto.secure_profile { "SAVP" } else { "AVP" }.into(),
                ],
                formats,
            },
            attributes,
            ..Default::default()
        }],
        ..Default::default()
    };
    sdp.marshal()
}

/// An offer of all our codecs, sendrecv (or another direction, for hold). With SRTP, a
/// `a=crypto` line per suite; RTP/SAVP only when SRTP is required (an RTP/AVP offer with
/// crypto lines is the best-effort SDES most PBXs understand, RFC 4568 §7.1.1 aside).
pub fn offer(local: &LocalMedia, version: u64, direction: Direction) -> String {
    let mut dtmf = vec![(DTMF_PAYLOAD_TYPE, 8000)];
    if local.codecs.contains(&Codec::Opus) {
        dtmf.push((DTMF_48K_PAYLOAD_TYPE, 48000));
    }
    let codecs: Vec<(Codec, u8)> = local
        .codecs
        .iter()
        .map(|c| (*c, c.payload_type()))
        .collect();
    let crypto = Crypto {
        secure_profile: local.srtp.policy == SrtpPolicy::Required,
        lines: &local.srtp.keys,
    };
    build(local, version, &codecs, &dtmf, direction, crypto)
}

/// Our answer to a peer's offer already read into `remote` (RFC 3264 §6.1): the chosen
/// codec only, the peer's telephone-event payload type, the mirrored direction, and for
/// SRTP the peer's profile with one `a=crypto` line under the tag it chose (RFC 4568 §7.1.2).
pub fn answer(local: &LocalMedia, version: u64, remote: &RemoteMedia) -> String {
    let clock = remote.codec.clock_rate();
    let default = if clock == 8000 {
        DTMF_PAYLOAD_TYPE
    } else {
        DTMF_48K_PAYLOAD_TYPE
    };
    let dtmf_pt = remote.dtmf_payload_type.unwrap_or(default);
    let ours = remote.srtp.map(|k| k.ours);
    let crypto = Crypto {
        secure_profile: remote.srtp.is_some_and(|k| k.secure_profile),
        lines: ours.as_slice(),
    };
    build(
        local,
        version,
        &[(remote.codec, remote.payload_type)],
        &[(dtmf_pt, clock)],
        remote.direction.answer(),
        crypto,
    )
}

/// The SRTP keys an SDP's `a=crypto` lines settle on under our policy and keys: for an
/// offer, the first line in a suite we speak (RFC 4568 §7.1.2, the offerer's preference);
/// for an answer, the line under a tag we offered in the same suite.
fn negotiate_srtp(
    media: &MediaDescription,
    srtp: &LocalSrtp,
    peer_is_answering: bool,
) -> Result<Option<SrtpKeys>, SdpError> {
    let secure_profile = media.media_name.protos.iter().any(|p| p == "SAVP");
    if srtp.policy == SrtpPolicy::Off {
        return if secure_profile {
            Err(SdpError::SrtpRefused)
        } else {
            Ok(None)
        };
    }
    let chosen = media
        .attributes
        .iter()
        .filter(|a| a.key == "crypto")
        .filter_map(|a| match SdesKey::parse(a.value.as_deref().unwrap_or("")) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::debug!(error = %e, "a=crypto line skipped");
                None
            }
        })
        .find_map(|theirs| {
            let ours = srtp.key_for(theirs.suite)?;
            if peer_is_answering && ours.tag != theirs.tag {
                return None;
            }
            Some(SrtpKeys {
                secure_profile,
                ours: SdesKey {
                    tag: theirs.tag,
                    ..*ours
                },
                theirs,
            })
        });
    match chosen {
        Some(keys) => Ok(Some(keys)),
        None if srtp.policy == SrtpPolicy::Required => Err(SdpError::SrtpRequired),
        None if secure_profile => Err(SdpError::SrtpRefused),
        None => Ok(None),
    }
}

/// Reads the peer's audio stream. `preference` orders the codecs we accept; for an answer
/// the peer has already chosen, so its first listed format we support wins. `srtp` is our
/// side's SRTP policy and keys (an offer's, when the peer is answering).
pub fn parse_remote(
    body: &[u8],
    preference: &[Codec],
    srtp: &LocalSrtp,
    peer_is_answering: bool,
) -> Result<RemoteMedia, SdpError> {
    let text = String::from_utf8_lossy(body);
    let sdp = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| SdpError::Syntax(e.to_string()))?;
    let media = sdp
        .media_descriptions
        .iter()
        .find(|m| m.media_name.media == "audio" && m.media_name.port.value > 0)
        .ok_or(SdpError::NoAudio)?;
    let srtp = negotiate_srtp(media, srtp, peer_is_answering)?;
    let connection = media
        .connection_information
        .as_ref()
        .or(sdp.connection_information.as_ref());
    let ip: IpAddr = connection
        .and_then(|c| c.address.as_ref())
        .and_then(|a| a.address.parse().ok())
        .ok_or(SdpError::NoAddress)?;
    let rtpmap = media.codecs();
    let codec_of = |pt: u8| match rtpmap.get(&pt) {
        Some(c) => Codec::from_rtpmap(&c.name, c.clock_rate),
        None => Codec::from_static_payload_type(pt),
    };
    let offered: Vec<(u8, Codec)> = media
        .media_name
        .formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .filter_map(|pt| codec_of(pt).map(|c| (pt, c)))
        .filter(|(_, c)| preference.contains(c))
        .collect();
    let chosen = if peer_is_answering {
        offered.first().copied()
    } else {
        preference
            .iter()
            .find_map(|p| offered.iter().find(|(_, c)| c == p).copied())
    };
    let (payload_type, codec) =
        chosen.ok_or_else(|| SdpError::NoCommonCodec(media.media_name.formats.clone()))?;
    // Read here rather than from `rtpmap`: its parser drops a line whose parameters have a
    // space after `;`, as FreeSWITCH writes them.
    let fmtp = |pt: u8| {
        media.attributes.iter().find_map(|a| {
            let value = a.value.as_deref().filter(|_| a.key == "fmtp")?;
            let (format, params) = value.trim().split_once(char::is_whitespace)?;
            (format.parse::<u8>().ok()? == pt).then_some(params)
        })
    };
    let opus = match codec {
        Codec::Opus => fmtp(payload_type)
            .map(OpusLimits::parse)
            .unwrap_or_default(),
        _ => OpusLimits::default(),
    };
    // RFC 4733 §2.1: the events' clock is the audio's; a peer that lists only 8 kHz events
    // beside Opus still gets them understood rather than lost.
    let events = || {
        rtpmap
            .values()
            .filter(|c| c.name.eq_ignore_ascii_case("telephone-event"))
    };
    let dtmf_payload_type = events()
        .find(|c| c.clock_rate == codec.clock_rate())
        .or_else(|| events().next())
        .map(|c| c.payload_type);
    let attr_direction = [
        Direction::SendOnly,
        Direction::RecvOnly,
        Direction::Inactive,
        Direction::SendRecv,
    ]
    .into_iter()
    .find(|d| media.has_attribute(d.attribute()) || sdp.has_attribute(d.attribute()))
    .unwrap_or(Direction::SendRecv);
    // RFC 3264 §8.4: the old RFC 2543 way to hold is c=0.0.0.0; treat it as sendonly.
    let direction = if ip.is_unspecified() && attr_direction == Direction::SendRecv {
        Direction::SendOnly
    } else {
        attr_direction
    };
    Ok(RemoteMedia {
        addr: SocketAddr::new(ip, media.media_name.port.value as u16),
        codec,
        payload_type,
        dtmf_payload_type,
        direction,
        srtp,
        opus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalMedia {
        LocalMedia {
            ip: "192.0.2.10".parse().unwrap(),
            port: 30000,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            session_id: 42,
            srtp: LocalSrtp::default(),
        }
    }

    const SIPP_OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-11,16\r\na=sendonly\r\n";

    #[test]
    fn offer_lists_g711_and_telephone_event_at_ptime_20() {
        let text = offer(&local(), 1, Direction::SendRecv);
        assert!(text.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"), "{text}");
        assert!(text.contains("c=IN IP4 192.0.2.10\r\n"));
        assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert!(text.contains("a=ptime:20\r\n"));
        assert!(text.contains("a=sendrecv\r\n"));
        // And our own parser reads it back.
        let remote = parse_remote(
            text.as_bytes(),
            &[Codec::Pcmu, Codec::Pcma],
            &LocalSrtp::default(),
            true,
        )
        .unwrap();
        assert_eq!(remote.codec, Codec::Pcmu);
        assert_eq!(remote.dtmf_payload_type, Some(101));
    }

    #[test]
    fn sendonly_offer_is_answered_recvonly_with_our_preferred_common_codec() {
        let remote = parse_remote(
            SIPP_OFFER.as_bytes(),
            &[Codec::Pcmu, Codec::Pcma],
            &LocalSrtp::default(),
            false,
        )
        .unwrap();
        assert_eq!(remote.direction, Direction::SendOnly);
        assert_eq!(
            remote.codec,
            Codec::Pcmu,
            "static PT 0 without rtpmap is still PCMU"
        );
        assert_eq!(remote.addr, "127.0.0.1:6000".parse::<SocketAddr>().unwrap());
        let text = answer(&local(), 2, &remote);
        assert!(text.contains("a=recvonly\r\n"), "{text}");
        assert!(text.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{text}");
    }

    #[test]
    fn an_answer_keeps_the_peers_choice() {
        let remote = parse_remote(
            SIPP_OFFER.as_bytes(),
            &[Codec::Pcmu, Codec::Pcma],
            &LocalSrtp::default(),
            true,
        )
        .unwrap();
        assert_eq!(remote.codec, Codec::Pcma);
    }

    #[test]
    fn zero_address_means_hold() {
        let held = SIPP_OFFER
            .replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
            .replace("a=sendonly\r\n", "");
        assert_eq!(
            parse_remote(
                held.as_bytes(),
                &[Codec::Pcma],
                &LocalSrtp::default(),
                false
            )
            .unwrap()
            .direction,
            Direction::SendOnly
        );
    }

    #[test]
    fn unusable_sdp_is_named() {
        let g729 = SIPP_OFFER
            .replace("RTP/AVP 8 0 101", "RTP/AVP 18")
            .replace("a=rtpmap:8 PCMA/8000\r\n", "");
        assert_eq!(
            parse_remote(
                g729.as_bytes(),
                &[Codec::Pcmu],
                &LocalSrtp::default(),
                false
            ),
            Err(SdpError::NoCommonCodec(vec!["18".into()]))
        );
        let video = SIPP_OFFER.replace("m=audio", "m=video");
        assert_eq!(
            parse_remote(
                video.as_bytes(),
                &[Codec::Pcmu],
                &LocalSrtp::default(),
                false
            ),
            Err(SdpError::NoAudio)
        );
        assert!(matches!(
            parse_remote(b"hello", &[Codec::Pcmu], &LocalSrtp::default(), false),
            Err(SdpError::Syntax(_))
        ));
    }

    #[test]
    fn opus_is_offered_with_48k_events_and_answered_with_the_peers_numbers() {
        let ours = LocalMedia {
            codecs: vec![Codec::Opus, Codec::Pcmu],
            ..local()
        };
        let text = offer(&ours, 1, Direction::SendRecv);
        assert!(
            text.contains("m=audio 30000 RTP/AVP 111 0 101 110\r\n"),
            "{text}"
        );
        assert!(text.contains("a=rtpmap:111 opus/48000/2\r\n"), "{text}");
        assert!(text.contains("a=fmtp:111 minptime=10;useinbandfec=1\r\n"));
        assert!(text.contains("a=rtpmap:110 telephone-event/48000\r\n"));
        // A PBX offering Opus on 96 with 48 kHz events on 97: we answer on its numbers.
        let pbx = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 96 0 97 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:97 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\n";
        let remote = parse_remote(
            pbx.as_bytes(),
            &[Codec::Opus, Codec::Pcmu],
            &LocalSrtp::default(),
            false,
        )
        .unwrap();
        assert_eq!((remote.codec, remote.payload_type), (Codec::Opus, 96));
        assert_eq!(
            remote.dtmf_payload_type,
            Some(97),
            "events on the audio's clock"
        );
        assert_eq!(remote.opus, OpusLimits::default(), "it asked nothing");
        // Its limits on the Opus it takes (RFC 7587 §6.1), read from its format's line only.
        let limited = pbx.replace(
            "a=rtpmap:97",
            "a=fmtp:96 useinbandfec=1; maxplaybackrate=16000;maxaveragebitrate=2000; cbr=0; USEDTX=1\r\n\
             a=fmtp:101 maxplaybackrate=8000\r\na=rtpmap:97",
        );
        let remote = parse_remote(
            limited.as_bytes(),
            &[Codec::Opus, Codec::Pcmu],
            &LocalSrtp::default(),
            false,
        )
        .unwrap();
        assert_eq!(
            remote.opus,
            OpusLimits {
                max_playback_hz: Some(16000),
                // Below RFC 7587's least, 6 kb/s.
                max_average_bitrate: Some(6000),
                modes: OpusModes {
                    fec: true,
                    dtx: true,
                    cbr: false,
                    stereo: false,
                },
            }
        );
        let text = answer(&ours, 2, &remote);
        assert!(text.contains("m=audio 30000 RTP/AVP 96 97\r\n"), "{text}");
        assert!(
            text.contains("a=rtpmap:97 telephone-event/48000\r\n"),
            "{text}"
        );
        // HD voice: G.722 on its static type, on the 8 kHz clock it is listed with.
        let hd = offer(
            &LocalMedia {
                codecs: vec![Codec::G722, Codec::Pcmu],
                ..local()
            },
            1,
            Direction::SendRecv,
        );
        assert!(hd.contains("m=audio 30000 RTP/AVP 9 0 101\r\n"), "{hd}");
        assert!(hd.contains("a=rtpmap:9 G722/8000\r\n"), "{hd}");
        let back =
            parse_remote(hd.as_bytes(), &[Codec::G722], &LocalSrtp::default(), true).unwrap();
        assert_eq!((back.codec, back.payload_type), (Codec::G722, 9));
        // A trunk configured for G.711 only never picks it.
        let g711 =
            parse_remote(pbx.as_bytes(), &[Codec::Pcmu], &LocalSrtp::default(), false).unwrap();
        assert_eq!(
            (g711.codec, g711.dtmf_payload_type),
            (Codec::Pcmu, Some(101))
        );
    }

    #[test]
    fn sdes_offers_answers_and_refusals_follow_the_policy() {
        let with = |policy| LocalMedia {
            srtp: LocalSrtp::new(policy),
            ..local()
        };
        let required = with(SrtpPolicy::Required);
        let text = offer(&required, 1, Direction::SendRecv);
        assert!(
            text.contains("m=audio 30000 RTP/SAVP 0 8 101\r\n"),
            "{text}"
        );
        assert!(
            text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{text}"
        );
        assert!(
            text.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"),
            "{text}"
        );
        let optional = with(SrtpPolicy::Optional);
        let text = offer(&optional, 1, Direction::SendRecv);
        assert!(text.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"), "{text}");
        assert!(text.contains("a=crypto:1 "), "{text}");

        // A PBX offers SAVP with its preferred 32-bit suite first under tag 7.
        let theirs = crate::media::srtp::SdesKey::generate(
            7,
            crate::media::srtp::CryptoSuite::AesCm128HmacSha1_32,
        );
        let pbx = SIPP_OFFER.replace("RTP/AVP", "RTP/SAVP").replace(
            "a=sendonly\r\n",
            &format!("a=crypto:{}\r\na=crypto:9 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n", theirs.attribute_value()),
        );
        let remote = parse_remote(pbx.as_bytes(), &[Codec::Pcmu], &optional.srtp, false).unwrap();
        let keys = remote.srtp.expect("SRTP agreed");
        assert_eq!(keys.theirs, theirs);
        assert!(keys.secure_profile);
        assert_eq!(keys.ours.tag, 7);
        assert_eq!(
            keys.ours.key_salt, optional.srtp.keys[1].key_salt,
            "our key of that suite"
        );
        let text = answer(&optional, 2, &remote);
        assert!(text.contains("m=audio 30000 RTP/SAVP 0 101\r\n"), "{text}");
        assert_eq!(text.matches("a=crypto:").count(), 1, "{text}");
        assert!(text.contains(&format!("a=crypto:{}", keys.ours.attribute_value())));
        // Our answer read back as an answer to the PBX's offer agrees on the same keys.
        let pbx_side = LocalSrtp {
            policy: SrtpPolicy::Required,
            keys: vec![theirs],
        };
        let back = parse_remote(text.as_bytes(), &[Codec::Pcmu], &pbx_side, true).unwrap();
        assert_eq!(back.srtp.unwrap().theirs, keys.ours);

        // Off: an SAVP offer is refused; an AVP offer's crypto lines are ignored.
        let off = LocalSrtp::default();
        assert_eq!(
            parse_remote(pbx.as_bytes(), &[Codec::Pcmu], &off, false),
            Err(SdpError::SrtpRefused)
        );
        let best_effort = pbx.replace("RTP/SAVP", "RTP/AVP");
        assert_eq!(
            parse_remote(best_effort.as_bytes(), &[Codec::Pcmu], &off, false)
                .unwrap()
                .srtp,
            None
        );
        // Required: plain is refused, and so is SAVP with no suite we speak.
        assert_eq!(
            parse_remote(SIPP_OFFER.as_bytes(), &[Codec::Pcmu], &required.srtp, false),
            Err(SdpError::SrtpRequired)
        );
        let f8_only = SIPP_OFFER.replace("RTP/AVP", "RTP/SAVP").replace(
            "a=sendonly\r\n",
            "a=crypto:9 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n",
        );
        assert_eq!(
            parse_remote(f8_only.as_bytes(), &[Codec::Pcmu], &optional.srtp, false),
            Err(SdpError::SrtpRefused)
        );
        // An answer under a tag we never offered does not count as agreement.
        let wrong_tag = text.replace("a=crypto:7 ", "a=crypto:8 ");
        assert_eq!(
            parse_remote(wrong_tag.as_bytes(), &[Codec::Pcmu], &pbx_side, true),
            Err(SdpError::SrtpRequired)
        );
    }
}
