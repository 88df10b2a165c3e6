//! The per-call state machine, sans-IO: what the browser is told and what happens to the
//! trunk leg as events arrive from either side. The driver in [`super`] does the I/O.

use std::time::Instant;

use crate::signal::protocol::ServerMessage;

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// INVITE sent, nothing back yet.
    Dialing,
    /// 180 received.
    Ringing,
    /// 183 with SDP: the browser hears the trunk's early media.
    EarlyMedia,
    /// 2xx received and ACKed.
    Answered,
    /// Over.
    Ended,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A provisional response; `early_media` when it carried SDP.
    Progress {
        /// 180, 183, …
        code: u16,
        /// It carried SDP.
        early_media: bool,
    },
    /// The trunk answered.
    Answered,
    /// The attempt failed with this SIP status (408 for timeouts, 503 for no trunk).
    Failed(u16),
    /// A plugin refused the call with this SIP status before anything was dialled.
    Refused(u16),
    /// The trunk sent BYE.
    TrunkHangup,
    /// The caller on the trunk gave up before the browser answered (CANCEL).
    TrunkCancelled,
    /// The browser hung up (message or WebSocket closed).
    BrowserHangup,
    /// The browser's media connection failed.
    BrowserLost,
    /// The gateway's drain deadline passed.
    Shutdown,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Tell the browser.
    Send(ServerMessage),
    /// End the trunk leg: CANCEL before the answer, BYE after.
    EndTrunk,
}

/// The call's state.
#[derive(Debug, Clone)]
pub struct CallState {
    call_id: String,
    phase: Phase,
    answered_at: Option<Instant>,
    /// Reason and SIP status once ended.
    pub end: Option<(String, u16)>,
}

/// The `ended.reason` for a failed INVITE.
pub fn failure_reason(code: u16) -> &'static str {
    match code {
        486 | 600 => "busy",
        408 | 480 => "no_answer",
        487 => "hangup",
        404 | 484 | 604 => "not_found",
        500..=599 => "trunk_unavailable",
        _ => "rejected",
    }
}

impl CallState {
    /// A new outbound call, dialling.
    pub fn new(call_id: &str) -> Self {
        CallState {
            call_id: call_id.to_string(),
            phase: Phase::Dialing,
            answered_at: None,
            end: None,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When the trunk answered.
    pub fn answered_at(&self) -> Option<Instant> {
        self.answered_at
    }

    fn ended(&mut self, reason: &str, code: u16) -> Output {
        self.phase = Phase::Ended;
        self.end = Some((reason.to_string(), code));
        Output::Send(ServerMessage::Ended {
            call_id: self.call_id.clone(),
            reason: reason.to_string(),
            sip_code: code,
        })
    }

    /// Feeds one input.
    pub fn on(&mut self, input: Input, now: Instant) -> Vec<Output> {
        if self.phase == Phase::Ended {
            return vec![];
        }
        let id = self.call_id.clone();
        let answered = self.phase == Phase::Answered;
        match input {
            // A provisional that lost the race with the 2xx (both were queued when the call
            // task looked) must not take an answered call back to ringing.
            Input::Progress {
                code: 180,
                early_media: false,
            } if !answered => {
                self.phase = Phase::Ringing;
                vec![Output::Send(ServerMessage::Ringing { call_id: id })]
            }
            Input::Progress { code, early_media } if !answered => {
                if early_media {
                    self.phase = Phase::EarlyMedia;
                }
                vec![Output::Send(ServerMessage::Progress {
                    call_id: id,
                    sip_code: code,
                })]
            }
            Input::Progress { .. } => vec![],
            Input::Answered => {
                self.phase = Phase::Answered;
                self.answered_at = Some(now);
                vec![Output::Send(ServerMessage::Answered { call_id: id })]
            }
            Input::Failed(code) => vec![self.ended(failure_reason(code), code)],
            Input::Refused(code) => vec![self.ended("rejected", code)],
            Input::TrunkHangup => vec![self.ended("remote_hangup", 200)],
            Input::TrunkCancelled => vec![self.ended("remote_hangup", 487)],
            Input::BrowserHangup => {
                let code = if answered { 200 } else { 487 };
                vec![Output::EndTrunk, self.ended("hangup", code)]
            }
            Input::BrowserLost => {
                let code = if answered { 200 } else { 487 };
                vec![Output::EndTrunk, self.ended("media_failed", code)]
            }
            Input::Shutdown => {
                let code = if answered { 200 } else { 487 };
                vec![Output::EndTrunk, self.ended("shutdown", code)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_ringing_does_not_unanswer_the_call() {
        let now = Instant::now();
        let mut c = CallState::new("c-1");
        c.on(Input::Answered, now);
        let late = c.on(
            Input::Progress {
                code: 180,
                early_media: false,
            },
            now,
        );
        assert!(late.is_empty(), "no ringing after answered");
        c.on(Input::BrowserHangup, now);
        assert_eq!(c.end, Some(("hangup".into(), 200)));
    }

    fn sent(outputs: &[Output]) -> Vec<String> {
        outputs
            .iter()
            .map(|o| match o {
                Output::Send(m) => serde_json::to_value(m).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                Output::EndTrunk => "END_TRUNK".into(),
            })
            .collect()
    }

    #[test]
    fn ringing_then_answer_then_remote_hangup() {
        let t = Instant::now();
        let mut c = CallState::new("c1");
        assert_eq!(
            sent(&c.on(
                Input::Progress {
                    code: 180,
                    early_media: false
                },
                t
            )),
            ["ringing"]
        );
        assert_eq!(sent(&c.on(Input::Answered, t)), ["answered"]);
        assert_eq!(c.phase(), Phase::Answered);
        assert_eq!(sent(&c.on(Input::TrunkHangup, t)), ["ended"]);
        assert_eq!(c.end, Some(("remote_hangup".into(), 200)));
        assert!(
            c.on(Input::BrowserHangup, t).is_empty(),
            "nothing after the end"
        );
    }

    #[test]
    fn browser_hangup_before_answer_cancels_the_trunk() {
        let t = Instant::now();
        let mut c = CallState::new("c1");
        c.on(
            Input::Progress {
                code: 183,
                early_media: true,
            },
            t,
        );
        assert_eq!(c.phase(), Phase::EarlyMedia);
        assert_eq!(sent(&c.on(Input::BrowserHangup, t)), ["END_TRUNK", "ended"]);
        assert_eq!(c.end, Some(("hangup".into(), 487)));
    }

    #[test]
    fn failures_map_to_documented_reasons() {
        for (code, reason) in [
            (486, "busy"),
            (503, "trunk_unavailable"),
            (408, "no_answer"),
            (404, "not_found"),
            (603, "rejected"),
        ] {
            let mut c = CallState::new("c");
            c.on(Input::Failed(code), Instant::now());
            assert_eq!(c.end, Some((reason.into(), code)));
        }
    }
}
