//! Placing a call on a trunk: INVITE with digest authentication, provisional responses
//! (early media), CANCEL, and ordered failover across addresses and trunks; then the
//! established dialog (BYE both ways, re-INVITE answered per RFC 3264).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{Header, Method, Request, Response};
use tokio::sync::{mpsc, watch};

use super::auth;
use super::dialog::Dialog;
use super::endpoint::{Endpoint, IncomingRequest};
use super::message;
use super::sdp;
use super::transaction::ClientEvent;
use super::transport::{Target, split_host_port, tls_client_config};
use crate::config::{Transport, TrunkConfig};

/// Why a call attempt did not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The trunk answered with a final non-2xx status.
    #[error("trunk `{trunk}` answered {code} {reason}")]
    Rejected {
        /// Trunk name.
        trunk: String,
        /// SIP status.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// No final response (Timer B) or the connection failed.
    #[error("trunk `{trunk}` did not answer at {address} (timeout or connection failure)")]
    Timeout {
        /// Trunk name.
        trunk: String,
        /// The address tried last.
        address: String,
    },
    /// The caller gave up before an answer; CANCEL was sent.
    #[error("cancelled by the caller")]
    Cancelled,
    /// Every trunk in the chain is down, full or unresolvable.
    #[error("no trunk available: {0}")]
    NoTrunk(String),
}

impl CallFailure {
    /// The SIP status that best describes the failure (408 for timeouts, 487 for cancel,
    /// 503 when no trunk could be tried).
    pub fn sip_code(&self) -> u16 {
        match self {
            CallFailure::Rejected { code, .. } => *code,
            CallFailure::Timeout { .. } => 408,
            CallFailure::Cancelled => 487,
            CallFailure::NoTrunk(_) => 503,
        }
    }

    /// Failover applies on timeouts, 408 and 5xx (the trunk could not serve the call), never
    /// on 4xx/6xx answers such as 486 or 603: the callee has said no.
    fn allows_failover(&self) -> bool {
        match self {
            CallFailure::Timeout { .. } | CallFailure::NoTrunk(_) => true,
            CallFailure::Rejected { code, .. } => *code == 408 || (500..600).contains(code),
            CallFailure::Cancelled => false,
        }
    }
}

/// Progress reported while an INVITE is pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Trying a trunk address.
    Trying {
        /// Trunk name.
        trunk: String,
        /// Address as configured.
        address: String,
        /// The address it resolved to: where the trunk's signalling (and often media) is.
        addr: std::net::SocketAddr,
        /// Where this trunk's RTP may come from.
        rtp_source: crate::config::RtpSource,
    },
    /// 180/183, with the early-media SDP if any.
    Provisional {
        /// Status code.
        code: u16,
        /// SDP body (early media), if present.
        sdp: Option<Vec<u8>>,
    },
}

/// The trunks, their live state (health, Retry-After, channel counts) and TLS settings.
#[derive(Debug)]
pub struct Trunks {
    configs: HashMap<String, TrunkConfig>,
    tls: HashMap<String, Arc<rustls::ClientConfig>>,
    /// `(trunk, address)` → not to be used before this instant (Retry-After, §21.5.4).
    down_until: Mutex<HashMap<(String, String), Instant>>,
    /// `(trunk, address)` → false while OPTIONS probes fail.
    health: Mutex<HashMap<(String, String), bool>>,
    channels: HashMap<String, Arc<AtomicU32>>,
}

impl Trunks {
    /// Builds the trunk table; fails when a TLS CA file is unusable.
    pub fn new(configs: impl IntoIterator<Item = TrunkConfig>) -> Result<Arc<Trunks>, String> {
        let mut map = HashMap::new();
        let mut tls = HashMap::new();
        let mut channels = HashMap::new();
        for c in configs {
            if c.transport == Transport::Tls {
                tls.insert(
                    c.name.clone(),
                    tls_client_config(c.ca_file.as_deref())
                        .map_err(|e| format!("trunk `{}`: {e}", c.name))?,
                );
            }
            channels.insert(c.name.clone(), Arc::new(AtomicU32::new(0)));
            map.insert(c.name.clone(), c);
        }
        Ok(Arc::new(Trunks {
            configs: map,
            tls,
            down_until: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            channels,
        }))
    }

