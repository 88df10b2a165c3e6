//! Framing, validation and small accessors around `rsip` messages.
//!
//! `rsip` parses the start line and headers but trusts whatever follows the blank line to be
//! the body, knows no compact header names and no line folding. The gateway meets peers that
//! use all three, so every message passes through [`parse`] first, which frames it by
//! `Content-Length` (RFC 3261 §18.3), unfolds continuation lines and expands compact forms
//! (§7.3.3) before handing canonical bytes to `rsip`.

use rsip::prelude::*;
use rsip::{Header, Method, Request, Response, SipMessage};
use thiserror::Error;

use super::canonical::canonical_head;

/// Why a received message was refused. Each variant names what to look for in a capture.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// No blank line ends the headers.
    #[error("message has no end of headers (CRLF CRLF): truncated or not SIP")]
    NoHeaderEnd,
    /// Headers are not UTF-8.
    #[error("headers are not valid UTF-8")]
    NotUtf8,
    /// Content-Length is not a number.
    #[error("Content-Length `{0}` is not a number")]
    BadContentLength(String),
    /// The body is shorter than Content-Length says (§18.3: a datagram that is too short
    /// is rejected with 400).
    #[error("Content-Length says {declared} bytes but the body has {actual}")]
    BodyTooShort {
        /// What the header said.
        declared: usize,
        /// What arrived.
        actual: usize,
    },
    /// Content-Length announces more than a stream message may hold.
    #[error("Content-Length {0} is larger than the {MAX_BODY} bytes a SIP body may have here")]
    BodyTooLarge(usize),
    /// A request whose method this gateway does not implement (§8.2.1: 501, with Allow).
    #[error("method `{0}` is not implemented here")]
    UnknownMethod(String),
    /// A header that must appear once appears more often (RFC 4475 §3.1.2.14).
    #[error("more than one {0} header")]
    DuplicateHeader(&'static str),
    /// The CSeq method is not the request's method (§8.1.1.5, RFC 4475 §3.1.2.16).
    #[error("CSeq method `{cseq}` does not match the request method `{method}`")]
    CSeqMismatch {
        /// The request's method.
        method: String,
        /// The CSeq's method.
        cseq: String,
    },
    /// A Request-URI without a scheme, such as one in angle brackets (RFC 4475 §3.1.2.4).
    #[error("the Request-URI has no scheme (write it without < >)")]
    BadRequestUri,
    /// A quoted display name without its closing quote (RFC 4475 §3.1.2.3).
    #[error("unbalanced quotes in the {0} header")]
    UnbalancedQuotes(&'static str),
    /// `rsip` refused the start line or a header.
    #[error("unparseable SIP: {0}")]
    Syntax(String),
    /// A header every request and response must carry (§8.1.1) is missing or unreadable.
    #[error("missing or malformed {0} header")]
    MissingHeader(&'static str),
}

/// The largest body a message may announce: SDP is a few KiB, and a stream message as a
/// whole is held to 64 KiB by the transport.
pub const MAX_BODY: usize = 60 * 1024;

/// Outcome of looking for one message at the start of a stream buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// More bytes are needed.
    Incomplete,
    /// A whole message occupies the first `n` bytes.
    Complete(usize),
}

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn content_length_of(head: &str) -> Result<Option<usize>, MessageError> {
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
            let value = value.trim();
            return value
                .parse()
                .map(Some)
                .map_err(|_| MessageError::BadContentLength(value.to_string()));
        }
    }
    Ok(None)
}

/// Finds the end of the first message in a stream (TCP/TLS) buffer. Stream transports
/// require Content-Length (§18.3); a missing one is taken as zero, as most stacks do.
pub fn frame(buf: &[u8]) -> Result<Frame, MessageError> {
    // Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are consumed as their own frame.
    let blank = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if blank > 0 {
        return Ok(Frame::Complete(blank));
    }
    let Some(end) = find_header_end(buf) else {
        return Ok(Frame::Incomplete);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| MessageError::NotUtf8)?;
    let body_len = content_length_of(head)?.unwrap_or(0);
    // Checked before any arithmetic: a hostile Content-Length near usize::MAX must neither
    // overflow nor make the reader wait for gigabytes.
    if body_len > MAX_BODY {
        return Err(MessageError::BodyTooLarge(body_len));
    }
    let total = end + 4 + body_len;
    Ok(if buf.len() >= total {
        Frame::Complete(total)
    } else {
        Frame::Incomplete
    })
}

