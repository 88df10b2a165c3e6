//! Placing a call on a trunk, sans-IO: the INVITE client with digest retries (§22.2),
//! provisional responses (early media), CANCEL with the 64·T1 give-up of §9.1, Retry-After
//! and ordered failover across addresses and trunks. The call machine composes it; the
//! driver resolves the candidates' addresses beforehand and carries out its [`Transmit`]s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{Header, Method, Request, Response};

use super::Transmit;
use super::auth;
use super::dialog::Dialog;
use super::endpoint::SipLocal;
use super::extensions;
use super::message;
use super::transaction::{ClientEvent, Timers};
use super::transport::Target;
use super::trunks::TrunkConfig;
use super::trunks::{ChannelGuard, Trunks};
use crate::media::session::RtpSource;

mod extension_responses;
mod invite;

pub use invite::{CallFailure, CallRequest, build_cancel};
use invite::{build_invite, retry_after};

/// Transaction ids the INVITE client uses; the call's own start at 1, far below.
const TX_BASE: u64 = 1 << 48;

/// One address to try, in failover order, resolved by the driver (`None`: did not resolve).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Trunk name.
    pub trunk: String,
    /// The address as configured.
    pub address: String,
    /// Where it resolved to.
    pub target: Option<Target>,
}

/// What the INVITE client tells the call.
#[derive(Debug)]
pub enum UacEvent {
    /// An INVITE left for a trunk address.
    Trying {
        /// Trunk name.
        trunk: String,
        /// The trunk's signalling address: where its media may come from too.
        addr: std::net::SocketAddr,
        /// Where this trunk's RTP may come from.
        rtp_source: RtpSource,
        /// The attempt's Call-ID.
        call_id: String,
    },
    /// 180/183, with the early-media SDP if any.
    Provisional {
        /// Status code.
        code: u16,
        /// SDP body (early media), if present.
        sdp: Option<Vec<u8>>,
    },
    /// A 2xx, already ACKed. Also after a CANCEL it crossed: the call must then BYE it.
    Answered(Box<Answered>),
    /// No attempt connected.
    Failed(CallFailure),
}

/// The established trunk leg of an outbound call.
#[derive(Debug)]
pub struct Answered {
    /// The trunk that answered.
    pub trunk: String,
    /// Where in-dialog requests go.
    pub target: Target,
    /// The dialog the 2xx made.
    pub dialog: Dialog,
    /// The answer SDP.
    pub answer_sdp: Vec<u8>,
    /// The trunk channel the call holds.
    pub channel: ChannelGuard,
    /// The session timer the 2xx set (RFC 4028 §7.2): interval, seconds, and whether we
    /// refresh; `None`: no session expiry.
    pub session: Option<(u32, bool)>,
}

struct Attempt {
    trunk: String,
    address: String,
    target: Target,
    channel: Option<ChannelGuard>,
    call_id: String,
    from_tag: String,
    seq: u32,
    invite: Request,
    invite_tx: u64,
    /// Digest answers kept per (status, realm), §22.3.
    credentials: Vec<((u16, String), Header)>,
    challenges: u32,
    provisional: bool,
    cancel_sent: bool,
    /// The early dialog of the last reliable provisional (RFC 3262), for its PRACKs; the
    /// confirmed dialog continues its CSeq.
    early: Option<Dialog>,
    /// The RSeq last PRACKed in `early` (§4: the next must be one higher).
    last_rseq: Option<u32>,
    /// The Session-Expires we ask for (RFC 4028), raised by a 422's Min-SE; 0: none.
    session_expires: u32,
    /// Sent as Min-SE after a 422 (§7.4).
    min_se: Option<u32>,
    /// After the 2xx: the ACK, sent again for every retransmitted 2xx (§13.2.2.4).
    ack: Option<Request>,
}

/// The INVITE client for one call.
pub struct Uac {
    local: SipLocal,
    trunks: Arc<Trunks>,
    request: CallRequest,
    candidates: VecDeque<Candidate>,
    timers: Timers,
    attempt: Option<Attempt>,
    last: CallFailure,
    cancelled: bool,
    /// RFC 3326 Reason for our CANCEL: why the call gave up.
    cancel_reason: Option<Header>,
    give_up_at: Option<Instant>,
    next_tx: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<UacEvent>,
    done: bool,
}

impl std::fmt::Debug for Uac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uac")
            .field("to", &self.request.to)
            .field("done", &self.done)
            .finish()
    }
}

