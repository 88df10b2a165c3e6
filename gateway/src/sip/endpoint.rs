//! The SIP endpoint: one tokio task that owns the sockets and every transaction, and routes
//! messages between the wire and transaction users (call legs, the registrar client).
//!
//! The protocol decisions live in the sans-IO [`super::transaction`] types; this task only
//! moves bytes, runs timers and matches messages to transactions (§17.1.3, §17.2.3).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rsip::prelude::*;
use rsip::{Method, Request, Response, SipMessage};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use super::edge::{Admission, Edge, EdgeCounters, EdgePolicy};
use super::message::{self, bad_request_for, response_to};
use super::transaction::{ClientEvent, ClientTransaction, ServerEvent, ServerTransaction, Timers};
use super::transport::{self, StreamEvent, Target};
use crate::config::Transport;

/// How to start an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// UDP bind address (port 0 picks one).
    pub udp: SocketAddr,
    /// TCP listen address, if any.
    pub tcp: Option<SocketAddr>,
    /// TLS listen address and server settings, if any.
    pub tls: Option<(SocketAddr, std::sync::Arc<rustls::ServerConfig>)>,
    /// Address advertised in Via and Contact; the bound address when `None`.
    pub public_ip: Option<IpAddr>,
    /// User-Agent header value.
    pub user_agent: String,
    /// Transaction timers.
    pub timers: Timers,
    /// Which sources are served, and how fast.
    pub edge: EdgePolicy,
}

/// A request that reached a transaction user.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The request.
    pub request: Request,
    /// Where it came from.
    pub source: SocketAddr,
    /// Over which transport.
    pub transport: Transport,
    /// Handle to answer it; `None` for ACK and CANCEL notifications, which take no answer.
    pub responder: Option<Responder>,
}

/// Answers one server transaction.
#[derive(Debug, Clone)]
pub struct Responder {
    key: String,
    commands: mpsc::UnboundedSender<Command>,
}

impl Responder {
    /// Sends `response` through the server transaction (retransmitted as §17.2 requires).
    pub fn respond(&self, response: Response) {
        let _ = self.commands.send(Command::Respond {
            key: self.key.clone(),
            response,
        });
    }
}

#[derive(Debug)]
enum Command {
    Request {
        request: Request,
        target: Target,
        events: Sink,
    },
    Stateless {
        request: Request,
        target: Target,
    },
    Respond {
        key: String,
        response: Response,
    },
    Dialog {
        call_id: String,
        tx: Option<mpsc::UnboundedSender<IncomingRequest>>,
    },
    Abandon {
        key: String,
    },
}

/// Where a client transaction's events go: its own channel, or a call's shared channel
/// tagged with the transaction's id there (one call has several transactions at once).
#[derive(Debug)]
enum Sink {
    Own(mpsc::UnboundedSender<ClientEvent>),
    Tagged(u64, mpsc::UnboundedSender<(u64, ClientEvent)>),
}

impl Sink {
    fn send(&self, event: ClientEvent) {
        match self {
            Sink::Own(tx) => drop(tx.send(event)),
            Sink::Tagged(id, tx) => drop(tx.send((*id, event))),
        }
    }
}

/// Sizes of the endpoint's tables, for `/metrics`: after calls end they return to zero,
/// so a leak shows as a number that only grows.
#[derive(Debug, Default)]
pub struct EndpointTables {
    /// Client and server transactions alive.
    pub transactions: AtomicUsize,
    /// Dialogs (Call-IDs) routed to a call.
    pub dialogs: AtomicUsize,
}

/// What the endpoint says about itself in the messages it builds: the advertised address
/// and ports, and the User-Agent. Plain data, so sans-IO code builds requests with it.
#[derive(Debug, Clone)]
pub struct SipLocal {
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    advertised: IpAddr,
    user_agent: String,
}

impl SipLocal {
    /// An identity for tests and tools: everything on `addr`.
    pub fn new(addr: SocketAddr, user_agent: &str) -> SipLocal {
        SipLocal {
            udp: addr,
            tcp: Some(addr),
            tls: Some(addr),
            advertised: addr.ip(),
            user_agent: user_agent.to_string(),
        }
    }

    /// The address put in Via, Contact and SDP.
    pub fn advertised_ip(&self) -> IpAddr {
        self.advertised
    }

    /// The User-Agent value.
    pub fn user_agent(&self) -> &str {
        &self.user_agent
    }

    fn advertised_port(&self, transport: Transport) -> u16 {
        match transport {
            Transport::Udp => self.udp.port(),
            Transport::Tcp => self.tcp.map_or(self.udp.port(), |a| a.port()),
            Transport::Tls => self.tls.map_or(self.udp.port(), |a| a.port()),
        }
    }

