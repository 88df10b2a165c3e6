//! SIP transactions (RFC 3261 §17, with the RFC 6026 "Accepted" states), sans-IO.
//!
//! A transaction takes messages and the current time as input and yields bytes to send,
//! events for its user (the transaction user, TU: a call leg or the registrar client) and the
//! next instant at which it wants [`ClientTransaction::handle_timeout`] called. It never touches a
//! socket or a clock, so every timer is tested in virtual time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{Header, Method, Request, Response};

use super::message::{request_bytes, response_bytes};

/// The protocol timers of §17.1.1.1 / Table 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate: first retransmission interval.
    pub t1: Duration,
    /// Cap on the retransmission interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// How long a message may linger in the network.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a client transaction tells its TU.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A response to pass up: every provisional, the first non-2xx final, and every 2xx
    /// (RFC 6026 §7.2: 2xx retransmissions reach the TU so it can re-send the ACK).
    Response(Response),
    /// Timer B or F fired: no final response arrived (treated by the TU as 408).
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    /// INVITE: Calling; non-INVITE: Trying.
    Started,
    Proceeding,
    Completed,
    /// RFC 6026: INVITE after a 2xx, absorbing 2xx retransmissions until Timer M.
    Accepted,
    Terminated,
}

/// A client transaction, INVITE (§17.1.1) or non-INVITE (§17.1.2).
#[derive(Debug)]
pub struct ClientTransaction {
    request: Request,
    invite: bool,
    reliable: bool,
    timers: Timers,
    state: ClientState,
    wire: Vec<u8>,
    ack: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer B/F (give up), or D/K/M (leave Completed/Accepted).
    deadline: Option<Instant>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
}

impl ClientTransaction {
    /// Starts the transaction: the request is queued for sending at once.
    pub fn new(request: Request, reliable: bool, timers: Timers, now: Instant) -> Self {
        let invite = request.method == Method::Invite;
        let wire = request_bytes(&request);
        let mut tx = ClientTransaction {
            request,
            invite,
            reliable,
            timers,
            state: ClientState::Started,
            wire: wire.clone(),
            ack: None,
            // Timer A / E: retransmit only over unreliable transports.
            retransmit_at: (!reliable).then(|| now + timers.t1),
            interval: timers.t1,
            deadline: Some(now + 64 * timers.t1),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        };
        tx.transmit.push_back(wire);
        tx
    }

