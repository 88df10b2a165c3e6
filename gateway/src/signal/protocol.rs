//! The WebSocket signaling protocol, version 1: one JSON object per message, each with a
//! `type`. Documented for integrators in `docs/protocol.md`; this file is the source of truth.

use crate::call::{CallEvent, Refusal};
use serde::{Deserialize, Serialize};

/// Protocol version announced in `hello`.
pub const VERSION: u32 = 1;

/// Messages from the browser.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Authenticate with a JWT (HS256) minted by the website's backend.
    Auth {
        /// The token.
        token: String,
    },
    /// Place a call to a target name (or a number, if the token allows it) with an SDP offer.
    Call {
        /// Target name or number.
        to: String,
        /// The browser's SDP offer (non-trickle: gather first, or the gateway's ICE-lite
        /// answer still works with the candidates the browser sends later in STUN).
        sdp: String,
    },
    /// Take inbound calls for an identity: the token's subject (a token is always needed).
    Register {
        /// The identity that `[inbound]` routes numbers to.
        identity: String,
    },
    /// Accept an `incoming` call with the browser's SDP answer.
    Answer {
        /// The call.
        call_id: String,
        /// The browser's SDP answer to the gateway's offer.
        sdp: String,
    },
    /// Send DTMF digits on a call (RFC 4733 towards the trunk).
    Dtmf {
        /// The call.
        call_id: String,
        /// Digits 0-9, *, #, A-D.
        digits: String,
    },
    /// Put the far end on hold (re-INVITE `sendonly`); audio stops both ways.
    Hold {
        /// The call.
        call_id: String,
    },
    /// Resume a held call (re-INVITE `sendrecv`).
    Unhold {
        /// The call.
        call_id: String,
    },
    /// Hang up a call.
    Hangup {
        /// The call.
        call_id: String,
    },
    /// Transfer the far end to a target name (or a number, if the token allows), with the
    /// same checks as `call` (blind transfer, REFER toward the trunk).
    Transfer {
        /// The call.
        call_id: String,
        /// Target name or number.
        to: String,
    },
    /// A new SDP offer on a live call: an ICE restart after a network change (new
    /// `a=ice-ufrag`/`a=ice-pwd`), answered with `renegotiated`.
    Renegotiate {
        /// The call.
        call_id: String,
        /// The browser's new offer.
        sdp: String,
    },
    /// Test the media path before a call: the gateway answers the offer and echoes the
    /// browser's audio for [`crate::call::PREFLIGHT_SECONDS`], dialling nothing.
    Preflight {
        /// The browser's SDP offer, as for `call`.
        sdp: String,
    },
    /// Take back a call whose connection dropped, with the token given with it.
    Resume {
        /// The call.
        call_id: String,
        /// The call's `resume_token`.
        token: String,
    },
}

