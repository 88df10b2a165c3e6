//! Blind transfers (RFC 3515), both ways.
//!
//! From the browser: a REFER asks the trunk to call the target; its NOTIFYs
//! (`message/sipfrag`, §2.4.5) report that call; a 2xx there ends ours with BYE
//! (`transferred`), anything else leaves the call as it was.
//!
//! From the trunk: its REFER names a target on a configured trunk; we INVITE it offering the
//! media we have, NOTIFY the transferor as it progresses, and when it answers the browser's
//! audio moves to it and the old leg is BYEd. The browser's WebRTC leg never changes.

use rsip::prelude::*;
use rsip::{Header, Method, Request};
use std::time::Instant;

use super::{Call, CallEvent, Phase, Refusal};
use crate::sip::Transmit;
use crate::sip::extensions;
use crate::sip::message;

/// Where our transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refer {
    /// The REFER's transaction.
    Sent(u64),
    /// Accepted (2xx): NOTIFYs follow.
    Accepted,
}

/// The status line of a `message/sipfrag` body: `SIP/2.0 180 Ringing` → 180.
fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    let mut words = text.lines().next()?.split_whitespace();
    (words.next()? == "SIP/2.0").then_some(())?;
    words
        .next()?
        .parse()
        .ok()
        .filter(|c| (100..700).contains(c))
}

impl Call {
    /// The browser asks to transfer the trunk's party to `number`.
    pub(super) fn transfer(&mut self, number: &str) {
        if self.phase != Phase::Answered || self.leg.is_none() {
            return self.refuse(
                Refusal::NotAnswered,
                "a transfer needs an answered call".into(),
            );
        }
        if self.refer.is_some() {
            return self.refuse(
                Refusal::TransferFailed,
                "a transfer is already under way".into(),
            );
        }
        let tx = self.tx_id();
        let leg = self.leg.as_mut().expect("checked");
        let transport = leg.target.transport;
        let scheme = if leg.target.tls.is_some() {
            "sips"
        } else {
            "sip"
        };
        let extra = vec![
            Header::Other(
                "Refer-To".into(),
                format!("<{scheme}:{number}@{}>", leg.target.host),
            ),
            Header::Other("Referred-By".into(), leg.dialog.local_uri.clone()),
            Header::Contact(rsip::headers::Contact::new(format!(
                "<{}>",
                self.sip.contact_uri("gw", transport)
            ))),
        ];
        let via = self.sip.via(transport, &message::new_branch());
        let request = leg.dialog.request(Method::Refer, via, extra, vec![]);
        let target = leg.target.clone();
        self.refer = Some(Refer::Sent(tx));
        self.transmits.push_back(Transmit::Request {
            tx,
            request,
            target,
        });
    }

    /// The answer to our REFER, if `tx` is it: true when taken.
    pub(super) fn handle_refer_answer(&mut self, tx: u64, code: u16) -> bool {
        if self.refer != Some(Refer::Sent(tx)) {
            return false;
        }
        if (200..300).contains(&code) {
            self.refer = Some(Refer::Accepted);
            self.events.push_back(CallEvent::TransferProgress { code });
        } else {
            self.refer = None;
            self.refuse(
                Refusal::TransferFailed,
                format!("the trunk refused the transfer with {code}"),
            );
        }
        true
    }

