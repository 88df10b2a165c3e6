//! Session timers (RFC 4028): the answered call's dialog is refreshed every half interval by
//! its refresher; when the refresher is the trunk and its refresh never comes, the call ends
//! with BYE (`session_expired`) shortly before the interval runs out (§10).

use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{Header, Method, Request};

use super::{Call, Phase};
use crate::sip::Transmit;
use crate::sip::extensions::{self, Refresher};
use crate::sip::message;
use crate::sip::transaction::ClientEvent;

/// The session timer of an answered call.
#[derive(Debug, Clone, Copy)]
pub(super) struct SessionTimer {
    interval: Duration,
    /// We send the refreshes (else the trunk does, and we watch for them).
    we_refresh: bool,
    /// Our next refresh, or the moment we give up on the trunk's.
    due: Instant,
    /// Our refresh UPDATE in flight.
    refreshing: Option<u64>,
    /// The trunk refused UPDATE (405/501): we refresh with re-INVITE.
    by_reinvite: bool,
}

impl SessionTimer {
    fn new(interval: Duration, we_refresh: bool, now: Instant) -> SessionTimer {
        let mut timer = SessionTimer {
            interval,
            we_refresh,
            due: now,
            refreshing: None,
            by_reinvite: false,
        };
        timer.restart(now);
        timer
    }

    /// §10: the refresher refreshes at half the interval; the other side ends the session at
    /// the interval minus a third of it, at most 32 s before.
    fn restart(&mut self, now: Instant) {
        self.due = if self.we_refresh {
            now + self.interval / 2
        } else {
            now + self.interval - (self.interval / 3).min(Duration::from_secs(32))
        };
    }
}

impl Call {
    /// Starts the session timer the answer set: `interval` seconds, refreshed by us or not.
    pub(super) fn start_session(&mut self, interval: u32, we_refresh: bool, now: Instant) {
        self.session = (interval > 0)
            .then(|| SessionTimer::new(Duration::from_secs(interval.into()), we_refresh, now));
    }

    /// When the session timer wants [`Call::handle_timeout`].
    pub(super) fn session_due(&self) -> Option<Instant> {
        self.session.map(|s| s.due)
    }

    /// The session timer's turn: refresh, or end a session the trunk stopped refreshing.
    pub(super) fn handle_session_timeout(&mut self, now: Instant) {
        let Some(mut timer) = self.session else {
            return;
        };
        if self.phase != Phase::Answered || self.leg.is_none() {
            self.session = None;
            return;
        }
        if !timer.we_refresh {
            tracing::info!(call_id = %self.id, interval_s = timer.interval.as_secs(), "the trunk stopped refreshing the session");
            self.session = None;
            return self.finish("session_expired", 408, now);
        }
        if self.reinvite.is_some() || timer.refreshing.is_some() {
            // A re-INVITE of ours is under way: refresh once it is settled.
            timer.due = now + Duration::from_secs(1);
            self.session = Some(timer);
            return;
        }
        let terms = vec![
            extensions::session_expires_header(
                timer.interval.as_secs() as u32,
                Some(Refresher::Uac),
            ),
            Header::Other("Supported".into(), "timer".into()),
        ];
        timer.restart(now);
        if timer.by_reinvite {
            self.session = Some(timer);
            return self.send_reinvite(self.held, terms);
        }
        let tx = self.tx_id();
        let leg = self.leg.as_mut().expect("checked");
        let via = self.sip.via(leg.target.transport, &message::new_branch());
        // RFC 4028 §7.4 with UPDATE (RFC 3311): no SDP, no ACK; we are its UAC.
        let mut extra = terms;
        extra.push(Header::Contact(rsip::headers::Contact::new(format!(
            "<{}>",
            self.sip.dialog_contact_uri(
                "gw",
                leg.target.transport,
                crate::sip::dialog::is_sips(&leg.dialog.remote_target)
            )
        ))));
        let request = leg.dialog.request(Method::Update, via, extra, vec![]);
        let target = leg.target.clone();
        timer.refreshing = Some(tx);
        self.session = Some(timer);
        self.transmits.push_back(Transmit::Request {
            tx,
            request,
            target,
        });
    }

    /// The answer to our refresh, if `tx` is it: true when taken. A refresh that times out or
    /// gets 408 or 481 ends the call (§10); one refused otherwise leaves the session to run
    /// on until its next refresh.
    pub(super) fn handle_refresh_answer(
        &mut self,
        tx: u64,
        event: &ClientEvent,
        code: u16,
        now: Instant,
    ) -> bool {
        let Some(mut timer) = self.session.filter(|s| s.refreshing == Some(tx)) else {
            return false;
        };
        timer.refreshing = None;
        if matches!(code, 405 | 501) {
            // No UPDATE at this trunk: refresh by re-INVITE, now and from now on.
            tracing::info!(call_id = %self.id, code, "the trunk refused UPDATE; refreshing by re-INVITE");
            timer.by_reinvite = true;
            timer.due = now;
            self.session = Some(timer);
            return true;
        }
        self.session = Some(timer);
        self.settle_refresh(event, code, now);
        true
    }

