//! The call machine in virtual time: a fake trunk answers its transmits by hand. The bench
//! lives here; `outbound` and `inbound` hold the tests of each direction.

mod in_dialog;
mod inbound;
mod outbound;
mod session;

use super::*;
use crate::config::{Transport, TrunkConfig};
use crate::media::codec::Codec;
use crate::sip::sdp::Direction;
use rsip::prelude::*;
use rsip::{Header, Response};

const TRUNK: &str = "127.0.0.1:5060";

fn trunk_config() -> TrunkConfig {
    TrunkConfig {
        max_channels: Some(4),
        ..TrunkConfig::for_tests("carrier", &[TRUNK])
    }
}

fn local() -> LocalMedia {
    LocalMedia {
        ip: "127.0.0.1".parse().unwrap(),
        port: 40000,
        codecs: vec![Codec::Pcmu],
        session_id: 1,
        srtp: Default::default(),
    }
}

fn trunk_sdp(direction: Direction) -> Vec<u8> {
    let media = LocalMedia {
        port: 30000,
        ..local()
    };
    sdp::offer(&media, 1, direction).into_bytes()
}

fn target() -> Target {
    Target {
        addr: TRUNK.parse().unwrap(),
        transport: Transport::Udp,
        host: "127.0.0.1".into(),
        tls: None,
    }
}

/// The one address of the trunk `carrier`, resolved.
fn candidates() -> Vec<Candidate> {
    vec![Candidate {
        trunk: "carrier".into(),
        address: TRUNK.into(),
        target: Some(target()),
    }]
}

fn sip_local() -> SipLocal {
    SipLocal::new("127.0.0.9:5070".parse().unwrap(), "test")
}

/// A test bench: the call, its virtual clock, and what it sent.
struct Bench {
    call: Call,
    now: Instant,
    sent: Vec<Transmit>,
    events: Vec<CallEvent>,
    trunks: Arc<Trunks>,
}

impl Bench {
    fn outbound() -> Bench {
        let trunks = Trunks::new([trunk_config()]).unwrap();
        let now = Instant::now();
        let call = Call::outbound(
            "c-1",
            CallSettings::default(),
            sip_local(),
            trunks.clone(),
            now,
        );
        let mut b = Bench {
            call,
            now,
            sent: vec![],
            events: vec![],
            trunks,
        };
        let route = Route {
            request: CallRequest {
                to: "+15550100".into(),
                from_user: None,
                sdp_offer: sdp::offer(&local(), 1, Direction::SendRecv),
                headers: vec![],
                failover: vec![],
            },
            candidates: candidates(),
            local: local(),
        };
        b.call.handle_route(Ok(route), now);
        b.call.handle_caller_media(true, now);
        b.drain();
        b
    }

    fn inbound() -> Bench {
        Bench::inbound_from(invite_from_trunk())
    }

    /// An inbound call from `request` (without a body: a late offer).
    fn inbound_from(request: Request) -> Bench {
        let trunks = Trunks::new([trunk_config()]).unwrap();
        let now = Instant::now();
        let remote = (!request.body.is_empty()).then(|| {
            sdp::parse_remote(&request.body, &[Codec::Pcmu], &Default::default(), false).unwrap()
        });
        let invite = InboundInvite {
            id: 0,
            request,
            source: TRUNK.parse().unwrap(),
            transport: Transport::Udp,
            trunk: "carrier".into(),
            rtp_source: Default::default(),
            channel: trunks.take_channel("carrier").unwrap(),
            remote,
            local: local(),
            // The trunk's INVITE offers no timer; ours (1800 s) is ours to refresh.
            session: inbound_session(&invite_from_trunk(), 1800).unwrap(),
        };
        let call = Call::inbound(
            "c-2",
            CallSettings::default(),
            sip_local(),
            trunks.clone(),
            invite,
            now,
        );
        let mut b = Bench {
            call,
            now,
            sent: vec![],
            events: vec![],
            trunks,
        };
        b.drain();
        b
    }

    fn drain(&mut self) {
        while let Some(t) = self.call.poll_transmit() {
            self.sent.push(t);
        }
        while let Some(e) = self.call.poll_event() {
            self.events.push(e);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.call.poll_timeout().is_some_and(|t| t <= self.now) {
            self.call.handle_timeout(self.now);
        }
        self.drain();
    }

    /// Runs `seconds` of the call, media arriving from `legs` every second.
    fn media_for(&mut self, seconds: u64, legs: &[MediaLeg]) {
        for _ in 0..seconds {
            self.advance(Duration::from_secs(1));
            for leg in legs {
                self.call.handle_media_received(*leg, self.now);
            }
            self.drain();
        }
    }

    /// Runs timers until `until`, one second at a time.
    fn run_for(&mut self, total: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.advance(Duration::from_secs(1));
        }
    }

