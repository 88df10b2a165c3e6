//! `gateway run`: the long-running gateway. Today it keeps the trunk side up (SIP listeners,
//! registrations, OPTIONS health checks) and polices inbound calls; the browser leg and the
//! plugin chain attach here as they are built.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::sip::endpoint::{Endpoint, EndpointConfig, IncomingRequest};
use crate::sip::message::{random_token, response_to};
use crate::sip::monitor::{RegistrationStates, spawn_health_checks, spawn_registrations};
use crate::sip::transaction::Timers;
use crate::sip::transport::tls_server_config;
use crate::sip::trunk::Trunks;

/// A running trunk side.
pub struct Gateway {
    /// The SIP endpoint.
    pub endpoint: Endpoint,
    /// Trunks and their live state.
    pub trunks: Arc<Trunks>,
    /// Registration state per registering trunk.
    pub registrations: RegistrationStates,
}

/// Starts listeners, registrations, health checks and the inbound-request policy.
pub async fn start(config: &Config) -> Result<Gateway, String> {
    let tls = match (&config.sip.tls, &config.sip.tls_identity) {
        (Some(addr), Some((cert, key))) => Some((*addr, tls_server_config(cert, key)?)),
        _ => None,
    };
    let (endpoint, inbound) = Endpoint::start(EndpointConfig {
        udp: config.sip.udp,
        tcp: config.sip.tcp,
        tls,
        public_ip: config.sip.public_ip,
        user_agent: config.sip.user_agent.clone(),
        timers: Timers::default(),
    })
    .await
    .map_err(|e| format!("cannot bind the SIP listeners ({}): {e}", config.sip.udp))?;
    let trunks = Trunks::new(config.trunks.values().cloned())?;
    let sources = trunk_sources(&trunks).await;
    let registrations = spawn_registrations(&endpoint, &trunks);
    spawn_health_checks(&endpoint, &trunks);
    tokio::spawn(police_inbound(inbound, sources));
    Ok(Gateway {
        endpoint,
        trunks,
        registrations,
    })
}

/// The IP addresses of every trunk, resolved once at start-up: only these may send calls in.
async fn trunk_sources(trunks: &Trunks) -> HashMap<IpAddr, String> {
    let mut sources = HashMap::new();
    for name in trunks.names() {
        let Some(config) = trunks.config(&name) else {
            continue;
        };
        for address in &config.addresses {
            match trunks.target(config, address).await {
                Some(target) => {
                    sources.insert(target.addr.ip(), name.clone());
                }
                None => {
                    tracing::warn!(trunk = %name, %address, "cannot resolve trunk address; calls from it will be refused")
                }
            }
        }
    }
    sources
}

/// Out-of-dialog requests: INVITEs from unknown addresses get 403 (toll-fraud scanners
/// probe every public SIP port); INVITEs from trunks get 480 until a browser leg exists.
async fn police_inbound(
    mut inbound: mpsc::UnboundedReceiver<IncomingRequest>,
    sources: HashMap<IpAddr, String>,
) {
    while let Some(incoming) = inbound.recv().await {
        let Some(responder) = incoming.responder else {
            continue;
        };
        let request = &incoming.request;
        let tag = random_token();
        let code = match (request.method, sources.get(&incoming.source.ip())) {
            (rsip::Method::Invite, None) => {
                tracing::warn!(source = %incoming.source, "INVITE from an address that is no trunk refused");
                403
            }
            (rsip::Method::Invite, Some(trunk)) => {
                tracing::info!(%trunk, "inbound call refused: no browser is registered for it");
                480
            }
            (rsip::Method::Bye | rsip::Method::Info | rsip::Method::Update, _) => 481,
            _ => 405,
        };
        let mut response = response_to(request, code, Some(&tag));
        if code == 405 {
            response.headers.push(crate::sip::message::allow_header());
        }
        responder.respond(response);
    }
}
