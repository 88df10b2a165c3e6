//! The INVITE client in virtual time: failover order, digest retries, Retry-After.

use std::time::{Duration, Instant};

use rsip::Header;

use super::*;
use crate::sip::message::response_to;
use crate::sip::transport::Transport;
use crate::sip::trunks::{Credentials, TrunkConfig};

fn trunk(name: &str, addresses: &[&str], credentials: bool) -> TrunkConfig {
    TrunkConfig {
        credentials: credentials.then(|| Credentials {
            username: "gw".into(),
            password: "secret".into(),
        }),
        ..TrunkConfig::for_tests(name, addresses)
    }
}

fn target(addr: &str) -> Target {
    Target {
        addr: addr.parse().unwrap(),
        transport: Transport::Udp,
        host: addr.split(':').next().unwrap().into(),
        tls: None,
    }
}

fn request() -> CallRequest {
    CallRequest {
        to: "+15550100".into(),
        from_user: None,
        sdp_offer: "v=0\r\n".into(),
        headers: vec![],
        failover: vec![],
    }
}

fn start(trunks: Vec<TrunkConfig>, order: &[(&str, &str)]) -> (Uac, Vec<Transmit>) {
    start_with(trunks, order, request())
}

fn start_with(
    trunks: Vec<TrunkConfig>,
    order: &[(&str, &str)],
    call: CallRequest,
) -> (Uac, Vec<Transmit>) {
    let trunks = Trunks::new(trunks).unwrap();
    let candidates = order
        .iter()
        .map(|(t, a)| Candidate {
            trunk: t.to_string(),
            address: a.to_string(),
            target: Some(target(a)),
        })
        .collect();
    let local = SipLocal::new("127.0.0.9:5070".parse().unwrap(), "test");
    let mut uac = Uac::new(
        local,
        trunks,
        call,
        candidates,
        Timers::default(),
        Instant::now(),
    );
    let sent = drain(&mut uac);
    (uac, sent)
}

fn drain(uac: &mut Uac) -> Vec<Transmit> {
    std::iter::from_fn(|| uac.poll_transmit()).collect()
}

fn last_invite(sent: &[Transmit]) -> (u64, Request, Target) {
    sent.iter()
        .rev()
        .find_map(|t| match t {
            Transmit::Request {
                tx,
                request,
                target,
            } if request.method == Method::Invite => Some((*tx, request.clone(), target.clone())),
            _ => None,
        })
        .expect("an INVITE was sent")
}

fn answer(uac: &mut Uac, tx: u64, invite: &Request, code: u16, extra: Vec<Header>) {
    let mut response = response_to(invite, code, Some("far"));
    response.headers.extend(extra);
    uac.handle_response(tx, ClientEvent::Response(response), Instant::now());
}

#[test]
fn a_503_fails_over_to_the_next_address_and_keeps_the_first_out_for_retry_after() {
    let (mut uac, sent) = start(
        vec![trunk("a", &["127.0.0.1:5060", "127.0.0.2:5060"], false)],
        &[("a", "127.0.0.1:5060"), ("a", "127.0.0.2:5060")],
    );
    let (tx, invite, to) = last_invite(&sent);
    assert_eq!(to.addr.to_string(), "127.0.0.1:5060");
    answer(
        &mut uac,
        tx,
        &invite,
        503,
        vec![Header::Other("Retry-After".into(), "60".into())],
    );
    let sent = drain(&mut uac);
    let (_, second, to) = last_invite(&sent);
    assert_eq!(to.addr.to_string(), "127.0.0.2:5060");
    assert_ne!(
        message::call_id(&second),
        message::call_id(&invite),
        "each attempt is a new call"
    );
    assert!(
        sent.iter().any(
            |t| matches!(t, Transmit::Forget(id) if Some(id) == message::call_id(&invite).as_ref())
        ),
        "the failed attempt's dialog is forgotten"
    );
    assert!(uac.trunks.is_down("a", "127.0.0.1:5060"));
    assert!(!uac.is_done());
}

#[test]
fn a_busy_answer_does_not_fail_over() {
    let (mut uac, sent) = start(
        vec![
            trunk("a", &["127.0.0.1:5060"], false),
            trunk("b", &["127.0.0.2:5060"], false),
        ],
        &[("a", "127.0.0.1:5060"), ("b", "127.0.0.2:5060")],
    );
    let (tx, invite, _) = last_invite(&sent);
    answer(&mut uac, tx, &invite, 486, vec![]);
    assert!(
        drain(&mut uac)
            .iter()
            .all(|t| !matches!(t, Transmit::Request { .. }))
    );
    let events: Vec<_> = std::iter::from_fn(|| uac.poll_event()).collect();
    assert!(matches!(
        events.last(),
        Some(UacEvent::Failed(CallFailure::Rejected { code: 486, .. }))
    ));
}