    /// The request this transaction carries.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Feeds a response whose top Via branch and CSeq method matched this transaction.
    pub fn handle_response(&mut self, response: Response, now: Instant) {
        let code = response.status_code.code();
        match self.state {
            ClientState::Started | ClientState::Proceeding if code < 200 => {
                self.state = ClientState::Proceeding;
                if self.invite {
                    // §17.1.1.2: a provisional stops retransmissions of the INVITE.
                    self.retransmit_at = None;
                } else if let Some(at) = self.retransmit_at.as_mut() {
                    // §17.1.2.2: in Proceeding, Timer E fires every T2.
                    self.interval = self.timers.t2;
                    *at = now + self.timers.t2;
                }
                self.events.push_back(ClientEvent::Response(response));
            }
            ClientState::Started | ClientState::Proceeding if self.invite && code < 300 => {
                self.state = ClientState::Accepted;
                self.retransmit_at = None;
                self.deadline = Some(now + 64 * self.timers.t1); // Timer M
                self.events.push_back(ClientEvent::Response(response));
            }
            ClientState::Started | ClientState::Proceeding => {
                self.state = ClientState::Completed;
                self.retransmit_at = None;
                if self.invite {
                    let ack = request_bytes(&ack_for_non_2xx(&self.request, &response));
                    self.transmit.push_back(ack.clone());
                    self.ack = Some(ack);
                    // Timer D: at least 32 s over UDP to absorb final-response retransmissions.
                    let d = if self.reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32)
                    };
                    self.deadline = Some(now + d);
                } else {
                    // Timer K.
                    let k = if self.reliable {
                        Duration::ZERO
                    } else {
                        self.timers.t4
                    };
                    self.deadline = Some(now + k);
                }
                self.events.push_back(ClientEvent::Response(response));
            }
            ClientState::Accepted if (200..300).contains(&code) => {
                self.events.push_back(ClientEvent::Response(response));
            }
            ClientState::Completed if self.invite && code >= 300 => {
                // §17.1.1.2: a retransmitted final response is answered with the same ACK.
                if let Some(ack) = &self.ack {
                    self.transmit.push_back(ack.clone());
                }
            }
            _ => {}
        }
        if self.deadline.is_some_and(|d| d <= now) {
            self.handle_timeout(now);
        }
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.retransmit_at
            && at <= now
        {
            self.transmit.push_back(self.wire.clone());
            self.interval = if self.invite {
                self.interval * 2
            } else {
                (self.interval * 2).min(self.timers.t2)
            };
            self.retransmit_at = Some(now + self.interval);
        }
        if let Some(deadline) = self.deadline
            && deadline <= now
        {
            if matches!(self.state, ClientState::Started | ClientState::Proceeding) {
                // Timer B fires only in Calling; an INVITE in Proceeding waits for the TU to CANCEL.
                if self.invite && self.state == ClientState::Proceeding {
                    self.deadline = None;
                    return;
                }
                self.events.push_back(ClientEvent::Timeout);
            }
            self.state = ClientState::Terminated;
            self.retransmit_at = None;
            self.deadline = None;
        }
    }

    /// The transport failed to deliver the request (§17.1.1.2: treated like a timeout).
    pub fn handle_transport_error(&mut self) {
        if matches!(self.state, ClientState::Started | ClientState::Proceeding) {
            self.events.push_back(ClientEvent::Timeout);
        }
        self.state = ClientState::Terminated;
        self.retransmit_at = None;
        self.deadline = None;
    }

    /// Next bytes to put on the wire towards the transaction's destination.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// Next event for the TU.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.retransmit_at, self.deadline)
    }

    /// True once the transaction can be forgotten (after draining its outputs).
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated && self.transmit.is_empty() && self.events.is_empty()
    }
}

/// §17.1.1.3: the ACK for a non-2xx final response belongs to the INVITE transaction and
/// copies the INVITE's Request-URI, top Via, From, Call-ID and Route, with the response's To.
fn ack_for_non_2xx(invite: &Request, response: &Response) -> Request {
    let mut headers = rsip::Headers::default();
    if let Ok(via) = invite.via_header() {
        headers.push(Header::Via(via.clone()));
    }
    for h in invite.headers.iter() {
        match h {
            Header::From(_) | Header::CallId(_) | Header::Route(_) | Header::MaxForwards(_) => {
                headers.push(h.clone())
            }
            _ => {}
        }
    }
    if let Ok(to) = response.to_header() {
        headers.push(Header::To(to.clone()));
    }
    let seq = invite
        .cseq_header()
        .ok()
        .and_then(|c| c.typed().ok())
        .map(|c| c.seq)
        .unwrap_or(1);
    headers.push(
        rsip::typed::CSeq {
            seq,
            method: Method::Ack,
        }
        .into(),
    );
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: vec![],
    }
}

/// What a server transaction tells its TU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// INVITE: the ACK for a final response arrived.
    Acknowledged,
    /// INVITE: no ACK arrived for the final response within 64·T1 (Timer H, or the 2xx
    /// retransmission limit of §13.3.1.4); the TU should end the dialog.
    AckTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Trying,
    Proceeding,
    Completed,
    Accepted,
    Confirmed,
    Terminated,
}

/// A server transaction, INVITE (§17.2.1) or non-INVITE (§17.2.2).
///
/// One deliberate merge: for an INVITE answered 2xx, this transaction also retransmits the
/// 2xx until the ACK arrives, which §13.3.1.4 assigns to the UAS core. Keeping it here puts
/// every retransmission timer in one tested place.
#[derive(Debug)]
pub struct ServerTransaction {
    invite: bool,
    reliable: bool,
    timers: Timers,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    deadline: Option<Instant>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<ServerEvent>,
}

