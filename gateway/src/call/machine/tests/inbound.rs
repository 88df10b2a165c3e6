//! Inbound calls: ringing the browser, its answer, the ACK (or its absence), CANCEL.

use super::*;

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
    b.caller_sends(Method::Ack);
    b.media_for(40, &[MediaLeg::Trunk, MediaLeg::Browser]);
    assert!(b.ended().is_none(), "the ACK stopped the ACK timer");
}

#[test]
fn a_missing_ack_ends_the_call_with_bye() {
    let mut b = Bench::inbound();
    b.call.handle_caller_answered(b.now);
    b.call.handle_caller_media(true, b.now);
    b.drain();
    b.media_for(31, &[MediaLeg::Trunk, MediaLeg::Browser]);
    assert!(b.ended().is_none());
    b.media_for(2, &[MediaLeg::Trunk, MediaLeg::Browser]);
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
    b.caller_sends(Method::Ack);
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
    b.caller_sends(Method::Cancel);
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

#[test]
fn a_late_offer_gets_our_offer_in_the_200_and_the_answer_from_the_ack() {
    let mut invite = invite_from_trunk();
    invite.body.clear();
    let mut b = Bench::inbound_from(invite);
    assert!(
        !b.events
            .iter()
            .any(|e| matches!(e, CallEvent::TrunkMedia(_))),
        "no trunk media before the ACK's answer"
    );
    b.call.handle_caller_answered(b.now);
    b.call.handle_caller_media(true, b.now);
    b.drain();
    let ok = b.response(0);
    assert_eq!(ok.status_code.code(), 200);
    assert_eq!(
        message::header_value(&ok.headers, "Supported").as_deref(),
        Some("timer")
    );
    let offer = String::from_utf8_lossy(&ok.body).to_string();
    assert!(
        offer.contains("m=audio") && offer.contains("a=sendrecv"),
        "{offer}"
    );
    // The ACK answers.
    let mut ack = invite_from_trunk();
    ack.method = Method::Ack;
    ack.body = trunk_sdp(Direction::SendRecv);
    b.call
        .handle_sip_request(9, ack, TRUNK.parse().unwrap(), b.now);
    b.drain();
    assert!(
        b.events
            .iter()
            .any(|e| matches!(e, CallEvent::TrunkMedia(_)))
    );
    assert!(b.ended().is_none());

    // An ACK without an answer leaves no media to carry: the call ends with BYE.
    let mut invite = invite_from_trunk();
    invite.body.clear();
    let mut b = Bench::inbound_from(invite);
    b.call.handle_caller_answered(b.now);
    b.drain();
    let mut ack = invite_from_trunk();
    ack.method = Method::Ack;
    ack.body.clear();
    b.call
        .handle_sip_request(9, ack, TRUNK.parse().unwrap(), b.now);
    b.drain();
    assert_eq!(b.ended(), Some(("rejected".into(), 488)));
    assert_eq!(b.count(Method::Bye), 1);
}

/// The trunk's `method` in the early dialog of the 180 it got (its To-tag, or `to_tag`), with
/// `body`.
fn in_early_dialog(b: &Bench, method: Method, to_tag: Option<&str>, body: &[u8]) -> Request {
    let ours = message::to_tag(&b.response(0)).expect("the 180 made an early dialog");
    let mut request = invite_from_trunk();
    request.method = method;
    request
        .headers
        .retain(|h| !matches!(h, rsip::Header::To(_)));
    request
        .headers
        .push(rsip::Header::To(rsip::headers::To::new(format!(
            "<sip:+15550199@127.0.0.9>;tag={}",
            to_tag.unwrap_or(&ours)
        ))));
    request.body = body.to_vec();
    request
}

/// [`in_early_dialog`]'s request from `source`, as request `id`; the call's response to it.
fn early_request_from(b: &mut Bench, id: u64, request: Request, source: &str) -> Response {
    b.call
        .handle_sip_request(id, request, source.parse().unwrap(), b.now);
    b.drain();
    b.response(id)
}

/// [`in_early_dialog`]'s request from the trunk; the call's response to it.
fn early_request(b: &mut Bench, method: Method, to_tag: Option<&str>, body: &[u8]) -> Response {
    let request = in_early_dialog(b, method, to_tag, body);
    early_request_from(b, 7, request, TRUNK)
}

/// RFC 3261 §15: the caller may end an early dialog with BYE. It gets 200, the INVITE 487,
/// and the browser stops ringing.
#[test]
fn a_bye_on_the_early_dialog_ends_the_ringing() {
    let mut b = Bench::inbound();
    let ringing = b.response(0);
    assert!(
        message::header_value(&ringing.headers, "Contact").is_some(),
        "the 180 makes an early dialog and names our target (§12.1.1)"
    );
    let stranger = early_request(&mut b, Method::Bye, Some("not-ours"), b"");
    assert_eq!(stranger.status_code.code(), 481, "not this call's dialog");
    assert!(b.call.is_offered() && b.ended().is_none());
    // The dialog's tags, from another host of the trunk's (the endpoint lets it in).
    let bye = in_early_dialog(&b, Method::Bye, None, b"");
    let other_host = early_request_from(&mut b, 8, bye, "127.0.0.77:5060");
    assert_eq!(other_host.status_code.code(), 403);
    assert!(b.call.is_offered() && b.ended().is_none());
    let bye = early_request(&mut b, Method::Bye, None, b"");
    assert_eq!(bye.status_code.code(), 200);
    assert_eq!(b.responded(0), [180, 487]);
    assert_eq!(b.ended(), Some(("remote_hangup".into(), 487)));
    assert!(b.call.is_finished() && !b.call.is_offered());
    assert!(b.sent.iter().any(|t| matches!(t, Transmit::Forget(_))));
}

/// RFC 3311 §5.2: the INVITE's offer is unanswered while the browser rings, so an UPDATE
/// with a new offer is refused with 500 and a Retry-After of up to ten seconds; one without
/// an offer (a session refresh) gets 200 and our Contact. Neither ends the ringing.
#[test]
fn an_update_while_ringing_is_refused_if_it_offers_and_answered_if_not() {
    let mut b = Bench::inbound();
    let offer = trunk_sdp(Direction::SendRecv);
    let refused = early_request(&mut b, Method::Update, None, &offer);
    assert_eq!(refused.status_code.code(), 500);
    let wait: u32 = message::header_value(&refused.headers, "Retry-After")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(wait <= 10, "{wait}");
    let refresh = early_request(&mut b, Method::Update, None, b"");
    assert_eq!(refresh.status_code.code(), 200);
    assert!(message::header_value(&refresh.headers, "Contact").is_some());
    let options = early_request(&mut b, Method::Options, None, b"");
    assert_eq!(options.status_code.code(), 200);
    assert!(b.call.is_offered() && b.ended().is_none());
    assert_eq!(b.responded(0), [180]);
    // The browser answers as before.
    b.call.handle_caller_answered(b.now);
    b.drain();
    assert_eq!(b.responded(0), [180, 200]);
}

/// The rest of what a trunk may send while the browser rings: an INFO's digit reaches the
/// browser as in a call (RFC 6086 lets INFO use an early dialog); a re-INVITE gets 491 (§14.1,
/// our INVITE transaction is open), a PRACK 481 (no reliable 18x awaits one, RFC 3262 §3), and
/// what the gateway never acts on 405 with its Allow (§21.4.6). None ends the ringing.
#[test]
fn an_info_while_ringing_passes_its_digit_and_other_requests_get_what_a_call_gives() {
    let mut b = Bench::inbound();
    let info = early_request(&mut b, Method::Info, None, b"Signal=7\r\nDuration=160\r\n");
    assert_eq!(info.status_code.code(), 200);
    assert!(b.saw(&CallEvent::Dtmf('7')));
    let unknown = early_request(&mut b, Method::Info, None, b"<xml/>");
    assert_eq!(unknown.status_code.code(), 415);
    let stranger = early_request(&mut b, Method::Info, Some("not-ours"), b"Signal=1\r\n");
    assert_eq!(stranger.status_code.code(), 481);
    assert!(!b.saw(&CallEvent::Dtmf('1')));
    let reinvite = early_request(
        &mut b,
        Method::Invite,
        None,
        &trunk_sdp(Direction::SendRecv),
    );
    assert_eq!(reinvite.status_code.code(), 491);
    let prack = early_request(&mut b, Method::PRack, None, b"");
    assert_eq!(prack.status_code.code(), 481);
    for method in [Method::Refer, Method::Message] {
        let refused = early_request(&mut b, method, None, b"");
        assert_eq!(refused.status_code.code(), 405, "{method}");
        assert!(message::header_value(&refused.headers, "Allow").is_some());
    }
    assert!(b.call.is_offered() && b.ended().is_none());
    assert_eq!(b.responded(0), [180]);
}
