//! The requests and outcomes of placing a call: what to call, why an attempt failed, and
//! the INVITE and CANCEL (§9.1) as sent to a trunk.

use std::time::Duration;

use rsip::prelude::*;
use rsip::{Header, Method, Request, Response};

use crate::sip::endpoint::SipLocal;
use crate::sip::message;
use crate::sip::transport::{Target, Transport};
use crate::sip::trunks::{Identity, Prack, Privacy, TrunkConfig};

/// Why a call attempt did not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The trunk answered with a final non-2xx status.
    #[error("trunk `{trunk}` answered {code} {reason}")]
    Rejected {
        /// Trunk name.
        trunk: String,
        /// SIP status.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// No final response (Timer B) or the connection failed.
    #[error("trunk `{trunk}` did not answer at {address} (timeout or connection failure)")]
    Timeout {
        /// Trunk name.
        trunk: String,
        /// The address tried last.
        address: String,
    },
    /// The caller gave up before an answer; CANCEL was sent.
    #[error("cancelled by the caller")]
    Cancelled,
    /// Every trunk in the chain is down, full or unresolvable.
    #[error("no trunk available: {0}")]
    NoTrunk(String),
}

impl CallFailure {
    /// The SIP status that best describes the failure (408 for timeouts, 487 for cancel,
    /// 503 when no trunk could be tried).
    pub fn sip_code(&self) -> u16 {
        match self {
            CallFailure::Rejected { code, .. } => *code,
            CallFailure::Timeout { .. } => 408,
            CallFailure::Cancelled => 487,
            CallFailure::NoTrunk(_) => 503,
        }
    }

    /// Failover applies on timeouts, 408 and 5xx (the trunk could not serve the call), never
    /// on 4xx/6xx answers such as 486 or 603: the callee has said no.
    pub(super) fn allows_failover(&self) -> bool {
        match self {
            CallFailure::Timeout { .. } | CallFailure::NoTrunk(_) => true,
            CallFailure::Rejected { code, .. } => *code == 408 || (500..600).contains(code),
            CallFailure::Cancelled => false,
        }
    }
}

/// What to call.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The number (user part of the Request-URI).
    pub to: String,
    /// Caller ID user part; the trunk's `from_user` when `None`.
    pub from_user: Option<String>,
    /// Our SDP offer.
    pub sdp_offer: String,
    /// Extra headers for the INVITE (plugins' `X-` headers, already checked).
    pub headers: Vec<(String, String)>,
    /// Trunks to try after the first, in order; empty follows the trunk's `failover`.
    pub failover: Vec<String>,
}

fn uri_host(trunk: &TrunkConfig, target: &Target) -> String {
    trunk.from_domain.clone().unwrap_or_else(|| {
        if target.addr.port() == trunk.transport.default_port() {
            target.host.clone()
        } else {
            format!("{}:{}", target.host, target.addr.port())
        }
    })
}