/// Messages to the browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Sent once on connect.
    Hello {
        /// Protocol version.
        version: u32,
        /// True when calls need an `auth` first.
        auth_required: bool,
        /// STUN/TURN servers for the peer connection, with TURN credentials, when the
        /// gateway has some and needs no `auth` (else they come with `authenticated`).
        #[serde(skip_serializing_if = "Vec::is_empty", default)]
        ice_servers: Vec<crate::rtc::ice_servers::IceServer>,
    },
    /// `auth` succeeded.
    Authenticated {
        /// The token's subject.
        subject: String,
        /// STUN/TURN servers for the peer connection, with TURN credentials for this
        /// subject, when the gateway has some.
        #[serde(skip_serializing_if = "Vec::is_empty", default)]
        ice_servers: Vec<crate::rtc::ice_servers::IceServer>,
    },
    /// `register` succeeded: inbound calls for the identity come to this connection.
    Registered {
        /// The identity.
        identity: String,
    },
    /// Another connection registered the same identity: its inbound calls go there now.
    Unregistered {
        /// The identity.
        identity: String,
        /// Why, in words.
        reason: String,
    },
    /// The gateway is draining: connect again (through the load balancer, to another node)
    /// and `register` there; this connection's calls go on until they end.
    Reconnect {
        /// The identity that was registered here.
        identity: String,
        /// Why, in words.
        reason: String,
    },
    /// A call from a trunk for the registered identity; accept with `answer`, refuse with
    /// `hangup`.
    Incoming {
        /// The new call's id.
        call_id: String,
        /// Caller ID as the trunk sent it.
        from: String,
        /// The number that was dialled.
        to: String,
        /// The gateway's SDP offer.
        sdp: String,
        /// The caller as the trunk asserts it (P-Asserted-Identity), when it does.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        asserted: Option<String>,
        /// The number the call was diverted from (Diversion or History-Info), when it was.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        diverted_from: Option<String>,
        /// Takes the call back on a new connection if this one drops (`resume`).
        #[serde(default)]
        resume_token: String,
    },
    /// The SDP answer for a `call`; media can start while the trunk is dialled.
    Answer {
        /// The new call's id.
        call_id: String,
        /// The gateway's SDP answer.
        sdp: String,
        /// Takes the call back on a new connection if this one drops (`resume`).
        #[serde(default)]
        resume_token: String,
    },
    /// The SDP answer to `preflight`: the browser's audio comes back until `seconds` pass.
    PreflightAnswer {
        /// The gateway's SDP answer.
        sdp: String,
        /// How long the echo runs.
        seconds: u64,
    },
    /// `resume` succeeded: the call's events come to this connection again, starting with
    /// those that happened meanwhile.
    Resumed {
        /// The call.
        call_id: String,
    },
    /// The trunk settled on a codec of another width than the call's answer let the browser
    /// code (a trunk that speaks Opus and G.711 answered G.711): the client is to send a new
    /// offer in `renegotiate` (no ICE restart), whose answer carries the new caps.
    RenegotiationNeeded {
        /// The call.
        call_id: String,
        /// The widest audio the trunk side now carries, samples a second.
        audio_hz: u32,
    },
    /// The gateway's SDP answer to `renegotiate`; media moves to the path the new ICE checks
    /// select.
    Renegotiated {
        /// The call.
        call_id: String,
        /// The gateway's SDP answer.
        sdp: String,
    },
    /// The trunk is trying (100) or reports session progress (183).
    Progress {
        /// The call.
        call_id: String,
        /// SIP status.
        sip_code: u16,
    },
    /// The far end is ringing (180).
    Ringing {
        /// The call.
        call_id: String,
    },
    /// A `transfer` progressed: 202 when the trunk took it, then the status of the call to
    /// the transfer target; a 2xx is followed by `ended` with reason `transferred`.
    TransferProgress {
        /// The call.
        call_id: String,
        /// SIP status.
        sip_code: u16,
    },
    /// The far end answered.
    Answered {
        /// The call.
        call_id: String,
    },
    /// A DTMF digit from the far end.
    Dtmf {
        /// The call.
        call_id: String,
        /// The digit.
        digit: String,
    },
    /// The call is over.
    Ended {
        /// The call.
        call_id: String,
        /// Why, in words: `hangup`, `remote_hangup`, `busy`, `rejected`, `no_answer`,
        /// `trunk_unavailable`, `media_failed`, `shutdown`.
        reason: String,
        /// The SIP status that ended it (200 for a normal hang-up after answer).
        sip_code: u16,
    },
    /// A message could not be acted on; the connection and other calls are unaffected.
    Error {
        /// Machine-readable code (see [`ErrorCode`]).
        code: ErrorCode,
        /// What went wrong and what to do.
        message: String,
        /// The call concerned, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
    },
}

/// Error codes of the `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not an object with a string `type`.
    BadJson,
    /// `type` is not one of the client messages.
    UnknownType,
    /// A field is missing, unknown or has the wrong type.
    BadMessage,
    /// The token is missing, malformed, badly signed or expired.
    Unauthorized,
    /// The token (or anonymous mode) does not allow calling this target.
    Forbidden,
    /// No call with this id on this connection.
    NoSuchCall,
    /// The SDP offer cannot be used.
    BadSdp,
    /// A concurrent-call limit was reached.
    LimitReached,
    /// The gateway is shutting down and takes no new calls.
    Draining,
    /// The identity is registered on another connection (`[http] register_conflict = "refuse"`).
    Conflict,
    /// Something failed inside the gateway; the message says what.
    Internal,
    /// The trunk refused a `transfer`, or its target did not answer; the call goes on.
    TransferFailed,
    /// `resume` named no waiting call, or the wrong token.
    ResumeRefused,
}