    /// The configuration of trunk `name`.
    pub fn config(&self, name: &str) -> Option<&TrunkConfig> {
        self.configs.get(name)
    }

    /// `first` followed by its failover trunks, depth first, each once.
    pub fn chain(&self, first: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![first.to_string()];
        while let Some(name) = stack.pop() {
            if out.contains(&name) {
                continue;
            }
            if let Some(c) = self.configs.get(&name) {
                stack.extend(c.failover.iter().rev().cloned());
            }
            out.push(name);
        }
        out
    }

    fn mark_down(&self, trunk: &str, address: &str, for_how_long: Duration) {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        down.insert(
            (trunk.to_string(), address.to_string()),
            Instant::now() + for_how_long,
        );
    }

    /// Records an OPTIONS probe result; returns true when the health changed.
    pub fn set_health(&self, trunk: &str, address: &str, up: bool) -> bool {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.insert((trunk.to_string(), address.to_string()), up) != Some(up)
    }

    /// The last OPTIONS probe result for an address, `None` before the first probe.
    pub fn health(&self, trunk: &str, address: &str) -> Option<bool> {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health
            .get(&(trunk.to_string(), address.to_string()))
            .copied()
    }

    /// True while an address asked us to wait (Retry-After) or fails its OPTIONS probes.
    pub fn is_down(&self, trunk: &str, address: &str) -> bool {
        let key = (trunk.to_string(), address.to_string());
        let waiting = self
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|until| *until > Instant::now());
        let unhealthy = self
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            == Some(&false);
        waiting || unhealthy
    }

    /// The IP address of every trunk, resolved once (at start-up): only these may send
    /// requests in. Addresses that do not resolve are logged and left out.
    pub async fn sources(&self) -> HashMap<std::net::IpAddr, String> {
        let mut sources = HashMap::new();
        for name in self.names() {
            let Some(config) = self.config(&name) else {
                continue;
            };
            for address in &config.addresses {
                match self.target(config, address).await {
                    Some(target) => {
                        sources.insert(target.addr.ip(), name.clone());
                    }
                    None => {
                        tracing::warn!(trunk = %name, %address, "cannot resolve trunk address; requests from it will be refused")
                    }
                }
            }
        }
        sources
    }

    /// The configured trunk names.
    pub fn names(&self) -> Vec<String> {
        self.configs.keys().cloned().collect()
    }

    /// Takes one of the trunk's channels for a call, if any is free.
    pub fn take_channel(&self, trunk: &str) -> Option<ChannelGuard> {
        let config = self.configs.get(trunk)?;
        let counter = self.channels.get(trunk)?.clone();
        let max = config.max_channels.unwrap_or(u32::MAX);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ChannelGuard(counter))
    }

    /// Resolves one configured address of a trunk.
    pub async fn target(&self, trunk: &TrunkConfig, address: &str) -> Option<Target> {
        let (host, port) = split_host_port(address, trunk.transport)?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()?
            .next()?;
        Some(Target {
            addr,
            transport: trunk.transport,
            host,
            tls: self.tls.get(&trunk.name).cloned(),
        })
    }
}

/// Holds one of a trunk's channels for the life of a call.
#[derive(Debug)]
pub struct ChannelGuard(Arc<AtomicU32>);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What to call.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The number (user part of the Request-URI).
    pub to: String,
    /// Caller ID user part; the trunk's `from_user` when `None`.
    pub from_user: Option<String>,
    /// Our SDP offer.
    pub sdp_offer: String,
    /// Extra headers for the INVITE (plugins' `X-` headers, already checked).
    pub headers: Vec<(String, String)>,
    /// Trunks to try after the first, in order; empty follows the trunk's `failover`.
    pub failover: Vec<String>,
}

