//! The endpoint's task: owns the sockets and every transaction, matches messages to
//! transactions (§17.1.3, §17.2.3), fires their timers from a heap, and routes requests to
//! dialogs and the application.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rsip::prelude::*;
use rsip::{Method, Request, Response, SipMessage};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use super::{Command, EndpointTables, IncomingRequest, RequestSender, Responder, Sink, queues};
use crate::sip::edge::{Admission, Edge, EdgeCounters};
use crate::sip::message::{self, bad_request_for, response_to};
use crate::sip::transaction::{ClientEvent, ClientTransaction, ServerTransaction, Timers};
use crate::sip::transport::{self, StreamEvent, Target, Transport};

mod sending;

pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    admit: Option<std::sync::Arc<std::collections::HashSet<IpAddr>>>,
    events: mpsc::UnboundedSender<StreamEvent>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        if admit.as_ref().is_some_and(|a| !a.contains(&peer.ip())) {
            tracing::debug!(%peer, "SIP connection from an address that is no trunk closed");
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let events = events.clone();
        match tls.clone() {
            None => {
                tokio::spawn(transport::run_stream(
                    tcp,
                    peer,
                    Transport::Tcp,
                    events,
                    vec![],
                ));
            }
            Some(config) => {
                tokio::spawn(async move {
                    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                    match tokio::time::timeout(transport::HANDSHAKE_TIMEOUT, handshake)
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                    {
                        Ok(stream) => {
                            transport::run_stream(stream, peer, Transport::Tls, events, vec![])
                                .await
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "TLS accept failed"),
                    }
                });
            }
        }
    }
}

struct ClientEntry {
    tx: ClientTransaction,
    target: Target,
    events: Sink,
}

struct ServerEntry {
    tx: ServerTransaction,
    source: SocketAddr,
    transport: Transport,
    call_id: String,
    cseq: u32,
    /// The 500 it gets if its transaction user drops it unanswered ([`Command::Unanswered`]),
    /// made while the request is at hand; `None` once it needs none.
    if_unanswered: Option<Response>,
}

pub(super) struct Core {
    udp: UdpSocket,
    udp_send: std::net::UdpSocket,
    timers: Timers,
    commands: mpsc::UnboundedSender<Command>,
    stream_tx: mpsc::UnboundedSender<StreamEvent>,
    streams: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Messages waiting for a connection being set up.
    pending_streams: HashMap<SocketAddr, Vec<Vec<u8>>>,
    clients: HashMap<String, ClientEntry>,
    servers: HashMap<String, ServerEntry>,
    /// INVITE server transactions by (Call-ID, CSeq): a 2xx's ACK has a branch of its own
    /// and is matched by dialog and sequence number (§13.3.1.4, §17.2.3).
    invites: HashMap<(String, u32), String>,
    /// Transactions' next timers, earliest first. An entry may be stale (the transaction
    /// moved its timer or ended); it is checked against the transaction when it comes due.
    timer_heap: BinaryHeap<Reverse<(Instant, TxKey)>>,
    /// Transactions touched since the last flush: their output is collected and their next
    /// timer scheduled, and no other transaction is visited.
    dirty: Vec<TxKey>,
    dialogs: HashMap<String, RequestSender>,
    tables: Arc<EndpointTables>,
    app: RequestSender,
    user_agent: String,
    edge: Edge,
    edge_counters: std::sync::Arc<EdgeCounters>,
}

/// A transaction in the endpoint's tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TxKey {
    Client(String),
    Server(String),
}

pub(super) fn client_key(branch: &str, method: &Method) -> String {
    // CANCEL shares the INVITE's branch (§9.1), so the method is part of the key.
    format!("{branch}|{method}")
}

