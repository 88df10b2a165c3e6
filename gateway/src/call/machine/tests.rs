//! The call machine in virtual time: a fake trunk answers its transmits by hand.

use super::*;
use crate::config::{Transport, TrunkConfig};
use crate::media::codec::Codec;
use crate::sip::sdp::Direction;
use rsip::Header;
use rsip::prelude::*;

const TRUNK: &str = "127.0.0.1:5060";

fn trunk_config() -> TrunkConfig {
    TrunkConfig {
        name: "carrier".into(),
        addresses: vec![TRUNK.into()],
        transport: Transport::Udp,
        credentials: None,
        from_user: "gw".into(),
        from_domain: None,
        codecs: vec![Codec::Pcmu],
        register: false,
        register_expires: 600,
        options_interval: 0,
        max_channels: Some(4),
        failover: vec![],
        ca_file: None,
        rtp_source: Default::default(),
    }
}

fn local() -> LocalMedia {
    LocalMedia {
        ip: "127.0.0.1".parse().unwrap(),
        port: 40000,
        codecs: vec![Codec::Pcmu],
        session_id: 1,
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
            candidates: vec![Candidate {
                trunk: "carrier".into(),
                address: TRUNK.into(),
                target: Some(target()),
            }],
            local: local(),
        };
        b.call.handle_route(Ok(route), now);
        b.call.handle_caller_media(true, now);
        b.drain();
        b
    }

    fn inbound() -> Bench {
        let trunks = Trunks::new([trunk_config()]).unwrap();
        let now = Instant::now();
        let request = invite_from_trunk();
        let remote = sdp::parse_remote(&request.body, &[Codec::Pcmu], false).unwrap();
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
        let (tx, request) = self.request(method);
        let mut response = response_to(&request, code, Some("trunk-tag"));
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
        let (_, invite) = self.request(Method::Invite);
        let call_id = message::call_id(&invite).unwrap();
        let text = format!(
            "{method} sip:gw@127.0.0.9:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-t{id}\r\nFrom: <sip:carrier@127.0.0.1>;tag=trunk-tag\r\nTo: <sip:+15550100@127.0.0.1>;tag={}\r\nCall-ID: {call_id}\r\nCSeq: {} {method}\r\nContact: <sip:carrier@127.0.0.1:5060>\r\nContent-Length: {}\r\n\r\n",
            message::from_tag(&invite).unwrap(),
            100 + id,
            body.len()
        );
        let request = parse_request(&[text.as_bytes(), &body].concat());
        self.call
            .handle_sip_request(id, request, TRUNK.parse().unwrap(), self.now);
        self.drain();
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

#[test]
fn ringing_then_answer_then_remote_hangup() {
    let mut b = Bench::outbound();
    assert!(
        matches!(b.sent.first(), Some(Transmit::Listen(_))),
        "the dialog is listened to before the INVITE leaves"
    );
    b.reply(Method::Invite, 180, None);
    assert_eq!(b.call.phase(), Phase::Ringing);
    b.reply(Method::Invite, 200, Some(trunk_sdp(Direction::SendRecv)));
    assert!(b.saw(&CallEvent::Answered));
    assert_eq!(b.count(Method::Ack), 1, "the 2xx is ACKed");
    assert!(
        b.events
            .iter()
            .any(|e| matches!(e, CallEvent::TrunkMedia(r) if r.addr.port() == 30000))
    );
    b.trunk_request(Method::Bye, 7, vec![]);
    assert_eq!(b.responded(7), [200]);
    assert_eq!(b.ended(), Some(("remote_hangup".into(), 200)));
    assert!(b.call.is_finished());
    assert!(b.sent.iter().any(|t| matches!(t, Transmit::Forget(_))));
}

#[test]
fn a_late_ringing_does_not_unanswer_the_call() {
    let mut b = answered_outbound();
    let before = b.events.len();
    b.reply(Method::Invite, 180, None);
    assert_eq!(b.call.phase(), Phase::Answered);
    assert_eq!(
        b.events.len(),
        before,
        "nothing after the answer: {:?}",
        b.events
    );
}

#[test]
fn browser_hangup_after_answer_sends_bye_and_finishes_on_its_answer() {
    let mut b = answered_outbound();
    b.call.handle_command(CallCommand::Hangup, b.now);
    b.drain();
    assert_eq!(b.ended(), Some(("hangup".into(), 200)));
    assert_eq!(b.count(Method::Bye), 1);
    assert!(!b.call.is_finished(), "waits for the BYE's answer");
    b.reply(Method::Bye, 200, None);
    assert!(b.call.is_finished());
}

#[test]
fn a_bye_the_trunk_never_answers_ends_with_its_transaction() {
    let mut b = answered_outbound();
    b.call.handle_command(CallCommand::Hangup, b.now);
    b.drain();
    b.timeout(Method::Bye);
    assert!(b.call.is_finished());
}

#[test]
fn browser_gone_during_early_media_cancels() {
    let mut b = Bench::outbound();
    b.reply(Method::Invite, 183, Some(trunk_sdp(Direction::SendRecv)));
    assert_eq!(b.call.phase(), Phase::EarlyMedia);
    assert!(b.saw(&CallEvent::Progress { code: 183 }));
    b.call.handle_caller_media(false, b.now);
    b.drain();
    assert_eq!(b.ended(), Some(("media_failed".into(), 487)));
    assert_eq!(b.count(Method::Cancel), 1);
    assert!(!b.call.is_finished(), "the INVITE must still end");
    b.reply(Method::Invite, 487, None);
    assert!(b.call.is_finished());
    assert_eq!(b.call.failure(), Some(&CallFailure::Cancelled));
}

#[test]
fn cancel_waits_for_a_provisional_before_it_is_sent() {
    let mut b = Bench::outbound();
    b.call.handle_command(CallCommand::Hangup, b.now);
    b.drain();
    assert_eq!(
        b.count(Method::Cancel),
        0,
        "§9.1: no CANCEL before a provisional"
    );
    b.reply(Method::Invite, 180, None);
    assert_eq!(b.count(Method::Cancel), 1);
}

#[test]
fn a_200_crossing_the_cancel_is_acked_then_byed() {
    let mut b = Bench::outbound();
    b.reply(Method::Invite, 180, None);
    b.call.handle_command(CallCommand::Hangup, b.now);
    b.drain();
    assert_eq!(b.count(Method::Cancel), 1);
    b.reply(Method::Invite, 200, Some(trunk_sdp(Direction::SendRecv)));
    assert_eq!(b.count(Method::Ack), 1);
    assert_eq!(b.count(Method::Bye), 1, "the call that exists is ended");
    assert!(
        !b.saw(&CallEvent::Answered),
        "the browser is not told of it"
    );
    assert_eq!(b.ended(), Some(("hangup".into(), 487)));
    b.reply(Method::Bye, 200, None);
    assert!(b.call.is_finished());
}

#[test]
fn ring_timeout_cancels_with_no_answer() {
    let mut b = Bench::outbound();
    b.reply(Method::Invite, 180, None);
    b.run_for(Duration::from_secs(59));
    assert!(b.ended().is_none());
    b.run_for(Duration::from_secs(2));
    assert_eq!(b.ended(), Some(("no_answer".into(), 408)));
    assert_eq!(b.count(Method::Cancel), 1);
}

#[test]
fn a_cancel_never_completed_is_given_up_after_64_t1() {
    let mut b = Bench::outbound();
    b.reply(Method::Invite, 183, Some(trunk_sdp(Direction::SendRecv)));
    b.call.handle_command(CallCommand::Hangup, b.now);
    b.drain();
    b.reply(Method::Cancel, 200, None);
    b.run_for(Duration::from_secs(31));
    assert!(!b.call.is_finished(), "still within 64·T1");
    b.run_for(Duration::from_secs(2));
    assert!(b.call.is_finished(), "given up 64·T1 after the CANCEL");
    assert!(
        b.sent.iter().any(|t| matches!(t, Transmit::Abandon { .. })),
        "the endpoint forgets the INVITE transaction"
    );
}

#[test]
fn hold_is_a_reinvite_that_does_not_block_and_can_be_refused() {
    let mut b = answered_outbound();
    b.call.handle_command(CallCommand::Hold(true), b.now);
    b.drain();
    let (_, reinvite) = b.request(Method::Invite);
    assert!(
        String::from_utf8_lossy(&reinvite.body).contains("a=sendonly"),
        "hold offers sendonly"
    );
    assert!(!b.call.held(), "not held until the trunk agrees");
    // Meanwhile the call goes on: the trunk's INFO digit is taken.
    b.trunk_request(Method::Info, 3, b"Signal=5\r\nDuration=160\r\n".to_vec());
    assert!(b.saw(&CallEvent::Dtmf('5')));
    b.reply(Method::Invite, 200, Some(trunk_sdp(Direction::RecvOnly)));
    assert!(b.call.held());
    assert!(b.saw(&CallEvent::Held(true)));
    assert_eq!(b.count(Method::Ack), 2, "the re-INVITE's 2xx is ACKed");
    // Resuming is refused by the trunk: the call stays as it was.
    b.call.handle_command(CallCommand::Hold(false), b.now);
    b.drain();
    b.reply(Method::Invite, 488, None);
    assert!(b.call.held());
    assert!(b.events.iter().any(|e| matches!(
        e,
        CallEvent::Refused {
            kind: Refusal::TrunkRefused,
            ..
        }
    )));
    assert!(b.ended().is_none());
}

#[test]
fn hold_before_the_answer_is_refused() {
    let mut b = Bench::outbound();
    b.call.handle_command(CallCommand::Hold(true), b.now);
    b.drain();
    assert!(b.events.iter().any(|e| matches!(
        e,
        CallEvent::Refused {
            kind: Refusal::NotAnswered,
            ..
        }
    )));
}

#[test]
fn bye_during_our_reinvite_ends_the_call() {
    let mut b = answered_outbound();
    b.call.handle_command(CallCommand::Hold(true), b.now);
    b.drain();
    b.trunk_request(Method::Bye, 4, vec![]);
    assert_eq!(b.responded(4), [200]);
    assert_eq!(b.ended(), Some(("remote_hangup".into(), 200)));
    // The re-INVITE's late answer changes nothing.
    b.reply(Method::Invite, 481, None);
    assert!(b.call.is_finished());
    assert!(!b.call.held());
}

#[test]
fn a_2xx_to_our_reinvite_after_the_trunk_hung_up_is_still_acked() {
    let mut b = answered_outbound();
    b.call.handle_command(CallCommand::Hold(true), b.now);
    b.drain();
    b.trunk_request(Method::Bye, 4, vec![]);
    assert!(
        !b.call.is_finished(),
        "the re-INVITE still waits for its answer"
    );
    let acks = b.count(Method::Ack);
    b.reply(Method::Invite, 200, Some(trunk_sdp(Direction::RecvOnly)));
    assert_eq!(b.count(Method::Ack), acks + 1, "the late 2xx is ACKed");
    assert_eq!(
        b.count(Method::Bye),
        0,
        "and no BYE follows a dialog the trunk ended"
    );
    assert!(b.call.is_finished());
    assert!(!b.saw(&CallEvent::Held(true)));
}

#[test]
fn a_trunk_reinvite_while_ours_waits_gets_491() {
    let mut b = answered_outbound();
    b.call.handle_command(CallCommand::Hold(true), b.now);
    b.drain();
    b.trunk_request(Method::Invite, 5, trunk_sdp(Direction::SendRecv));
    assert_eq!(b.responded(5), [491]);
}

#[test]
fn a_trunk_reinvite_moves_the_media() {
    let mut b = answered_outbound();
    b.trunk_request(Method::Invite, 6, trunk_sdp(Direction::SendOnly));
    assert_eq!(b.responded(6), [200]);
    assert!(b.saw(&CallEvent::TrunkReinvite));
}

#[test]
fn failures_map_to_documented_reasons() {
    for (code, reason) in [
        (486, "busy"),
        (404, "not_found"),
        (603, "rejected"),
        (480, "no_answer"),
    ] {
        let mut b = Bench::outbound();
        b.reply(Method::Invite, code, None);
        assert_eq!(b.ended(), Some((reason.into(), code)));
        assert!(b.call.is_finished());
    }
}

#[test]
fn a_503_with_retry_after_marks_the_address_down() {
    let mut b = Bench::outbound();
    let (tx, request) = b.request(Method::Invite);
    let mut response = response_to(&request, 503, Some("t"));
    response
        .headers
        .push(Header::Other("Retry-After".into(), "120".into()));
    b.call
        .handle_sip_response(tx, ClientEvent::Response(response), b.now);
    b.drain();
    assert_eq!(b.ended(), Some(("trunk_unavailable".into(), 503)));
    assert!(b.trunks.is_down("carrier", TRUNK));
}

#[test]
fn a_timeout_ends_with_408() {
    let mut b = Bench::outbound();
    b.timeout(Method::Invite);
    assert_eq!(b.ended(), Some(("no_answer".into(), 408)));
}

#[test]
fn a_plugin_refusal_ends_the_call_before_anything_is_sent() {
    let trunks = Trunks::new([trunk_config()]).unwrap();
    let now = Instant::now();
    let mut call = Call::outbound("c", CallSettings::default(), sip_local(), trunks, now);
    call.handle_route(Err(("rejected", 403)), now);
    assert!(call.poll_transmit().is_none());
    assert_eq!(call.end(), Some(&("rejected".to_string(), 403)));
    assert!(call.is_finished() || call.poll_event().is_some());
}

#[test]
fn the_browser_never_connecting_ends_the_call() {
    let trunks = Trunks::new([trunk_config()]).unwrap();
    let now = Instant::now();
    let mut call = Call::outbound("c", CallSettings::default(), sip_local(), trunks, now);
    call.handle_timeout(now + Duration::from_secs(16));
    assert_eq!(call.end(), Some(&("media_failed".to_string(), 487)));
}

#[test]
fn inbound_rings_then_the_browser_answers_and_the_ack_confirms() {
    let mut b = Bench::inbound();
    assert_eq!(b.responded(0), [180]);
    assert!(b.call.is_offered());
    b.call.handle_caller_answered(b.now);
    b.call.handle_caller_media(true, b.now);
    b.drain();
    assert_eq!(b.responded(0), [180, 200]);
    assert!(b.saw(&CallEvent::Answered));
    let ack = invite_from_trunk();
    let mut ack = ack.clone();
    ack.method = Method::Ack;
    b.call
        .handle_sip_request(9, ack, TRUNK.parse().unwrap(), b.now);
    b.run_for(Duration::from_secs(40));
    assert!(b.ended().is_none(), "the ACK stopped the ACK timer");
}

#[test]
fn a_missing_ack_ends_the_call_with_bye() {
    let mut b = Bench::inbound();
    b.call.handle_caller_answered(b.now);
    b.call.handle_caller_media(true, b.now);
    b.drain();
    b.run_for(Duration::from_secs(31));
    assert!(b.ended().is_none());
    b.run_for(Duration::from_secs(2));
    assert_eq!(b.ended(), Some(("no_ack".into(), 408)));
    assert_eq!(b.count(Method::Bye), 1);
}

#[test]
fn a_hangup_before_the_ack_waits_for_it_then_byes() {
    let mut b = Bench::inbound();
    b.call.handle_caller_answered(b.now);
    b.call.handle_command(CallCommand::Hangup, b.now);
    b.drain();
    assert_eq!(b.count(Method::Bye), 0, "§15: no BYE before the ACK");
    let mut ack = invite_from_trunk();
    ack.method = Method::Ack;
    b.call
        .handle_sip_request(9, ack, TRUNK.parse().unwrap(), b.now);
    b.drain();
    assert_eq!(b.count(Method::Bye), 1);
}

#[test]
fn inbound_ring_timeout_answers_480() {
    let mut b = Bench::inbound();
    b.run_for(Duration::from_secs(61));
    assert_eq!(b.responded(0), [180, 480]);
    assert_eq!(b.ended(), Some(("no_answer".into(), 480)));
    assert!(b.call.is_finished());
    assert!(b.sent.iter().any(|t| matches!(t, Transmit::Forget(_))));
}

#[test]
fn an_inbound_cancel_ends_the_offer() {
    let mut b = Bench::inbound();
    let mut cancel = invite_from_trunk();
    cancel.method = Method::Cancel;
    b.call
        .handle_sip_request(9, cancel, TRUNK.parse().unwrap(), b.now);
    b.drain();
    assert_eq!(b.ended(), Some(("remote_hangup".into(), 487)));
    assert!(b.call.is_finished());
    assert!(!b.call.is_offered());
}

#[test]
fn the_browser_declining_answers_603() {
    let mut b = Bench::inbound();
    b.call.handle_command(CallCommand::Hangup, b.now);
    b.drain();
    assert_eq!(b.responded(0), [180, 603]);
    assert!(b.call.is_finished());
}
