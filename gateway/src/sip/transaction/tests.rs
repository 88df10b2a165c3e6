//! Transactions in virtual time: every timer of §17 and the RFC 6026 states.
use super::*;
use crate::sip::message::parse;

fn invite() -> Request {
    let raw = "INVITE sip:1000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc\r\n\
From: <sip:gw@127.0.0.1>;tag=f1\r\nTo: <sip:1000@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    parse(raw.as_bytes()).unwrap().try_into().unwrap()
}

fn options() -> Request {
    let mut r = invite();
    r.method = Method::Options;
    r.headers.retain(|h| !matches!(h, Header::CSeq(_)));
    r.headers.push(
        rsip::typed::CSeq {
            seq: 1,
            method: Method::Options,
        }
        .into(),
    );
    r
}

fn response(code: u16, to_tag: bool) -> Response {
    let mut r = crate::sip::message::response_to(&invite(), code, to_tag.then_some("t9"));
    r.status_code = code.into();
    r
}

fn drain(tx: &mut ClientTransaction) -> usize {
    std::iter::from_fn(|| tx.poll_transmit()).count()
}

/// Runs timers in 10 ms virtual steps up to `until`, counting transmissions.
fn run_until(tx: &mut ClientTransaction, start: Instant, until: Duration) -> usize {
    let mut sent = 0;
    let mut t = start;
    while t <= start + until {
        if tx.poll_timeout().is_some_and(|at| at <= t) {
            tx.handle_timeout(t);
        }
        sent += drain(tx);
        t += Duration::from_millis(10);
    }
    sent
}

#[test]
fn invite_over_udp_retransmits_with_doubling_and_times_out_at_64_t1() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(invite(), false, Timers::default(), t0);
    assert_eq!(drain(&mut tx), 1);
    // Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s -> six retransmissions before B at 32 s.
    let sent = run_until(&mut tx, t0, Duration::from_millis(31_990));
    assert_eq!(sent, 6);
    assert_eq!(tx.poll_event(), None);
    tx.handle_timeout(t0 + Duration::from_secs(32));
    assert_eq!(tx.poll_event(), Some(ClientEvent::Timeout));
    assert!(tx.is_terminated());
}

#[test]
fn invite_over_tcp_never_retransmits() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(invite(), true, Timers::default(), t0);
    assert_eq!(drain(&mut tx), 1);
    assert_eq!(run_until(&mut tx, t0, Duration::from_secs(31)), 0);
}

#[test]
fn provisional_stops_invite_retransmission_and_timer_b() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(invite(), false, Timers::default(), t0);
    drain(&mut tx);
    tx.handle_response(response(180, true), t0 + Duration::from_millis(100));
    assert!(
        matches!(tx.poll_event(), Some(ClientEvent::Response(r)) if r.status_code.code() == 180)
    );
    assert_eq!(run_until(&mut tx, t0, Duration::from_secs(60)), 0);
    assert_eq!(
        tx.poll_event(),
        None,
        "an INVITE in Proceeding waits for the TU"
    );
}

#[test]
fn non_2xx_final_is_acked_once_per_retransmission_and_reported_once() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(invite(), false, Timers::default(), t0);
    drain(&mut tx);
    tx.handle_response(response(486, true), t0);
    let ack = tx.poll_transmit().unwrap();
    let ack_text = String::from_utf8(ack).unwrap();
    assert!(ack_text.starts_with("ACK sip:1000@127.0.0.1 SIP/2.0"));
    assert!(
        ack_text.contains("branch=z9hG4bKabc"),
        "same branch as the INVITE"
    );
    assert!(ack_text.contains("tag=t9"), "To from the response");
    assert!(ack_text.contains("CSeq: 1 ACK"));
    assert!(matches!(tx.poll_event(), Some(ClientEvent::Response(_))));
    tx.handle_response(response(486, true), t0 + Duration::from_secs(1));
    assert_eq!(drain(&mut tx), 1, "ACK repeated");
    assert_eq!(tx.poll_event(), None, "not reported twice");
    tx.handle_timeout(t0 + Duration::from_secs(32));
    assert!(tx.is_terminated(), "Timer D");
}

#[test]
fn every_2xx_reaches_the_tu_until_timer_m() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(invite(), false, Timers::default(), t0);
    drain(&mut tx);
    tx.handle_response(response(200, true), t0);
    tx.handle_response(response(200, true), t0 + Duration::from_millis(500));
    assert_eq!(std::iter::from_fn(|| tx.poll_event()).count(), 2);
    assert_eq!(drain(&mut tx), 0, "the TU acks a 2xx, not the transaction");
    tx.handle_timeout(t0 + Duration::from_secs(32));
    assert!(tx.is_terminated());
}