/// Reads one text frame, classifying failures as the protocol's error codes.
pub fn parse(text: &str) -> Result<ClientMessage, (ErrorCode, String)> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| (ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
    else {
        return Err((
            ErrorCode::BadJson,
            "expected an object with a string field `type`".into(),
        ));
    };
    const KNOWN: [&str; 12] = [
        "auth",
        "call",
        "register",
        "answer",
        "dtmf",
        "hold",
        "unhold",
        "hangup",
        "transfer",
        "resume",
        "renegotiate",
        "preflight",
    ];
    if !KNOWN.contains(&kind.as_str()) {
        return Err((
            ErrorCode::UnknownType,
            format!(
                "unknown message type `{kind}`; expected one of {}",
                KNOWN.join(", ")
            ),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| (ErrorCode::BadMessage, format!("bad `{kind}` message: {e}")))
}

/// The wire message for a call's event; `None` for events that stay inside the gateway
/// (media moves, hold state, re-INVITEs).
pub fn from_call_event(call_id: String, event: CallEvent) -> Option<ServerMessage> {
    Some(match event {
        CallEvent::Offered {
            from,
            to,
            sdp,
            asserted,
            diverted_from,
        } => ServerMessage::Incoming {
            call_id,
            from,
            to,
            sdp,
            asserted,
            diverted_from,
            // Filled in by the connection, which holds the call's token.
            resume_token: String::new(),
        },
        CallEvent::Ringing => ServerMessage::Ringing { call_id },
        CallEvent::Progress { code } => ServerMessage::Progress {
            call_id,
            sip_code: code,
        },
        CallEvent::Answered => ServerMessage::Answered { call_id },
        CallEvent::RenegotiationNeeded { audio_hz } => {
            ServerMessage::RenegotiationNeeded { call_id, audio_hz }
        }
        CallEvent::Renegotiated { sdp } => ServerMessage::Renegotiated { call_id, sdp },
        CallEvent::TransferProgress { code } => ServerMessage::TransferProgress {
            call_id,
            sip_code: code,
        },
        CallEvent::Ended { reason, sip_code } => ServerMessage::Ended {
            call_id,
            reason,
            sip_code,
        },
        CallEvent::Dtmf(d) => ServerMessage::Dtmf {
            call_id,
            digit: d.to_string(),
        },
        CallEvent::Refused { kind, message } => ServerMessage::Error {
            code: match kind {
                Refusal::NotAnswered | Refusal::NotOffered => ErrorCode::BadMessage,
                Refusal::BadAnswer => ErrorCode::BadSdp,
                Refusal::TrunkRefused => ErrorCode::Internal,
                Refusal::TransferFailed => ErrorCode::TransferFailed,
                Refusal::BadOffer => ErrorCode::BadSdp,
                Refusal::TooManyRenegotiations => ErrorCode::LimitReached,
            },
            message,
            call_id: Some(call_id),
        },
        CallEvent::TrunkMedia(_)
        | CallEvent::TrunkSource { .. }
        | CallEvent::Held(_)
        | CallEvent::TrunkReinvite
        | CallEvent::TransferRequested { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_errors_are_classified() {
        assert_eq!(
            parse(r#"{"type":"hangup","call_id":"c1"}"#),
            Ok(ClientMessage::Hangup {
                call_id: "c1".into()
            })
        );
        assert_eq!(parse("{nope").unwrap_err().0, ErrorCode::BadJson);
        assert_eq!(parse("[1,2]").unwrap_err().0, ErrorCode::BadJson);
        assert_eq!(
            parse(r#"{"type":"fly"}"#).unwrap_err().0,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse(r#"{"type":"call","to":"sales"}"#).unwrap_err().0,
            ErrorCode::BadMessage
        );
        assert_eq!(
            parse(r#"{"type":"hangup","call_id":"c1","x":1}"#)
                .unwrap_err()
                .0,
            ErrorCode::BadMessage
        );
    }

    #[test]
    fn server_messages_have_a_type_field() {
        let text = serde_json::to_string(&ServerMessage::Ended {
            call_id: "c".into(),
            reason: "busy".into(),
            sip_code: 486,
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"type":"ended","call_id":"c","reason":"busy","sip_code":486}"#
        );
        let text = serde_json::to_string(&ServerMessage::Error {
            code: ErrorCode::NoSuchCall,
            message: "m".into(),
            call_id: None,
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"type":"error","code":"no_such_call","message":"m"}"#
        );
    }
}
