//! Blind transfer from the browser (RFC 3515): a REFER asks the trunk to call the target;
//! its NOTIFYs (`message/sipfrag`, §2.4.5) report that call; a 2xx there ends ours with BYE
//! (`transferred`), anything else leaves the call as it was.

use rsip::prelude::*;
use rsip::{Header, Method, Request};
use std::time::Instant;

use super::{Call, CallEvent, Phase, Refusal};
use crate::sip::Transmit;
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
