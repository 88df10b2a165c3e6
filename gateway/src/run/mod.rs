//! `gateway run`: the long-running gateway: SIP listeners, trunk registrations and health
//! checks, the inbound policy, the shared WebRTC media port and the HTTP side.

mod descriptors;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::call::cdr::CdrLog;
use crate::call::forward::Forwarded;
use crate::call::{Arrival, CallContext, run_inbound};
use crate::config::Config;
use crate::rtc::mux::MediaMux;
use crate::sip::edge::EdgePolicy;
use crate::sip::endpoint::{Endpoint, EndpointConfig, RequestReceiver};
use crate::sip::message::{random_token, response_to};
use crate::sip::monitor::{RegistrationStates, spawn_health_checks, spawn_registrations};
use crate::sip::transaction::Timers;
use crate::sip::transport::tls_server_config;
use crate::sip::trunks::Trunks;

/// A running gateway.
pub struct Gateway {
    /// The SIP endpoint.
    pub endpoint: Endpoint,
    /// Trunks and their live state.
    pub trunks: Arc<Trunks>,
    /// Registration state per registering trunk.
    pub registrations: RegistrationStates,
    /// What calls share (metrics, drain state, the media port).
    pub calls: Arc<CallContext>,
    /// The bound HTTP address (`/ws`, `/healthz`, and `/metrics` unless served apart).
    pub http_addr: std::net::SocketAddr,
    /// The bound `[http] admin_listen` address (`/metrics`, `/admin/*`), if configured.
    pub admin_addr: Option<std::net::SocketAddr>,
}

impl Gateway {
    /// Graceful drain (SIGTERM): refuse new calls, let running ones finish for up to
    /// `deadline`, then end the rest (BYE or CANCEL).
    pub async fn drain(&self, deadline: Duration) {
        self.calls.draining.send_replace(true);
        if let Some(cluster) = &self.calls.cluster {
            cluster.drain();
        }
        // The browsers registered here were told to `reconnect` (through the load balancer,
        // to another node); each leaves as it does. Without this wait a node with no calls
        // exited before its `reconnect` messages went out.
        let registered = || {
            self.calls
                .registered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len()
        };
        wait_while(deadline.min(Duration::from_secs(5)), || registered() > 0).await;
        let calls = || self.calls.metrics.calls.get();
        wait_while(deadline, || calls() > 0).await;
        let _ = self.calls.shutdown.send(true);
        // Ending a call takes a BYE round trip at most; give them a moment to finish.
        wait_while(Duration::from_secs(5), || calls() > 0).await;
    }
}