    fn host_port(&self, transport: Transport) -> String {
        match self.advertised {
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.advertised_port(transport)),
            IpAddr::V4(ip) => format!("{ip}:{}", self.advertised_port(transport)),
        }
    }

    /// A Via header for a new client transaction, with `rport` (RFC 3581) so responses
    /// find their way back through NAT.
    pub fn via(&self, transport: Transport, branch: &str) -> rsip::Header {
        rsip::Header::Via(rsip::headers::Via::new(format!(
            "SIP/2.0/{} {};branch={branch};rport",
            transport.via_token(),
            self.host_port(transport)
        )))
    }

    /// Our Contact URI for dialogs over `transport`.
    pub fn contact_uri(&self, user: &str, transport: Transport) -> String {
        let params = match transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        let scheme = if transport == Transport::Tls {
            "sips"
        } else {
            "sip"
        };
        format!("{scheme}:{user}@{}{params}", self.host_port(transport))
    }
}

/// Handle to the endpoint task. Cheap to clone; the task ends when every handle is dropped.
#[derive(Debug, Clone)]
pub struct Endpoint {
    commands: mpsc::UnboundedSender<Command>,
    local: SipLocal,
    edge_counters: Arc<EdgeCounters>,
    tables: Arc<EndpointTables>,
}