pub(super) fn build_invite(
    endpoint: &SipLocal,
    trunk: &TrunkConfig,
    target: &Target,
    request: &CallRequest,
    ids: &(String, String),
    seq: u32,
    auth: Vec<Header>,
) -> Request {
    let host = uri_host(trunk, target);
    let scheme = if trunk.transport == Transport::Tls {
        "sips"
    } else {
        "sip"
    };
    let uri = rsip::Uri::try_from(format!("{scheme}:{}@{host}", request.to)).unwrap_or_else(|_| {
        rsip::Uri {
            scheme: Some(rsip::Scheme::Sip),
            auth: Some(rsip::Auth {
                user: request.to.clone(),
                password: None,
            }),
            host_with_port: rsip::Domain::from(host.clone()).into(),
            ..Default::default()
        }
    });
    let caller = request.from_user.as_deref().unwrap_or(&trunk.from_user);
    let (call_id, from_tag) = ids;
    let mut headers = rsip::Headers::default();
    headers.push(endpoint.via(trunk.transport, &message::new_branch()));
    headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("70")));
    // RFC 3325: the caller ID in From, in P-Asserted-Identity (From then names the trunk
    // account), or both; RFC 3323 §4.1.1.3: an anonymous From when privacy is asked.
    let from = match (trunk.privacy, trunk.identity) {
        (Privacy::Id, _) => format!("\"Anonymous\" <{scheme}:anonymous@anonymous.invalid>"),
        (Privacy::None, Identity::Pai) => format!("<{scheme}:{}@{host}>", trunk.from_user),
        (Privacy::None, _) => format!("<{scheme}:{caller}@{host}>"),
    };
    headers.push(Header::From(rsip::headers::From::new(format!(
        "{from};tag={from_tag}"
    ))));
    if matches!(trunk.identity, Identity::Pai | Identity::Both) {
        headers.push(Header::Other(
            "P-Asserted-Identity".into(),
            format!("<{scheme}:{caller}@{host}>"),
        ));
    }
    if trunk.privacy == Privacy::Id {
        headers.push(Header::Other("Privacy".into(), "id".into()));
    }
    headers.push(Header::To(rsip::headers::To::new(format!("<{uri}>"))));
    headers.push(Header::CallId(rsip::headers::CallId::new(call_id.clone())));
    headers.push(
        rsip::typed::CSeq {
            seq,
            method: Method::Invite,
        }
        .into(),
    );
    headers.push(Header::Contact(rsip::headers::Contact::new(format!(
        "<{}>",
        endpoint.contact_uri("gw", trunk.transport)
    ))));
    headers.push(message::allow_header());
    // RFC 3262 §3: offered (or required) so a trunk may send its 18x reliably; RFC 4028
    // §7.1: session timers offered when the trunk has them.
    let mut supported = Vec::new();
    match trunk.prack {
        Prack::Supported => supported.push("100rel"),
        Prack::Required => headers.push(Header::Other("Require".into(), "100rel".into())),
        Prack::Off => {}
    }
    if trunk.session_expires > 0 {
        supported.push("timer");
    }
    if !supported.is_empty() {
        headers.push(Header::Other("Supported".into(), supported.join(", ")));
    }
    headers.push(Header::UserAgent(rsip::headers::UserAgent::new(
        endpoint.user_agent().to_string(),
    )));
    headers.push(Header::ContentType(rsip::headers::ContentType::new(
        "application/sdp",
    )));
    for a in auth {
        headers.push(a);
    }
    for (name, value) in &request.headers {
        headers.push(Header::Other(name.clone(), value.clone()));
    }
    Request {
        method: Method::Invite,
        uri,
        version: rsip::Version::V2,
        headers,
        body: request.sdp_offer.clone().into_bytes(),
    }
}

/// §9.1: CANCEL copies the INVITE's Request-URI, top Via (same branch), From, To, Call-ID
/// and Route, with the same CSeq number.
pub fn build_cancel(invite: &Request) -> Request {
    let mut headers = rsip::Headers::default();
    if let Ok(via) = invite.via_header() {
        headers.push(Header::Via(via.clone()));
    }
    for h in invite.headers.iter() {
        if matches!(
            h,
            Header::From(_)
                | Header::To(_)
                | Header::CallId(_)
                | Header::Route(_)
                | Header::MaxForwards(_)
        ) {
            headers.push(h.clone());
        }
    }
    let seq = message::cseq(invite).map(|c| c.0).unwrap_or(1);
    headers.push(
        rsip::typed::CSeq {
            seq,
            method: Method::Cancel,
        }
        .into(),
    );
    Request {
        method: Method::Cancel,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: vec![],
    }
}

pub(super) fn retry_after(resp: &Response) -> Option<Duration> {
    let value = message::header_value(&resp.headers, "Retry-After")?;
    let secs: u64 = value
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_timeouts_408_and_5xx_fail_over() {
        let rejected = |code| CallFailure::Rejected {
            trunk: "a".into(),
            code,
            reason: String::new(),
        };
        assert!(rejected(503).allows_failover());
        assert!(rejected(408).allows_failover());
        assert!(
            CallFailure::Timeout {
                trunk: "a".into(),
                address: "x".into()
            }
            .allows_failover()
        );
        for code in [404, 486, 603, 403] {
            assert!(!rejected(code).allows_failover(), "{code}");
        }
        assert!(!CallFailure::Cancelled.allows_failover());
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut r = Response::default();
        r.headers.push(Header::Other(
            "Retry-After".into(),
            "120 (maintenance)".into(),
        ));
        assert_eq!(retry_after(&r), Some(Duration::from_secs(120)));
        let mut r = Response::default();
        r.headers
            .push(Header::Other("Retry-After".into(), "999999".into()));
        assert_eq!(retry_after(&r), Some(Duration::from_secs(3600)));
    }
}
