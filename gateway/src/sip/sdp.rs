//! SDP for the trunk leg (RFC 4566 syntax via `rtc-sdp`, RFC 3264 offer/answer semantics):
//! one audio stream, G.711 and `telephone-event/8000`, ptime 20.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use rtc_sdp::SessionDescription;
use rtc_sdp::description::common::{Address, Attribute, ConnectionInformation};
use rtc_sdp::description::media::{MediaDescription, MediaName, RangedPort};
use rtc_sdp::description::session::{Origin, TimeDescription, Timing};
use thiserror::Error;

pub use crate::media::description::{Direction, LocalMedia, RemoteMedia};
use crate::media::g711::G711;

/// Payload type we offer for RFC 4733 events (dynamic range, the common choice).
pub const DTMF_PAYLOAD_TYPE: u8 = 101;

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
    /// None of the peer's formats is PCMU or PCMA.
    #[error(
        "no common codec: the peer offers payload types {0:?}, the gateway speaks PCMU and PCMA"
    )]
    NoCommonCodec(Vec<String>),
}

fn build(
    local: &LocalMedia,
    version: u64,
    codecs: &[G711],
    dtmf_pt: u8,
    direction: Direction,
) -> String {
    let (addr_type, ip) = match local.ip {
        IpAddr::V4(ip) => ("IP4", ip.to_string()),
        IpAddr::V6(ip) => ("IP6", ip.to_string()),
    };
    let mut formats: Vec<String> = codecs
        .iter()
        .map(|c| c.payload_type().to_string())
        .collect();
    formats.push(dtmf_pt.to_string());
    let mut attributes: Vec<Attribute> = codecs
        .iter()
        .map(|c| {
            Attribute::new(
                "rtpmap".into(),
                Some(format!("{} {}/8000", c.payload_type(), c.encoding_name())),
            )
        })
        .collect();
    attributes.push(Attribute::new(
        "rtpmap".into(),
        Some(format!("{dtmf_pt} telephone-event/8000")),
    ));
    attributes.push(Attribute::new(
        "fmtp".into(),
        Some(format!("{dtmf_pt} 0-15")),
    ));
    attributes.push(Attribute::new("ptime".into(), Some("20".into())));
    attributes.push(Attribute::new(direction.attribute().into(), None));
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
                protos: vec!["RTP".into(), "AVP".into()],
                formats,
            },
            attributes,
            ..Default::default()
        }],
        ..Default::default()
    };
    sdp.marshal()
}

/// An offer of all our codecs, sendrecv (or another direction, for hold).
pub fn offer(local: &LocalMedia, version: u64, direction: Direction) -> String {
    build(local, version, &local.codecs, DTMF_PAYLOAD_TYPE, direction)
}

/// Our answer to a peer's offer already read into `remote` (RFC 3264 §6.1): the chosen
/// codec only, the peer's telephone-event payload type, and the mirrored direction.
pub fn answer(local: &LocalMedia, version: u64, remote: &RemoteMedia) -> String {
    let dtmf_pt = remote.dtmf_payload_type.unwrap_or(DTMF_PAYLOAD_TYPE);
    build(
        local,
        version,
        &[remote.codec],
        dtmf_pt,
        remote.direction.answer(),
    )
}

/// Reads the peer's audio stream. `preference` orders the codecs we accept; for an answer
/// the peer has already chosen, so its first listed format we support wins.
pub fn parse_remote(
    body: &[u8],
    preference: &[G711],
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
        Some(c) if c.clock_rate == 8000 || c.clock_rate == 0 => G711::from_encoding_name(&c.name),
        Some(_) => None,
        None => G711::from_payload_type(pt),
    };
    let offered: Vec<(u8, G711)> = media
        .media_name
        .formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .filter_map(|pt| codec_of(pt).map(|c| (pt, c)))
        .filter(|(_, c)| preference.contains(c))
        .collect();
    let chosen = if peer_is_answering {
        offered.first().map(|(_, c)| *c)
    } else {
        preference
            .iter()
            .find(|p| offered.iter().any(|(_, c)| c == *p))
            .copied()
    };
    let codec = chosen.ok_or_else(|| SdpError::NoCommonCodec(media.media_name.formats.clone()))?;
    let dtmf_payload_type = rtpmap
        .values()
        .find(|c| c.name.eq_ignore_ascii_case("telephone-event") && c.clock_rate == 8000)
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
        dtmf_payload_type,
        direction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalMedia {
        LocalMedia {
            ip: "192.0.2.10".parse().unwrap(),
            port: 30000,
            codecs: vec![G711::Pcmu, G711::Pcma],
            session_id: 42,
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
        let remote = parse_remote(text.as_bytes(), &[G711::Pcmu, G711::Pcma], true).unwrap();
        assert_eq!(remote.codec, G711::Pcmu);
        assert_eq!(remote.dtmf_payload_type, Some(101));
    }

    #[test]
    fn sendonly_offer_is_answered_recvonly_with_our_preferred_common_codec() {
        let remote = parse_remote(SIPP_OFFER.as_bytes(), &[G711::Pcmu, G711::Pcma], false).unwrap();
        assert_eq!(remote.direction, Direction::SendOnly);
        assert_eq!(
            remote.codec,
            G711::Pcmu,
            "static PT 0 without rtpmap is still PCMU"
        );
        assert_eq!(remote.addr, "127.0.0.1:6000".parse::<SocketAddr>().unwrap());
        let text = answer(&local(), 2, &remote);
        assert!(text.contains("a=recvonly\r\n"), "{text}");
        assert!(text.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{text}");
    }

    #[test]
    fn an_answer_keeps_the_peers_choice() {
        let remote = parse_remote(SIPP_OFFER.as_bytes(), &[G711::Pcmu, G711::Pcma], true).unwrap();
        assert_eq!(remote.codec, G711::Pcma);
    }

    #[test]
    fn zero_address_means_hold() {
        let held = SIPP_OFFER
            .replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
            .replace("a=sendonly\r\n", "");
        assert_eq!(
            parse_remote(held.as_bytes(), &[G711::Pcma], false)
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
            parse_remote(g729.as_bytes(), &[G711::Pcmu], false),
            Err(SdpError::NoCommonCodec(vec!["18".into()]))
        );
        let video = SIPP_OFFER.replace("m=audio", "m=video");
        assert_eq!(
            parse_remote(video.as_bytes(), &[G711::Pcmu], false),
            Err(SdpError::NoAudio)
        );
        assert!(matches!(
            parse_remote(b"hello", &[G711::Pcmu], false),
            Err(SdpError::Syntax(_))
        ));
    }
}
