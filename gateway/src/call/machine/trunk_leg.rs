//! The trunk leg coming up: what the INVITE client reports (trying, provisionals and early
//! media, the answer, failure) turned into the call's phase, events and media, and the 2xx's
//! dialog adopted as the trunk leg (the call's own INVITE, or a transfer's).

use std::time::Instant;

use super::{Call, CallEvent, Phase, TrunkLeg, failure_reason};
use crate::sip::sdp;
use crate::sip::uac::{Answered, UacEvent};

impl Call {
    /// The trunk's SDP answer to our offer, read against the codecs we offered.
    pub(super) fn parse_answer(&self, body: &[u8]) -> Result<sdp::RemoteMedia, sdp::SdpError> {
        match &self.local {
            Some(local) => sdp::parse_remote(body, &local.codecs, &local.srtp, true),
            None => sdp::parse_remote(body, &[], &Default::default(), true),
        }
    }

    /// Carries the INVITE client's output into the call.
    pub(super) fn pump_uac(&mut self, now: Instant) {
        let Some(mut uac) = self.uac.take() else {
            return;
        };
        while let Some(t) = uac.poll_transmit() {
            self.transmits.push_back(t);
        }
        while let Some(event) = uac.poll_event() {
            self.on_uac_event(event, now);
        }
        self.uac = Some(uac);
    }

    pub(super) fn on_uac_event(&mut self, event: UacEvent, now: Instant) {
        if self.trunk_transfer.is_some() {
            return self.on_transfer_uac_event(event, now);
        }
        let ended = self.phase == Phase::Ended;
        match event {
            UacEvent::Trying {
                trunk,
                addr,
                rtp_source,
                call_id,
            } => {
                self.trunk_used = Some(trunk);
                self.sip_call_id = Some(call_id);
                self.events.push_back(CallEvent::TrunkSource {
                    policy: rtp_source,
                    ip: addr.ip(),
                });
            }
            UacEvent::Provisional { .. } if ended || self.phase == Phase::Answered => {}
            UacEvent::Provisional { code, sdp } => {
                let early = sdp.and_then(|b| self.parse_answer(&b).ok());
                let early_media = early.is_some();
                if let Some(remote) = early {
                    self.events.push_back(CallEvent::TrunkMedia(remote));
                }
                if code == 180 && !early_media {
                    self.phase = Phase::Ringing;
                    self.events.push_back(CallEvent::Ringing);
                } else {
                    if early_media {
                        self.phase = Phase::EarlyMedia;
                    }
                    self.events.push_back(CallEvent::Progress { code });
                }
            }
            UacEvent::Answered(answered) => self.on_answered(*answered, now),
            UacEvent::Failed(failure) => {
                let code = failure.sip_code();
                self.failure = Some(failure);
                if !ended {
                    self.finish(failure_reason(code), code, now);
                }
            }
        }
    }

    fn on_answered(&mut self, answered: Answered, now: Instant) {
        let answer = self.adopt_leg(answered);
        if self.phase == Phase::Ended {
            // §9.1: the 2xx crossed our CANCEL: the call exists at the trunk; end it.
            return self.hang_up_leg();
        }
        self.ring_deadline = None;
        if !self.apply_answer(answer, now) {
            return;
        }
        self.phase = Phase::Answered;
        self.answered_at = Some(now);
        self.events.push_back(CallEvent::Answered);
        for (id, request, source) in std::mem::take(&mut self.early) {
            self.handle_sip_request(id, request, source, now);
        }
    }

    /// An answered INVITE's dialog becomes the call's trunk leg (the call's own INVITE, or a
    /// transfer's); returns what its 2xx said, for [`Self::apply_answer`].
    pub(super) fn adopt_leg(&mut self, answered: Answered) -> (Vec<u8>, Option<(u32, bool)>) {
        let Answered {
            trunk,
            target,
            dialog,
            answer_sdp,
            channel,
            session,
        } = answered;
        self.sip_call_id = Some(dialog.call_id.clone());
        self.trunk_used = Some(trunk);
        self.leg = Some(TrunkLeg {
            dialog,
            target,
            _channel: channel,
        });
        (answer_sdp, session)
    }

    /// The 2xx's answer SDP moves the trunk media; its session timer starts, and the media
    /// inactivity check. An answer we cannot use (no common codec, SRTP refused) ends the
    /// call — acknowledged, then BYE (RFC 3261 §13.2.2.4) — rather than leave it silent;
    /// returns false then. A 2xx without a body keeps the answer a reliable 18x gave.
    pub(super) fn apply_answer(
        &mut self,
        (answer_sdp, session): (Vec<u8>, Option<(u32, bool)>),
        now: Instant,
    ) -> bool {
        if !answer_sdp.is_empty() {
            match self.parse_answer(&answer_sdp) {
                Ok(remote) => self.events.push_back(CallEvent::TrunkMedia(remote)),
                Err(e) => {
                    tracing::warn!(call_id = %self.id, error = %e, "the trunk's answer is unusable: BYE");
                    self.finish("media_refused", 488, now);
                    return false;
                }
            }
        }
        self.watch_media(now);
        self.session = None;
        if let Some((interval, we_refresh)) = session {
            self.start_session(interval, we_refresh, now);
        }
        true
    }
}