impl Uac {
    /// The (trunk, address) pairs to try for a call on `first`, in order: `failover` when
    /// given (a plugin's choice), else the trunk's configured chain.
    pub fn order(trunks: &Trunks, first: &str, failover: &[String]) -> Vec<(String, String)> {
        let names = if failover.is_empty() {
            trunks.chain(first)
        } else {
            let mut order = vec![first.to_string()];
            for t in failover {
                if !order.contains(t) {
                    order.push(t.clone());
                }
            }
            order
        };
        names
            .into_iter()
            .flat_map(|name| {
                let addresses = trunks
                    .config(&name)
                    .map(|c| c.addresses.clone())
                    .unwrap_or_default();
                if addresses.is_empty() {
                    vec![(name, String::new())]
                } else {
                    addresses.into_iter().map(|a| (name.clone(), a)).collect()
                }
            })
            .collect()
    }

    /// Starts placing `request` on the candidates, in order.
    pub fn new(
        local: SipLocal,
        trunks: Arc<Trunks>,
        request: CallRequest,
        candidates: Vec<Candidate>,
        timers: Timers,
        now: Instant,
    ) -> Uac {
        let first = candidates
            .first()
            .map(|c| c.trunk.clone())
            .unwrap_or_default();
        let mut uac = Uac {
            local,
            trunks,
            request,
            candidates: candidates.into(),
            timers,
            attempt: None,
            last: CallFailure::NoTrunk(format!("trunk `{first}` is not configured")),
            cancelled: false,
            cancel_reason: None,
            give_up_at: None,
            next_tx: TX_BASE,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            done: false,
        };
        uac.try_next(now);
        uac
    }

    /// True for the ids of this client's transactions.
    pub fn owns(&self, tx: u64) -> bool {
        tx >= TX_BASE
    }

    /// Gives up: CANCEL once a provisional has arrived (§9.1), and at the latest 64·T1
    /// later, whatever the trunk does. `reason` is the call's end reason, sent in the
    /// CANCEL's Reason header (RFC 3326).
    pub fn cancel(&mut self, now: Instant, reason: &str) {
        if self.done || self.cancelled {
            return;
        }
        self.cancelled = true;
        self.cancel_reason = Some(extensions::reason_header(reason));
        if self.attempt.is_none() {
            self.fail(CallFailure::Cancelled);
            return;
        }
        self.give_up_at = Some(now + 64 * self.timers.t1);
        self.send_cancel();
    }

    fn send_cancel(&mut self) {
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        if !a.provisional || a.cancel_sent || a.ack.is_some() {
            return;
        }
        a.cancel_sent = true;
        let mut request = build_cancel(&a.invite);
        if let Some(reason) = self.cancel_reason.clone() {
            request.headers.push(reason);
        }
        let target = a.target.clone();
        let tx = self.tx_id();
        self.transmits.push_back(Transmit::Request {
            tx,
            request,
            target,
        });
    }

    fn tx_id(&mut self) -> u64 {
        self.next_tx += 1;
        self.next_tx
    }

    fn fail(&mut self, failure: CallFailure) {
        self.done = true;
        self.events.push_back(UacEvent::Failed(failure));
    }

    /// Moves to the next usable candidate, or fails with the last reason.
    fn try_next(&mut self, now: Instant) {
        let _ = now;
        while let Some(c) = self.candidates.pop_front() {
            if self.cancelled {
                break;
            }
            let Some(trunk) = self.trunks.config(&c.trunk).cloned() else {
                continue;
            };
            if self.trunks.is_down(&c.trunk, &c.address) {
                self.last = CallFailure::NoTrunk(format!(
                    "trunk `{}` at {} is down (Retry-After or failed OPTIONS probes)",
                    c.trunk, c.address
                ));
                continue;
            }
            let Some(target) = c.target else {
                self.last = CallFailure::NoTrunk(format!(
                    "trunk `{}`: cannot resolve `{}`",
                    c.trunk, c.address
                ));
                continue;
            };
            let Some(channel) = self.trunks.take_channel(&c.trunk) else {
                self.last = CallFailure::NoTrunk(format!(
                    "trunk `{}` has all {} channels in use",
                    c.trunk,
                    trunk.max_channels.unwrap_or(0)
                ));
                continue;
            };
            let call_id = format!("{}@gateway", message::random_token());
            let from_tag = message::random_token();
            // Listened to before the INVITE leaves, so a BYE or re-INVITE racing the 200
            // finds its call.
            self.transmits.push_back(Transmit::Listen(call_id.clone()));
            self.events.push_back(UacEvent::Trying {
                trunk: c.trunk.clone(),
                addr: target.addr,
                rtp_source: trunk.rtp_source,
                call_id: call_id.clone(),
            });
            let mut attempt = Attempt {
                trunk: c.trunk,
                address: c.address,
                target,
                channel: Some(channel),
                call_id,
                from_tag,
                seq: 1,
                invite: Request {
                    method: Method::Invite,
                    uri: rsip::Uri::default(),
                    version: rsip::Version::V2,
                    headers: Default::default(),
                    body: vec![],
                },
                invite_tx: 0,
                credentials: Vec::new(),
                challenges: 0,
                provisional: false,
                early: None,
                last_rseq: None,
                session_expires: trunk.session_expires,
                min_se: None,
                cancel_sent: false,
                ack: None,
            };
            self.send_invite(&mut attempt, &trunk);
            self.attempt = Some(attempt);
            return;
        }
        self.attempt = None;
        let last = if self.cancelled {
            CallFailure::Cancelled
        } else {
            self.last.clone()
        };
        self.fail(last);
    }

