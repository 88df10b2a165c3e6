//! Outbound calls: routing, ringing, answer, hold, hang-up both ways, CANCEL races.

use super::*;

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
fn an_early_update_is_491_before_the_answer_came_and_moves_early_media_after() {
    let mut b = Bench::outbound();
    b.reply(Method::Invite, 180, None);
    let moved = String::from_utf8(trunk_sdp(Direction::SendRecv))
        .unwrap()
        .replace("m=audio 30000", "m=audio 31000");
    // Our offer has no answer yet (§5.2 of RFC 3311).
    b.trunk_request_with(
        Method::Update,
        1,
        "Content-Type: application/sdp\r\n",
        moved.clone().into_bytes(),
    );
    assert_eq!(b.responded(1), [491]);
    b.reply(Method::Invite, 183, Some(trunk_sdp(Direction::SendRecv)));
    assert_eq!(b.call.phase(), Phase::EarlyMedia);
    b.trunk_request_with(
        Method::Update,
        2,
        "Content-Type: application/sdp\r\n",
        moved.into_bytes(),
    );
    assert_eq!(b.responded(2), [200]);
    let answer = b.response(2);
    assert!(String::from_utf8_lossy(&answer.body).contains("m=audio 40000 RTP/AVP 0"));
    assert!(
        b.events
            .iter()
            .any(|e| matches!(e, CallEvent::TrunkMedia(r) if r.addr.port() == 31000))
    );
    // A refresh without a body changes nothing; the call is still unanswered.
    b.trunk_request_with(Method::Update, 3, "", Vec::new());
    assert_eq!(b.responded(3), [200]);
    assert_eq!(b.call.phase(), Phase::EarlyMedia);
    assert!(b.response(3).body.is_empty());
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
