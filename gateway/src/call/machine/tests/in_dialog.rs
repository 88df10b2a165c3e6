//! The trunk's in-dialog requests beyond BYE and re-INVITE: what the gateway acts on gets
//! the response the RFC asks for, what it does not act on is refused, never answered 200.

use super::*;

fn header(response: &Response, name: &str) -> Option<String> {
    message::header_value(&response.headers, name)
}

#[test]
fn an_update_with_an_offer_gets_an_answer_and_moves_the_media() {
    let mut b = answered_outbound();
    b.trunk_request(Method::Update, 5, trunk_sdp(Direction::SendOnly));
    let response = b.response(5);
    assert_eq!(response.status_code.code(), 200);
    let body = String::from_utf8_lossy(&response.body).to_string();
    assert!(body.contains("a=recvonly"), "RFC 3264 §6.1 mirror: {body}");
    assert!(header(&response, "Contact").is_some(), "RFC 3311 §5.2");
    assert!(b.saw(&CallEvent::TrunkReinvite));
}

#[test]
fn an_update_without_a_body_refreshes_and_one_crossing_our_offer_gets_491() {
    let mut b = answered_outbound();
    b.trunk_request(Method::Update, 5, Vec::new());
    let response = b.response(5);
    assert_eq!(response.status_code.code(), 200);
    assert!(response.body.is_empty());
    assert!(header(&response, "Contact").is_some());
    b.call.handle_command(CallCommand::Hold(true), b.now);
    b.drain();
    b.trunk_request(Method::Update, 6, trunk_sdp(Direction::SendRecv));
    assert_eq!(b.responded(6), [491]);
}

#[test]
fn message_is_refused_with_405_and_allow_a_refer_without_target_400_a_stray_notify_481() {
    let mut b = answered_outbound();
    b.trunk_request(Method::Message, 5, Vec::new());
    let response = b.response(5);
    assert_eq!(response.status_code.code(), 405);
    let allow = header(&response, "Allow").expect("Allow with 405 (§21.4.6)");
    assert!(
        allow.contains("UPDATE") && allow.contains("REFER") && !allow.contains("MESSAGE"),
        "{allow}"
    );
    b.trunk_request(Method::Refer, 7, Vec::new());
    assert_eq!(b.responded(7), [400], "a REFER without Refer-To");
    b.trunk_request(Method::Notify, 8, b"SIP/2.0 200 OK".to_vec());
    assert_eq!(b.responded(8), [481], "RFC 6665 §4.1.3: no subscription");
    assert_eq!(b.call.phase(), Phase::Answered, "the call goes on");
}

#[test]
fn a_prack_for_nothing_gets_481_and_options_tells_what_we_do() {
    let mut b = answered_outbound();
    b.trunk_request(Method::PRack, 5, Vec::new());
    assert_eq!(b.responded(5), [481]);
    b.trunk_request(Method::Options, 6, Vec::new());
    let response = b.response(6);
    assert_eq!(response.status_code.code(), 200);
    assert!(header(&response, "Allow").is_some_and(|a| a.contains("INVITE")));
    assert_eq!(header(&response, "Supported").as_deref(), Some("timer"));
}

#[test]
fn a_request_requiring_an_unsupported_extension_gets_420_naming_it() {
    let mut b = answered_outbound();
    b.trunk_request_with(
        Method::Update,
        5,
        "Require: timer, Foo, precondition\r\n",
        Vec::new(),
    );
    let response = b.response(5);
    assert_eq!(response.status_code.code(), 420);
    // Session timers are supported; the rest are named.
    assert_eq!(
        header(&response, "Unsupported").as_deref(),
        Some("foo, precondition")
    );
    // ACK is never refused; the call is untouched.
    assert_eq!(b.call.phase(), Phase::Answered);
}

