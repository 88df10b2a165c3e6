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
