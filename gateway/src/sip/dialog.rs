//! A SIP dialog (RFC 3261 §12), sans-IO: the identifiers, sequence numbers, remote target
//! and route set, and the requests built from them.

use rsip::prelude::*;
use rsip::{Header, Method, Request, Response};

use super::message;

/// Dialog state established by a 2xx (or, early, by a 1xx with a To tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our From/To value without the tag, e.g. `<sip:gw@gw.example>`.
    pub local_uri: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's From/To value without the tag.
    pub remote_uri: String,
    /// The peer's tag.
    pub remote_tag: String,
    /// Where in-dialog requests go: the peer's Contact (§12.1.2).
    pub remote_target: rsip::Uri,
    /// Record-Route set, in the order requests must carry it.
    pub route_set: Vec<String>,
    local_seq: u32,
    remote_seq: Option<u32>,
}

fn strip_tag(value: &str) -> String {
    value
        .split(";tag=")
        .next()
        .unwrap_or(value)
        .trim()
        .to_string()
}

/// Every Record-Route entry, in message order (one header may carry several, §20.30).
fn record_route(headers: &rsip::Headers) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| match h {
            Header::RecordRoute(rr) => Some(
                rr.value()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

fn contact_uri(msg: &impl HeadersExt) -> Option<rsip::Uri> {
    let contact = msg.contact_header().ok()?;
    contact.typed().ok().map(|c| c.uri).or_else(|| {
        let v = contact.value();
        let inner = v.split('<').nth(1)?.split('>').next()?;
        rsip::Uri::try_from(inner).ok()
    })
}

/// True for a SIPS URI (RFC 3261 §19.1).
pub fn is_sips(uri: &rsip::Uri) -> bool {
    matches!(uri.scheme, Some(rsip::Scheme::Sips))
}

impl Dialog {
    /// The UAC side of a dialog from our INVITE and the peer's 2xx (or 1xx with tag), §12.1.2.
    /// Returns `None` when the response lacks a To tag or Contact.
    pub fn from_uac(invite: &Request, response: &Response) -> Option<Dialog> {
        let (seq, _) = message::cseq(invite)?;
        // §12.1.2: the UAC's route set is the 2xx's Record-Route in reverse order.
        let mut route_set = record_route(&response.headers);
        route_set.reverse();
        Some(Dialog {
            call_id: message::call_id(invite)?,
            local_uri: strip_tag(invite.from_header().ok()?.value()),
            local_tag: message::from_tag(invite)?,
            remote_uri: strip_tag(response.to_header().ok()?.value()),
            remote_tag: message::to_tag(response)?,
            remote_target: contact_uri(response).unwrap_or_else(|| invite.uri.clone()),
            route_set,
            local_seq: seq,
            remote_seq: None,
        })
    }

    /// The UAS side of a dialog from a received INVITE and the tag we put in our To (§12.1.1):
    /// the route set is the INVITE's Record-Route in order, the remote target its Contact.
    pub fn from_uas(invite: &Request, local_tag: &str) -> Option<Dialog> {
        let route_set = record_route(&invite.headers);
        Some(Dialog {
            call_id: message::call_id(invite)?,
            local_uri: strip_tag(invite.to_header().ok()?.value()),
            local_tag: local_tag.to_string(),
            remote_uri: strip_tag(invite.from_header().ok()?.value()),
            remote_tag: message::from_tag(invite)?,
            remote_target: contact_uri(invite)?,
            route_set,
            // Our own requests start from a CSeq of our choosing (§12.1.1).
            local_seq: 1,
            remote_seq: message::cseq(invite).map(|c| c.0),
        })
    }

    /// Continues the local CSeq of `early`, the early dialog this one confirms (its PRACKs
    /// used numbers after the INVITE's, RFC 3262 §7.2).
    pub fn continue_cseq(&mut self, early: &Dialog) {
        self.local_seq = self.local_seq.max(early.local_seq);
    }

    /// The next local CSeq number, for a new request in this dialog.
    fn next_seq(&mut self) -> u32 {
        self.local_seq += 1;
        self.local_seq
    }

    /// Builds an in-dialog request (§12.2.1.1) with a new CSeq. `via` comes from the endpoint.
    pub fn request(
        &mut self,
        method: Method,
        via: Header,
        extra: Vec<Header>,
        body: Vec<u8>,
    ) -> Request {
        let seq = self.next_seq();
        self.build(method, seq, via, extra, body)
    }

    /// The ACK for a 2xx to the INVITE with CSeq `invite_seq` (§13.2.2.4): same CSeq number.
    pub fn ack(&self, invite_seq: u32, via: Header) -> Request {
        self.build(Method::Ack, invite_seq, via, vec![], vec![])
    }

    fn build(
        &self,
        method: Method,
        seq: u32,
        via: Header,
        extra: Vec<Header>,
        body: Vec<u8>,
    ) -> Request {
        let mut headers = rsip::Headers::default();
        headers.push(via);
        for route in &self.route_set {
            headers.push(Header::Route(rsip::headers::Route::new(route.clone())));
        }
        headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("70")));
        headers.push(Header::From(rsip::headers::From::new(format!(
            "{};tag={}",
            self.local_uri, self.local_tag
        ))));
        headers.push(Header::To(rsip::headers::To::new(format!(
            "{};tag={}",
            self.remote_uri, self.remote_tag
        ))));
        headers.push(Header::CallId(rsip::headers::CallId::new(
            self.call_id.clone(),
        )));
        headers.push(rsip::typed::CSeq { seq, method }.into());
        for h in extra {
            headers.push(h);
        }
        Request {
            method,
            uri: self.remote_target.clone(),
            version: rsip::Version::V2,
            headers,
            body,
        }
    }

    /// Checks an incoming in-dialog request (§12.2.2): it must name this dialog by Call-ID
    /// and both tags (481 otherwise), and its CSeq must grow (500 otherwise). The remote
    /// sequence starts empty on our side of a dialog we placed (§12.1.2): the peer's first
    /// request may carry any number, 1 included.
    pub fn accept_remote(&mut self, request: &Request) -> Result<(), u16> {
        let Some((seq, method)) = message::cseq(request) else {
            return Err(400);
        };
        if method == Method::Ack || method == Method::Cancel {
            return Ok(());
        }
        let names_us = message::call_id(request).as_deref() == Some(self.call_id.as_str())
            && message::from_tag(request).as_deref() == Some(self.remote_tag.as_str())
            && message::to_tag(request).as_deref() == Some(self.local_tag.as_str());
        if !names_us {
            return Err(481);
        }
        if self.remote_seq.is_some_and(|last| seq <= last) {
            return Err(500);
        }
        self.remote_seq = Some(seq);
        // §12.2.2: a target-refresh request (re-INVITE) may update the remote target.
        if method == Method::Invite
            && let Some(uri) = contact_uri(request)
        {
            self.remote_target = uri;
        }
        Ok(())
    }

    /// The peer's addresses this dialog itself names: the remote target's and the route
    /// set's hosts when they are IP literals. With the trunk's own address, the only sources
    /// an in-dialog request is taken from.
    pub fn peer_ips(&self) -> Vec<std::net::IpAddr> {
        let host_ip = |uri: &rsip::Uri| match &uri.host_with_port.host {
            rsip::Host::IpAddr(ip) => Some(*ip),
            rsip::Host::Domain(d) => d.to_string().parse().ok(),
        };
        let routes = self.route_set.iter().filter_map(|r| {
            let inner = r.trim().trim_start_matches('<');
            let inner = inner.split('>').next().unwrap_or(inner);
            rsip::Uri::try_from(inner).ok()
        });
        std::iter::once(self.remote_target.clone())
            .chain(routes)
            .filter_map(|u| host_ip(&u))
            .collect()
    }

    /// A response to an in-dialog request, carrying our tag.
    pub fn response(&self, request: &Request, code: u16) -> Response {
        message::response_to(request, code, Some(&self.local_tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse;

    fn invite() -> Request {
        parse(b"INVITE sip:100@pbx SIP/2.0\r\nVia: SIP/2.0/UDP gw:5060;branch=z9hG4bK1\r\nFrom: <sip:gw@gw>;tag=L\r\nTo: <sip:100@pbx>\r\nCall-ID: c@gw\r\nCSeq: 2 INVITE\r\nContact: <sip:gw@gw:5060>\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn ok() -> Response {
        parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP gw:5060;branch=z9hG4bK1\r\nRecord-Route: <sip:p2;lr>, <sip:p1;lr>\r\nFrom: <sip:gw@gw>;tag=L\r\nTo: <sip:100@pbx>;tag=R\r\nCall-ID: c@gw\r\nCSeq: 2 INVITE\r\nContact: <sip:100@10.0.0.9:5070>\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn via() -> Header {
        Header::Via(rsip::headers::Via::new(
            "SIP/2.0/UDP gw:5060;branch=z9hG4bK2",
        ))
    }

    #[test]
    fn uac_dialog_targets_contact_and_reverses_record_route() {
        let mut d = Dialog::from_uac(&invite(), &ok()).unwrap();
        assert_eq!(d.remote_target.to_string(), "sip:100@10.0.0.9:5070");
        assert_eq!(d.route_set, vec!["<sip:p1;lr>", "<sip:p2;lr>"]);
        let bye = d.request(Method::Bye, via(), vec![], vec![]);
        let text = bye.to_string();
        assert!(
            text.starts_with("BYE sip:100@10.0.0.9:5070 SIP/2.0"),
            "{text}"
        );
        assert!(text.contains("CSeq: 3 BYE"));
        assert!(text.contains("From: <sip:gw@gw>;tag=L"));
        assert!(text.contains("To: <sip:100@pbx>;tag=R"));
        assert!(text.find("sip:p1").unwrap() < text.find("sip:p2").unwrap());
        assert!(d.ack(2, via()).to_string().contains("CSeq: 2 ACK"));
    }

    #[test]
    fn uas_dialog_swaps_roles_and_targets_the_callers_contact() {
        let invite: Request = parse(b"INVITE sip:+15550100@gw SIP/2.0\r\nVia: SIP/2.0/UDP pbx;branch=z9hG4bK1\r\nRecord-Route: <sip:p1;lr>\r\nFrom: <sip:caller@pbx>;tag=R\r\nTo: <sip:+15550100@gw>\r\nCall-ID: in@pbx\r\nCSeq: 7 INVITE\r\nContact: <sip:caller@10.0.0.9:5070>\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .try_into()
            .unwrap();
        let mut d = Dialog::from_uas(&invite, "L").unwrap();
        let bye = d.request(Method::Bye, via(), vec![], vec![]).to_string();
        assert!(
            bye.starts_with("BYE sip:caller@10.0.0.9:5070 SIP/2.0"),
            "{bye}"
        );
        assert!(bye.contains("From: <sip:+15550100@gw>;tag=L"));
        assert!(bye.contains("To: <sip:caller@pbx>;tag=R"));
        assert!(bye.contains("Route: <sip:p1;lr>"));
    }

    fn request(text: &str) -> Request {
        parse(text.as_bytes()).unwrap().try_into().unwrap()
    }

    #[test]
    fn a_first_bye_with_cseq_1_is_accepted_and_wrong_tags_get_481() {
        let mut d = Dialog::from_uac(&invite(), &ok()).unwrap();
        let bye = |from_tag: &str, to_tag: &str, call_id: &str| {
            request(&format!(
                "BYE sip:gw@gw SIP/2.0\r\nVia: SIP/2.0/UDP pbx;branch=z9hG4bK9\r\nFrom: <sip:100@pbx>;tag={from_tag}\r\nTo: <sip:gw@gw>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
            ))
        };
        assert_eq!(d.accept_remote(&bye("X", "L", "c@gw")), Err(481));
        assert_eq!(d.accept_remote(&bye("R", "X", "c@gw")), Err(481));
        assert_eq!(d.accept_remote(&bye("R", "L", "other@gw")), Err(481));
        assert_eq!(d.accept_remote(&bye("R", "L", "c@gw")), Ok(()));
        assert_eq!(
            d.peer_ips(),
            vec!["10.0.0.9".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn remote_cseq_must_grow() {
        let mut d = Dialog::from_uac(&invite(), &ok()).unwrap();
        let mut bye: Request = parse(b"BYE sip:gw@gw SIP/2.0\r\nVia: SIP/2.0/UDP pbx;branch=z9hG4bK9\r\nFrom: <sip:100@pbx>;tag=R\r\nTo: <sip:gw@gw>;tag=L\r\nCall-ID: c@gw\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(d.accept_remote(&bye), Ok(()));
        assert_eq!(d.accept_remote(&bye), Err(500));
        bye.headers.retain(|h| !matches!(h, Header::CSeq(_)));
        bye.headers.push(
            rsip::typed::CSeq {
                seq: 6,
                method: Method::Bye,
            }
            .into(),
        );
        assert_eq!(d.accept_remote(&bye), Ok(()));
    }
}