#[test]
fn our_bye_and_cancel_say_why_in_a_reason_header() {
    let mut b = answered_outbound();
    b.call.handle_command(CallCommand::Hangup, b.now);
    b.drain();
    let (_, bye) = b.request(Method::Bye);
    assert_eq!(
        message::header_value(&bye.headers, "Reason").as_deref(),
        Some("Q.850;cause=16;text=\"hangup\"")
    );
    let mut b = Bench::outbound();
    b.reply(Method::Invite, 180, None);
    b.run_for(Duration::from_secs(61));
    let (_, cancel) = b.request(Method::Cancel);
    assert_eq!(
        message::header_value(&cancel.headers, "Reason").as_deref(),
        Some("Q.850;cause=19;text=\"no_answer\"")
    );
}

#[test]
fn a_fault_in_the_calls_task_hangs_up_its_trunk_leg_in_every_state() {
    let reason = Some("Q.850;cause=41;text=\"internal_error\"");
    // Answered: BYE, saying why, and the call waits for its answer.
    let mut b = answered_outbound();
    b.call.handle_fault(b.now);
    b.drain();
    assert_eq!(b.ended(), Some(("internal_error".into(), 500)));
    assert!(b.saw(&CallEvent::Ended {
        reason: "internal_error".into(),
        sip_code: 500
    }));
    let (_, bye) = b.request(Method::Bye);
    assert_eq!(
        message::header_value(&bye.headers, "Reason").as_deref(),
        reason
    );
    assert!(!b.call.is_finished());
    b.reply(Method::Bye, 200, None);
    assert!(b.call.is_finished());
    // Ringing out: CANCEL, then the INVITE's 487 finishes it.
    let mut b = Bench::outbound();
    b.reply(Method::Invite, 180, None);
    b.call.handle_fault(b.now);
    b.drain();
    let (_, cancel) = b.request(Method::Cancel);
    assert_eq!(
        message::header_value(&cancel.headers, "Reason").as_deref(),
        reason
    );
    b.reply(Method::Invite, 487, None);
    assert!(b.call.is_finished());
    // A trunk's call ringing at the browser: 500 to its INVITE (RFC 3261 §21.5.1).
    let mut b = Bench::inbound();
    b.call.handle_fault(b.now);
    b.drain();
    assert_eq!(b.responded(0), [180, 500]);
    assert!(b.call.is_finished());
}

#[test]
fn a_trunk_that_stops_sending_rtp_ends_the_call_with_media_timeout() {
    let mut b = answered_outbound();
    b.media_for(20, &[MediaLeg::Trunk, MediaLeg::Browser]);
    assert!(b.ended().is_none(), "media flows: the call goes on");
    b.media_for(29, &[MediaLeg::Browser]);
    assert!(b.ended().is_none(), "29 s of silence is within the 30 s");
    b.media_for(2, &[MediaLeg::Browser]);
    assert_eq!(b.ended(), Some(("media_timeout".into(), 408)));
    let (_, bye) = b.request(Method::Bye);
    assert_eq!(
        message::header_value(&bye.headers, "Reason").as_deref(),
        Some("Q.850;cause=41;text=\"media_timeout\"")
    );
}

#[test]
fn a_silent_browser_ends_the_call_too_but_a_held_call_may_be_silent() {
    let mut b = answered_outbound();
    b.media_for(31, &[MediaLeg::Trunk]);
    assert_eq!(b.ended(), Some(("media_timeout".into(), 408)));

    let mut b = answered_outbound();
    b.call.handle_command(CallCommand::Hold(true), b.now);
    b.drain();
    b.reply(Method::Invite, 200, Some(trunk_sdp(Direction::RecvOnly)));
    assert!(b.call.held());
    b.media_for(90, &[]);
    assert!(b.ended().is_none(), "held: no media is expected");

    // The trunk holding us (inactive) is silent too, and that is no timeout either.
    let mut b = answered_outbound();
    b.trunk_request(Method::Invite, 5, trunk_sdp(Direction::Inactive));
    b.media_for(90, &[]);
    assert!(b.ended().is_none());
}

fn notify(b: &mut Bench, id: u64, sipfrag: &str, terminated: bool) {
    let state = if terminated {
        "Subscription-State: terminated;reason=noresource\r\n"
    } else {
        "Subscription-State: active;expires=60\r\n"
    };
    b.trunk_request_with(
        Method::Notify,
        id,
        &format!("Event: refer\r\n{state}Content-Type: message/sipfrag\r\n"),
        sipfrag.as_bytes().to_vec(),
    );
}