/// The user part of a URI as the peer wrote it: percent-escapes decoded (§19.1.4: an escaped
/// unreserved character is the same character), control characters dropped.
pub fn uri_user(uri: &rsip::Uri) -> Option<String> {
    let user = &uri.auth.as_ref()?.user;
    let bytes = user.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&out);
    Some(text.chars().filter(|c| !c.is_control()).collect())
}

/// Parses one whole datagram (or one framed stream message) into a validated message.
pub fn parse(buf: &[u8]) -> Result<SipMessage, MessageError> {
    let end = find_header_end(buf).ok_or(MessageError::NoHeaderEnd)?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| MessageError::NotUtf8)?;
    let available = buf.len() - (end + 4);
    let body_len = match content_length_of(head)? {
        Some(declared) if declared > available => {
            return Err(MessageError::BodyTooShort {
                declared,
                actual: available,
            });
        }
        Some(declared) => declared,
        // §18.3: over UDP a missing Content-Length means the rest of the datagram.
        None => available,
    };
    // An extension method is valid SIP that we do not implement: say so (501), rather than
    // call it malformed (400).
    if let Some(method) = head.split(' ').next().filter(|m| !m.starts_with("SIP/"))
        && !KNOWN_METHODS.contains(&method)
        && !method.is_empty()
        && method.bytes().all(is_token_byte)
    {
        return Err(MessageError::UnknownMethod(method.to_string()));
    }
    let mut canonical = canonical_head(head).into_bytes();
    canonical.extend_from_slice(b"\r\n\r\n");
    canonical.extend_from_slice(&buf[end + 4..end + 4 + body_len]);
    let msg = SipMessage::try_from(canonical.as_slice())
        .map_err(|e| MessageError::Syntax(e.to_string()))?;
    validate(&msg)?;
    Ok(msg)
}

/// Methods `rsip` knows; anything else is answered 501.
const KNOWN_METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "MESSAGE",
    "UPDATE",
];

/// RFC 3261 §25.1 `token` characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// §8.1.1 / §8.2.2: the headers that identify a transaction and a dialog must be readable,
/// and appear once; a request's CSeq names its own method.
fn validate(msg: &SipMessage) -> Result<(), MessageError> {
    let headers = match msg {
        SipMessage::Request(r) => &r.headers,
        SipMessage::Response(r) => &r.headers,
    };
    let once = |name: &'static str, is: fn(&Header) -> bool| {
        if headers.iter().filter(|h| is(h)).count() > 1 {
            Err(MessageError::DuplicateHeader(name))
        } else {
            Ok(())
        }
    };
    once("To", |h| matches!(h, Header::To(_)))?;
    once("From", |h| matches!(h, Header::From(_)))?;
    once("Call-ID", |h| matches!(h, Header::CallId(_)))?;
    once("CSeq", |h| matches!(h, Header::CSeq(_)))?;
    for (name, value) in [
        ("To", msg.to_header().map(|h| h.value().to_string())),
        ("From", msg.from_header().map(|h| h.value().to_string())),
    ] {
        if let Ok(value) = value
            && !quotes_balance(&value)
        {
            return Err(MessageError::UnbalancedQuotes(name));
        }
    }
    msg.via_header()
        .ok()
        .and_then(|v| v.typed().ok())
        .ok_or(MessageError::MissingHeader("Via"))?;
    msg.call_id_header()
        .map_err(|_| MessageError::MissingHeader("Call-ID"))?;
    msg.cseq_header()
        .ok()
        .and_then(|c| c.typed().ok())
        .ok_or(MessageError::MissingHeader("CSeq"))?;
    msg.from_header()
        .ok()
        .and_then(|f| f.typed().ok())
        .ok_or(MessageError::MissingHeader("From"))?;
    msg.to_header()
        .ok()
        .and_then(|t| t.typed().ok())
        .ok_or(MessageError::MissingHeader("To"))?;
    if let SipMessage::Request(request) = msg {
        if request.uri.scheme.is_none() {
            return Err(MessageError::BadRequestUri);
        }
        if let Some((_, method)) = cseq(request)
            && method != request.method
        {
            return Err(MessageError::CSeqMismatch {
                method: request.method.to_string(),
                cseq: method.to_string(),
            });
        }
    }
    Ok(())
}