#[test]
fn non_invite_retransmits_capped_at_t2_and_times_out() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(options(), false, Timers::default(), t0);
    drain(&mut tx);
    // Timer E: 0.5, 1.5, 3.5, 7.5, then every 4 s: 11.5, 15.5, 19.5, 23.5, 27.5, 31.5.
    assert_eq!(run_until(&mut tx, t0, Duration::from_millis(31_990)), 10);
    tx.handle_timeout(t0 + Duration::from_secs(32));
    assert_eq!(tx.poll_event(), Some(ClientEvent::Timeout));
}

#[test]
fn non_invite_final_waits_timer_k_over_udp() {
    let t0 = Instant::now();
    let mut tx = ClientTransaction::new(options(), false, Timers::default(), t0);
    drain(&mut tx);
    let mut ok = response(200, true);
    ok.headers.retain(|h| !matches!(h, Header::CSeq(_)));
    tx.handle_response(ok, t0);
    assert!(matches!(tx.poll_event(), Some(ClientEvent::Response(_))));
    assert!(!tx.is_terminated());
    tx.handle_timeout(t0 + Duration::from_secs(5));
    assert!(tx.is_terminated());
}

#[test]
fn server_invite_final_is_retransmitted_until_ack() {
    let t0 = Instant::now();
    let mut st = ServerTransaction::new(&Method::Invite, false, Timers::default());
    st.respond(&response(486, true), t0);
    assert!(st.poll_transmit().is_some());
    st.handle_timeout(t0 + Duration::from_millis(500));
    assert!(st.poll_transmit().is_some(), "Timer G");
    st.handle_retransmission();
    assert!(
        st.poll_transmit().is_some(),
        "a retransmitted INVITE gets the final again"
    );
    st.handle_ack(t0 + Duration::from_secs(1));
    assert_eq!(st.poll_event(), Some(ServerEvent::Acknowledged));
    st.handle_timeout(t0 + Duration::from_secs(2));
    assert_eq!(st.poll_transmit(), None);
    st.handle_timeout(t0 + Duration::from_secs(6));
    assert!(st.is_terminated(), "Timer I");
}

#[test]
fn server_2xx_without_ack_times_out() {
    let t0 = Instant::now();
    let mut st = ServerTransaction::new(&Method::Invite, true, Timers::default());
    st.respond(&response(200, true), t0);
    let mut sent = 0;
    let mut t = t0;
    while t < t0 + Duration::from_secs(40) {
        if st.poll_timeout().is_some_and(|at| at <= t) {
            st.handle_timeout(t);
        }
        sent += std::iter::from_fn(|| st.poll_transmit()).count();
        t += Duration::from_millis(10);
    }
    // 1 + retransmissions at 0.5, 1.5, 3.5, 7.5, 11.5, ... 31.5 s (capped at T2).
    assert_eq!(sent, 11);
    assert_eq!(st.poll_event(), Some(ServerEvent::AckTimeout));
}

#[test]
fn a_relayed_2xx_goes_out_once_per_copy_received_and_awaits_no_ack() {
    let t0 = Instant::now();
    let mut tx = ServerTransaction::new(&Method::Invite, false, Timers::default());
    tx.relay(&response(180, true), t0);
    assert_eq!(std::iter::from_fn(|| tx.poll_transmit()).count(), 1);
    tx.relay(&response(200, true), t0);
    assert_eq!(std::iter::from_fn(|| tx.poll_transmit()).count(), 1);
    // No retransmission of our own: the node that made the 2xx retransmits it, and each of
    // its copies is relayed again.
    let mut t = t0;
    while t < t0 + Duration::from_secs(4) {
        t += Duration::from_millis(10);
        if tx.poll_timeout().is_some_and(|at| at <= t) {
            tx.handle_timeout(t);
        }
        assert_eq!(tx.poll_transmit(), None, "at {:?}", t - t0);
    }
    tx.relay(&response(200, true), t);
    assert_eq!(std::iter::from_fn(|| tx.poll_transmit()).count(), 1);
    // Timer L ends it quietly: the ACK went to the other node, not here.
    tx.handle_timeout(t0 + Duration::from_secs(32));
    assert_eq!(tx.poll_event(), None);
    assert!(tx.is_terminated());
    // A non-2xx final is relayed as our own: retransmitted until the hop-by-hop ACK.
    let mut busy = ServerTransaction::new(&Method::Invite, false, Timers::default());
    busy.relay(&response(486, true), t0);
    assert_eq!(std::iter::from_fn(|| busy.poll_transmit()).count(), 1);
    busy.handle_timeout(t0 + Duration::from_millis(500));
    assert_eq!(std::iter::from_fn(|| busy.poll_transmit()).count(), 1);
}