    /// A NOTIFY of our transfer's subscription (answered 200 already): its progress.
    pub(super) fn transfer_notified(&mut self, request: &Request, now: Instant) {
        let terminated = message::header_value(&request.headers, "Subscription-State")
            .is_some_and(|s| s.trim().to_ascii_lowercase().starts_with("terminated"));
        match sipfrag_status(&request.body) {
            Some(code) => {
                self.events.push_back(CallEvent::TransferProgress { code });
                if (200..300).contains(&code) {
                    // The target answered: the trunk's party is with it; our leg is done.
                    self.refer = None;
                    self.finish("transferred", 200, now);
                } else if code >= 300 {
                    self.refer = None;
                    self.refuse(
                        Refusal::TransferFailed,
                        format!("the transfer target answered {code}; the call goes on"),
                    );
                } else if terminated {
                    self.refer = None;
                }
            }
            None if terminated => self.refer = None,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sipfrag_status;

    #[test]
    fn sipfrag_status_lines_are_read_and_junk_is_not() {
        assert_eq!(sipfrag_status(b"SIP/2.0 100 Trying\r\n"), Some(100));
        assert_eq!(sipfrag_status(b"SIP/2.0 200 OK"), Some(200));
        assert_eq!(sipfrag_status(b"SIP/2.0 999 Nope"), None);
        assert_eq!(sipfrag_status(b"HTTP/1.1 200 OK"), None);
        assert_eq!(sipfrag_status(b""), None);
    }
}

/// A transfer the trunk asked for (REFER to us, RFC 3515): the new leg being placed while
/// the browser stays on the old one.
#[derive(Debug)]
pub(super) struct TrunkTransfer {
    trunk: String,
    number: String,
    referred_by: Option<String>,
    /// The new attempt's RTP policy, from the INVITE client's `Trying`.
    rtp_source: Option<crate::media::session::RtpSource>,
}

/// The number and trunk a Refer-To names: `<sip:number@host[:port]>`; the host must be one
/// of a configured trunk's addresses.
fn refer_target(
    request: &Request,
    trunks: &crate::sip::trunks::Trunks,
) -> Result<(String, String), u16> {
    let value = message::header_value(&request.headers, "Refer-To")
        .or_else(|| message::header_value(&request.headers, "r"))
        .ok_or(400u16)?;
    let uri = match value.split_once('<') {
        Some((_, rest)) => rest.split('>').next().unwrap_or_default(),
        None => value.split(';').next().unwrap_or_default(),
    };
    let rest = uri
        .trim()
        .strip_prefix("sip:")
        .or_else(|| uri.trim().strip_prefix("sips:"))
        .ok_or(400u16)?;
    let (user, hostport) = rest.split_once('@').ok_or(400u16)?;
    let hostport = hostport.split([';', '?']).next().unwrap_or_default();
    crate::sip::values::check_user("Refer-To number", user).map_err(|_| 400u16)?;
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, p) = v6.split_once(']').ok_or(400u16)?;
            (
                h.to_string(),
                p.strip_prefix(':').and_then(|p| p.parse().ok()),
            )
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().map_err(|_| 400u16)?)),
            None => (hostport.to_string(), None),
        },
    };
    // Only configured trunks: a REFER must not make the gateway an open relay (403).
    let trunk = trunks.named_by_address(&host, port).ok_or(403u16)?;
    Ok((user.to_string(), trunk))
}

impl Call {
    /// A REFER from the trunk: 202 and the transfer starts, or the refusal's code.
    pub(super) fn accept_refer(&mut self, request: &Request) -> u16 {
        if self.phase != Phase::Answered || self.leg.is_none() {
            return 403;
        }
        if self.refer.is_some() || self.trunk_transfer.is_some() || self.reinvite.is_some() {
            return 491;
        }
        match refer_target(request, &self.trunks) {
            Ok((number, trunk)) => {
                tracing::info!(call_id = %self.id, %trunk, %number, "the trunk transfers the call");
                let referred_by = message::header_value(&request.headers, "Referred-By")
                    .or_else(|| message::header_value(&request.headers, "b"))
                    .map(|v| v.chars().take(256).collect());
                self.trunk_transfer = Some(TrunkTransfer {
                    trunk,
                    number,
                    referred_by,
                    rtp_source: None,
                });
                202
            }
            Err(code) => {
                tracing::warn!(call_id = %self.id, code, "trunk REFER refused");
                code
            }
        }
    }

    /// After our 202: the first NOTIFY (100 Trying, §2.4.4) and the request for the new
    /// leg's addresses.
    pub(super) fn start_trunk_transfer(&mut self) {
        let Some(t) = &self.trunk_transfer else {
            return;
        };
        let event = CallEvent::TransferRequested {
            trunk: t.trunk.clone(),
            number: t.number.clone(),
            referred_by: t.referred_by.clone(),
        };
        self.notify_transferor(100, false);
        self.events.push_back(event);
    }

    /// A plugin refused the trunk's transfer: the transferor's final NOTIFY carries `code`
    /// (RFC 3515 §2.4.5) and the call goes on as it was.
    pub fn handle_transfer_refused(&mut self, code: u16) {
        if self.trunk_transfer.take().is_some() {
            tracing::info!(call_id = %self.id, code, "a plugin refused the trunk's transfer");
            self.notify_transferor(code, true);
        }
    }

