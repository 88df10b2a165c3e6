//! What the call machine takes from the signaling side and tells the outside.

use std::net::IpAddr;

use crate::media::session::RtpSource;
use crate::sip::sdp::RemoteMedia;

/// What the call tells the outside.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// Inbound: the browser is offered the call (sent by the set-up, not the machine).
    Offered {
        /// The trunk caller.
        from: String,
        /// The number dialled.
        to: String,
        /// Our WebRTC offer.
        sdp: String,
        /// The caller as the trunk asserts it (P-Asserted-Identity, RFC 3325), if given.
        asserted: Option<String>,
        /// The number the call was diverted from (Diversion, RFC 5806, or the first
        /// History-Info entry, RFC 7044), if it was.
        diverted_from: Option<String>,
    },
    /// The far end rings.
    Ringing,
    /// Another provisional response (183 …).
    Progress {
        /// Its status.
        code: u16,
    },
    /// Both legs are up.
    Answered,
    /// The call is over.
    Ended {
        /// One of the documented `ended.reason` values.
        reason: String,
        /// The SIP status that ended it.
        sip_code: u16,
    },
    /// The trunk side pressed a key (SIP INFO).
    Dtmf(char),
    /// A command could not be carried out; the call goes on.
    Refused {
        /// Why, in the user's terms.
        kind: Refusal,
        /// What happened.
        message: String,
    },
    /// Trunk media goes here now (answer, early media, re-INVITE).
    TrunkMedia(RemoteMedia),
    /// The trunk's RTP may come from this policy and signalling address.
    TrunkSource {
        /// The trunk's `rtp_source`.
        policy: RtpSource,
        /// The trunk's signalling IP.
        ip: IpAddr,
    },
    /// The call was put on hold (true) or resumed; media pauses meanwhile.
    Held(bool),
    /// The trunk re-INVITEd and was answered.
    TrunkReinvite,
    /// The trunk asked to transfer the call to `number` on `trunk`: ask the plugins, then
    /// resolve its addresses and hand them to [`super::Call::handle_transfer_candidates`]
    /// (or a plugin's refusal to [`super::Call::handle_transfer_refused`]).
    TransferRequested {
        /// The trunk the Refer-To names.
        trunk: String,
        /// The number on it.
        number: String,
        /// The REFER's Referred-By (RFC 3892), if any.
        referred_by: Option<String>,
    },
    /// The trunk's codec carries audio of another width than the browser was last told
    /// (`audio_hz` samples a second): the browser is asked for a new offer, whose answer
    /// caps its encoder anew. Emitted by the call's driver.
    RenegotiationNeeded {
        /// The widest audio the trunk side now carries.
        audio_hz: u32,
    },
    /// The gateway's SDP answer to the browser's `renegotiate` offer.
    Renegotiated {
        /// The answer.
        sdp: String,
    },
    /// Our transfer (REFER) progressed: 202 when the trunk took it, then the status of the
    /// transfer target's call as the trunk NOTIFYs it (RFC 3515 §2.4.5).
    TransferProgress {
        /// The status.
        code: u16,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Hold or DTMF before the answer.
    NotAnswered,
    /// The trunk refused or did not answer a re-INVITE.
    TrunkRefused,
    /// `answer` for a call that was not offered to this browser (or no longer rings).
    NotOffered,
    /// The browser's SDP answer is unusable.
    BadAnswer,
    /// The trunk refused a transfer, or the transfer target did not answer.
    TransferFailed,
    /// The browser's new offer (`renegotiate`) is unusable.
    BadOffer,
    /// The browser renegotiated more often than the gateway allows (ten a minute).
    TooManyRenegotiations,
}

/// What the signaling side can ask of a running call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    /// Hang up.
    Hangup,
    /// Send DTMF digits to the trunk.
    Dtmf(String),
    /// The browser accepted an inbound call with this SDP answer.
    Answer(String),
    /// Hold (true) or resume (false).
    Hold(bool),
    /// Transfer the trunk's party to this number (blind, REFER).
    Transfer(String),
    /// The browser's new SDP offer on the live call (an ICE restart, usually).
    Renegotiate(String),
}