impl Core {
    pub(super) fn new(
        (udp, udp_send): (UdpSocket, std::net::UdpSocket),
        timers: Timers,
        (commands, stream_tx, app): (
            mpsc::UnboundedSender<Command>,
            mpsc::UnboundedSender<StreamEvent>,
            RequestSender,
        ),
        user_agent: String,
        edge: Edge,
        (edge_counters, tables): (Arc<EdgeCounters>, Arc<EndpointTables>),
    ) -> Core {
        Core {
            udp,
            udp_send,
            timers,
            commands,
            stream_tx,
            streams: HashMap::new(),
            pending_streams: HashMap::new(),
            clients: HashMap::new(),
            servers: HashMap::new(),
            invites: HashMap::new(),
            timer_heap: BinaryHeap::new(),
            dirty: Vec::new(),
            dialogs: HashMap::new(),
            tables,
            app,
            user_agent,
            edge,
            edge_counters,
        }
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut streams: mpsc::UnboundedReceiver<StreamEvent>,
    ) {
        let mut buf = vec![0u8; 65536];
        loop {
            let next = self.poll_timeout();
            tokio::select! {
                received = self.udp.recv_from(&mut buf) => {
                    match received {
                        Ok((n, source)) => {
                            let bytes = buf[..n].to_vec();
                            self.on_message(&bytes, source, Transport::Udp);
                        }
                        // ICMP port unreachable surfaces here on some systems; it concerns one peer only.
                        Err(e) => tracing::debug!(error = %e, "UDP receive error"),
                    }
                }
                event = streams.recv() => {
                    if let Some(event) = event {
                        let event = |core: &mut Self| core.on_stream_event(event);
                        self.contained(event, || "took a connection's event".into())
                    }
                }
                command = commands.recv() => {
                    match command {
                        Some(c) => self.contained(
                            |core| core.on_command(c),
                            || "took a call's request or response".into(),
                        ),
                        None => return,
                    }
                }
                _ = sleep_until_opt(next) => {
                    let now = Instant::now();
                    let timers = |core: &mut Self| core.handle_timers(now);
                    self.contained(timers, || "ran its transactions' timers".into())
                }
            }
            self.flush().await;
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timer_heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Fires the timers that are due; each is checked against its transaction, so entries
    /// left by a transaction that moved its timer or ended cost one pop.
    fn handle_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timer_heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.timer_heap.pop() else {
                break;
            };
            let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
            match &key {
                TxKey::Client(k) => match self.clients.get_mut(k) {
                    Some(e) if due(e.tx.poll_timeout()) => e.tx.handle_timeout(now),
                    _ => continue,
                },
                TxKey::Server(k) => match self.servers.get_mut(k) {
                    Some(e) if due(e.tx.poll_timeout()) => e.tx.handle_timeout(now),
                    _ => continue,
                },
            }
            self.dirty.push(key);
        }
    }

    fn on_command(&mut self, command: Command) {
        #[cfg(any(test, feature = "fault-injection"))]
        if let Command::Request { request, .. } = &command {
            crate::fault::injection::sip_message(|| message::request_bytes(request));
        }
        let now = Instant::now();
        match command {
            Command::Request {
                request,
                target,
                mut events,
            } => {
                let Some(branch) = message::top_branch(&request) else {
                    tracing::error!("request without a Via branch not sent");
                    events.send(ClientEvent::Timeout);
                    return;
                };
                let key = client_key(&branch, &request.method);
                let tx = ClientTransaction::new(
                    request,
                    target.transport.is_reliable(),
                    self.timers,
                    now,
                );
                self.clients
                    .insert(key.clone(), ClientEntry { tx, target, events });
                self.dirty.push(TxKey::Client(key));
            }
            Command::Stateless { request, target } => {
                let bytes = message::request_bytes(&request);
                self.send_to_target(&target, bytes);
            }
            Command::Respond {
                key,
                response,
                relayed,
            } => {
                if let Some(e) = self.servers.get_mut(&key) {
                    if relayed {
                        e.tx.relay(&response, now);
                    } else {
                        e.tx.respond(&response, now);
                    }
                    if !e.tx.awaiting_final() {
                        e.if_unanswered = None;
                    }
                    self.dirty.push(TxKey::Server(key));
                }
            }
            Command::Dialog {
                call_id,
                tx: Some(tx),
            } => {
                self.dialogs.insert(call_id, tx);
            }
            Command::Dialog { call_id, tx: None } => {
                self.dialogs.remove(&call_id);
            }
            Command::Abandon { key } => {
                self.clients.remove(&key);
            }
            Command::Unanswered { key } => {
                if let Some(e) = self.servers.get_mut(&key)
                    && e.tx.awaiting_final()
                    && let Some(error) = e.if_unanswered.take()
                {
                    self.edge_counters
                        .unanswered
                        .fetch_add(1, Ordering::Relaxed);
                    crate::fault::fault_error!(
                        call_id = %e.call_id,
                        cseq = e.cseq,
                        source = %e.source,
                        "a request the gateway took was dropped without an answer; \
                         answered 500 in its place. This is a bug in the gateway (the log \
                         before this may show a fault): please report it with this log"
                    );
                    e.tx.respond(&error, now);
                    self.dirty.push(TxKey::Server(key));
                }
            }
        }
    }

