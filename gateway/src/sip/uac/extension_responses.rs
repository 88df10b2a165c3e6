//! The INVITE client's answers to SIP extensions' responses: PRACK for reliable provisional
//! responses (RFC 3262) and the retry a 422 Session Interval Too Small asks for (RFC 4028 §7.4).

use std::time::Instant;

use rsip::{Header, Method, Response};

use super::{Uac, message};
use crate::sip::Transmit;
use crate::sip::dialog::Dialog;
use crate::sip::extensions;

impl Uac {
    /// RFC 3262 §4: PRACK a reliable provisional response, each RSeq once and in order.
    /// Returns false for one to drop: a retransmission (its PRACK went out already) or one
    /// out of order (the trunk sends it again after the one missing).
    pub(super) fn prack(&mut self, response: &Response, rseq: u32) -> bool {
        let tx = self.next_tx + 1;
        let Some(a) = self.attempt.as_mut() else {
            return false;
        };
        let tag = message::to_tag(response);
        let same_dialog = a
            .early
            .as_ref()
            .is_some_and(|d| Some(&d.remote_tag) == tag.as_ref());
        if same_dialog {
            if a.last_rseq.is_some_and(|last| rseq != last.wrapping_add(1)) {
                return false;
            }
        } else {
            // The first reliable response of this early dialog (another To tag is another
            // branch, with its own RSeq space, §4).
            a.early = Dialog::from_uac(&a.invite, response);
        }
        let Some(early) = a.early.as_mut() else {
            return true; // no To tag: no dialog to PRACK in; the answer still counts
        };
        a.last_rseq = Some(rseq);
        let via = self.local.via(a.target.transport, &message::new_branch());
        let rack = Header::Other("RAck".into(), format!("{rseq} {} INVITE", a.seq));
        let request = early.request(Method::PRack, via, vec![rack], vec![]);
        let target = a.target.clone();
        self.next_tx = tx;
        self.transmits.push_back(Transmit::Request {
            tx,
            request,
            target,
        });
        true
    }

    /// 422 Session Interval Too Small (RFC 4028 §7.4): once, the INVITE again with the
    /// trunk's Min-SE as our interval and in our own Min-SE.
    pub(super) fn on_interval_too_small(&mut self, response: Response, now: Instant) {
        let Some(mut a) = self.attempt.take() else {
            return;
        };
        let (Some(min), None, Some(trunk)) = (
            extensions::min_se(&response.headers),
            a.min_se,
            self.trunks.config(&a.trunk).cloned(),
        ) else {
            self.attempt = Some(a);
            return self.on_rejected(&response, now);
        };
        a.session_expires = a.session_expires.max(min);
        a.min_se = Some(min);
        a.seq += 1;
        a.provisional = false;
        self.send_invite(&mut a, &trunk);
        self.attempt = Some(a);
    }
}