/// True when every `"` that opens a quoted string is closed (a backslash escapes, §25.1).
fn quotes_balance(value: &str) -> bool {
    let mut inside = false;
    let mut escaped = false;
    for c in value.chars() {
        match (inside, escaped, c) {
            (true, false, '\\') => escaped = true,
            (true, true, _) => escaped = false,
            (_, _, '"') => inside = !inside,
            _ => {}
        }
    }
    !inside
}

/// Builds a 400 (a 501 for a method we do not implement) for a request that could not be
/// parsed, by copying the headers §8.2.6.2
/// requires (Via, From, To, Call-ID, CSeq) from the raw text. Returns `None` when the bytes
/// are not recognisably a request with those headers: such garbage is dropped silently.
pub fn bad_request_for(raw: &[u8], reason: &MessageError) -> Option<Vec<u8>> {
    let end = find_header_end(raw).unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]);
    let canonical = canonical_head(&head);
    let mut lines = canonical.split("\r\n");
    let start = lines.next()?;
    if !start.ends_with("SIP/2.0") || start.starts_with("SIP/2.0") {
        return None;
    }
    // Never answer an ACK (§17.2.1: ACKs get no response).
    if start.starts_with("ACK ") {
        return None;
    }
    let mut copied = String::new();
    let mut have = [false; 5];
    for line in lines {
        let Some((name, _)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        for (i, wanted) in ["Via", "From", "To", "Call-ID", "CSeq"].iter().enumerate() {
            if name.eq_ignore_ascii_case(wanted) {
                have[i] = true;
                copied.push_str(line);
                copied.push_str("\r\n");
            }
        }
    }
    if !have.iter().all(|h| *h) {
        return None;
    }
    let phrase: String = reason
        .to_string()
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    let status = match reason {
        MessageError::UnknownMethod(_) => {
            "501 Not Implemented\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, REFER, NOTIFY"
        }
        _ => "400 Bad Request",
    };
    Some(
        format!(
            "SIP/2.0 {status}\r\n{copied}Warning: 399 gateway \"{}\"\r\nContent-Length: 0\r\n\r\n",
            phrase.replace('"', "'")
        )
        .into_bytes(),
    )
}

/// Serialises a request, setting Content-Length from the body.
pub fn request_bytes(req: &Request) -> Vec<u8> {
    let mut req = req.clone();
    set_content_length(&mut req.headers, req.body.len());
    req.to_string().into_bytes()
}

/// Serialises a response, setting Content-Length from the body.
pub fn response_bytes(resp: &Response) -> Vec<u8> {
    let mut resp = resp.clone();
    set_content_length(&mut resp.headers, resp.body.len());
    resp.to_string().into_bytes()
}

fn set_content_length(headers: &mut rsip::Headers, len: usize) {
    headers.retain(|h| !matches!(h, Header::ContentLength(_)));
    headers.push(Header::ContentLength(rsip::headers::ContentLength::new(
        len.to_string(),
    )));
}

/// The Call-ID value.
pub fn call_id(msg: &impl HeadersExt) -> Option<String> {
    msg.call_id_header().ok().map(|h| h.value().to_string())
}

/// The CSeq number and method.
pub fn cseq(msg: &impl HeadersExt) -> Option<(u32, Method)> {
    let typed = msg.cseq_header().ok()?.typed().ok()?;
    Some((typed.seq, typed.method))
}

/// The branch of the top Via: the transaction identifier of §17.1.3 / §17.2.3.
pub fn top_branch(msg: &impl HeadersExt) -> Option<String> {
    let via = msg.via_header().ok()?.typed().ok()?;
    via.branch().map(|b| b.to_string())
}

/// The tag of the To header.
pub fn to_tag(msg: &impl HeadersExt) -> Option<String> {
    msg.to_header()
        .ok()?
        .typed()
        .ok()?
        .tag()
        .map(|t| t.value().to_string())
}

/// The tag of the From header.
pub fn from_tag(msg: &impl HeadersExt) -> Option<String> {
    msg.from_header()
        .ok()?
        .typed()
        .ok()?
        .tag()
        .map(|t| t.value().to_string())
}

