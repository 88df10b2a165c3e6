//! The established call's dialog: requests from the trunk (BYE, re-INVITE, INFO …, §12.2.2)
//! and our own re-INVITE for hold and resume (RFC 3264 §8.4), answered without waiting.

use std::net::SocketAddr;
use std::time::Instant;

use rsip::prelude::*;
use rsip::{Header, Method, Request};

use super::{Call, CallEvent, Phase, Refusal, Reinvite};
use crate::sip::Transmit;
use crate::sip::extensions;
use crate::sip::message::{self, response_to};
use crate::sip::sdp::{self, Direction};
use crate::sip::transaction::ClientEvent;

/// Requests that may arrive before the 2xx they race and wait for it.
const EARLY_REQUESTS: usize = 8;

impl Call {
    /// A request from the trunk for this call's dialog. ACK and CANCEL (which the endpoint
    /// has answered already) take no response.
    pub fn handle_sip_request(
        &mut self,
        id: u64,
        request: Request,
        source: SocketAddr,
        now: Instant,
    ) {
        let method = request.method;
        if self.invite.is_some() {
            return self.while_offered(id, request, source, now);
        }
        if method == Method::Ack || method == Method::Cancel {
            if method == Method::Ack && self.ack_deadline.take().is_some() {
                if self.answer_in_ack {
                    self.answer_in_ack = false;
                    self.take_ack_answer(&request.body, now);
                }
                if self.bye_after_ack {
                    self.bye_after_ack = false;
                    self.hang_up_leg();
                }
            }
            return;
        }
        let Some(leg) = self.leg.as_mut() else {
            let early = self.uac.as_ref().is_some_and(|u| !u.is_done());
            if early && method == Method::Update {
                return self.answer_early_update(id, &request);
            }
            if early && self.early.len() < EARLY_REQUESTS {
                self.early.push((id, request, source));
            } else {
                let response = response_to(&request, 481, Some(&message::random_token()));
                self.transmits.push_back(Transmit::Respond { id, response });
            }
            return;
        };
        // From this dialog's peer (the endpoint serves trunk addresses only; this keeps one
        // trunk, or a host in its pool, from ending or moving another peer's call by its
        // Call-ID), naming it, in sequence (§12.2.2).
        let ip = source.ip();
        let accepted = if ip != leg.target.addr.ip() && !leg.dialog.peer_ips().contains(&ip) {
            tracing::warn!(source = %ip, call_id = %leg.dialog.call_id, %method, "in-dialog request from an address that is not this dialog's peer refused");
            Err(403)
        } else {
            leg.dialog.accept_remote(&request)
        };
        let respond = |this: &mut Call, code: u16, extra: Option<String>| {
            let Some(leg) = this.leg.as_ref() else { return };
            let mut response = leg.dialog.response(&request, code);
            let transport = leg.target.transport;
            let sips = crate::sip::dialog::is_sips(&leg.dialog.remote_target);
            // A 2xx to a target-refreshing request names our target (§12.2.2, RFC 3311 §5.2)
            // and, since it refreshes the session, its new terms (RFC 4028 §9).
            if (200..300).contains(&code) && matches!(method, Method::Invite | Method::Update) {
                for header in this.refreshed_by_trunk(&request, now) {
                    response.headers.push(header);
                }
                response
                    .headers
                    .push(Header::Contact(rsip::headers::Contact::new(format!(
                        "<{}>",
                        this.sip.dialog_contact_uri("gw", transport, sips)
                    ))));
            }
            match code {
                // What it may ask instead (§21.4.6), and what it can do (§11.2).
                405 => response.headers.push(message::allow_header()),
                200 if method == Method::Options => {
                    response.headers.push(message::allow_header());
                    response.headers.push(extensions::supported_header());
                    response
                        .headers
                        .push(Header::Other("Accept".into(), "application/sdp".into()));
                }
                _ => {}
            }
            with_sdp(&mut response, extra);
            this.transmits.push_back(Transmit::Respond { id, response });
        };
        if let Err(code) = accepted {
            return respond(self, code, None);
        }
        if let Some(unsupported) = extensions::bad_extension(&request) {
            let mut response = leg.dialog.response(&request, 420);
            response.headers.push(unsupported);
            self.transmits.push_back(Transmit::Respond { id, response });
            return;
        }
        let ended = self.phase == Phase::Ended;
        match method {
            // The transferor hangs up while its transfer is under way: its leg is done, the
            // call waits for the target's.
            Method::Bye if self.trunk_transfer.is_some() => {
                respond(self, 200, None);
                if let Some(leg) = self.leg.take() {
                    self.transmits
                        .push_back(Transmit::Forget(leg.dialog.call_id));
                }
            }
            Method::Bye => {
                respond(self, 200, None);
                // The dialog is over: no BYE of ours follows. A BYE crossing ours is
                // answered and changes nothing else (§15.1.2). Our re-INVITE, if one waits,
                // keeps the dialog's identifiers to ACK a 2xx that still comes (§13.2.2.4).
                if let Some(leg) = self.leg.take()
                    && self.reinvite.is_some()
                {
                    self.closed_leg = Some((leg.dialog, leg.target));
                }
                if self.bye.is_none() {
                    self.forget_dialog();
                }
                self.ack_deadline = None;
                self.bye_after_ack = false;
                self.finish("remote_hangup", 200, now);
            }
            _ if ended => respond(self, 481, None),
            // §14.2: a re-INVITE while ours is pending gets 491.
            Method::Invite if self.reinvite.is_some() => respond(self, 491, None),
            Method::Invite => {
                let (code, sdp) = self.answer_reinvite(&request.body);
                respond(self, code, sdp);
            }
            // RFC 3311: an UPDATE with an offer is answered like a re-INVITE's (§5.2), and
            // gets 491 while an offer of ours waits for its answer; one without a body
            // refreshes the session and changes nothing.
            Method::Update if !request.body.is_empty() && self.reinvite.is_some() => {
                respond(self, 491, None)
            }
            Method::Update if !request.body.is_empty() => {
                let (code, sdp) = self.answer_reinvite(&request.body);
                respond(self, code, sdp);
            }
            Method::Update | Method::Options => respond(self, 200, None),
            Method::Info => {
                let code = self.take_info(&request);
                respond(self, code, None);
            }
            // RFC 3262 §3: no reliable provisional of ours awaits this PRACK.
            Method::PRack => respond(self, 481, None),
            // RFC 3515: the trunk transfers its party to another number (blind transfer).
            Method::Refer => {
                let code = self.accept_refer(&request);
                respond(self, code, None);
                if code == 202 {
                    self.start_trunk_transfer();
                }
            }
            // The NOTIFY is answered before what it reports is acted on (our BYE after a
            // transfer succeeded goes out after the 200).
            Method::Notify if self.refer.is_some() => {
                respond(self, 200, None);
                self.transfer_notified(&request, now);
            }
            // RFC 6665 §4.1.3: no subscription of ours.
            Method::Notify => respond(self, 481, None),
            // Methods the gateway knows but does not act on (REFER, NOTIFY, MESSAGE …): a
            // 200 would claim a transfer or delivery that never happens (§21.4.6).
            _ => respond(self, 405, None),
        }
    }