    fn send_invite(&mut self, a: &mut Attempt, trunk: &TrunkConfig) {
        let mut extra: Vec<Header> = a.credentials.iter().map(|(_, h)| h.clone()).collect();
        if a.session_expires > 0 {
            extra.push(extensions::session_expires_header(a.session_expires, None));
        }
        if let Some(min) = a.min_se {
            extra.push(Header::Other("Min-SE".into(), min.to_string()));
        }
        a.invite = build_invite(
            &self.local,
            trunk,
            &a.target,
            &self.request,
            &(a.call_id.clone(), a.from_tag.clone()),
            a.seq,
            extra,
        );
        a.invite_tx = self.tx_id();
        self.transmits.push_back(Transmit::Request {
            tx: a.invite_tx,
            request: a.invite.clone(),
            target: a.target.clone(),
        });
    }

    /// An attempt ended without a call: failover when the failure allows it.
    fn attempt_failed(&mut self, failure: CallFailure, retry: Option<Duration>, now: Instant) {
        let Some(a) = self.attempt.take() else {
            return;
        };
        tracing::info!(trunk = %a.trunk, address = %a.address, %failure, "call attempt failed");
        if let Some(wait) = retry {
            self.trunks.mark_down(&a.trunk, &a.address, wait);
        }
        self.transmits.push_back(Transmit::Forget(a.call_id));
        if self.cancelled {
            self.fail(CallFailure::Cancelled);
        } else if failure.allows_failover() {
            self.last = failure;
            self.try_next(now);
        } else {
            self.fail(failure);
        }
    }

    /// Feeds an event of one of this client's transactions.
    pub fn handle_response(&mut self, tx: u64, event: ClientEvent, now: Instant) {
        let Some(a) = self.attempt.as_ref() else {
            return;
        };
        if tx != a.invite_tx {
            return; // the CANCEL's own answer tells nothing (§9.1): the INVITE's does
        }
        let response = match event {
            ClientEvent::Timeout => {
                if a.ack.is_some() {
                    return;
                }
                let failure = CallFailure::Timeout {
                    trunk: a.trunk.clone(),
                    address: a.address.clone(),
                };
                return self.attempt_failed(failure, None, now);
            }
            ClientEvent::Response(r) => r,
        };
        let code = response.status_code.code();
        match code {
            100 => {}
            101..=199 => {
                if let Some(rseq) = extensions::reliable_rseq(&response)
                    && !self.prack(&response, rseq)
                {
                    return;
                }
                if let Some(a) = self.attempt.as_mut() {
                    a.provisional = true;
                }
                let sdp = (!response.body.is_empty()).then(|| response.body.clone());
                self.events.push_back(UacEvent::Provisional { code, sdp });
                if self.cancelled {
                    self.send_cancel();
                }
            }
            200..=299 => self.on_success(response),
            401 | 407 => self.on_challenge(response, now),
            422 => self.on_interval_too_small(response, now),
            _ => self.on_rejected(&response, now),
        }
    }

    fn on_success(&mut self, response: Response) {
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        if let Some(ack) = &a.ack {
            // A retransmitted 2xx: our ACK was lost (§13.2.2.4).
            let (request, target) = (ack.clone(), a.target.clone());
            self.transmits
                .push_back(Transmit::Stateless { request, target });
            return;
        }
        let Some(mut dialog) = Dialog::from_uac(&a.invite, &response) else {
            tracing::warn!("2xx without To tag; treating as failure");
            let failure = CallFailure::Rejected {
                trunk: a.trunk.clone(),
                code: 502,
                reason: "2xx without To tag".into(),
            };
            let now = Instant::now();
            return self.attempt_failed(failure, None, now);
        };
        // Requests after PRACKs in the same dialog continue their CSeq (RFC 3262 §7.2).
        if let Some(early) = a.early.as_ref()
            && early.remote_tag == dialog.remote_tag
        {
            dialog.continue_cseq(early);
        }
        let ack = dialog.ack(
            a.seq,
            self.local.via(a.target.transport, &message::new_branch()),
        );
        a.ack = Some(ack.clone());
        self.transmits.push_back(Transmit::Stateless {
            request: ack,
            target: a.target.clone(),
        });
        self.give_up_at = None;
        self.done = true;
        // §7.2: the 2xx decides; without a Session-Expires there is no expiry. We were
        // the request's UAC: `refresher=uac` (or none named, §7.2's default for us) is us.
        let session = extensions::session_expires(&response.headers)
            .filter(|(interval, _)| *interval > 0)
            .map(|(interval, refresher)| (interval, refresher != Some(extensions::Refresher::Uas)));
        self.events.push_back(UacEvent::Answered(Box::new(Answered {
            session,
            trunk: a.trunk.clone(),
            target: a.target.clone(),
            dialog,
            answer_sdp: response.body.clone(),
            channel: a
                .channel
                .take()
                .expect("the channel is held until the answer"),
        })));
    }