impl ServerTransaction {
    /// Creates the transaction for a new request.
    pub fn new(method: &Method, reliable: bool, timers: Timers) -> Self {
        let invite = *method == Method::Invite;
        ServerTransaction {
            invite,
            reliable,
            timers,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_response: None,
            retransmit_at: None,
            interval: timers.t1,
            deadline: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The same request arrived again: repeat the last response (§17.2.1, §17.2.2).
    pub fn handle_retransmission(&mut self) {
        if matches!(self.state, ServerState::Proceeding | ServerState::Completed)
            && let Some(last) = &self.last_response
        {
            self.transmit.push_back(last.clone());
        }
    }

    /// An ACK matched this INVITE transaction (by branch for non-2xx, by dialog for 2xx).
    pub fn handle_ack(&mut self, now: Instant) {
        match self.state {
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                self.retransmit_at = None;
                // Timer I absorbs ACK retransmissions.
                let i = if self.reliable {
                    Duration::ZERO
                } else {
                    self.timers.t4
                };
                self.deadline = Some(now + i);
                self.events.push_back(ServerEvent::Acknowledged);
            }
            ServerState::Accepted if self.retransmit_at.is_some() || self.deadline.is_some() => {
                self.retransmit_at = None;
                self.events.push_back(ServerEvent::Acknowledged);
                // Timer L (RFC 6026): stay to absorb retransmitted INVITEs.
                self.deadline = Some(now + 64 * self.timers.t1);
                self.state = ServerState::Confirmed;
            }
            _ => {}
        }
    }

    /// The TU answers.
    pub fn respond(&mut self, response: &Response, now: Instant) {
        let code = response.status_code.code();
        if matches!(
            self.state,
            ServerState::Completed
                | ServerState::Accepted
                | ServerState::Confirmed
                | ServerState::Terminated
        ) {
            return;
        }
        let wire = response_bytes(response);
        self.transmit.push_back(wire.clone());
        self.last_response = Some(wire);
        if code < 200 {
            self.state = ServerState::Proceeding;
            return;
        }
        let unreliable_retransmit = (!self.reliable).then(|| now + self.timers.t1);
        self.interval = self.timers.t1;
        if self.invite && code < 300 {
            self.state = ServerState::Accepted;
            // §13.3.1.4: the 2xx is retransmitted even over TCP, since the ACK is end to end.
            self.retransmit_at = Some(now + self.timers.t1);
            self.deadline = Some(now + 64 * self.timers.t1);
        } else if self.invite {
            self.state = ServerState::Completed;
            self.retransmit_at = unreliable_retransmit; // Timer G
            self.deadline = Some(now + 64 * self.timers.t1); // Timer H
        } else {
            self.state = ServerState::Completed;
            // Timer J.
            let j = if self.reliable {
                Duration::ZERO
            } else {
                64 * self.timers.t1
            };
            self.deadline = Some(now + j);
        }
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.retransmit_at
            && at <= now
        {
            if let Some(last) = &self.last_response {
                self.transmit.push_back(last.clone());
            }
            self.interval = (self.interval * 2).min(self.timers.t2);
            self.retransmit_at = Some(now + self.interval);
        }
        if let Some(deadline) = self.deadline
            && deadline <= now
        {
            if matches!(self.state, ServerState::Completed | ServerState::Accepted) && self.invite {
                self.events.push_back(ServerEvent::AckTimeout);
            }
            self.state = ServerState::Terminated;
            self.retransmit_at = None;
            self.deadline = None;
        }
    }

    /// Next bytes to send back to the request's source.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// Next event for the TU.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.retransmit_at, self.deadline)
    }

    /// True once a final response was sent and its timers ran out.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated && self.transmit.is_empty() && self.events.is_empty()
    }

    /// True while no final response has been sent.
    pub fn awaiting_final(&self) -> bool {
        matches!(self.state, ServerState::Trying | ServerState::Proceeding)
    }
}

#[cfg(test)]
mod tests {
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
}