    /// A re-INVITE refresh of ours answered: its 2xx is ACKed (§13.2.2.4), then settled
    /// like an UPDATE's answer.
    pub(super) fn on_refresh_reinvite_answer(
        &mut self,
        pending: super::Reinvite,
        event: ClientEvent,
        code: u16,
        now: Instant,
    ) {
        if let (Some(leg), ClientEvent::Response(_), true) =
            (self.leg.as_ref(), &event, (200..300).contains(&code))
        {
            let via = self.sip.via(leg.target.transport, &message::new_branch());
            self.transmits.push_back(Transmit::Stateless {
                request: leg.dialog.ack(pending.seq, via),
                target: leg.target.clone(),
            });
        }
        if self.phase == Phase::Answered {
            self.settle_refresh(&event, code, now);
        }
    }

    /// The answer to a refresh of ours: a 2xx may change the terms; a timeout, 408 or 481
    /// ends the call (§10); another refusal leaves the session to run on.
    fn settle_refresh(&mut self, event: &ClientEvent, code: u16, now: Instant) {
        let Some(mut timer) = self.session else {
            return;
        };
        match event {
            ClientEvent::Response(r) if (200..300).contains(&code) => {
                if let Some((interval, refresher)) =
                    extensions::session_expires(&r.headers).filter(|(i, _)| *i > 0)
                {
                    timer.interval = Duration::from_secs(interval.into());
                    timer.we_refresh = refresher != Some(Refresher::Uas);
                    timer.restart(now);
                    self.session = Some(timer);
                }
            }
            _ if matches!(code, 408 | 481) => {
                tracing::info!(call_id = %self.id, code, "session refresh failed; ending the call");
                self.session = None;
                self.finish("session_expired", code, now);
            }
            _ => {
                tracing::warn!(call_id = %self.id, code, "session refresh refused; the session runs on");
            }
        }
    }

    /// A re-INVITE or UPDATE from the trunk refreshes the session (§9): its Session-Expires
    /// (if any) sets the interval and who refreshes next; the headers for our 2xx say so.
    pub(super) fn refreshed_by_trunk(&mut self, request: &Request, now: Instant) -> Vec<Header> {
        let supports_timer = extensions::option_tags(&request.headers, "Supported")
            .iter()
            .any(|t| t == "timer");
        let proposal =
            extensions::session_expires(&request.headers).filter(|(interval, _)| *interval > 0);
        let (interval, trunk_refreshes) = match (proposal, self.session) {
            // The trunk is this request's UAC: `refresher=uac` is the trunk. Unnamed, the
            // trunk refreshes if it can (§9).
            (Some((interval, refresher)), _) => (
                interval,
                match refresher {
                    Some(Refresher::Uac) => true,
                    Some(Refresher::Uas) => false,
                    None => supports_timer,
                },
            ),
            (None, Some(timer)) => (timer.interval.as_secs() as u32, !timer.we_refresh),
            (None, None) => return Vec::new(),
        };
        // A trunk that cannot refresh does not refresh.
        let trunk_refreshes = trunk_refreshes && supports_timer;
        self.session = Some(SessionTimer::new(
            Duration::from_secs(interval.into()),
            !trunk_refreshes,
            now,
        ));
        let refresher = if trunk_refreshes {
            Refresher::Uac
        } else {
            Refresher::Uas
        };
        let mut headers = vec![extensions::session_expires_header(
            interval,
            Some(refresher),
        )];
        if supports_timer {
            headers.push(Header::Other("Require".into(), "timer".into()));
        }
        headers
    }
}

/// The session an inbound INVITE asks for, as its UAS (§9): `Err(Min-SE)` when its interval
/// is below ours (422), else the interval and whether the trunk refreshes (0: no timer).
pub fn inbound_session(invite: &Request, ours: u32) -> Result<(u32, bool), u32> {
    let supports_timer = extensions::option_tags(&invite.headers, "Supported")
        .iter()
        .chain(extensions::option_tags(&invite.headers, "Require").iter())
        .any(|t| t == "timer");
    match extensions::session_expires(&invite.headers) {
        Some((interval, _)) if interval < extensions::MIN_SE => Err(extensions::MIN_SE),
        Some((interval, refresher)) => Ok((
            interval,
            supports_timer && refresher != Some(Refresher::Uas),
        )),
        None if ours > 0 => Ok((ours.max(extensions::MIN_SE), supports_timer)),
        None => Ok((0, false)),
    }
}