/// The value of the first header named `name` (case-insensitive), typed or not.
pub fn header_value(headers: &rsip::Headers, name: &str) -> Option<String> {
    headers.iter().find_map(|h| {
        let text = h.to_string();
        let (n, v) = text.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The methods the gateway acts on, for Allow headers (§20.5). Other methods it knows get
/// 405 with this list (§21.4.6), unknown ones 501 (§21.5.2).
pub const ALLOWED_METHODS: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, REFER, NOTIFY";

/// The methods the gateway accepts, for Allow headers (§20.5).
pub fn allow_header() -> Header {
    Header::Allow(rsip::headers::Allow::new(ALLOWED_METHODS))
}

/// A fresh random token for tags, branches and Call-IDs.
pub fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

/// A new branch with the RFC 3261 magic cookie (§8.1.1.7).
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token())
}

/// A final response refusing `req` (a fresh To-tag); a 503 says when to try again, in
/// `retry_after` seconds (§21.5.4: the server is temporarily overloaded).
pub fn refusal(req: &Request, code: u16, retry_after: u32) -> Response {
    let mut response = response_to(req, code, Some(&random_token()));
    if code == 503 {
        response.headers.push(rsip::Header::Other(
            "Retry-After".into(),
            retry_after.to_string(),
        ));
    }
    response
}

/// Builds a response to `req` with the headers §8.2.6.2 requires copied, and `to_tag`
/// added to To when the request's To has none.
pub fn response_to(req: &Request, code: u16, to_tag: Option<&str>) -> Response {
    let mut headers = rsip::Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_)
            | Header::From(_)
            | Header::CallId(_)
            | Header::CSeq(_)
            | Header::RecordRoute(_) => headers.push(h.clone()),
            Header::To(to) => {
                let has_tag = to.typed().ok().and_then(|t| t.tag().cloned()).is_some();
                match (has_tag, to_tag) {
                    (false, Some(tag)) => headers.push(Header::To(rsip::headers::To::new(
                        format!("{};tag={tag}", to.value()),
                    ))),
                    _ => headers.push(h.clone()),
                }
            }
            _ => {}
        }
    }
    Response {
        status_code: status(code),
        version: rsip::Version::V2,
        headers,
        body: vec![],
    }
}

