//! Inbound calls across nodes: a trunk's INVITE for a browser connected to another node is
//! forwarded there by this node acting as a stateful proxy (RFC 3261 §16) for that one
//! transaction. It adds no Record-Route, so the dialog is between the trunk and the other
//! node: the 200's Contact and SDP are that node's, and the trunk's ACK, BYE, re-INVITEs
//! and RTP go straight to it — nothing of the call passes through here after the answer.
//!
//! The other node learns which trunk the call came from, and from where, in
//! [`FORWARDED_HEADER`], which it believes only from `[cluster] peers`: this node strips any
//! copy a trunk sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{Header, Request, Response};

use crate::cluster::Cluster;
use crate::sip::Transmit;
use crate::sip::endpoint::{Endpoint, IncomingRequest, SipLocal};
use crate::sip::message::{self, response_to};
use crate::sip::transaction::{ClientEvent, Timers};
use crate::sip::transport::{Target, Transport};

/// Names the trunk a forwarded INVITE came from and where it came from:
/// `trunk=<name>;source=<ip:port>;transport=<udp|tcp|tls>`.
pub const FORWARDED_HEADER: &str = "X-Gateway-Forwarded";

/// The other node must answer (its endpoint sends 100 Trying at once) within this, or the
/// trunk hears 480: the browser's node is gone, or does not take this node as a peer.
const NODE_ANSWER: Duration = Duration::from_secs(2);

/// Timer C (§16.6 step 11): a forwarded INVITE left ringing this long is cancelled. Above
/// the nodes' ring timeout, so it only ends calls whose node went silent.
const TIMER_C: Duration = Duration::from_secs(180);

/// Transaction ids of the forwarded INVITE and its CANCEL.
const INVITE_TX: u64 = 1;
const CANCEL_TX: u64 = 2;
/// The id the trunk's INVITE is answered with.
const TRUNK_INVITE: u64 = 0;

/// Where a forwarded INVITE really came from, as the forwarding node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The trunk's name (the same on every node).
    pub trunk: String,
    /// The trunk's address: where in-dialog requests to it go.
    pub source: SocketAddr,
    /// The transport the trunk used.
    pub transport: Transport,
}

impl Forwarded {
    fn header(&self) -> Header {
        Header::Other(
            FORWARDED_HEADER.into(),
            format!(
                "trunk={};source={};transport={}",
                self.trunk,
                self.source,
                self.transport.via_token().to_ascii_lowercase()
            ),
        )
    }