#[test]
fn a_challenge_is_answered_once_per_realm_with_the_next_cseq() {
    let (mut uac, sent) = start(
        vec![trunk("a", &["127.0.0.1:5060"], true)],
        &[("a", "127.0.0.1:5060")],
    );
    let (tx, invite, _) = last_invite(&sent);
    let challenge = || {
        vec![Header::WwwAuthenticate(
            rsip::headers::WwwAuthenticate::new(
                "Digest realm=\"carrier\", nonce=\"abc\", algorithm=MD5, qop=\"auth\"",
            ),
        )]
    };
    answer(&mut uac, tx, &invite, 401, challenge());
    let (tx2, retry, _) = last_invite(&drain(&mut uac));
    assert_ne!(tx2, tx);
    assert_eq!(message::cseq(&retry).map(|c| c.0), Some(2));
    assert_eq!(message::call_id(&retry), message::call_id(&invite));
    assert!(
        retry
            .headers
            .iter()
            .any(|h| matches!(h, Header::Authorization(_))),
        "{retry}"
    );
    // The same realm again, not stale: the password is wrong; no third INVITE.
    answer(&mut uac, tx2, &retry, 401, challenge());
    assert!(
        drain(&mut uac)
            .iter()
            .all(|t| !matches!(t, Transmit::Request { .. }))
    );
    let events: Vec<_> = std::iter::from_fn(|| uac.poll_event()).collect();
    assert!(
        matches!(events.last(), Some(UacEvent::Failed(CallFailure::Rejected { reason, .. })) if reason.contains("password")),
        "{events:?}"
    );
}

#[test]
fn every_address_down_fails_with_no_trunk() {
    let trunks = Trunks::new([trunk("a", &["127.0.0.1:5060"], false)]).unwrap();
    trunks.mark_down("a", "127.0.0.1:5060", Duration::from_secs(60));
    let mut uac = Uac::new(
        SipLocal::new("127.0.0.9:5070".parse().unwrap(), "test"),
        trunks,
        request(),
        vec![Candidate {
            trunk: "a".into(),
            address: "127.0.0.1:5060".into(),
            target: Some(target("127.0.0.1:5060")),
        }],
        Timers::default(),
        Instant::now(),
    );
    assert!(
        drain(&mut uac).is_empty(),
        "nothing is sent to a trunk that is down"
    );
    assert!(matches!(
        uac.poll_event(),
        Some(UacEvent::Failed(CallFailure::NoTrunk(why))) if why.contains("down")
    ));
}

fn sent_pracks(sent: &[Transmit]) -> Vec<Request> {
    sent.iter()
        .filter_map(|t| match t {
            Transmit::Request { request, .. } if request.method == Method::PRack => {
                Some(request.clone())
            }
            _ => None,
        })
        .collect()
}

fn reliable(rseq: u32) -> Vec<Header> {
    vec![
        Header::Other("Require".into(), "100rel".into()),
        Header::Other("RSeq".into(), rseq.to_string()),
        Header::Contact(rsip::headers::Contact::new("<sip:far@127.0.0.1:5060>")),
    ]
}

#[test]
fn reliable_provisionals_are_pracked_once_each_in_order_and_the_dialog_continues_their_cseq() {
    let (mut uac, sent) = start(
        vec![trunk("a", &["127.0.0.1:5060"], false)],
        &[("a", "127.0.0.1:5060")],
    );
    let (tx, invite, _) = last_invite(&sent);
    assert_eq!(
        message::header_value(&invite.headers, "Supported").as_deref(),
        Some("100rel, timer"),
        "RFC 3262 §3 and RFC 4028 §7.1: offered by default"
    );
    answer(&mut uac, tx, &invite, 183, reliable(7));
    let pracks = sent_pracks(&drain(&mut uac));
    assert_eq!(pracks.len(), 1);
    let prack = &pracks[0];
    assert_eq!(
        message::header_value(&prack.headers, "RAck").as_deref(),
        Some("7 1 INVITE"),
        "RAck names the RSeq and the INVITE's CSeq (§7.2)"
    );
    assert_eq!(message::cseq(prack).map(|c| c.0), Some(2));
    assert_eq!(message::to_tag(prack).as_deref(), Some("far"));
    assert_eq!(message::call_id(prack), message::call_id(&invite));
    // A retransmission (same RSeq) and one out of order (9 before 8) get no PRACK and no
    // second event; the next in order does.
    let events_before = std::iter::from_fn(|| uac.poll_event()).count();
    answer(&mut uac, tx, &invite, 183, reliable(7));
    answer(&mut uac, tx, &invite, 180, reliable(9));
    assert!(sent_pracks(&drain(&mut uac)).is_empty());
    assert_eq!(std::iter::from_fn(|| uac.poll_event()).count(), 0);
    answer(&mut uac, tx, &invite, 180, reliable(8));
    let pracks = sent_pracks(&drain(&mut uac));
    assert_eq!(pracks.len(), 1);
    assert_eq!(message::cseq(&pracks[0]).map(|c| c.0), Some(3));
    assert!(events_before >= 1);
    // The 200 confirms the dialog: its next request follows the PRACKs' CSeq.
    answer(&mut uac, tx, &invite, 200, reliable(0)[2..].to_vec());
    let answered = std::iter::from_fn(|| uac.poll_event())
        .find_map(|e| match e {
            UacEvent::Answered(a) => Some(a),
            _ => None,
        })
        .expect("answered");
    let mut dialog = answered.dialog;
    let via = Header::Via(rsip::headers::Via::new(
        "SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bKx",
    ));
    let bye = dialog.request(Method::Bye, via, vec![], vec![]);
    assert_eq!(message::cseq(&bye).map(|c| c.0), Some(4));
}

