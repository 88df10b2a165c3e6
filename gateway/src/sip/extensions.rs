//! The headers of the SIP extensions the gateway speaks, read and written: option tags
//! (Require, Supported, Unsupported: RFC 3261 §19.2), reliable provisionals (RSeq, RFC 3262),
//! session timers (Session-Expires, Min-SE: RFC 4028), Reason (RFC 3326) and the identity
//! headers of RFC 3325, RFC 5806 and RFC 7044. Core RFC 3261 parsing stays in `message`.

use rsip::{Header, Method, Request, Response};

use super::message::header_value;

/// Option tags the gateway implements as a UAS (§19.2): session timers (RFC 4028). A request
/// that requires any other extension is refused with 420 rather than half-served.
const SUPPORTED_OPTIONS: &[&str] = &["timer"];

/// The option tags in all `name` headers (Require, Supported: §20.32, §20.37), lowercase.
pub fn option_tags(headers: &rsip::Headers, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| {
            let text = h.to_string();
            let (n, value) = text.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.to_string())
        })
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `Supported:` with the option tags the gateway implements as a UAS (§20.37), for
/// OPTIONS answers and our 2xx to INVITEs.
pub fn supported_header() -> Header {
    Header::Other("Supported".into(), SUPPORTED_OPTIONS.join(", "))
}

/// The option tags `request` requires (its Require headers, §20.32) that the gateway does
/// not support.
pub fn unsupported_requirements(request: &Request) -> Vec<String> {
    option_tags(&request.headers, "Require")
        .into_iter()
        .filter(|t| !SUPPORTED_OPTIONS.contains(&t.as_str()))
        .collect()
}

/// The user (number) of the first URI in the `name` header (P-Asserted-Identity, Diversion,
/// History-Info: `<sip:user@host>` or `<tel:+number>`, parameters after), at most 64
/// characters of the SIP user grammar; `None` when there is none.
pub fn identity_user(headers: &rsip::Headers, name: &str) -> Option<String> {
    let value = header_value(headers, name)?;
    let uri = match value.split_once('<') {
        Some((_, rest)) => rest.split('>').next()?,
        None => value.split([',', ';']).next()?,
    };
    let user = match uri.trim().split_once(':')? {
        ("tel", number) => number.split(';').next()?,
        ("sip" | "sips", rest) => rest.split_once('@')?.0.split(';').next()?,
        _ => return None,
    };
    let user: String = user.chars().take(64).collect();
    (!user.is_empty() && crate::sip::values::check_user("identity", &user).is_ok()).then_some(user)
}

/// The smallest session interval the gateway accepts, and the one it asks for when a trunk
/// proposes less (RFC 4028 §4: never below 90 s).
pub const MIN_SE: u32 = 90;

/// Who refreshes a session (RFC 4028 §4), relative to the transaction that set it: `Uac` is
/// the side that sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The request's sender.
    Uac,
    /// The request's receiver.
    Uas,
}

/// A Session-Expires header (RFC 4028 §4; compact form `x`): the interval, seconds, and the
/// refresher if named.
pub fn session_expires(headers: &rsip::Headers) -> Option<(u32, Option<Refresher>)> {
    let value = header_value(headers, "Session-Expires").or_else(|| header_value(headers, "x"))?;
    let mut parts = value.split(';');
    let interval = parts.next()?.trim().parse().ok()?;
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match v.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    Some((interval, refresher))
}

/// A Min-SE header's seconds (RFC 4028 §5).
pub fn min_se(headers: &rsip::Headers) -> Option<u32> {
    header_value(headers, "Min-SE")?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `Session-Expires: <seconds>[;refresher=…]`.
pub fn session_expires_header(seconds: u32, refresher: Option<Refresher>) -> Header {
    let value = match refresher {
        Some(Refresher::Uac) => format!("{seconds};refresher=uac"),
        Some(Refresher::Uas) => format!("{seconds};refresher=uas"),
        None => seconds.to_string(),
    };
    Header::Other("Session-Expires".into(), value)
}

/// The RSeq of a reliable provisional response (`Require: 100rel` and an RSeq, RFC 3262
/// §7.1), or `None` for an unreliable one.
pub fn reliable_rseq(response: &Response) -> Option<u32> {
    if !(101..200).contains(&response.status_code.code())
        || !option_tags(&response.headers, "Require")
            .iter()
            .any(|t| t == "100rel")
    {
        return None;
    }
    header_value(&response.headers, "RSeq")?.trim().parse().ok()
}

/// The Unsupported header for a 420 Bad Extension to `request` (§8.2.2.3), or `None` when
/// the gateway supports all it requires. ACK and CANCEL are never refused (§8.2.2.3).
pub fn bad_extension(request: &Request) -> Option<Header> {
    if matches!(request.method, Method::Ack | Method::Cancel) {
        return None;
    }
    let unsupported = unsupported_requirements(request);
    (!unsupported.is_empty()).then(|| Header::Other("Unsupported".into(), unsupported.join(", ")))
}

/// A Reason header (RFC 3326) for a BYE or CANCEL of ours: the Q.850 cause that fits the
/// call's end `reason`, with the reason itself as the text, so the trunk's records and the
/// gateway's CDR name the same thing.
pub fn reason_header(reason: &str) -> Header {
    let cause = match reason {
        "hangup" => 16,                      // normal call clearing
        "no_answer" => 19,                   // no answer from user (user alerted)
        "no_ack" | "session_expired" => 102, // recovery on timer expiry
        "transferred" => 16,
        "media_failed" | "media_timeout" => 41, // temporary failure
        "shutdown" | "internal_error" => 41,
        _ => 16,
    };
    let text: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    Header::Other(
        "Reason".into(),
        format!("Q.850;cause={cause};text=\"{text}\""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_read_from_sip_and_tel_uris_and_junk_is_refused() {
        let headers = |name: &str, value: &str| {
            let mut h = rsip::Headers::default();
            h.push(Header::Other(name.into(), value.into()));
            h
        };
        let pai =
            |v: &str| identity_user(&headers("P-Asserted-Identity", v), "P-Asserted-Identity");
        assert_eq!(
            pai("\"Ann\" <sip:+4930123@carrier.example>").as_deref(),
            Some("+4930123")
        );
        assert_eq!(
            pai("<tel:+4930123;phone-context=x>, <sip:a@b>").as_deref(),
            Some("+4930123")
        );
        assert_eq!(
            pai("sip:ann@carrier.example;user=phone").as_deref(),
            Some("ann")
        );
        assert_eq!(pai("<http://evil>"), None);
        assert_eq!(
            pai("<sip:a\"b@host>"),
            None,
            "only the SIP user grammar passes"
        );
        let diversion = headers("Diversion", "<sip:+4930555@pbx>;reason=unconditional");
        assert_eq!(
            identity_user(&diversion, "Diversion").as_deref(),
            Some("+4930555")
        );
        assert_eq!(identity_user(&diversion, "History-Info"), None);
    }
}