    /// A key the trunk's side pressed, told by SIP INFO (`application/dtmf-relay`, `Signal=5`):
    /// the response's status, 200 for a digit (passed on to the caller), else 415.
    pub(super) fn take_info(&mut self, request: &Request) -> u16 {
        let body = String::from_utf8_lossy(&request.body);
        let digit = body
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Signal")
                    .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
            })
            .and_then(|v| v.chars().next());
        match digit {
            Some(d) => {
                self.events.push_back(CallEvent::Dtmf(d));
                200
            }
            None => 415,
        }
    }

    /// An UPDATE on the early dialog of our INVITE (RFC 3311 §5.1): once our offer has its
    /// answer (a 18x with SDP), an offer in it is answered at once and moves the early
    /// media; before that it gets 491 (§5.2: our offer still waits). One without a body
    /// refreshes and changes nothing. The dialog is not ours yet, so the response is built
    /// from the request; our Contact is the INVITE's.
    fn answer_early_update(&mut self, id: u64, request: &Request) {
        let (code, sdp) = if request.body.is_empty() {
            (200, None)
        } else if self.phase != Phase::EarlyMedia {
            (491, None)
        } else {
            self.answer_reinvite(&request.body)
        };
        let mut response = response_to(request, code, None);
        if code == 200 {
            let transport = self
                .trunk_used
                .as_deref()
                .and_then(|t| self.trunks.config(t))
                .map_or(crate::sip::transport::Transport::Udp, |c| c.transport);
            response
                .headers
                .push(Header::Contact(rsip::headers::Contact::new(format!(
                    "<{}>",
                    self.sip.contact_uri("gw", transport)
                ))));
        }
        with_sdp(&mut response, sdp);
        self.transmits.push_back(Transmit::Respond { id, response });
    }

    /// The answer a late-offer INVITE's ACK carries (RFC 3261 §13.2.1): our media follows
    /// it; an ACK without a usable one ends the call, since no media can flow (§13.3.1.4).
    fn take_ack_answer(&mut self, body: &[u8], now: Instant) {
        match self.parse_answer(body) {
            Ok(remote) => {
                self.trunk_direction = remote.direction;
                self.events.push_back(CallEvent::TrunkMedia(remote));
            }
            Err(e) => {
                tracing::warn!(call_id = %self.id, error = %e, "the ACK carried no usable answer to our offer; ending the call");
                self.finish("rejected", 488, now);
            }
        }
    }

    /// Answers a re-INVITE per RFC 3264: an offer gets the mirrored direction (hold:
    /// `sendonly` gets `recvonly`) and moves our media; an offerless one gets our offer
    /// (§5); an unusable offer gets 488.
    fn answer_reinvite(&mut self, offer: &[u8]) -> (u16, Option<String>) {
        let Some(local) = self.local.clone() else {
            return (488, None);
        };
        self.sdp_version += 1;
        if offer.is_empty() {
            let ours = sdp::offer(&local, self.sdp_version, Direction::SendRecv);
            return (200, Some(ours));
        }
        match sdp::parse_remote(offer, &local.codecs, &local.srtp, false) {
            Ok(remote) => {
                self.trunk_direction = remote.direction;
                let answer = sdp::answer(&local, self.sdp_version, &remote);
                self.events.push_back(CallEvent::TrunkMedia(remote));
                self.events.push_back(CallEvent::TrunkReinvite);
                (200, Some(answer))
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-INVITE offer refused with 488");
                (488, None)
            }
        }
    }

    pub(super) fn on_reinvite_answer(
        &mut self,
        pending: Reinvite,
        event: ClientEvent,
        code: u16,
        now: Instant,
    ) {
        if self.phase == Phase::Ended && self.leg.is_none() {
            // The trunk hung up meanwhile: a 2xx is still ACKed, nothing else happens.
            if let (Some((dialog, target)), ClientEvent::Response(_), true) =
                (self.closed_leg.take(), &event, (200..300).contains(&code))
            {
                let via = self.sip.via(target.transport, &message::new_branch());
                self.transmits.push_back(Transmit::Stateless {
                    request: dialog.ack(pending.seq, via),
                    target,
                });
            }
            self.closed_leg = None;
            return;
        }
        if pending.refresh {
            return self.on_refresh_reinvite_answer(pending, event, code, now);
        }
        let what = if pending.hold { "hold" } else { "resume" };
        let (Some(leg), ClientEvent::Response(response)) = (self.leg.as_ref(), event) else {
            return self.refuse(
                Refusal::TrunkRefused,
                format!("the trunk did not answer the {what} re-INVITE"),
            );
        };
        if !(200..300).contains(&code) {
            return self.refuse(
                Refusal::TrunkRefused,
                format!("the trunk refused the {what} re-INVITE with {code}"),
            );
        }
        let via = self.sip.via(leg.target.transport, &message::new_branch());
        self.transmits.push_back(Transmit::Stateless {
            request: leg.dialog.ack(pending.seq, via),
            target: leg.target.clone(),
        });
        if self.phase == Phase::Ended {
            return;
        }
        if let Ok(remote) = self.parse_answer(&response.body) {
            self.events.push_back(CallEvent::TrunkMedia(remote));
        }
        self.held = pending.hold;
        self.events.push_back(CallEvent::Held(pending.hold));
    }

    pub(super) fn hold(&mut self, hold: bool) {
        if self.phase != Phase::Answered || self.leg.is_none() {
            return self.refuse(
                Refusal::NotAnswered,
                "hold and unhold need an answered call".into(),
            );
        }
        if self.reinvite.is_some() {
            return self.refuse(
                Refusal::TrunkRefused,
                "a re-INVITE is already waiting for the trunk's answer; try again".into(),
            );
        }
        if hold == self.held {
            return;
        }
        self.send_reinvite(hold, Vec::new());
    }

    /// Our re-INVITE offering our media with the direction `hold` asks for; `session`
    /// headers make it a session refresh (RFC 4028 §7.4) that changes nothing else.
    pub(super) fn send_reinvite(&mut self, hold: bool, session: Vec<Header>) {
        let refresh = !session.is_empty();
        let Some(local) = self.local.clone() else {
            return;
        };
        self.sdp_version += 1;
        let direction = if hold {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        let offer = sdp::offer(&local, self.sdp_version, direction);
        let tx = self.tx_id();
        let leg = self.leg.as_mut().expect("checked");
        let transport = leg.target.transport;
        let sips = crate::sip::dialog::is_sips(&leg.dialog.remote_target);
        let mut extra = vec![
            Header::Contact(rsip::headers::Contact::new(format!(
                "<{}>",
                self.sip.dialog_contact_uri("gw", transport, sips)
            ))),
            Header::ContentType(rsip::headers::ContentType::new("application/sdp")),
        ];
        extra.extend(session);
        let via = self.sip.via(transport, &message::new_branch());
        let request = leg
            .dialog
            .request(Method::Invite, via, extra, offer.into_bytes());
        let seq = message::cseq(&request).map(|c| c.0).unwrap_or(1);
        let target = leg.target.clone();
        self.reinvite = Some(Reinvite {
            tx,
            seq,
            hold,
            refresh,
        });
        self.transmits.push_back(Transmit::Request {
            tx,
            request,
            target,
        });
    }
}

/// Puts `sdp`, if any, in `response` as its body.
fn with_sdp(response: &mut rsip::Response, sdp: Option<String>) {
    if let Some(sdp) = sdp {
        response
            .headers
            .push(Header::ContentType(rsip::headers::ContentType::new(
                "application/sdp",
            )));
        response.body = sdp.into_bytes();
    }
}