#[test]
fn a_transfer_refers_the_trunk_reports_its_notifies_and_ends_with_transferred() {
    let mut b = answered_outbound();
    b.call
        .handle_command(CallCommand::Transfer("+4930777".into()), b.now);
    b.drain();
    let (_, refer) = b.request(Method::Refer);
    let refer_to = message::header_value(&refer.headers, "Refer-To").unwrap();
    assert!(refer_to.starts_with("<sip:+4930777@"), "{refer_to}");
    assert!(message::header_value(&refer.headers, "Referred-By").is_some());
    b.reply(Method::Refer, 202, None);
    assert!(b.saw(&CallEvent::TransferProgress { code: 202 }));
    notify(&mut b, 5, "SIP/2.0 100 Trying\r\n", false);
    assert_eq!(b.responded(5), [200]);
    assert!(b.saw(&CallEvent::TransferProgress { code: 100 }));
    assert!(b.ended().is_none());
    notify(&mut b, 6, "SIP/2.0 200 OK\r\n", true);
    assert_eq!(b.responded(6), [200]);
    assert_eq!(b.ended(), Some(("transferred".into(), 200)));
    let (_, bye) = b.request(Method::Bye);
    assert_eq!(
        message::header_value(&bye.headers, "Reason").as_deref(),
        Some("Q.850;cause=16;text=\"transferred\"")
    );
}

#[test]
fn a_refused_or_failed_transfer_leaves_the_call_as_it_was() {
    let refused = |b: &Bench| {
        b.events.iter().any(|e| {
            matches!(
                e,
                CallEvent::Refused {
                    kind: Refusal::TransferFailed,
                    ..
                }
            )
        })
    };
    let mut b = answered_outbound();
    b.call
        .handle_command(CallCommand::Transfer("+4930777".into()), b.now);
    b.drain();
    b.reply(Method::Refer, 403, None);
    assert!(refused(&b));
    assert_eq!(b.call.phase(), Phase::Answered);

    let mut b = answered_outbound();
    b.call
        .handle_command(CallCommand::Transfer("+4930777".into()), b.now);
    b.drain();
    b.reply(Method::Refer, 202, None);
    notify(&mut b, 5, "SIP/2.0 486 Busy Here\r\n", true);
    assert_eq!(b.responded(5), [200]);
    assert!(refused(&b));
    assert!(b.ended().is_none());
    assert_eq!(b.count(Method::Bye), 0);
}

/// All requests with `method` sent so far, in order.
fn all_requests(b: &Bench, method: Method) -> Vec<Request> {
    b.sent
        .iter()
        .filter_map(|t| match t {
            Transmit::Request { request, .. } if request.method == method => Some(request.clone()),
            _ => None,
        })
        .collect()
}

fn trunk_refers(b: &mut Bench, id: u64, refer_to: &str) {
    b.trunk_request_with(
        Method::Refer,
        id,
        &format!("Refer-To: {refer_to}\r\nReferred-By: <sip:pbx@127.0.0.1>\r\n"),
        Vec::new(),
    );
}

#[test]
fn a_trunk_refer_moves_the_call_to_the_target_and_byes_the_old_leg() {
    let mut b = answered_outbound();
    let (_, first) = b.request(Method::Invite);
    let old_call_id = message::call_id(&first).unwrap();
    trunk_refers(&mut b, 5, "<sip:+4930777@127.0.0.1:5060>");
    assert_eq!(b.responded(5), [202]);
    let notifies = all_requests(&b, Method::Notify);
    assert_eq!(notifies.len(), 1);
    assert!(String::from_utf8_lossy(&notifies[0].body).starts_with("SIP/2.0 100"));
    assert!(b.saw(&CallEvent::TransferRequested {
        trunk: "carrier".into(),
        number: "+4930777".into(),
        referred_by: Some("<sip:pbx@127.0.0.1>".into()),
    }));
    b.call.handle_transfer_candidates(candidates(), b.now);
    b.drain();
    let (_, invite) = b.request(Method::Invite);
    assert_eq!(
        invite.uri.to_string().split('@').next(),
        Some("sip:+4930777")
    );
    assert_ne!(
        message::call_id(&invite).unwrap(),
        old_call_id,
        "a new call"
    );
    let byes_before = b.count(Method::Bye);
    b.reply(Method::Invite, 200, Some(trunk_sdp(Direction::SendRecv)));
    // The transferor hears the final NOTIFY, then our BYE on the old dialog.
    let notifies = all_requests(&b, Method::Notify);
    assert!(String::from_utf8_lossy(&notifies.last().unwrap().body).starts_with("SIP/2.0 200"));
    let byes = all_requests(&b, Method::Bye);
    assert_eq!(byes.len(), byes_before + 1);
    assert_eq!(message::call_id(byes.last().unwrap()).unwrap(), old_call_id);
    assert_eq!(b.call.phase(), Phase::Answered);
    assert!(b.ended().is_none());
    // Hanging up now ends the new leg.
    b.call.handle_command(CallCommand::Hangup, b.now);
    b.drain();
    let bye = all_requests(&b, Method::Bye).pop().unwrap();
    assert_eq!(message::call_id(&bye), message::call_id(&invite));
}