    /// The transfer target's addresses (resolved by the driver): its INVITE goes out, offering
    /// the media the old leg has (the browser's side does not change).
    pub fn handle_transfer_candidates(
        &mut self,
        candidates: Vec<crate::sip::uac::Candidate>,
        now: Instant,
    ) {
        let (Some(t), Some(mut local)) = (&self.trunk_transfer, self.local.clone()) else {
            return;
        };
        // The target's trunk has its own SRTP policy, and a new peer gets new keys; they
        // become the call's own once it answers.
        let policy = self
            .trunks
            .config(&t.trunk)
            .map(|c| c.srtp)
            .unwrap_or_default();
        local.srtp = crate::media::srtp::LocalSrtp::new(policy);
        self.local = Some(local.clone());
        self.sdp_version += 1;
        let request = crate::sip::uac::CallRequest {
            to: t.number.clone(),
            from_user: None,
            sdp_offer: crate::sip::sdp::offer(
                &local,
                self.sdp_version,
                crate::sip::sdp::Direction::SendRecv,
            ),
            headers: Vec::new(),
            failover: Vec::new(),
        };
        self.uac = Some(crate::sip::uac::Uac::new(
            self.sip.clone(),
            self.trunks.clone(),
            request,
            candidates,
            self.settings.timers,
            now,
        ));
        self.pump_uac(now);
    }

    /// The transfer's INVITE client reports.
    pub(super) fn on_transfer_uac_event(&mut self, event: crate::sip::uac::UacEvent, now: Instant) {
        use crate::sip::uac::UacEvent;
        match event {
            UacEvent::Trying { rtp_source, .. } => {
                if let Some(t) = self.trunk_transfer.as_mut() {
                    t.rtp_source = Some(rtp_source);
                }
            }
            UacEvent::Provisional { code, .. } if code > 100 => self.notify_transferor(code, false),
            UacEvent::Provisional { .. } => {}
            UacEvent::Answered(answered) => self.transfer_answered(*answered, now),
            UacEvent::Failed(failure) => {
                let code = failure.sip_code();
                tracing::info!(call_id = %self.id, code, "the transfer target did not answer; the call goes on");
                self.notify_transferor(code, true);
                self.trunk_transfer = None;
                if self.leg.is_none() {
                    // The transferor hung up meanwhile: nobody is left on the trunk side.
                    self.finish("remote_hangup", code, now);
                }
            }
        }
    }

    /// The target answered: the browser moves to the new leg; the old one hears the final
    /// NOTIFY and our BYE.
    fn transfer_answered(&mut self, answered: crate::sip::uac::Answered, now: Instant) {
        let rtp_source = self
            .trunk_transfer
            .take()
            .and_then(|t| t.rtp_source)
            .unwrap_or_default();
        if self.leg.is_some() {
            self.notify_transferor(200, true);
            let tx = self.tx_id();
            let old = self.leg.take().expect("checked");
            let mut old_dialog = old.dialog;
            let via = self.sip.via(old.target.transport, &message::new_branch());
            let bye = old_dialog.request(
                Method::Bye,
                via,
                vec![extensions::reason_header("transferred")],
                vec![],
            );
            self.transfer_bye = Some((tx, old_dialog.call_id.clone()));
            self.transmits.push_back(Transmit::Request {
                tx,
                request: bye,
                target: old.target,
            });
        }
        let ip = answered.target.addr.ip();
        let answer = self.adopt_leg(answered);
        self.events.push_back(CallEvent::TrunkSource {
            policy: rtp_source,
            ip,
        });
        self.trunk_direction = crate::sip::sdp::Direction::SendRecv;
        let _ = self.apply_answer(answer, now);
    }

    /// A NOTIFY to the transferor on the old leg: `message/sipfrag` with `code` (§2.4.5).
    fn notify_transferor(&mut self, code: u16, last: bool) {
        let tx = self.tx_id();
        let Some(leg) = self.leg.as_mut() else {
            return;
        };
        let reason = match code {
            100 => "Trying",
            180 => "Ringing",
            183 => "Session Progress",
            200..=299 => "OK",
            _ => "Failed",
        };
        let state = if last {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        let transport = leg.target.transport;
        let extra = vec![
            Header::Other("Event".into(), "refer".into()),
            Header::Other("Subscription-State".into(), state.into()),
            Header::ContentType(rsip::headers::ContentType::new("message/sipfrag")),
            Header::Contact(rsip::headers::Contact::new(format!(
                "<{}>",
                self.sip.contact_uri("gw", transport)
            ))),
        ];
        let via = self.sip.via(transport, &message::new_branch());
        let body = format!("SIP/2.0 {code} {reason}\r\n").into_bytes();
        let request = leg.dialog.request(Method::Notify, via, extra, body);
        let target = leg.target.clone();
        self.transmits.push_back(Transmit::Request {
            tx,
            request,
            target,
        });
    }
}