#[test]
fn an_unreliable_provisional_gets_no_prack_and_required_prack_is_asked_for() {
    let (mut uac, sent) = start(
        vec![TrunkConfig {
            prack: crate::sip::trunks::Prack::Required,
            ..trunk("a", &["127.0.0.1:5060"], false)
        }],
        &[("a", "127.0.0.1:5060")],
    );
    let (tx, invite, _) = last_invite(&sent);
    assert_eq!(
        message::header_value(&invite.headers, "Require").as_deref(),
        Some("100rel")
    );
    answer(&mut uac, tx, &invite, 180, vec![]);
    assert!(sent_pracks(&drain(&mut uac)).is_empty());
}

#[test]
fn a_422_is_answered_once_with_the_trunks_min_se() {
    let (mut uac, sent) = start(
        vec![trunk("a", &["127.0.0.1:5060"], false)],
        &[("a", "127.0.0.1:5060")],
    );
    let (tx, invite, _) = last_invite(&sent);
    assert_eq!(
        message::header_value(&invite.headers, "Session-Expires").as_deref(),
        Some("1800")
    );
    answer(
        &mut uac,
        tx,
        &invite,
        422,
        vec![Header::Other("Min-SE".into(), "3600".into())],
    );
    let (tx, again, _) = last_invite(&drain(&mut uac));
    assert_eq!(message::cseq(&again).map(|c| c.0), Some(2));
    assert_eq!(message::call_id(&again), message::call_id(&invite));
    assert_eq!(
        message::header_value(&again.headers, "Session-Expires").as_deref(),
        Some("3600")
    );
    assert_eq!(
        message::header_value(&again.headers, "Min-SE").as_deref(),
        Some("3600")
    );
    // A second 422 is a refusal, not a loop.
    answer(
        &mut uac,
        tx,
        &again,
        422,
        vec![Header::Other("Min-SE".into(), "7200".into())],
    );
    assert_eq!(sent_invites(&drain(&mut uac)), 0, "no third INVITE");
    let failed = std::iter::from_fn(|| uac.poll_event())
        .any(|e| matches!(e, UacEvent::Failed(CallFailure::Rejected { code: 422, .. })));
    assert!(failed, "the call fails with the 422");
    assert!(uac.is_done());
}

fn sent_invites(sent: &[Transmit]) -> usize {
    sent.iter()
        .filter(
            |t| matches!(t, Transmit::Request { request, .. } if request.method == Method::Invite),
        )
        .count()
}

#[test]
fn the_caller_id_goes_to_from_pai_or_both_and_privacy_makes_from_anonymous() {
    use crate::sip::trunks::{Identity, Privacy};
    let invite_for = |identity: Identity, privacy: Privacy| {
        let call = CallRequest {
            from_user: Some("+4930111".into()),
            ..request()
        };
        let trunk = TrunkConfig {
            identity,
            privacy,
            from_user: "account7".into(),
            ..trunk("a", &["127.0.0.1:5060"], false)
        };
        let (_, sent) = start_with(vec![trunk], &[("a", "127.0.0.1:5060")], call);
        let (_, invite, _) = last_invite(&sent);
        let h = |name: &str| message::header_value(&invite.headers, name);
        (h("From").unwrap(), h("P-Asserted-Identity"), h("Privacy"))
    };
    let (from, pai, privacy) = invite_for(Identity::From, Privacy::None);
    assert!(from.starts_with("<sip:+4930111@"), "{from}");
    assert_eq!((pai, privacy), (None, None));
    let (from, pai, _) = invite_for(Identity::Pai, Privacy::None);
    assert!(from.starts_with("<sip:account7@"), "{from}");
    assert!(pai.unwrap().starts_with("<sip:+4930111@"));
    let (from, pai, _) = invite_for(Identity::Both, Privacy::None);
    assert!(from.starts_with("<sip:+4930111@") && pai.is_some());
    let (from, pai, privacy) = invite_for(Identity::Pai, Privacy::Id);
    assert!(from.contains("anonymous@anonymous.invalid"), "{from}");
    assert!(
        pai.unwrap().starts_with("<sip:+4930111@"),
        "the trunk still learns who calls"
    );
    assert_eq!(privacy.as_deref(), Some("id"));
}