    fn on_stream_event(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Up { peer, tx, .. } => {
                for msg in self.pending_streams.remove(&peer).unwrap_or_default() {
                    let _ = tx.try_send(msg);
                }
                self.streams.insert(peer, tx);
            }
            StreamEvent::Message {
                peer,
                transport,
                bytes,
            } => self.on_message(&bytes, peer, transport),
            StreamEvent::Down { peer } => {
                self.streams.remove(&peer);
                self.pending_streams.remove(&peer);
                for (key, e) in self.clients.iter_mut() {
                    if e.target.addr == peer && e.target.transport.is_reliable() {
                        e.tx.handle_transport_error();
                        self.dirty.push(TxKey::Client(key.clone()));
                    }
                }
            }
        }
    }

    /// Runs `work` on the endpoint; a fault in it (a panic: a bug) is counted and logged with
    /// what the endpoint was `doing` (made only then), and the endpoint goes on without that
    /// work. Why: this task carries every call's SIP, and a panic would end it, and with it
    /// every call's signalling and every new call.
    fn contained(&mut self, work: impl FnOnce(&mut Self), doing: impl FnOnce() -> String) {
        if let Err(fault) = crate::fault::catch(|| work(self)) {
            self.edge_counters.faults.fetch_add(1, Ordering::Relaxed);
            crate::fault::fault_error!(
                fault,
                "a fault in the gateway while the SIP endpoint {}; that work is dropped and \
                 everything else goes on. This is a bug in the gateway: please report it with \
                 this log",
                doing()
            );
        }
    }

    /// Handles a message from `source`; a fault drops that message alone.
    fn on_message(&mut self, bytes: &[u8], source: SocketAddr, transport: Transport) {
        let message = |core: &mut Self| core.handle_message(bytes, source, transport);
        self.contained(message, || {
            let text = String::from_utf8_lossy(bytes);
            let first_line: String = text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(120)
                .collect();
            format!("handled a SIP message from {source} ({first_line})")
        });
    }

    fn handle_message(&mut self, bytes: &[u8], source: SocketAddr, transport: Transport) {
        #[cfg(any(test, feature = "fault-injection"))]
        crate::fault::injection::sip_message(|| bytes.to_vec());
        let now = Instant::now();
        // Responses only ever match our own transactions (by a branch we made up); anything
        // else is a request, or junk in its place, and meets the edge policy before parsing.
        let admission = if bytes.starts_with(b"SIP/") {
            Admission::Serve
        } else {
            self.edge
                .handle_request(source.ip(), now, &self.edge_counters)
        };
        if admission == Admission::Drop {
            return;
        }
        let msg = match message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%source, error = %e, "malformed SIP message");
                if let Some(reply) = bad_request_for(bytes, &e) {
                    self.send_back(source, transport, reply);
                }
                return;
            }
        };
        match msg {
            SipMessage::Response(resp) => self.handle_response(resp, now),
            SipMessage::Request(req) if admission == Admission::Refuse => {
                // One stateless 403 (§8.2.6, §16.7 of a stateless element): no transaction,
                // so nothing is ever retransmitted to a source that may be spoofed; an ACK
                // gets nothing at all (§17.2.3).
                tracing::debug!(%source, method = %req.method, "request from an address that is no trunk refused");
                if req.method != Method::Ack {
                    let reply = response_for(&req, 403);
                    self.send_back(source, transport, message::response_bytes(&reply));
                }
            }
            SipMessage::Request(req) => self.on_request(req, source, transport, now),
        }
    }

    fn handle_response(&mut self, resp: Response, now: Instant) {
        let (Some(branch), Some((_, method))) = (message::top_branch(&resp), message::cseq(&resp))
        else {
            return;
        };
        let key = client_key(&branch, &method);
        match self.clients.get_mut(&key) {
            Some(e) => {
                e.tx.handle_response(resp, now);
                self.dirty.push(TxKey::Client(key));
            }
            None => tracing::debug!(%branch, "response matches no transaction; dropped (§18.1.2)"),
        }
    }

    fn on_request(&mut self, req: Request, source: SocketAddr, transport: Transport, now: Instant) {
        let branch = message::top_branch(&req).unwrap_or_default();
        let call_id = message::call_id(&req).unwrap_or_default();
        let cseq = message::cseq(&req).map(|c| c.0).unwrap_or(0);
        let method = req.method;
        if method == Method::Ack {
            // Non-2xx ACK matches the INVITE transaction by branch; a 2xx ACK has its own
            // branch and matches by dialog and CSeq (§17.2.3, §13.3.1.4).
            let by_branch = client_key(&branch, &Method::Invite);
            let key = if self.servers.contains_key(&by_branch) {
                Some(by_branch)
            } else {
                self.invites.get(&(call_id.clone(), cseq)).cloned()
            };
            if let Some(key) = key
                && let Some(e) = self.servers.get_mut(&key)
            {
                e.tx.handle_ack(now);
                self.dirty.push(TxKey::Server(key));
            }
            if let Some(d) = self.dialogs.get(&call_id) {
                let ack = Box::new(IncomingRequest {
                    request: req,
                    source,
                    transport,
                    responder: None,
                });
                self.tables.count_lost(queues::deliver(d, ack, 481));
            }
            return;
        }
        let key = client_key(&branch, &method);
        if let Some(e) = self.servers.get_mut(&key) {
            e.tx.handle_retransmission();
            self.dirty.push(TxKey::Server(key));
            return;
        }
        let mut tx = ServerTransaction::new(&method, transport.is_reliable(), self.timers);
        if method == Method::Cancel {
            // §9.2: answer the CANCEL, then end the matching INVITE with 487.
            let invite_key = client_key(&branch, &Method::Invite);
            let matched = self
                .servers
                .get_mut(&invite_key)
                .filter(|e| e.tx.awaiting_final());
            let code = if matched.is_some() { 200 } else { 481 };
            tx.respond(&response_to(&req, code, None), now);
            if let Some(invite) = matched {
                self.dirty.push(TxKey::Server(invite_key.clone()));
                let mut terminated = response_to(&req, 487, Some(&message::random_token()));
                terminated
                    .headers
                    .retain(|h| !matches!(h, rsip::Header::CSeq(_)));
                terminated.headers.push(
                    rsip::typed::CSeq {
                        seq: cseq,
                        method: Method::Invite,
                    }
                    .into(),
                );
                invite.tx.respond(&terminated, now);
                let target = self.dialogs.get(&call_id).unwrap_or(&self.app);
                let notice = Box::new(IncomingRequest {
                    request: req.clone(),
                    source,
                    transport,
                    responder: None,
                });
                self.tables.count_lost(queues::deliver(target, notice, 481));
            }
            self.servers.insert(
                key.clone(),
                ServerEntry {
                    tx,
                    source,
                    transport,
                    call_id,
                    cseq,
                    // The endpoint answered it itself.
                    if_unanswered: None,
                },
            );
            self.dirty.push(TxKey::Server(key));
            return;
        }
        if method == Method::Invite {
            // §17.2.1: a 100 at once stops the client's retransmissions while the TU decides.
            tx.respond(&response_to(&req, 100, None), now);
        }
        let responder = Responder::new(key.clone(), self.commands.clone());
        let if_unanswered = Some(response_for(&req, 500));
        let in_dialog = message::to_tag(&req).is_some();
        let dialog = self.dialogs.get(&call_id).cloned();
        if method == Method::Invite {
            self.invites.insert((call_id.clone(), cseq), key.clone());
        }
        self.dirty.push(TxKey::Server(key.clone()));
        self.servers.insert(
            key,
            ServerEntry {
                tx,
                source,
                transport,
                call_id,
                cseq,
                if_unanswered,
            },
        );
        let incoming = Box::new(IncomingRequest {
            request: req,
            source,
            transport,
            responder: Some(responder.clone()),
        });
        match (dialog, in_dialog, method) {
            (Some(d), _, _) => self.tables.count_lost(queues::deliver(&d, incoming, 481)),
            (None, true, _) => {
                // §12.2.2: a request for a dialog we do not know.
                responder.respond(response_for(&incoming.request, 481));
            }
            (None, false, Method::Options) => {
                let mut ok = response_for(&incoming.request, 200);
                ok.headers.push(crate::sip::message::allow_header());
                ok.headers.push(crate::sip::extensions::supported_header());
                ok.headers.push(rsip::Header::Other(
                    "Accept".into(),
                    "application/sdp".into(),
                ));
                ok.headers
                    .push(rsip::Header::Server(rsip::headers::Server::new(
                        self.user_agent.clone(),
                    )));
                responder.respond(ok);
            }
            (None, false, _) => self
                .tables
                .count_lost(queues::deliver(&self.app, incoming, 503)),
        }
    }
}

fn response_for(req: &Request, code: u16) -> Response {
    response_to(req, code, Some(&message::random_token()))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