/// An answered call on a trunk.
#[derive(Debug)]
pub struct TrunkCall {
    endpoint: Endpoint,
    target: Target,
    dialog: Dialog,
    incoming: mpsc::UnboundedReceiver<IncomingRequest>,
    /// The trunk that answered.
    pub trunk: String,
    /// The answer SDP from the 2xx.
    pub answer_sdp: Vec<u8>,
    _channel: ChannelGuard,
}

/// A request from the trunk inside an established call, for the call to act on.
#[derive(Debug)]
pub enum InDialog {
    /// The trunk hung up (already answered 200).
    Bye,
    /// A re-INVITE with this SDP offer; answer with [`TrunkCall::answer_reinvite`].
    Reinvite {
        /// The offer.
        sdp: Vec<u8>,
        /// The request, for answering.
        request: Box<IncomingRequest>,
    },
    /// DTMF by SIP INFO (`application/dtmf-relay`), already answered 200.
    InfoDtmf(char),
}

fn uri_host(trunk: &TrunkConfig, target: &Target) -> String {
    trunk.from_domain.clone().unwrap_or_else(|| {
        let default = if trunk.transport == Transport::Tls {
            5061
        } else {
            5060
        };
        if target.addr.port() == default {
            target.host.clone()
        } else {
            format!("{}:{}", target.host, target.addr.port())
        }
    })
}

/// Places `request` on `first_trunk`, failing over along its chain. `cancel` turning true
/// abandons the attempt (CANCEL once a provisional has arrived, §9.1).
pub async fn place_call(
    endpoint: &Endpoint,
    trunks: &Trunks,
    first_trunk: &str,
    request: &CallRequest,
    progress: &mpsc::UnboundedSender<Progress>,
    cancel: &mut watch::Receiver<bool>,
) -> Result<TrunkCall, CallFailure> {
    let mut last = CallFailure::NoTrunk(format!("trunk `{first_trunk}` is not configured"));
    let order = if request.failover.is_empty() {
        trunks.chain(first_trunk)
    } else {
        let mut order = vec![first_trunk.to_string()];
        for t in &request.failover {
            if !order.contains(t) {
                order.push(t.clone());
            }
        }
        order
    };
    for trunk_name in order {
        let Some(trunk) = trunks.config(&trunk_name) else {
            continue;
        };
        let Some(channel) = trunks.take_channel(&trunk_name) else {
            last = CallFailure::NoTrunk(format!(
                "trunk `{trunk_name}` has all {} channels in use",
                trunk.max_channels.unwrap_or(0)
            ));
            continue;
        };
        let mut channel = Some(channel);
        for address in &trunk.addresses {
            if trunks.is_down(&trunk_name, address) {
                last = CallFailure::NoTrunk(format!(
                    "trunk `{trunk_name}` at {address} is down (Retry-After or failed OPTIONS probes)"
                ));
                continue;
            }
            let Some(target) = trunks.target(trunk, address).await else {
                last = CallFailure::NoTrunk(format!(
                    "trunk `{trunk_name}`: cannot resolve `{address}`"
                ));
                continue;
            };
            let _ = progress.send(Progress::Trying {
                trunk: trunk_name.clone(),
                address: address.clone(),
                addr: target.addr,
                rtp_source: trunk.rtp_source,
            });
            match invite(endpoint, trunk, &target, request, progress, cancel).await {
                Ok((dialog, answer_sdp, incoming)) => {
                    return Ok(TrunkCall {
                        endpoint: endpoint.clone(),
                        target,
                        dialog,
                        incoming,
                        trunk: trunk_name.clone(),
                        answer_sdp,
                        _channel: channel.take().expect("channel held until answered"),
                    });
                }
                Err((failure, retry_after)) => {
                    tracing::info!(trunk = %trunk_name, %address, %failure, "call attempt failed");
                    if let Some(wait) = retry_after {
                        trunks.mark_down(&trunk_name, address, wait);
                    }
                    if !failure.allows_failover() {
                        return Err(failure);
                    }
                    last = failure;
                }
            }
        }
    }
    Err(last)
}