/// Checks `busy` every 50 ms until it is false or `limit` has passed.
async fn wait_while(limit: Duration, busy: impl Fn() -> bool) {
    let until = tokio::time::Instant::now() + limit;
    while busy() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts listeners, registrations, health checks and the inbound-request policy.
pub async fn start(config: &Config) -> Result<Gateway, String> {
    // Before any call opens a descriptor: the table does not grow under calls (`descriptors`).
    let wanted =
        config.limits.max_calls as usize * descriptors::PER_CALL + descriptors::BESIDES_CALLS;
    match descriptors::reserve(wanted) {
        Ok(room) if room < wanted => tracing::warn!(
            room,
            wanted,
            max_calls = config.limits.max_calls,
            "the open-files limit (RLIMIT_NOFILE) is below what [limits] max_calls may need: \
             raise it (`ulimit -n`, systemd's LimitNOFILE, the container's nofile ulimit)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot grow the file descriptor table"),
    }
    let tls = match (&config.sip.tls, &config.sip.tls_identity) {
        (Some(addr), Some((cert, key))) => Some((*addr, tls_server_config(cert, key)?)),
        _ => None,
    };
    let trunks = Trunks::new(config.trunks.values().cloned())?;
    let sources = trunks.sources().await;
    let (endpoint, inbound) = Endpoint::start(EndpointConfig {
        udp: config.sip.udp,
        tcp: config.sip.tcp,
        tls,
        public_ip: config.sip.public_ip,
        user_agent: config.sip.user_agent.clone(),
        timers: Timers::default(),
        // Only trunks are served: everyone else is dropped or refused statelessly.
        edge: EdgePolicy {
            trusted: Some(sources.keys().copied().collect()),
            peers: config
                .cluster
                .as_ref()
                .map_or_else(Vec::new, |c| c.peers.clone()),
            unknown_sources: config.sip.unknown_sources,
            rate_limit: config.sip.rate_limit,
        },
    })
    .await
    .map_err(|e| format!("cannot bind the SIP listeners ({}): {e}", config.sip.udp))?;
    let registrations = spawn_registrations(&endpoint, &trunks);
    spawn_health_checks(&endpoint, &trunks);
    let mux = MediaMux::bind(config.webrtc_udp).map_err(|e| {
        format!(
            "cannot bind the WebRTC media port {}: {e}",
            config.webrtc_udp
        )
    })?;
    let media_ip = config.sip.public_ip.unwrap_or_else(|| {
        let ip = mux.local_addr().ip();
        if ip.is_unspecified() {
            endpoint.advertised_ip()
        } else {
            ip
        }
    });
    let plugins = crate::plugin::PluginChain::load(&config.plugins, None)
        .await
        .map_err(|e| e.to_string())?;
    if !plugins.is_empty() {
        tracing::info!(plugins = ?plugins, pooling = plugins.pooling(), "plugins loaded");
    }
    let plugins = Arc::new(crate::plugin::PluginHost::new(plugins));
    let metrics = crate::call::Metrics::default();
    let cluster = config.cluster.clone().map(|mut c| {
        // Where the other nodes forward the trunks' INVITEs for browsers connected here.
        c.sip_address.get_or_insert_with(|| {
            std::net::SocketAddr::new(endpoint.advertised_ip(), endpoint.udp_addr().port())
                .to_string()
        });
        let cluster =
            crate::cluster::Cluster::new(c, metrics.calls.clone(), trunks.limited_channels());
        tokio::spawn(crate::cluster::run(cluster.clone()));
        plugins.join_cluster(cluster.clone());
        cluster
    });
    let workers = crate::call::workers::MediaWorkers::start(
        &metrics.load,
        config.media.workers,
        Duration::from_millis(config.media.turn_ms.into()),
        Duration::from_micros(config.media.nap_us.into()),
        config.media.io_uring,
        config.media.nice,
    )
    .map_err(|e| format!("cannot start the media worker threads: {e}"))?;
    let calls = Arc::new(CallContext {
        config: config.clone(),
        endpoint: endpoint.clone(),
        trunks: trunks.clone(),
        mux,
        media_ip,
        plugins,
        dtls: crate::rtc::DtlsCertificate::generate()
            .map_err(|e| format!("cannot create the DTLS certificate: {e}"))?,
        cdr: config.cdr_path.clone().map(CdrLog::new),
        metrics,
        draining: tokio::sync::watch::channel(false).0,
        registered: Default::default(),
        parked: Default::default(),
        shutdown: tokio::sync::watch::channel(false).0,
        cluster,
        workers,
    });
    tracing::info!(
        workers = config.media.workers,
        libopus = crate::media::opus::libopus_version(),
        "media workers started"
    );
    tokio::spawn(police_inbound(inbound, sources, calls.clone()));
    calls.metrics.load.configure(
        Duration::from_millis(config.limits.late_tick_ms.into()),
        config.limits.shed_late_pct,
    );
    // Once a second the workers' demand and the calls' tick lateness decide the load level
    // (call::load). The task holds the context weakly: it ends with the gateway.
    let weak = Arc::downgrade(&calls);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.tick().await;
        loop {
            every.tick().await;
            let Some(calls) = weak.upgrade() else { return };
            let level = calls.metrics.load.handle_timeout(calls.media_demand());
            calls
                .workers
                .set_economy(level >= crate::call::load::LoadLevel::Economy);
        }
    });
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| format!("cannot listen for HTTP on {}: {e}", config.http.listen))?;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = match config.http.admin_listen {
        Some(addr) => {
            let admin = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen for the admin HTTP side on {addr}: {e}"))?;
            let bound = admin.local_addr().map_err(|e| e.to_string())?;
            let app = crate::signal::admin_router(calls.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(admin, app).await {
                    tracing::error!(error = %e, "admin HTTP server stopped");
                }
            });
            Some(bound)
        }
        None => None,
    };
    let app = crate::signal::router(calls.clone(), admin_addr.is_none());
    // Signaling messages are small and come in bursts (`answer`, `ringing`, `answered`): with
    // Nagle's algorithm each second write waited for the peer's delayed ACK, adding 40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(Gateway {
        endpoint,
        trunks,
        registrations,
        calls,
        http_addr,
        admin_addr,
    })
}

/// Out-of-dialog requests, which the endpoint lets through from trunk addresses (and the
/// cluster's peers) only (see [`crate::sip::edge`]): INVITEs are offered to browsers; other
/// methods are refused.
async fn police_inbound(
    mut inbound: RequestReceiver,
    sources: HashMap<IpAddr, String>,
    calls: Arc<CallContext>,
) {
    let peers = calls
        .config
        .cluster
        .as_ref()
        .map_or_else(Vec::new, |c| c.peers.clone());
    while let Some(mut incoming) = inbound.recv().await {
        if incoming.request.method == rsip::Method::Invite {
            // Another node's forward names the trunk and its address; only a configured
            // peer is believed, and only for a trunk this node has too.
            let from_peer = peers.iter().any(|p| p.contains(&incoming.source.ip()));
            let arrival = match Forwarded::of(&incoming.request).filter(|_| from_peer) {
                Some(origin) if calls.trunks.config(&origin.trunk).is_some() => {
                    incoming.source = origin.source;
                    incoming.transport = origin.transport;
                    Some((origin.trunk, Arrival::Forwarded))
                }
                _ => sources
                    .get(&incoming.source.ip())
                    .map(|trunk| (trunk.clone(), Arrival::Direct)),
            };
            if let Some((trunk, arrival)) = arrival {
                tokio::spawn(run_inbound(calls.clone(), trunk, *incoming, arrival));
                continue;
            }
        }
        let Some(responder) = incoming.responder else {
            continue;
        };
        let request = &incoming.request;
        let code = match request.method {
            // Only reachable without a trunk list entry for the source (it has none).
            rsip::Method::Invite => 403,
            rsip::Method::Bye | rsip::Method::Info | rsip::Method::Update => 481,
            _ => 405,
        };
        let mut response = response_to(request, code, Some(&random_token()));
        if code == 405 {
            response.headers.push(crate::sip::message::allow_header());
        }
        responder.respond(response);
    }
}
