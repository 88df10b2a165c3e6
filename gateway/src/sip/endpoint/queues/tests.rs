use std::net::SocketAddr;

use tokio::sync::mpsc;

use rsip::{Request, Response};

use super::*;
use crate::sip::endpoint::{Command, Responder};
use crate::sip::message::response_to;
use crate::sip::transport::Transport;

fn request(text: &str) -> Request {
    match crate::sip::message::parse(text.as_bytes()).expect("test request parses") {
        rsip::SipMessage::Request(r) => r,
        other => panic!("not a request: {other:?}"),
    }
}

fn info(seq: u32) -> Request {
    request(&format!(
        "INFO sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK{seq}\r\n\
         From: <sip:t@127.0.0.2>;tag=a\r\nTo: <sip:gw@127.0.0.1>;tag=b\r\nCall-ID: c@test\r\n\
         CSeq: {seq} INFO\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn response(code: u16) -> ClientEvent {
    ClientEvent::Response(response_to(&info(1), code, Some("t")))
}

/// An incoming request whose answers land on the returned receiver.
fn incoming(
    request: Request,
    answered: bool,
) -> (Box<IncomingRequest>, mpsc::UnboundedReceiver<Command>) {
    let (commands, answers) = mpsc::unbounded_channel();
    let responder = answered.then(|| Responder::new("k".into(), commands));
    let source: SocketAddr = "127.0.0.2:5060".parse().expect("literal");
    let incoming = IncomingRequest {
        request,
        source,
        transport: Transport::Udp,
        responder,
    };
    (Box::new(incoming), answers)
}

fn answer(answers: &mut mpsc::UnboundedReceiver<Command>) -> Option<Response> {
    match answers.try_recv().ok()? {
        Command::Respond { response, .. } => Some(response),
        _ => None,
    }
}

#[test]
fn a_request_beyond_a_full_queue_is_answered_503_with_retry_after_and_the_queue_keeps_its_own() {
    let (queue, mut waiting) = request_channel();
    for seq in 1..=CALL_QUEUE as u32 {
        let (req, mut answers) = incoming(info(seq), true);
        assert!(deliver(&queue, req, 481), "request {seq} fits");
        assert!(
            answer(&mut answers).is_none(),
            "a queued request is the call's to answer"
        );
    }
    let (req, mut answers) = incoming(info(999), true);
    assert!(!deliver(&queue, req, 481));
    let refused = answer(&mut answers).expect("the request beyond the queue is answered");
    assert_eq!(refused.status_code.code(), 503);
    assert_eq!(
        crate::sip::message::header_value(&refused.headers, "Retry-After").as_deref(),
        Some("1")
    );
    assert!(refused.to_string().contains("CSeq: 999 INFO"), "{refused}");
    // An ACK takes no answer: it is dropped, and counted as lost.
    let (ack, mut answers) = incoming(info(1000), false);
    assert!(!deliver(&queue, ack, 481));
    assert!(answer(&mut answers).is_none());
    // What was queued is intact and in order; a place taken frees one.
    for seq in 1..=CALL_QUEUE as u32 {
        let got = waiting.try_recv().expect("queued request");
        assert!(
            got.request
                .to_string()
                .contains(&format!("CSeq: {seq} INFO"))
        );
        if seq == 1 {
            let (req, _) = incoming(info(1001), true);
            assert!(
                deliver(&queue, req, 481),
                "room again once the call takes one"
            );
        }
    }
    assert!(
        waiting.try_recv().is_ok(),
        "the request let in after the call took one"
    );
    // A queue whose call is gone answers what it is given.
    drop(waiting);
    let (req, mut answers) = incoming(info(1002), true);
    assert!(
        deliver(&queue, req, 481),
        "a closed queue is not a full one"
    );
    assert_eq!(
        answer(&mut answers).map(|r| r.status_code.code()),
        Some(481)
    );
}

#[test]
fn a_calls_full_event_queue_drops_what_the_call_can_do_without_and_keeps_room_for_finals() {
    let (tx, mut rx) = event_channel();
    let mut invite = Sink::tagged(1, tx.clone());
    // A peer floods ringing: it fills the queue up to the reserved places, no further.
    let taken = (0..100).filter(|_| invite.send(response(180))).count();
    assert_eq!(taken, CALL_QUEUE - FINALS_RESERVED);
    // The answer still gets in; its retransmission, which the call can do without, does not.
    assert!(invite.send(response(200)));
    assert!(!invite.send(response(200)));
    // Other transactions' final responses and timeouts take the reserved places ...
    let mut others = (2..).map(|id| Sink::tagged(id, tx.clone()));
    for _ in 1..FINALS_RESERVED - 1 {
        assert!(others.next().expect("sink").send(response(200)));
    }
    assert!(others.next().expect("sink").send(ClientEvent::Timeout));
    // ... until there are none left.
    assert!(!others.next().expect("sink").send(response(486)));
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(*event);
    }
    assert_eq!(events.len(), CALL_QUEUE);
    assert_eq!(events[CALL_QUEUE - FINALS_RESERVED], (1, response(200)));
    assert_eq!(
        events[CALL_QUEUE - 1],
        (FINALS_RESERVED as u64, ClientEvent::Timeout)
    );
    // With room again, a 2xx retransmission reaches the call (it re-sends the ACK).
    assert!(invite.send(response(200)));
    assert_eq!(*rx.try_recv().expect("retransmission"), (1, response(200)));
}

#[test]
fn a_transactions_own_event_queue_is_bounded_the_same_way() {
    let (mut sink, mut rx) = Sink::own();
    let taken = (0..100).filter(|_| sink.send(response(100))).count();
    assert_eq!(taken, CALL_QUEUE - FINALS_RESERVED);
    assert!(sink.send(response(200)), "the final response gets in");
    let events: Vec<ClientEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(events.len(), CALL_QUEUE - FINALS_RESERVED + 1);
    assert_eq!(events.last(), Some(&response(200)));
    // Its user gone, nothing waits for the event: not counted as lost.
    drop(rx);
    assert!(sink.send(ClientEvent::Timeout));
}