type Attempt = Result<
    (Dialog, Vec<u8>, mpsc::UnboundedReceiver<IncomingRequest>),
    (CallFailure, Option<Duration>),
>;

fn build_invite(
    endpoint: &Endpoint,
    trunk: &TrunkConfig,
    target: &Target,
    request: &CallRequest,
    ids: &(String, String),
    seq: u32,
    auth: Vec<Header>,
) -> Request {
    let host = uri_host(trunk, target);
    let scheme = if trunk.transport == Transport::Tls {
        "sips"
    } else {
        "sip"
    };
    let uri = rsip::Uri::try_from(format!("{scheme}:{}@{host}", request.to)).unwrap_or_else(|_| {
        rsip::Uri {
            scheme: Some(rsip::Scheme::Sip),
            auth: Some(rsip::Auth {
                user: request.to.clone(),
                password: None,
            }),
            host_with_port: rsip::Domain::from(host.clone()).into(),
            ..Default::default()
        }
    });
    let from_user = request.from_user.as_deref().unwrap_or(&trunk.from_user);
    let (call_id, from_tag) = ids;
    let mut headers = rsip::Headers::default();
    headers.push(endpoint.via(trunk.transport, &message::new_branch()));
    headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("70")));
    headers.push(Header::From(rsip::headers::From::new(format!(
        "<{scheme}:{from_user}@{host}>;tag={from_tag}"
    ))));
    headers.push(Header::To(rsip::headers::To::new(format!("<{uri}>"))));
    headers.push(Header::CallId(rsip::headers::CallId::new(call_id.clone())));
    headers.push(
        rsip::typed::CSeq {
            seq,
            method: Method::Invite,
        }
        .into(),
    );
    headers.push(Header::Contact(rsip::headers::Contact::new(format!(
        "<{}>",
        endpoint.contact_uri("gw", trunk.transport)
    ))));
    headers.push(message::allow_header());
    headers.push(Header::UserAgent(rsip::headers::UserAgent::new(
        endpoint.user_agent().to_string(),
    )));
    headers.push(Header::ContentType(rsip::headers::ContentType::new(
        "application/sdp",
    )));
    for a in auth {
        headers.push(a);
    }
    for (name, value) in &request.headers {
        headers.push(Header::Other(name.clone(), value.clone()));
    }
    Request {
        method: Method::Invite,
        uri,
        version: rsip::Version::V2,
        headers,
        body: request.sdp_offer.clone().into_bytes(),
    }
}

