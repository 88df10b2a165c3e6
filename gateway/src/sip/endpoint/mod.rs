//! The SIP endpoint: one tokio task that owns the sockets and every transaction, and routes
//! messages between the wire and transaction users (call legs, the registrar client).
//!
//! The protocol decisions live in the sans-IO [`super::transaction`] types; the task in
//! `core` only moves bytes, runs timers and matches messages to transactions (§17.1.3,
//! §17.2.3). This file is the handle the rest of the gateway holds.

mod core;
mod queues;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use rsip::prelude::*;
use rsip::{Request, Response};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use self::core::{Core, accept_loop, client_key};
use super::edge::{Edge, EdgeCounters, EdgePolicy};
use super::message;
use super::transaction::{ClientEvent, Timers};
use super::transport::Target;
use super::transport::Transport;

use queues::Sink;
pub use queues::{
    APP_QUEUE, CALL_QUEUE, RequestReceiver, RequestSender, event_channel, request_channel,
};

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

/// Answers one server transaction. Clones answer the same one.
///
/// A request the gateway took is always answered: when the last clone is dropped before a
/// final response went out, the endpoint answers 500 (RFC 3261 §21.5.1) in its place
/// ([`Command::Unanswered`]). Why: a transaction user that faulted (a panic in a call's task,
/// `crate::fault`), or a path that forgot to answer, would otherwise leave the trunk's INVITE
/// in Proceeding — the carrier's call up, ringing nowhere, until some timer of its own gave
/// up (the protocol sets none once a 100 came: Timer B stops there, §17.1.1.2; a proxy's
/// Timer C runs over three minutes, §16.6) — and the server transaction in the endpoint's
/// table for good.
#[derive(Debug, Clone)]
pub struct Responder(Arc<Answering>);

#[derive(Debug)]
struct Answering {
    key: String,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        let key = std::mem::take(&mut self.key);
        let _ = self.commands.send(Command::Unanswered { key });
    }
}

impl Responder {
    fn new(key: String, commands: mpsc::UnboundedSender<Command>) -> Responder {
        Responder(Arc::new(Answering { key, commands }))
    }

    /// Sends `response` through the server transaction (retransmitted as §17.2 requires).
    pub fn respond(&self, response: Response) {
        let _ = self.0.commands.send(Command::Respond {
            key: self.0.key.clone(),
            response,
            relayed: false,
        });
    }

    /// Relays a response from the element the request was forwarded to (see
    /// [`super::transaction::ServerTransaction::relay`]).
    pub fn relay(&self, response: Response) {
        let _ = self.0.commands.send(Command::Respond {
            key: self.0.key.clone(),
            response,
            relayed: true,
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
        relayed: bool,
    },
    Dialog {
        call_id: String,
        tx: Option<RequestSender>,
    },
    Abandon {
        key: String,
    },
    /// Every [`Responder`] of the server transaction is gone: unless it was answered, it is
    /// answered 500.
    Unanswered {
        key: String,
    },
}

/// A client transaction's event on a call's shared channel, with the transaction's id there.
/// Boxed: tokio's channel allocates its slots 32 at a time and up front, and at 96 bytes an
/// unboxed event made each call's channel 3.1 KB before its first response (heaptrack).
pub type TaggedEvent = Box<(u64, ClientEvent)>;

/// Sizes of the endpoint's tables, for `/metrics`: after calls end they return to zero,
/// so a leak shows as a number that only grows.
#[derive(Debug, Default)]
pub struct EndpointTables {
    /// Client and server transactions alive.
    pub transactions: AtomicUsize,
    /// Dialogs (Call-IDs) routed to a call.
    pub dialogs: AtomicUsize,
    /// Messages a full queue turned away (`queues`): requests answered 503, ACKs and
    /// dispensable responses dropped.
    pub queue_full: AtomicU64,
}

impl EndpointTables {
    /// Counts a message a full queue turned away: `delivered` is what [`queues::deliver`] or
    /// a transaction's sink answered.
    fn count_lost(&self, delivered: bool) {
        if !delivered {
            self.queue_full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
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

    /// Our Contact URI for requests we start over `transport` (a SIPS URI over TLS, as our
    /// Request-URI is then, §8.1.1.8).
    pub fn contact_uri(&self, user: &str, transport: Transport) -> String {
        self.dialog_contact_uri(user, transport, transport == Transport::Tls)
    }

    /// Our Contact URI in a dialog over `transport`: a SIPS URI only in a dialog the peer
    /// made secure (§12.1.1: its Request-URI or Contact was SIPS); over TLS otherwise
    /// `sip:…;transport=tls`, which is what a peer that dialled `sip:` can route back to.
    pub fn dialog_contact_uri(&self, user: &str, transport: Transport, sips: bool) -> String {
        let params = match transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        let scheme = if sips && transport == Transport::Tls {
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
    pub async fn start(config: EndpointConfig) -> std::io::Result<(Endpoint, RequestReceiver)> {
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
            (Some(trusted), super::edge::UnknownSources::Drop) => {
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
        let (app_tx, app_rx) = mpsc::channel(APP_QUEUE);
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
        let core = Core::new(
            (udp, udp_send),
            config.timers,
            (commands, stream_tx, app_tx),
            config.user_agent,
            Edge::new(config.edge),
            (edge_counters, tables),
        );
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

    /// Starts a client transaction for `request` towards `target`; its events arrive on the
    /// returned channel, bounded as a call's are (`queues`).
    pub fn request(&self, request: Request, target: Target) -> mpsc::Receiver<ClientEvent> {
        let (events, rx) = Sink::own();
        let _ = self.commands.send(Command::Request {
            request,
            target,
            events,
        });
        rx
    }

    /// Starts a client transaction whose events arrive on `sink` ([`event_channel`]), tagged
    /// with `id`: a call runs all its transactions through one channel. A full channel loses
    /// only what the call can do without (`queues`).
    pub fn request_tagged(
        &self,
        request: Request,
        target: Target,
        id: u64,
        sink: mpsc::Sender<TaggedEvent>,
    ) {
        let _ = self.commands.send(Command::Request {
            request,
            target,
            events: Sink::tagged(id, sink),
        });
    }

    /// Routes requests carrying `call_id` to `tx` (several Call-IDs may share one channel:
    /// a call's failover attempts) until [`Self::forget_dialog`].
    pub fn route_dialog(&self, call_id: &str, tx: RequestSender) {
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
    pub fn register_dialog(&self, call_id: &str) -> RequestReceiver {
        let (tx, rx) = request_channel();
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