/// `code` as a status line: rsip names the common codes; the ones it lacks get their RFC
/// reason phrase here rather than its placeholder "Other".
fn status(code: u16) -> rsip::StatusCode {
    let reason = match code {
        202 => "Accepted",                   // RFC 3515 §2.4.2
        420 => "Bad Extension",              // RFC 3261 §21.4.15
        422 => "Session Interval Too Small", // RFC 4028 §6
        491 => "Request Pending",            // RFC 3261 §21.4.27
        _ => return code.into(),
    };
    match rsip::StatusCode::from(code) {
        rsip::StatusCode::Other(..) => rsip::StatusCode::Other(code, reason.into()),
        known => known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@127.0.0.1 SIP/2.0\r\n\
v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
t: <sip:bob@127.0.0.1>\r\n\
f: <sip:alice@127.0.0.1>;tag=1928301774\r\n\
i: a84b4c76e66710\r\n\
CSeq: 314159\r\n INVITE\r\n\
l: 4\r\n\r\nv=0\r\n";

    #[test]
    fn compact_forms_and_folding_are_understood() {
        let msg = parse(INVITE.replace("v=0\r\n", "abcd").as_bytes()).unwrap();
        assert_eq!(call_id(&msg).unwrap(), "a84b4c76e66710");
        assert_eq!(cseq(&msg).unwrap(), (314159, Method::Invite));
        assert_eq!(from_tag(&msg).unwrap(), "1928301774");
        assert_eq!(top_branch(&msg).unwrap(), "z9hG4bK776asdhds");
        assert_eq!(msg.body(), b"abcd");
    }

    #[test]
    fn body_longer_than_content_length_is_truncated() {
        let msg = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(msg.body(), b"v=0\r");
    }

    #[test]
    fn body_shorter_than_content_length_is_refused_with_400() {
        let raw = INVITE.replace("l: 4", "l: 400");
        let err = parse(raw.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            MessageError::BodyTooShort {
                declared: 400,
                actual: 5
            }
        );
        let reply = String::from_utf8(bad_request_for(raw.as_bytes(), &err).unwrap()).unwrap();
        assert!(reply.starts_with("SIP/2.0 400 Bad Request\r\n"));
        assert!(reply.contains("Call-ID: a84b4c76e66710"));
        assert!(reply.contains("Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds"));
    }

    #[test]
    fn missing_mandatory_header_is_named() {
        let raw = INVITE.replace("i: a84b4c76e66710\r\n", "");
        assert_eq!(
            parse(raw.as_bytes()).unwrap_err(),
            MessageError::MissingHeader("Call-ID")
        );
        // Without a Call-ID there is nothing to answer to.
        assert!(bad_request_for(raw.as_bytes(), &MessageError::MissingHeader("Call-ID")).is_none());
    }

    #[test]
    fn whitespace_the_grammar_allows_around_separators_is_understood() {
        let text = "OPTIONS sip:gw@example.com SIP/2.0\r\nVia  : SIP  /  2.0\r\n /UDP  192.0.2.2 ;  branch =\r\n z9hG4bKsp1\r\nTO : <sip:gw@example.com>\r\nfrom: \"A ; B = C\" <sip:a@example.com;lr> ; tag = x1\r\nCall-ID: ws@1\r\ncseq: 0009\r\n  OPTIONS\r\nl: 0\r\n\r\n";
        let msg = parse(text.as_bytes()).unwrap();
        assert_eq!(top_branch(&msg).as_deref(), Some("z9hG4bKsp1"));
        assert_eq!(from_tag(&msg).as_deref(), Some("x1"));
        assert_eq!(cseq(&msg), Some((9, Method::Options)));
        // Inside quotes and angle brackets nothing is touched.
        let from = msg.from_header().unwrap().value().to_string();
        assert!(
            from.starts_with("\"A ; B = C\" <sip:a@example.com;lr>"),
            "{from}"
        );
    }

    #[test]
    fn a_semicolon_in_a_user_part_is_taken_as_part_of_the_user() {
        let text = "INVITE sip:+4930123;phone-context=example.com@gw.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKpc1\r\nFrom: <sip:+4930999;phone-context=example.com@pbx.example;user=phone>;tag=f1\r\nTo: <sip:+4930123;phone-context=example.com@gw.example>\r\nContact: <sip:pbx.example;transport=udp>\r\nCall-ID: pc@1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let SipMessage::Request(req) = parse(text.as_bytes()).unwrap() else {
            panic!("a request")
        };
        assert_eq!(
            uri_user(&req.uri).as_deref(),
            Some("+4930123;phone-context=example.com"),
            "{:?}",
            req.uri
        );
        assert_eq!(from_tag(&req).as_deref(), Some("f1"));
        assert_eq!(
            crate::sip::canonical::escape_user_semicolons(
                "<sip:host.example;lr>, <sips:a;b.c@d.example;x=1>"
            ),
            "<sip:host.example;lr>, <sips:a%3Bb%2Ec@d.example;x=1>"
        );
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let inputs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\r\n\r\n".to_vec(),
            b"INVITE\r\n\r\n".to_vec(),
            b"SIP/2.0 200\r\n\r\n".to_vec(),
            b"INVITE sip:x SIP/2.0\r\nVia: garbage\r\nCSeq: x\r\n\r\n".to_vec(),
            vec![0xff; 64],
            INVITE.as_bytes()[..60].to_vec(),
            INVITE
                .replace("CSeq: 314159\r\n INVITE", "CSeq: INVITE 1")
                .into_bytes(),
            INVITE.replace("l: 4", "l: -1").into_bytes(),
        ];
        for input in inputs {
            if let Err(e) = parse(&input) {
                let _ = bad_request_for(&input, &e);
            }
        }
        for cut in 0..INVITE.len() {
            let _ = parse(&INVITE.as_bytes()[..cut]);
            let _ = frame(&INVITE.as_bytes()[..cut]);
        }
    }

    #[test]
    fn stream_framing_uses_content_length() {
        let mut stream = INVITE.as_bytes().to_vec();
        assert_eq!(frame(&stream[..20]).unwrap(), Frame::Incomplete);
        stream.extend_from_slice(b"\r\n");
        let n = INVITE.len() - 1; // one byte of the 5-byte tail is beyond Content-Length
        assert_eq!(frame(&stream).unwrap(), Frame::Complete(n));
        assert_eq!(frame(b"\r\n\r\nINVITE").unwrap(), Frame::Complete(4));
    }
}
