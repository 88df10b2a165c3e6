//! Session timers (RFC 4028) in virtual time: we refresh at half the interval when we are
//! the refresher; a trunk that should refresh and does not is hung up before expiry.

use super::*;

fn answered_with_session(value: &str) -> Bench {
    let mut b = Bench::outbound();
    b.reply_with(
        Method::Invite,
        200,
        Some(trunk_sdp(Direction::SendRecv)),
        vec![Header::Other("Session-Expires".into(), value.into())],
    );
    assert_eq!(b.call.phase(), Phase::Answered);
    b
}

const BOTH: &[MediaLeg] = &[MediaLeg::Trunk, MediaLeg::Browser];

#[test]
fn as_refresher_we_update_every_half_interval_and_the_call_goes_on() {
    let mut b = answered_with_session("90;refresher=uac");
    b.media_for(44, BOTH);
    assert_eq!(b.count(Method::Update), 0);
    b.media_for(2, BOTH);
    assert_eq!(b.count(Method::Update), 1, "refreshed at 45 s");
    let (_, update) = b.request(Method::Update);
    assert_eq!(
        message::header_value(&update.headers, "Session-Expires").as_deref(),
        Some("90;refresher=uac")
    );
    b.reply_with(
        Method::Update,
        200,
        None,
        vec![Header::Other(
            "Session-Expires".into(),
            "90;refresher=uac".into(),
        )],
    );
    b.media_for(46, BOTH);
    assert_eq!(b.count(Method::Update), 2, "and again 45 s later");
    assert!(b.ended().is_none());
}

#[test]
fn a_trunk_that_should_refresh_and_does_not_is_hung_up_before_expiry() {
    let mut b = answered_with_session("90;refresher=uas");
    // A refresh from the trunk (an UPDATE) at 50 s moves the end to 50 + 60 s.
    b.media_for(50, BOTH);
    b.trunk_request_with(
        Method::Update,
        5,
        "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
        Vec::new(),
    );
    let ok = b.response(5);
    assert_eq!(
        message::header_value(&ok.headers, "Session-Expires").as_deref(),
        Some("90;refresher=uac"),
        "the trunk (this UPDATE's UAC) refreshes"
    );
    assert_eq!(
        message::header_value(&ok.headers, "Require").as_deref(),
        Some("timer")
    );
    b.media_for(59, BOTH);
    assert!(b.ended().is_none());
    b.media_for(2, BOTH);
    assert_eq!(b.ended(), Some(("session_expired".into(), 408)));
    let (_, bye) = b.request(Method::Bye);
    assert_eq!(
        message::header_value(&bye.headers, "Reason").as_deref(),
        Some("Q.850;cause=102;text=\"session_expired\"")
    );
    assert_eq!(
        b.count(Method::Update),
        0,
        "we never refreshed for the trunk"
    );
}

#[test]
fn a_refresh_answered_481_ends_the_call_and_no_session_expires_means_no_timer() {
    let mut b = answered_with_session("90");
    b.media_for(46, BOTH);
    b.reply(Method::Update, 481, None);
    assert_eq!(b.ended(), Some(("session_expired".into(), 481)));

    let mut b = answered_outbound();
    b.media_for(300, BOTH);
    assert_eq!(b.count(Method::Update), 0);
    assert!(b.ended().is_none());
}

#[test]
fn an_inbound_invite_below_min_se_gets_422_and_the_refresher_follows_support() {
    let invite = |headers: &str| {
        let mut request = invite_from_trunk();
        let text =
            request
                .to_string()
                .replacen("Content-Type", &format!("{headers}Content-Type"), 1);
        request = parse_request(text.as_bytes());
        request
    };
    assert_eq!(
        inbound_session(&invite("Session-Expires: 60\r\n"), 1800),
        Err(90)
    );
    assert_eq!(
        inbound_session(
            &invite("Supported: timer\r\nSession-Expires: 600\r\n"),
            1800
        ),
        Ok((600, true))
    );
    assert_eq!(
        inbound_session(&invite("Session-Expires: 600\r\n"), 1800),
        Ok((600, false)),
        "a trunk without timer support cannot refresh: we do"
    );
    assert_eq!(inbound_session(&invite(""), 1800), Ok((1800, false)));
    assert_eq!(inbound_session(&invite(""), 0), Ok((0, false)));
}

#[test]
fn a_trunk_without_update_is_refreshed_by_reinvite_that_changes_nothing_else() {
    let mut b = answered_with_session("90;refresher=uac");
    b.media_for(46, BOTH);
    b.reply(Method::Update, 405, None);
    b.advance(Duration::from_millis(1));
    let (_, reinvite) = b.request(Method::Invite);
    assert_eq!(
        message::header_value(&reinvite.headers, "Session-Expires").as_deref(),
        Some("90;refresher=uac")
    );
    assert!(String::from_utf8_lossy(&reinvite.body).contains("a=sendrecv"));
    let acks = b.count(Method::Ack);
    b.reply(Method::Invite, 200, Some(trunk_sdp(Direction::SendRecv)));
    assert_eq!(b.count(Method::Ack), acks + 1, "the refresh's 2xx is ACKed");
    assert!(!b.events.iter().any(|e| matches!(e, CallEvent::Held(_))));
    // The next refresh is a re-INVITE too.
    b.media_for(46, BOTH);
    assert_eq!(b.count(Method::Update), 1);
    assert!(b.ended().is_none());
}