/// §9.1: CANCEL copies the INVITE's Request-URI, top Via (same branch), From, To, Call-ID
/// and Route, with the same CSeq number.
fn build_cancel(invite: &Request) -> Request {
    let mut headers = rsip::Headers::default();
    if let Ok(via) = invite.via_header() {
        headers.push(Header::Via(via.clone()));
    }
    for h in invite.headers.iter() {
        if matches!(
            h,
            Header::From(_)
                | Header::To(_)
                | Header::CallId(_)
                | Header::Route(_)
                | Header::MaxForwards(_)
        ) {
            headers.push(h.clone());
        }
    }
    let seq = message::cseq(invite).map(|c| c.0).unwrap_or(1);
    headers.push(
        rsip::typed::CSeq {
            seq,
            method: Method::Cancel,
        }
        .into(),
    );
    Request {
        method: Method::Cancel,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: vec![],
    }
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let value = message::header_value(&resp.headers, "Retry-After")?;
    let secs: u64 = value
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

async fn invite(
    endpoint: &Endpoint,
    trunk: &TrunkConfig,
    target: &Target,
    request: &CallRequest,
    progress: &mpsc::UnboundedSender<Progress>,
    cancel: &mut watch::Receiver<bool>,
) -> Attempt {
    let ids = (
        format!("{}@gateway", message::random_token()),
        message::random_token(),
    );
    // Registered before the INVITE leaves, so a BYE or re-INVITE racing the 200 finds its dialog.
    let incoming = endpoint.register_dialog(&ids.0);
    let result = invite_inner(endpoint, trunk, target, request, progress, cancel, &ids).await;
    match result {
        Ok((dialog, sdp)) => Ok((dialog, sdp, incoming)),
        Err(e) => {
            endpoint.forget_dialog(&ids.0);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn invite_inner(
    endpoint: &Endpoint,
    trunk: &TrunkConfig,
    target: &Target,
    request: &CallRequest,
    progress: &mpsc::UnboundedSender<Progress>,
    cancel: &mut watch::Receiver<bool>,
    ids: &(String, String),
) -> Result<(Dialog, Vec<u8>), (CallFailure, Option<Duration>)> {
    let timeout = |trunk: &TrunkConfig| CallFailure::Timeout {
        trunk: trunk.name.clone(),
        address: format!("{:?}", target),
    };
    let mut seq = 1;
    let mut credentials: Vec<((u16, String), Header)> = Vec::new();
    let mut challenges = 0;
    'attempt: loop {
        let invite = build_invite(
            endpoint,
            trunk,
            target,
            request,
            ids,
            seq,
            credentials.iter().map(|(_, h)| h.clone()).collect(),
        );
        let mut events = endpoint.request(invite.clone(), target.clone());
        let mut provisional = false;
        let mut cancel_pending = *cancel.borrow();
        let mut cancel_sent = false;
        loop {
            if cancel_pending && provisional && !cancel_sent {
                let _ = endpoint.request(build_cancel(&invite), target.clone());
                cancel_sent = true;
            }
            let event = tokio::select! {
                ev = events.recv() => ev,
                changed = cancel.changed(), if !cancel_pending => {
                    cancel_pending = changed.is_err() || *cancel.borrow();
                    continue;
                }
            };
            let response = match event {
                Some(ClientEvent::Response(r)) => r,
                Some(ClientEvent::Timeout) | None => {
                    return Err((
                        if cancel_pending {
                            CallFailure::Cancelled
                        } else {
                            timeout(trunk)
                        },
                        None,
                    ));
                }
            };
            let code = response.status_code.code();
            match code {
                100 => {}
                101..=199 => {
                    provisional = true;
                    let sdp = (!response.body.is_empty()).then(|| response.body.clone());
                    let _ = progress.send(Progress::Provisional { code, sdp });
                }
                200..=299 => {
                    let Some(dialog) = Dialog::from_uac(&invite, &response) else {
                        tracing::warn!("2xx without To tag; treating as failure");
                        return Err((
                            CallFailure::Rejected {
                                trunk: trunk.name.clone(),
                                code: 502,
                                reason: "2xx without To tag".into(),
                            },
                            None,
                        ));
                    };
                    let ack =
                        dialog.ack(seq, endpoint.via(trunk.transport, &message::new_branch()));
                    endpoint.send_stateless(ack, target.clone());
                    if cancel_pending {
                        // §9.1: the 200 crossed our CANCEL; the call exists, so end it with BYE.
                        let mut call = dialog.clone();
                        let bye = call.request(
                            Method::Bye,
                            endpoint.via(trunk.transport, &message::new_branch()),
                            vec![],
                            vec![],
                        );
                        let _ = endpoint.request(bye, target.clone());
                        return Err((CallFailure::Cancelled, None));
                    }
                    return Ok((dialog, response.body.clone()));
                }
                401 | 407 if challenges < 4 && trunk.credentials.is_some() && !cancel_pending => {
                    let Some(challenge) = auth::best_challenge(&response) else {
                        return Err((
                            CallFailure::Rejected {
                                trunk: trunk.name.clone(),
                                code,
                                reason: "challenge without a usable Digest".into(),
                            },
                            None,
                        ));
                    };
                    // §22.3: credentials are kept per realm, so a proxy (407) and the far end
                    // (401) can both be answered. The same realm challenging again means the
                    // password is wrong; only a stale nonce is worth another try (RFC 2617 §3.2.1).
                    let key = (code, challenge.realm.clone());
                    if credentials.iter().any(|(k, _)| *k == key) && !challenge.stale {
                        return Err((
                            CallFailure::Rejected {
                                trunk: trunk.name.clone(),
                                code,
                                reason:
                                    "credentials refused: check the trunk's username and password"
                                        .into(),
                            },
                            None,
                        ));
                    }
                    challenges += 1;
                    let creds = trunk.credentials.as_ref().expect("checked above");
                    let value = auth::authorization(
                        &challenge,
                        creds,
                        "INVITE",
                        &invite.uri.to_string(),
                        1,
                        &message::random_token(),
                    );
                    let header = if code == 407 {
                        Header::ProxyAuthorization(rsip::headers::ProxyAuthorization::new(value))
                    } else {
                        Header::Authorization(rsip::headers::Authorization::new(value))
                    };
                    credentials.retain(|(k, _)| *k != key);
                    credentials.push((key, header));
                    seq += 1;
                    continue 'attempt;
                }
                _ => {
                    if cancel_sent && code == 487 {
                        return Err((CallFailure::Cancelled, None));
                    }
                    let reason = response.status_code.to_string();
                    let reason = reason
                        .split_once(' ')
                        .map(|(_, r)| r.to_string())
                        .unwrap_or(reason);
                    let wait = if code == 503 {
                        retry_after(&response)
                    } else {
                        None
                    };
                    return Err((
                        CallFailure::Rejected {
                            trunk: trunk.name.clone(),
                            code,
                            reason,
                        },
                        wait,
                    ));
                }
            }
        }
    }
}

impl TrunkCall {
    /// An inbound call from a trunk, answered by us: the UAS side of the dialog (§12.1.1).
    pub fn inbound(
        endpoint: Endpoint,
        target: Target,
        dialog: Dialog,
        incoming: mpsc::UnboundedReceiver<IncomingRequest>,
        trunk: String,
        channel: ChannelGuard,
    ) -> TrunkCall {
        TrunkCall {
            endpoint,
            target,
            dialog,
            incoming,
            trunk,
            answer_sdp: Vec::new(),
            _channel: channel,
        }
    }

    /// Whether an in-dialog request may act on this dialog: from its peer (the endpoint
    /// serves trunk addresses only; this keeps one trunk, or a host in its pool, from ending
    /// or moving another peer's call by its Call-ID), naming it, in sequence (§12.2.2).
    /// Otherwise the status to answer with.
    fn accept(&mut self, incoming: &IncomingRequest) -> Result<(), u16> {
        let source = incoming.source.ip();
        if source != self.target.addr.ip() && !self.dialog.peer_ips().contains(&source) {
            tracing::warn!(%source, call_id = %self.dialog.call_id, method = %incoming.request.method, "in-dialog request from an address that is not this dialog's peer refused");
            return Err(403);
        }
        self.dialog.accept_remote(&incoming.request)
    }

    /// The Call-ID on the trunk side (new, unrelated to the browser leg: B2BUA).
    pub fn call_id(&self) -> &str {
        &self.dialog.call_id
    }

    /// Waits for the next request from the trunk that the call must act on. Requests the
    /// dialog layer can answer alone (OPTIONS, out-of-order CSeq) are answered here.
    /// Returns `None` if the endpoint stopped.
    pub async fn next(&mut self) -> Option<InDialog> {
        loop {
            let incoming = self.incoming.recv().await?;
            let Some(responder) = incoming.responder.clone() else {
                continue;
            };
            if let Err(code) = self.accept(&incoming) {
                responder.respond(self.dialog.response(&incoming.request, code));
                continue;
            }
            match incoming.request.method {
                Method::Bye => {
                    responder.respond(self.dialog.response(&incoming.request, 200));
                    return Some(InDialog::Bye);
                }
                Method::Invite => {
                    let sdp = incoming.request.body.clone();
                    return Some(InDialog::Reinvite {
                        sdp,
                        request: Box::new(incoming),
                    });
                }
                Method::Info => {
                    let body = String::from_utf8_lossy(&incoming.request.body).to_string();
                    let digit = body
                        .lines()
                        .find_map(|l| {
                            l.trim()
                                .strip_prefix("Signal")
                                .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
                        })
                        .and_then(|v| v.chars().next());
                    let code = if digit.is_some() { 200 } else { 415 };
                    responder.respond(self.dialog.response(&incoming.request, code));
                    if let Some(d) = digit {
                        return Some(InDialog::InfoDtmf(d));
                    }
                }
                _ => responder.respond(self.dialog.response(&incoming.request, 200)),
            }
        }
    }

    /// Answers a re-INVITE with `sdp` (or rejects it with `code` when `sdp` is `None`: 488).
    pub fn answer_reinvite(&self, request: &IncomingRequest, sdp: Option<String>) {
        let Some(responder) = &request.responder else {
            return;
        };
        let mut resp = self
            .dialog
            .response(&request.request, if sdp.is_some() { 200 } else { 488 });
        if let Some(sdp) = sdp {
            resp.headers
                .push(Header::Contact(rsip::headers::Contact::new(format!(
                    "<{}>",
                    self.endpoint.contact_uri("gw", self.target.transport)
                ))));
            resp.headers
                .push(Header::ContentType(rsip::headers::ContentType::new(
                    "application/sdp",
                )));
            resp.body = sdp.into_bytes();
        }
        responder.respond(resp);
    }

    /// Answers a re-INVITE from the trunk per RFC 3264: an offer is answered with the
    /// mirrored direction (hold: `sendonly` gets `recvonly`) and returns the peer's new media
    /// to follow; an offerless re-INVITE gets our offer (§5); an unusable offer gets 488.
    pub fn handle_reinvite(
        &self,
        request: &IncomingRequest,
        offer: &[u8],
        local: &sdp::LocalMedia,
        sdp_version: &mut u64,
    ) -> Option<sdp::RemoteMedia> {
        *sdp_version += 1;
        if offer.is_empty() {
            self.answer_reinvite(
                request,
                Some(sdp::offer(local, *sdp_version, sdp::Direction::SendRecv)),
            );
            return None;
        }
        match sdp::parse_remote(offer, &local.codecs, false) {
            Ok(remote) => {
                self.answer_reinvite(request, Some(sdp::answer(local, *sdp_version, &remote)));
                Some(remote)
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-INVITE offer refused with 488");
                self.answer_reinvite(request, None);
                None
            }
        }
    }

    /// Sends a re-INVITE with `offer` (hold: `sendonly`; resume: `sendrecv`, RFC 3264 §8.4)
    /// and returns the answer's SDP on 2xx. Bounded by `limit`, so a silent trunk cannot
    /// stall the call for Timer B's 32 s.
    pub async fn reinvite(
        &mut self,
        offer: String,
        limit: std::time::Duration,
    ) -> Result<Vec<u8>, u16> {
        let via = self
            .endpoint
            .via(self.target.transport, &message::new_branch());
        let extra = vec![
            Header::Contact(rsip::headers::Contact::new(format!(
                "<{}>",
                self.endpoint.contact_uri("gw", self.target.transport)
            ))),
            Header::ContentType(rsip::headers::ContentType::new("application/sdp")),
        ];
        let request = self
            .dialog
            .request(Method::Invite, via, extra, offer.into_bytes());
        let seq = message::cseq(&request).map(|c| c.0).unwrap_or(1);
        let mut events = self.endpoint.request(request, self.target.clone());
        let outcome = tokio::time::timeout(limit, async {
            loop {
                match events.recv().await {
                    Some(ClientEvent::Response(r)) if r.status_code.code() >= 200 => break Ok(r),
                    Some(ClientEvent::Response(_)) => continue,
                    Some(ClientEvent::Timeout) | None => break Err::<Response, u16>(408),
                }
            }
        })
        .await
        .unwrap_or(Err(408))?;
        let code = outcome.status_code.code();
        if !(200..300).contains(&code) {
            return Err(code);
        }
        let ack = self.dialog.ack(
            seq,
            self.endpoint
                .via(self.target.transport, &message::new_branch()),
        );
        self.endpoint.send_stateless(ack, self.target.clone());
        Ok(outcome.body)
    }

    /// Hangs up with BYE and waits (bounded by the transaction's own timeout) for the answer.
    /// Returns the BYE's final status, or `None` on timeout. Requests the trunk sends
    /// meanwhile are answered, not left to retransmit: its own BYE, crossing ours, gets 200
    /// (RFC 3261 §15.1.2); anything else 481, the dialog being over.
    pub async fn hangup(mut self) -> Option<u16> {
        let via = self
            .endpoint
            .via(self.target.transport, &message::new_branch());
        let bye = self.dialog.request(Method::Bye, via, vec![], vec![]);
        let mut events = self.endpoint.request(bye, self.target.clone());
        let result = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(ClientEvent::Response(r)) if r.status_code.code() >= 200 => {
                        break Some(r.status_code.code());
                    }
                    Some(ClientEvent::Response(_)) => continue,
                    Some(ClientEvent::Timeout) | None => break None,
                },
                Some(incoming) = self.incoming.recv() => {
                    if let Some(responder) = &incoming.responder {
                        let code = match (self.accept(&incoming), incoming.request.method) {
                            (Err(code), _) => code,
                            (Ok(()), Method::Bye) => 200,
                            (Ok(()), _) => 481,
                        };
                        responder.respond(self.dialog.response(&incoming.request, code));
                    }
                }
            }
        };
        self.endpoint.forget_dialog(&self.dialog.call_id);
        result
    }

    /// Ends local bookkeeping after the trunk hung up.
    pub fn finish(self) {
        self.endpoint.forget_dialog(&self.dialog.call_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, failover: &[&str]) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            addresses: vec!["127.0.0.1:5060".into()],
            transport: Transport::Udp,
            credentials: None,
            from_user: "gw".into(),
            from_domain: None,
            codecs: vec![crate::media::g711::G711::Pcmu],
            register: false,
            register_expires: 600,
            options_interval: 0,
            max_channels: Some(1),
            failover: failover.iter().map(|s| s.to_string()).collect(),
            ca_file: None,
            rtp_source: Default::default(),
        }
    }

    #[test]
    fn failover_chain_is_ordered_and_loop_free() {
        let t = Trunks::new([
            trunk("a", &["b", "c"]),
            trunk("b", &["c", "a"]),
            trunk("c", &[]),
        ])
        .unwrap();
        assert_eq!(t.chain("a"), vec!["a", "b", "c"]);
        assert_eq!(t.chain("c"), vec!["c"]);
    }

    #[test]
    fn only_timeouts_408_and_5xx_fail_over() {
        let rejected = |code| CallFailure::Rejected {
            trunk: "a".into(),
            code,
            reason: String::new(),
        };
        assert!(rejected(503).allows_failover());
        assert!(rejected(408).allows_failover());
        assert!(
            CallFailure::Timeout {
                trunk: "a".into(),
                address: "x".into()
            }
            .allows_failover()
        );
        for code in [404, 486, 603, 403] {
            assert!(!rejected(code).allows_failover(), "{code}");
        }
    }

    #[test]
    fn channels_are_limited_and_released() {
        let t = Trunks::new([trunk("a", &[])]).unwrap();
        let guard = t.take_channel("a").unwrap();
        assert!(t.take_channel("a").is_none());
        drop(guard);
        assert!(t.take_channel("a").is_some());
    }

    #[test]
    fn retry_after_marks_an_address_down() {
        let t = Trunks::new([trunk("a", &[])]).unwrap();
        t.mark_down("a", "127.0.0.1:5060", Duration::from_secs(60));
        assert!(t.is_down("a", "127.0.0.1:5060"));
        assert!(!t.is_down("a", "127.0.0.2:5060"));
    }
}