impl Endpoint {
    /// Binds the sockets and starts the task. Out-of-dialog requests other than OPTIONS
    /// (which the endpoint answers itself) arrive on the returned receiver.
    pub async fn start(
        config: EndpointConfig,
    ) -> std::io::Result<(Endpoint, mpsc::UnboundedReceiver<IncomingRequest>)> {
        let std_udp = std::net::UdpSocket::bind(config.udp)?;
        std_udp.set_nonblocking(true)?;
        // Sends go through a plain non-blocking clone: tokio's `try_send_to` reports
        // WouldBlock until the reactor has seen the socket writable, which silently cost the
        // first INVITE of a fresh endpoint a T1 (500 ms) retransmission.
        let udp_send = std_udp.try_clone()?;
        let udp = UdpSocket::from_std(std_udp)?;
        let udp_addr = udp.local_addr()?;
        let (stream_tx, stream_rx) = mpsc::unbounded_channel();
        // In drop mode a stranger's connection is closed at once: no TLS handshake, no
        // buffer, nothing to learn from.
        let admit = match (&config.edge.trusted, config.edge.unknown_sources) {
            (Some(trusted), crate::config::UnknownSources::Drop) => {
                Some(std::sync::Arc::new(trusted.clone()))
            }
            _ => None,
        };
        let tcp_addr = match config.tcp {
            Some(addr) => {
                let listener = TcpListener::bind(addr).await?;
                let bound = listener.local_addr()?;
                tokio::spawn(accept_loop(
                    listener,
                    None,
                    admit.clone(),
                    stream_tx.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let tls_addr = match config.tls.clone() {
            Some((addr, server)) => {
                let listener = TcpListener::bind(addr).await?;
                let bound = listener.local_addr()?;
                tokio::spawn(accept_loop(
                    listener,
                    Some(server),
                    admit.clone(),
                    stream_tx.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let advertised = config.public_ip.unwrap_or_else(|| {
            let ip = udp_addr.ip();
            if ip.is_unspecified() {
                local_ip_guess()
            } else {
                ip
            }
        });
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (app_tx, app_rx) = mpsc::unbounded_channel();
        let edge_counters = Arc::new(EdgeCounters::default());
        let tables = Arc::new(EndpointTables::default());
        let endpoint = Endpoint {
            commands: commands.clone(),
            local: SipLocal {
                udp: udp_addr,
                tcp: tcp_addr,
                tls: tls_addr,
                advertised,
                user_agent: config.user_agent.clone(),
            },
            edge_counters: edge_counters.clone(),
            tables: tables.clone(),
        };
        let core = Core {
            udp,
            udp_send,
            timers: config.timers,
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
            app: app_tx,
            user_agent: config.user_agent,
            edge: Edge::new(config.edge),
            edge_counters,
        };
        tokio::spawn(core.run(command_rx, stream_rx));
        Ok((endpoint, app_rx))
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.local.udp
    }

    /// The bound TCP listen address, if any.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.local.tcp
    }

    /// The bound TLS listen address, if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.local.tls
    }

    /// What this endpoint puts in Via, Contact and User-Agent.
    pub fn local(&self) -> &SipLocal {
        &self.local
    }

    /// The address put in Via, Contact and SDP.
    pub fn advertised_ip(&self) -> IpAddr {
        self.local.advertised
    }

    /// The User-Agent value.
    pub fn user_agent(&self) -> &str {
        &self.local.user_agent
    }

    /// What the edge policy kept out, for `/metrics`.
    pub fn edge_counters(&self) -> &EdgeCounters {
        &self.edge_counters
    }

    /// How many transactions and dialogs the endpoint holds, for `/metrics`.
    pub fn tables(&self) -> &EndpointTables {
        &self.tables
    }

    /// A Via header for a new client transaction (see [`SipLocal::via`]).
    pub fn via(&self, transport: Transport, branch: &str) -> rsip::Header {
        self.local.via(transport, branch)
    }

    /// Our Contact URI for dialogs over `transport`.
    pub fn contact_uri(&self, user: &str, transport: Transport) -> String {
        self.local.contact_uri(user, transport)
    }

    /// Starts a client transaction for `request` towards `target`.
    pub fn request(
        &self,
        request: Request,
        target: Target,
    ) -> mpsc::UnboundedReceiver<ClientEvent> {
        let (events, rx) = mpsc::unbounded_channel();
        let _ = self.commands.send(Command::Request {
            request,
            target,
            events: Sink::Own(events),
        });
        rx
    }

    /// Starts a client transaction whose events arrive on `sink`, tagged with `id`: a call
    /// runs all its transactions through one channel.
    pub fn request_tagged(
        &self,
        request: Request,
        target: Target,
        id: u64,
        sink: mpsc::UnboundedSender<(u64, ClientEvent)>,
    ) {
        let _ = self.commands.send(Command::Request {
            request,
            target,
            events: Sink::Tagged(id, sink),
        });
    }

    /// Routes requests carrying `call_id` to `tx` (several Call-IDs may share one channel:
    /// a call's failover attempts) until [`Self::forget_dialog`].
    pub fn route_dialog(&self, call_id: &str, tx: mpsc::UnboundedSender<IncomingRequest>) {
        let _ = self.commands.send(Command::Dialog {
            call_id: call_id.to_string(),
            tx: Some(tx),
        });
    }

    /// Sends a request outside any transaction: the ACK for a 2xx (§13.2.2.4).
    pub fn send_stateless(&self, request: Request, target: Target) {
        let _ = self.commands.send(Command::Stateless { request, target });
    }

    /// Routes requests carrying `call_id` (in-dialog requests, ACKs, CANCELs) to the
    /// returned receiver until [`Self::forget_dialog`].
    pub fn register_dialog(&self, call_id: &str) -> mpsc::UnboundedReceiver<IncomingRequest> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.commands.send(Command::Dialog {
            call_id: call_id.to_string(),
            tx: Some(tx),
        });
        rx
    }

    /// Forgets the client transaction of `request` without a final response: an INVITE
    /// whose CANCEL the peer never completed (§9.1). Its late responses are dropped.
    pub fn abandon(&self, request: &Request) {
        if let Some(branch) = message::top_branch(request) {
            let _ = self.commands.send(Command::Abandon {
                key: client_key(&branch, &request.method),
            });
        }
    }

    /// Stops routing `call_id`.
    pub fn forget_dialog(&self, call_id: &str) {
        let _ = self.commands.send(Command::Dialog {
            call_id: call_id.to_string(),
            tx: None,
        });
    }
}

/// The first non-loopback address of this host, found by asking the kernel which source it
/// would use for a public destination (no packet is sent).
fn local_ip_guess() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

async fn accept_loop(
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
}

struct Core {
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
    dialogs: HashMap<String, mpsc::UnboundedSender<IncomingRequest>>,
    tables: Arc<EndpointTables>,
    app: mpsc::UnboundedSender<IncomingRequest>,
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

fn client_key(branch: &str, method: &Method) -> String {
    // CANCEL shares the INVITE's branch (§9.1), so the method is part of the key.
    format!("{branch}|{method}")
}

impl Core {
    async fn run(
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
                    if let Some(event) = event { self.on_stream_event(event) }
                }
                command = commands.recv() => {
                    match command {
                        Some(c) => self.on_command(c),
                        None => return,
                    }
                }
                _ = sleep_until_opt(next) => self.handle_timers(Instant::now()),
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
        let now = Instant::now();
        match command {
            Command::Request {
                request,
                target,
                events,
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
            Command::Respond { key, response } => {
                if let Some(e) = self.servers.get_mut(&key) {
                    e.tx.respond(&response, now);
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

    fn on_message(&mut self, bytes: &[u8], source: SocketAddr, transport: Transport) {
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
                let _ = d.send(IncomingRequest {
                    request: req,
                    source,
                    transport,
                    responder: None,
                });
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
                let _ = target.send(IncomingRequest {
                    request: req.clone(),
                    source,
                    transport,
                    responder: None,
                });
            }
            self.servers.insert(
                key.clone(),
                ServerEntry {
                    tx,
                    source,
                    transport,
                    call_id,
                    cseq,
                },
            );
            self.dirty.push(TxKey::Server(key));
            return;
        }
        if method == Method::Invite {
            // §17.2.1: a 100 at once stops the client's retransmissions while the TU decides.
            tx.respond(&response_to(&req, 100, None), now);
        }
        let responder = Responder {
            key: key.clone(),
            commands: self.commands.clone(),
        };
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
            },
        );
        let incoming = IncomingRequest {
            request: req,
            source,
            transport,
            responder: Some(responder.clone()),
        };
        match (dialog, in_dialog, method) {
            (Some(d), _, _) => {
                if let Err(lost) = d.send(incoming) {
                    responder.respond(response_for(&lost.0.request, 481));
                }
            }
            (None, true, _) => {
                // §12.2.2: a request for a dialog we do not know.
                responder.respond(response_for(&incoming.request, 481));
            }
            (None, false, Method::Options) => {
                let mut ok = response_for(&incoming.request, 200);
                ok.headers.push(crate::sip::message::allow_header());
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
            (None, false, _) => {
                if let Err(lost) = self.app.send(incoming) {
                    responder.respond(response_for(&lost.0.request, 503));
                }
            }
        }
    }

    fn send_back(&mut self, peer: SocketAddr, transport: Transport, bytes: Vec<u8>) {
        match transport {
            Transport::Udp => {
                let _ = self.udp_send.send_to(&bytes, peer);
            }
            _ => self.send_on_stream(peer, bytes),
        }
    }

    /// Queues `bytes` on an open connection. A full queue means the peer has stopped
    /// reading: the connection is dropped (its writer ends, the stream closes) rather than
    /// let it hold our memory.
    fn send_on_stream(&mut self, peer: SocketAddr, bytes: Vec<u8>) {
        let Some(tx) = self.streams.get(&peer) else {
            return;
        };
        match tx.try_send(bytes) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%peer, "SIP connection's write queue is full; dropping the connection");
                self.streams.remove(&peer);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.streams.remove(&peer);
            }
        }
    }

    fn send_to_target(&mut self, target: &Target, bytes: Vec<u8>) {
        if target.transport == Transport::Udp {
            if let Err(e) = self.udp_send.send_to(&bytes, target.addr) {
                tracing::debug!(peer = %target.addr, error = %e, "UDP send failed");
            }
            return;
        }
        if self.streams.contains_key(&target.addr) {
            self.send_on_stream(target.addr, bytes);
            return;
        }
        if let Some(queue) = self.pending_streams.get_mut(&target.addr) {
            if queue.len() < transport::WRITE_QUEUE {
                queue.push(bytes);
            }
            return;
        }
        self.pending_streams.insert(target.addr, Vec::new());
        tokio::spawn(transport::connect(
            target.clone(),
            self.stream_tx.clone(),
            vec![bytes],
        ));
    }

    /// Carries out what the transactions touched since the last flush want: bytes to
    /// send, events for their users, their next timer; ended transactions leave the tables.
    async fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort();
        dirty.dedup();
        for key in dirty {
            match key {
                TxKey::Client(k) => self.flush_client(k),
                TxKey::Server(k) => self.flush_server(k),
            }
        }
        self.tables
            .transactions
            .store(self.clients.len() + self.servers.len(), Ordering::Relaxed);
        self.tables
            .dialogs
            .store(self.dialogs.len(), Ordering::Relaxed);
    }

    fn flush_client(&mut self, key: String) {
        let Some(e) = self.clients.get_mut(&key) else {
            return;
        };
        let mut out = Vec::new();
        while let Some(bytes) = e.tx.poll_transmit() {
            out.push(bytes);
        }
        while let Some(ev) = e.tx.poll_event() {
            e.events.send(ev);
        }
        let target = e.target.clone();
        if e.tx.is_terminated() {
            self.clients.remove(&key);
        } else if let Some(at) = e.tx.poll_timeout() {
            self.timer_heap.push(Reverse((at, TxKey::Client(key))));
        }
        for bytes in out {
            self.send_to_target(&target, bytes);
        }
    }

    fn flush_server(&mut self, key: String) {
        let Some(e) = self.servers.get_mut(&key) else {
            return;
        };
        let mut out = Vec::new();
        while let Some(bytes) = e.tx.poll_transmit() {
            out.push(bytes);
        }
        while let Some(ev) = e.tx.poll_event() {
            if ev == ServerEvent::AckTimeout {
                // The call that sent the 2xx runs its own ACK timer and ends itself.
                tracing::warn!(call_id = %e.call_id, "no ACK for final response (Timer H)");
            }
        }
        let (source, transport) = (e.source, e.transport);
        if e.tx.is_terminated() {
            let ended = (e.call_id.clone(), e.cseq);
            if self.invites.get(&ended) == Some(&key) {
                self.invites.remove(&ended);
            }
            self.servers.remove(&key);
        } else if let Some(at) = e.tx.poll_timeout() {
            self.timer_heap.push(Reverse((at, TxKey::Server(key))));
        }
        for bytes in out {
            self.send_back(source, transport, bytes);
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