    /// The last request sent with `method`, and its transaction id (0 for stateless).
    fn request(&self, method: Method) -> (u64, Request) {
        self.sent
            .iter()
            .rev()
            .find_map(|t| match t {
                Transmit::Request { tx, request, .. } if request.method == method => {
                    Some((*tx, request.clone()))
                }
                Transmit::Stateless { request, .. } if request.method == method => {
                    Some((0, request.clone()))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {method} among {:#?}", self.sent))
    }

    fn count(&self, method: Method) -> usize {
        self.sent
            .iter()
            .filter(|t| match t {
                Transmit::Request { request, .. } | Transmit::Stateless { request, .. } => {
                    request.method == method
                }
                _ => false,
            })
            .count()
    }

    /// The trunk answers the last `method` request with `code`.
    fn reply(&mut self, method: Method, code: u16, body: Option<Vec<u8>>) {
        self.reply_with(method, code, body, vec![]);
    }

    /// The same, with `extra` headers.
    fn reply_with(&mut self, method: Method, code: u16, body: Option<Vec<u8>>, extra: Vec<Header>) {
        let (tx, request) = self.request(method);
        let mut response = response_to(&request, code, Some("trunk-tag"));
        for header in extra {
            response.headers.push(header);
        }
        response
            .headers
            .push(Header::Contact(rsip::headers::Contact::new(
                "<sip:carrier@127.0.0.1:5060>",
            )));
        if let Some(body) = body {
            response.body = body;
        }
        self.call
            .handle_sip_response(tx, ClientEvent::Response(response), self.now);
        self.drain();
    }

    fn timeout(&mut self, method: Method) {
        let (tx, _) = self.request(method);
        self.call
            .handle_sip_response(tx, ClientEvent::Timeout, self.now);
        self.drain();
    }

    /// The trunk sends an in-dialog request on the call's dialog.
    fn trunk_request(&mut self, method: Method, id: u64, body: Vec<u8>) {
        self.trunk_request_with(method, id, "", body);
    }

    /// The same, with `extra` header lines (each ending in CRLF).
    fn trunk_request_with(&mut self, method: Method, id: u64, extra: &str, body: Vec<u8>) {
        let (_, invite) = self.request(Method::Invite);
        let call_id = message::call_id(&invite).unwrap();
        let text = format!(
            "{method} sip:gw@127.0.0.9:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-t{id}\r\nFrom: <sip:carrier@127.0.0.1>;tag=trunk-tag\r\nTo: <sip:+15550100@127.0.0.1>;tag={}\r\nCall-ID: {call_id}\r\nCSeq: {} {method}\r\nContact: <sip:carrier@127.0.0.1:5060>\r\n{extra}Content-Length: {}\r\n\r\n",
            message::from_tag(&invite).unwrap(),
            100 + id,
            body.len()
        );
        let request = parse_request(&[text.as_bytes(), &body].concat());
        self.call
            .handle_sip_request(id, request, TRUNK.parse().unwrap(), self.now);
        self.drain();
    }

    /// The trunk caller of an inbound call sends `method` (ACK, CANCEL) for its INVITE.
    fn caller_sends(&mut self, method: Method) {
        let mut request = invite_from_trunk();
        request.method = method;
        self.call
            .handle_sip_request(9, request, TRUNK.parse().unwrap(), self.now);
        self.drain();
    }

    /// The last response sent to the trunk's request `id`.
    fn response(&self, id: u64) -> Response {
        self.sent
            .iter()
            .rev()
            .find_map(|t| match t {
                Transmit::Respond { id: i, response } if *i == id => Some(response.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no response to {id} among {:#?}", self.sent))
    }

    fn responded(&self, id: u64) -> Vec<u16> {
        self.sent
            .iter()
            .filter_map(|t| match t {
                Transmit::Respond { id: i, response } if *i == id => {
                    Some(response.status_code.code())
                }
                _ => None,
            })
            .collect()
    }

    fn ended(&self) -> Option<(String, u16)> {
        self.call.end().cloned()
    }

    fn saw(&self, wanted: &CallEvent) -> bool {
        self.events.contains(wanted)
    }
}

fn invite_from_trunk() -> Request {
    let body = trunk_sdp(Direction::SendRecv);
    let text = format!(
        "INVITE sip:+15550199@127.0.0.9:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-in1\r\nFrom: <sip:+15550123@127.0.0.1>;tag=caller\r\nTo: <sip:+15550199@127.0.0.9>\r\nCall-ID: inbound-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    parse_request(&[text.as_bytes(), &body].concat())
}

fn parse_request(bytes: &[u8]) -> Request {
    match message::parse(bytes).expect("test request parses") {
        rsip::SipMessage::Request(r) => r,
        other => panic!("not a request: {other:?}"),
    }
}

fn answered_outbound() -> Bench {
    let mut b = Bench::outbound();
    b.reply(Method::Invite, 180, None);
    b.reply(Method::Invite, 200, Some(trunk_sdp(Direction::SendRecv)));
    assert_eq!(b.call.phase(), Phase::Answered);
    b
}