    fn on_challenge(&mut self, response: Response, now: Instant) {
        let Some(mut a) = self.attempt.take() else {
            return;
        };
        let code = response.status_code.code();
        let Some(trunk) = self.trunks.config(&a.trunk).cloned() else {
            self.attempt = Some(a);
            return self.on_rejected(&response, now);
        };
        let creds = match &trunk.credentials {
            Some(c) if a.challenges < 4 && !self.cancelled => c.clone(),
            _ => {
                self.attempt = Some(a);
                return self.on_rejected(&response, now);
            }
        };
        let refuse = |reason: &str| CallFailure::Rejected {
            trunk: trunk.name.clone(),
            code,
            reason: reason.into(),
        };
        let Some(challenge) = auth::best_challenge(&response) else {
            self.attempt = Some(a);
            return self.attempt_failed(refuse("challenge without a usable Digest"), None, now);
        };
        // §22.3: credentials are kept per realm, so a proxy (407) and the far end (401) can
        // both be answered. The same realm challenging again means the password is wrong;
        // only a stale nonce is worth another try (RFC 2617 §3.2.1).
        let key = (code, challenge.realm.clone());
        if a.credentials.iter().any(|(k, _)| *k == key) && !challenge.stale {
            self.attempt = Some(a);
            return self.attempt_failed(
                refuse("credentials refused: check the trunk's username and password"),
                None,
                now,
            );
        }
        a.challenges += 1;
        let value = auth::authorization(
            &challenge,
            &creds,
            "INVITE",
            &a.invite.uri.to_string(),
            1,
            &message::random_token(),
        );
        let header = if code == 407 {
            Header::ProxyAuthorization(rsip::headers::ProxyAuthorization::new(value))
        } else {
            Header::Authorization(rsip::headers::Authorization::new(value))
        };
        a.credentials.retain(|(k, _)| *k != key);
        a.credentials.push((key, header));
        a.seq += 1;
        a.provisional = false;
        self.send_invite(&mut a, &trunk);
        self.attempt = Some(a);
    }

    fn on_rejected(&mut self, response: &Response, now: Instant) {
        let Some(a) = self.attempt.as_ref() else {
            return;
        };
        let code = response.status_code.code();
        if a.cancel_sent && code == 487 {
            return self.attempt_failed(CallFailure::Cancelled, None, now);
        }
        let reason = response.status_code.to_string();
        let reason = reason
            .split_once(' ')
            .map(|(_, r)| r.to_string())
            .unwrap_or(reason);
        let wait = if code == 503 {
            retry_after(response)
        } else {
            None
        };
        let failure = CallFailure::Rejected {
            trunk: a.trunk.clone(),
            code,
            reason,
        };
        self.attempt_failed(failure, wait, now);
    }

    /// The 64·T1 give-up after a CANCEL the trunk never completed with a final response.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.give_up_at.is_some_and(|at| at <= now) {
            self.give_up_at = None;
            if let Some(a) = self.attempt.take() {
                tracing::info!(trunk = %a.trunk, "no final response 64·T1 after CANCEL; the INVITE is given up (RFC 3261 §9.1)");
                self.transmits.push_back(Transmit::Abandon {
                    request: Box::new(a.invite),
                });
                self.transmits.push_back(Transmit::Forget(a.call_id));
            }
            if !self.done {
                self.fail(CallFailure::Cancelled);
            }
        }
    }

    /// When [`Self::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.give_up_at
    }

    /// Next thing to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the call.
    pub fn poll_event(&mut self) -> Option<UacEvent> {
        self.events.pop_front()
    }

    /// True once the client has nothing more to do but re-ACK retransmitted 2xx.
    pub fn is_done(&self) -> bool {
        self.done && self.transmits.is_empty() && self.events.is_empty()
    }
}

#[cfg(test)]
mod tests;
