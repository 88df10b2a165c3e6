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
    /// A 2xx was relayed from another element ([`Self::relay`]): its ACK goes end to end,
    /// past us, so none is awaited.
    relayed_2xx: bool,
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
            relayed_2xx: false,
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

    /// Relays a response from the element the request was forwarded to, as a stateful proxy
    /// does (RFC 3261 §16.7, RFC 6026 §8): provisional and non-2xx final responses as
    /// [`Self::respond`] sends them; a 2xx once, without retransmissions (the element that
    /// made it retransmits it until the end-to-end ACK), and each of its retransmissions
    /// again while the transaction lasts (Timer L, 64·T1).
    pub fn relay(&mut self, response: &Response, now: Instant) {
        let code = response.status_code.code();
        if !self.invite || !(200..300).contains(&code) {
            return self.respond(response, now);
        }
        match self.state {
            ServerState::Trying | ServerState::Proceeding => {
                self.state = ServerState::Accepted;
                self.relayed_2xx = true;
                self.deadline = Some(now + 64 * self.timers.t1);
            }
            ServerState::Accepted if self.relayed_2xx => {}
            _ => return,
        }
        let wire = response_bytes(response);
        self.transmit.push_back(wire.clone());
        self.last_response = Some(wire);
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
            if matches!(self.state, ServerState::Completed | ServerState::Accepted)
                && self.invite
                && !self.relayed_2xx
            {
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
mod tests;