    /// The header of `request`, if it has a well-formed one. Believe it only from a peer.
    pub fn of(request: &Request) -> Option<Forwarded> {
        let value = message::header_value(&request.headers, FORWARDED_HEADER)?;
        let (mut trunk, mut source, mut transport) = (None, None, None);
        for part in value.split(';') {
            match part.trim().split_once('=') {
                Some(("trunk", t)) if !t.is_empty() => trunk = Some(t.to_string()),
                Some(("source", s)) => source = s.parse().ok(),
                Some(("transport", t)) => {
                    transport = match t {
                        "udp" => Some(Transport::Udp),
                        "tcp" => Some(Transport::Tcp),
                        "tls" => Some(Transport::Tls),
                        _ => None,
                    }
                }
                _ => {}
            }
        }
        Some(Forwarded {
            trunk: trunk?,
            source: source?,
            transport: transport?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Sent; nothing heard from the other node yet.
    Calling,
    /// The other node is working on it (100, or ringing).
    Proceeding,
    /// The trunk cancelled (or Timer C fired): CANCEL sent, or sent at the first provisional.
    Cancelling,
    /// A 2xx went to the trunk: its retransmissions are relayed until Timer L.
    Accepted,
    Done,
}

/// One forwarded INVITE, sans-IO: the trunk's server transaction on one side (answered with
/// `Transmit::Respond` / relayed responses, id 0), a client transaction to the other node on
/// the other.
#[derive(Debug)]
pub struct Forward {
    trunk_invite: Request,
    forwarded: Request,
    node: Target,
    state: State,
    provisional_seen: bool,
    cancel_sent: bool,
    deadline: Option<Instant>,
    timers: Timers,
    transmits: VecDeque<Transmit>,
    relays: VecDeque<Response>,
}

impl Forward {
    /// Forwards the trunk's `invite` to `node`, telling it the call's `origin`. Refused with
    /// 483 when Max-Forwards is spent (§16.3 step 2).
    pub fn new(
        invite: &Request,
        origin: &Forwarded,
        local: &SipLocal,
        node: SocketAddr,
        now: Instant,
    ) -> Result<Forward, u16> {
        let max_forwards = invite
            .headers
            .iter()
            .find_map(|h| match h {
                Header::MaxForwards(m) => Some(m.value().trim().parse::<u32>().unwrap_or(70)),
                _ => None,
            })
            .unwrap_or(70);
        if max_forwards == 0 {
            return Err(483);
        }
        let mut forwarded = invite.clone();
        // §16.6 step 8: our Via on top; step 3: one hop fewer. A copy of our header from
        // the trunk is dropped: only this node says where the call came from.
        let mut headers = rsip::Headers::default();
        headers.push(local.via(Transport::Udp, &message::new_branch()));
        for h in invite.headers.iter() {
            match h {
                Header::MaxForwards(_) => headers.push(Header::MaxForwards(
                    rsip::headers::MaxForwards::new((max_forwards - 1).to_string()),
                )),
                Header::Other(name, _) if name.eq_ignore_ascii_case(FORWARDED_HEADER) => {}
                h => headers.push(h.clone()),
            }
        }
        headers.push(origin.header());
        forwarded.headers = headers;
        let node = Target {
            addr: node,
            transport: Transport::Udp,
            host: node.ip().to_string(),
            tls: None,
        };
        let mut forward = Forward {
            trunk_invite: invite.clone(),
            forwarded,
            node,
            state: State::Calling,
            provisional_seen: false,
            cancel_sent: false,
            deadline: Some(now + NODE_ANSWER),
            timers: Timers::default(),
            transmits: VecDeque::new(),
            relays: VecDeque::new(),
        };
        forward.transmits.push_back(Transmit::Request {
            tx: INVITE_TX,
            request: forward.forwarded.clone(),
            target: forward.node.clone(),
        });
        Ok(forward)
    }

    /// An event of the forwarded INVITE's (or its CANCEL's) client transaction.
    pub fn handle_client_event(&mut self, tx: u64, event: ClientEvent, now: Instant) {
        if tx != INVITE_TX || self.state == State::Done {
            return;
        }
        let response = match event {
            ClientEvent::Response(r) => r,
            ClientEvent::Timeout => {
                tracing::warn!(node = %self.node.addr, "cluster: the browser's node did not answer a forwarded INVITE: 480");
                return self.give_up(480);
            }
        };
        let code = response.status_code.code();
        if code < 200 {
            self.provisional_seen = true;
            if self.state == State::Calling {
                self.state = State::Proceeding;
            }
            if self.state == State::Proceeding {
                self.deadline = Some(now + TIMER_C);
            }
            // §16.7 step 5: a 100 is not forwarded; the endpoint sent the trunk its own.
            if code > 100 {
                self.relays.push_back(without_top_via(response));
            }
            if self.state == State::Cancelling && !self.cancel_sent {
                self.send_cancel();
            }
            return;
        }
        if (200..300).contains(&code) {
            // Every copy of the 2xx goes to the trunk (RFC 6026 §8.4): the other node
            // retransmits it until the trunk's ACK reaches it.
            self.relays.push_back(without_top_via(response));
            if self.state != State::Accepted {
                self.state = State::Accepted;
                self.deadline = Some(now + 64 * self.timers.t1);
            }
            return;
        }
        if self.state != State::Accepted {
            self.relays.push_back(without_top_via(response));
            self.state = State::Done;
            self.deadline = None;
        }
    }

    /// The trunk cancelled its INVITE: the endpoint answered the CANCEL and ended the
    /// trunk's INVITE with 487 (§9.2); the other node is cancelled in turn (§16.10).
    pub fn handle_cancel(&mut self, now: Instant) {
        if matches!(self.state, State::Calling | State::Proceeding) {
            self.state = State::Cancelling;
            self.deadline = Some(now + 64 * self.timers.t1);
            if self.provisional_seen {
                self.send_cancel();
            }
        }
    }

    /// Runs the deadline that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_none_or(|at| at > now) {
            return;
        }
        match self.state {
            State::Calling => {
                tracing::warn!(node = %self.node.addr, "cluster: the browser's node did not answer a forwarded INVITE within {} s (is this node in its [cluster] peers?): 480", NODE_ANSWER.as_secs());
                self.give_up(480);
            }
            State::Proceeding => {
                // Timer C: the other node went silent mid-ring.
                self.respond(408);
                self.state = State::Cancelling;
                self.deadline = Some(now + 64 * self.timers.t1);
                self.send_cancel();
            }
            // §9.1: no final response 64·T1 after the CANCEL: give up on the INVITE.
            State::Cancelling => self.give_up(0),
            State::Accepted => {
                self.state = State::Done;
                self.deadline = None;
            }
            State::Done => self.deadline = None,
        }
    }

    /// When [`Self::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// The next request or own response to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next response of the other node's to relay to the trunk.
    pub fn poll_relay(&mut self) -> Option<Response> {
        self.relays.pop_front()
    }

    /// True once nothing more can happen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done && self.transmits.is_empty() && self.relays.is_empty()
    }