#[test]
fn a_transfer_a_plugin_refuses_notifies_the_refusal_and_keeps_the_call() {
    let mut b = answered_outbound();
    let invites = b.count(Method::Invite);
    trunk_refers(&mut b, 5, "<sip:+49900123@127.0.0.1>");
    assert_eq!(b.responded(5), [202]);
    b.call.handle_transfer_refused(403);
    b.drain();
    let last = all_requests(&b, Method::Notify).pop().unwrap();
    assert!(String::from_utf8_lossy(&last.body).starts_with("SIP/2.0 403"));
    assert_eq!(b.count(Method::Invite), invites, "nothing dialled");
    assert_eq!(b.call.phase(), Phase::Answered);
    assert!(b.ended().is_none());
    // The transferor may try again with another target.
    trunk_refers(&mut b, 6, "<sip:+4930777@127.0.0.1>");
    assert_eq!(b.responded(6), [202]);
}

#[test]
fn a_refer_to_a_host_that_is_no_trunk_is_refused_and_a_failed_target_keeps_the_call() {
    let mut b = answered_outbound();
    trunk_refers(&mut b, 5, "<sip:+4930777@198.51.100.7>");
    assert_eq!(b.responded(5), [403], "no open relay");
    assert!(all_requests(&b, Method::Notify).is_empty());

    trunk_refers(&mut b, 6, "<sip:+4930777@127.0.0.1>");
    assert_eq!(b.responded(6), [202]);
    b.call.handle_transfer_candidates(candidates(), b.now);
    b.drain();
    b.reply(Method::Invite, 486, None);
    let last = all_requests(&b, Method::Notify).pop().unwrap();
    assert!(String::from_utf8_lossy(&last.body).starts_with("SIP/2.0 486"));
    assert_eq!(
        b.call.phase(),
        Phase::Answered,
        "the call stays on the old leg"
    );
    assert!(b.ended().is_none());
}

#[test]
fn a_transferor_that_hangs_up_after_its_refer_leaves_the_call_to_the_target() {
    let mut b = answered_outbound();
    trunk_refers(&mut b, 5, "<sip:+4930777@127.0.0.1>");
    b.trunk_request(Method::Bye, 6, Vec::new());
    assert_eq!(b.responded(6), [200]);
    assert!(b.ended().is_none(), "the call waits for the target");
    b.call.handle_transfer_candidates(candidates(), b.now);
    b.drain();
    b.reply(Method::Invite, 200, Some(trunk_sdp(Direction::SendRecv)));
    assert_eq!(b.call.phase(), Phase::Answered);
    assert!(b.ended().is_none());

    // Had the target not answered, nobody would be left on the trunk side.
    let mut b = answered_outbound();
    trunk_refers(&mut b, 5, "<sip:+4930777@127.0.0.1>");
    b.trunk_request(Method::Bye, 6, Vec::new());
    b.call.handle_transfer_candidates(candidates(), b.now);
    b.drain();
    b.reply(Method::Invite, 486, None);
    assert_eq!(b.ended(), Some(("remote_hangup".into(), 486)));
}
