//! The forwarding proxy in virtual time.
use super::*;
use crate::sip::message::parse;

fn trunk_invite(max_forwards: u32) -> Request {
    let raw = format!(
        "INVITE sip:+15550100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKtrunk\r\n\
         From: <sip:+4930999@192.0.2.7>;tag=f1\r\nTo: <sip:+15550100@10.0.0.1>\r\nCall-ID: c1\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:caller@192.0.2.7:5060>\r\nMax-Forwards: {max_forwards}\r\n\
         {FORWARDED_HEADER}: trunk=other;source=198.51.100.1:5060;transport=udp\r\nContent-Length: 0\r\n\r\n"
    );
    parse(raw.as_bytes()).unwrap().try_into().unwrap()
}

fn origin() -> Forwarded {
    Forwarded {
        trunk: "carrier".into(),
        source: "192.0.2.7:5060".parse().unwrap(),
        transport: Transport::Udp,
    }
}

fn start(now: Instant) -> (Forward, Request) {
    let local = SipLocal::new("10.0.0.1:5060".parse().unwrap(), "gw");
    let mut forward = Forward::new(
        &trunk_invite(70),
        &origin(),
        &local,
        "10.0.0.2:5060".parse().unwrap(),
        now,
    )
    .unwrap();
    let Some(Transmit::Request {
        tx: INVITE_TX,
        request,
        target,
    }) = forward.poll_transmit()
    else {
        panic!("the INVITE goes to the other node first");
    };
    assert_eq!(target.addr.to_string(), "10.0.0.2:5060");
    (forward, request)
}

/// The other node's response to the forwarded INVITE, with both Vias.
fn node_response(forwarded: &Request, code: u16) -> Response {
    let mut r = response_to(forwarded, code, (code > 100).then_some("b-tag"));
    r.status_code = code.into();
    r
}

fn vias(headers: &rsip::Headers) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| match h {
            Header::Via(v) => Some(v.value().to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_forwarded_invite_names_its_trunk_and_the_answers_reach_the_trunk_without_our_via() {
    let t0 = Instant::now();
    let (mut forward, forwarded) = start(t0);
    let via = vias(&forwarded.headers);
    assert_eq!(via.len(), 2, "{via:?}");
    assert!(via[0].starts_with("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK"));
    assert!(via[1].contains("branch=z9hG4bKtrunk"));
    assert_eq!(
        message::header_value(&forwarded.headers, "Max-Forwards").as_deref(),
        Some("69")
    );
    assert_eq!(
        Forwarded::of(&forwarded),
        Some(origin()),
        "the trunk's own copy of the header is replaced by ours"
    );
    assert_eq!(
        forwarded
            .headers
            .iter()
            .filter(|h| matches!(h, Header::Other(n, _) if n == FORWARDED_HEADER))
            .count(),
        1
    );

    forward.handle_client_event(
        INVITE_TX,
        ClientEvent::Response(node_response(&forwarded, 100)),
        t0,
    );
    assert!(forward.poll_relay().is_none(), "a 100 is not relayed");
    forward.handle_client_event(
        INVITE_TX,
        ClientEvent::Response(node_response(&forwarded, 180)),
        t0,
    );
    let ringing = forward.poll_relay().unwrap();
    assert_eq!(vias(&ringing.headers), vec![via[1].clone()]);
    // Ringing past the nodes' own ring timeouts would be Timer C's: not yet.
    forward.handle_timeout(t0 + Duration::from_secs(60));
    assert!(forward.poll_transmit().is_none());

    let ok = node_response(&forwarded, 200);
    forward.handle_client_event(INVITE_TX, ClientEvent::Response(ok.clone()), t0);
    forward.handle_client_event(INVITE_TX, ClientEvent::Response(ok), t0);
    assert_eq!(
        std::iter::from_fn(|| forward.poll_relay()).count(),
        2,
        "each copy of the 2xx is relayed"
    );
    assert!(!forward.is_done());
    forward.handle_timeout(t0 + Duration::from_secs(32));
    assert!(forward.is_done());
    assert!(
        forward.poll_transmit().is_none(),
        "no own response, no CANCEL"
    );
}

#[test]
fn a_node_that_does_not_answer_leaves_the_trunk_a_480() {
    let t0 = Instant::now();
    let (mut forward, _) = start(t0);
    assert_eq!(forward.poll_timeout(), Some(t0 + NODE_ANSWER));
    forward.handle_timeout(t0 + NODE_ANSWER);
    let Some(Transmit::Respond { response, .. }) = forward.poll_transmit() else {
        panic!("the trunk is answered");
    };
    assert_eq!(response.status_code.code(), 480);
    assert!(matches!(
        forward.poll_transmit(),
        Some(Transmit::Abandon { .. })
    ));
    assert!(forward.is_done());
}

#[test]
fn a_cancel_before_the_nodes_first_provisional_waits_for_it_then_goes_on() {
    let t0 = Instant::now();
    let (mut forward, forwarded) = start(t0);
    forward.handle_cancel(t0);
    assert!(
        forward.poll_transmit().is_none(),
        "§9.1: no CANCEL before a provisional response"
    );
    forward.handle_client_event(
        INVITE_TX,
        ClientEvent::Response(node_response(&forwarded, 100)),
        t0,
    );
    let Some(Transmit::Request {
        tx: CANCEL_TX,
        request,
        ..
    }) = forward.poll_transmit()
    else {
        panic!("the CANCEL follows the first provisional");
    };
    assert_eq!(request.method, rsip::Method::Cancel);
    assert_eq!(
        message::top_branch(&request),
        message::top_branch(&forwarded),
        "the CANCEL matches the forwarded INVITE"
    );
    forward.handle_client_event(
        INVITE_TX,
        ClientEvent::Response(node_response(&forwarded, 487)),
        t0,
    );
    assert_eq!(forward.poll_relay().unwrap().status_code.code(), 487);
    assert!(forward.is_done());
}

#[test]
fn a_node_silent_after_its_cancel_is_given_up_at_64_t1() {
    let t0 = Instant::now();
    let (mut forward, forwarded) = start(t0);
    forward.handle_client_event(
        INVITE_TX,
        ClientEvent::Response(node_response(&forwarded, 180)),
        t0,
    );
    let _ = forward.poll_relay();
    forward.handle_cancel(t0);
    assert!(matches!(
        forward.poll_transmit(),
        Some(Transmit::Request { tx: CANCEL_TX, .. })
    ));
    forward.handle_timeout(t0 + Duration::from_secs(32));
    assert!(matches!(
        forward.poll_transmit(),
        Some(Transmit::Abandon { .. })
    ));
    assert!(forward.is_done());
}

#[test]
fn a_spent_max_forwards_is_refused_and_a_malformed_header_believed_by_nobody() {
    let local = SipLocal::new("10.0.0.1:5060".parse().unwrap(), "gw");
    let node = "10.0.0.2:5060".parse().unwrap();
    let refused = Forward::new(&trunk_invite(0), &origin(), &local, node, Instant::now());
    assert_eq!(refused.err(), Some(483));
    for bad in [
        "trunk=carrier;source=nowhere;transport=udp",
        "trunk=;source=192.0.2.7:5060;transport=udp",
        "trunk=carrier;source=192.0.2.7:5060;transport=sctp",
        "trunk=carrier;transport=udp",
    ] {
        let mut request = trunk_invite(70);
        request.headers.retain(|h| !matches!(h, Header::Other(..)));
        request
            .headers
            .push(Header::Other(FORWARDED_HEADER.into(), bad.into()));
        assert_eq!(Forwarded::of(&request), None, "{bad}");
    }
}