    fn send_cancel(&mut self) {
        self.cancel_sent = true;
        self.transmits.push_back(Transmit::Request {
            tx: CANCEL_TX,
            request: crate::sip::uac::build_cancel(&self.forwarded),
            target: self.node.clone(),
        });
    }

    /// Ends the forwarding: the trunk hears `code` (unless 0), the forwarded INVITE's
    /// transaction is forgotten (its late responses are dropped).
    fn give_up(&mut self, code: u16) {
        if code != 0 {
            self.respond(code);
        }
        self.transmits.push_back(Transmit::Abandon {
            request: Box::new(self.forwarded.clone()),
        });
        self.state = State::Done;
        self.deadline = None;
    }

    fn respond(&mut self, code: u16) {
        self.transmits.push_back(Transmit::Respond {
            id: TRUNK_INVITE,
            response: response_to(&self.trunk_invite, code, Some(&message::random_token())),
        });
    }
}

/// The address of `request`'s Contact when it is an IP address (the default port of
/// `transport` when it names none).
fn contact_addr(request: &Request, transport: Transport) -> Option<SocketAddr> {
    let contact = request.contact_header().ok()?.typed().ok()?;
    let rsip::Host::IpAddr(ip) = contact.uri.host_with_port.host else {
        return None;
    };
    let port = contact
        .uri
        .host_with_port
        .port
        .map_or(transport.default_port(), |p| *p.value());
    Some(SocketAddr::new(ip, port))
}

/// The response as the trunk must see it: without our Via (§16.7 step 3).
fn without_top_via(mut response: Response) -> Response {
    let mut removed = false;
    response.headers.retain(|h| {
        if !removed && matches!(h, Header::Via(_)) {
            removed = true;
            return false;
        }
        true
    });
    response
}

/// Forwards the trunk's `invite` to the node at `node` and relays the answers until the
/// transaction is over; the dialog then belongs to that node.
pub async fn run(
    endpoint: Endpoint,
    cluster: Arc<Cluster>,
    trunk: String,
    invite: IncomingRequest,
    node: SocketAddr,
) {
    let Some(responder) = invite.responder.clone() else {
        return;
    };
    // Over UDP the trunk is where its INVITE came from (rport, NAT); over TCP or TLS that
    // is a connection the other node does not have, so it reaches the trunk at its Contact.
    let source = match invite.transport {
        Transport::Udp => invite.source,
        reliable => contact_addr(&invite.request, reliable).unwrap_or(invite.source),
    };
    let origin = Forwarded {
        trunk,
        source,
        transport: invite.transport,
    };
    let mut forward = match Forward::new(
        &invite.request,
        &origin,
        endpoint.local(),
        node,
        Instant::now(),
    ) {
        Ok(f) => f,
        Err(code) => {
            let response = response_to(&invite.request, code, Some(&message::random_token()));
            return responder.respond(response);
        }
    };
    cluster.forwarded.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%node, trunk = %origin.trunk, "cluster: inbound call forwarded to the browser's node");
    // The trunk's CANCEL arrives here (the endpoint routes its Call-ID to us).
    let sip_call_id = message::call_id(&invite.request).unwrap_or_default();
    let (requests_tx, mut requests) = crate::sip::endpoint::request_channel();
    endpoint.route_dialog(&sip_call_id, requests_tx);
    let (events_tx, mut events) = crate::sip::endpoint::event_channel();
    loop {
        while let Some(response) = forward.poll_relay() {
            responder.relay(response);
        }
        while let Some(transmit) = forward.poll_transmit() {
            match transmit {
                Transmit::Request {
                    tx,
                    request,
                    target,
                } => endpoint.request_tagged(request, target, tx, events_tx.clone()),
                Transmit::Respond { response, .. } => responder.respond(response),
                Transmit::Abandon { request } => endpoint.abandon(&request),
                _ => {}
            }
        }
        if forward.is_done() {
            break;
        }
        let sleep = async {
            match forward.poll_timeout() {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(tagged) = events.recv() => {
                let (tx, event) = *tagged;
                forward.handle_client_event(tx, event, Instant::now())
            }
            Some(request) = requests.recv() => match (request.request.method, request.responder) {
                (rsip::Method::Cancel, _) => forward.handle_cancel(Instant::now()),
                // The dialog is the other node's: a trunk that sends its in-dialog requests
                // here rather than to the Contact learns that it has none here (§12.2.2).
                (_, Some(responder)) => responder.respond(response_to(
                    &request.request,
                    481,
                    Some(&message::random_token()),
                )),
                _ => {}
            },
            _ = sleep => forward.handle_timeout(Instant::now()),
        }
    }
    endpoint.forget_dialog(&sip_call_id);
}

#[cfg(test)]
mod tests;
