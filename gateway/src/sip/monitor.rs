//! Trunk upkeep: REGISTER for registration-based trunks and OPTIONS health checks. Thin
//! tokio tasks around [`super::registration::Registration`] and the endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{Header, Method, Request};
use tokio::sync::watch;

use super::endpoint::Endpoint;
use super::message;
use super::registration::{Registration, RegistrationState, RegistrationStep};
use super::transaction::ClientEvent;
use super::transport::split_host_port;
use super::trunks::Trunks;

/// Registration state per trunk name, updated as it changes.
pub type RegistrationStates = watch::Receiver<BTreeMap<String, RegistrationState>>;

/// Waits for the final response of a client transaction (`None` on timeout).
async fn final_response(
    mut events: tokio::sync::mpsc::Receiver<ClientEvent>,
) -> Option<rsip::Response> {
    loop {
        match events.recv().await? {
            ClientEvent::Response(r) if r.status_code.code() >= 200 => return Some(r),
            ClientEvent::Response(_) => continue,
            ClientEvent::Timeout => return None,
        }
    }
}

/// Starts one registration task per trunk with `register = true`.
pub fn spawn_registrations(endpoint: &Endpoint, trunks: &Arc<Trunks>) -> RegistrationStates {
    let registering: Vec<String> = trunks
        .names()
        .into_iter()
        .filter(|n| trunks.config(n).is_some_and(|c| c.register))
        .collect();
    let initial = registering
        .iter()
        .map(|n| (n.clone(), RegistrationState::Pending))
        .collect();
    let (tx, rx) = watch::channel(initial);
    for name in registering {
        let endpoint = endpoint.clone();
        let trunks = trunks.clone();
        let tx = tx.clone();
        tokio::spawn(async move { register_loop(endpoint, trunks, name, tx).await });
    }
    rx
}

async fn register_loop(
    endpoint: Endpoint,
    trunks: Arc<Trunks>,
    name: String,
    states: watch::Sender<BTreeMap<String, RegistrationState>>,
) {
    let Some(config) = trunks.config(&name).cloned() else {
        return;
    };
    let Some(address) = config.addresses.first().cloned() else {
        return;
    };
    let Some((host, port)) = split_host_port(&address, config.transport) else {
        return;
    };
    let domain = config.from_domain.clone().unwrap_or_else(|| {
        if port == 5060 || port == 5061 {
            host.clone()
        } else {
            format!("{host}:{port}")
        }
    });
    let user = config
        .credentials
        .as_ref()
        .map_or(config.from_user.clone(), |c| c.username.clone());
    let mut registration = Registration::new(
        &user,
        &domain,
        config.credentials.clone(),
        config.register_expires,
        Instant::now(),
    );
    loop {
        if let Some(at) = registration.poll_timeout() {
            tokio::time::sleep_until(at.into()).await;
        }
        let Some(target) = trunks.target(&config, &address).await else {
            tracing::warn!(trunk = %name, %address, "cannot resolve registrar; retrying in 30 s");
            registration.handle_transaction_timeout(Instant::now());
            continue;
        };
        let request = registration.request(
            endpoint.via(config.transport, &message::new_branch()),
            &endpoint.contact_uri(&user, config.transport),
        );
        let outcome = final_response(endpoint.request(request.clone(), target)).await;
        let now = Instant::now();
        let step = match outcome {
            Some(response) => registration.handle_response(&request, &response, now),
            None => {
                registration.handle_transaction_timeout(now);
                RegistrationStep::Wait
            }
        };
        if step == RegistrationStep::Wait {
            match &registration.state {
                RegistrationState::Failed { code } => {
                    tracing::warn!(trunk = %name, code, "registration failed; will retry")
                }
                state => tracing::info!(trunk = %name, ?state, "registration updated"),
            }
            states.send_modify(|m| {
                m.insert(name.clone(), registration.state.clone());
            });
        }
    }
}

/// Starts an OPTIONS probe (RFC 3261 §11) for every address of every trunk with a non-zero
/// `options_interval`. An address answering with anything but 5xx is up; silence or 5xx
/// marks it down, and calls skip it until it answers again.
pub fn spawn_health_checks(endpoint: &Endpoint, trunks: &Arc<Trunks>) {
    for name in trunks.names() {
        let Some(config) = trunks.config(&name).cloned() else {
            continue;
        };
        if config.options_interval == 0 {
            continue;
        }
        for address in config.addresses.clone() {
            let endpoint = endpoint.clone();
            let trunks = trunks.clone();
            let config = config.clone();
            tokio::spawn(async move {
                let interval = Duration::from_secs(config.options_interval as u64);
                loop {
                    let up = match trunks.target(&config, &address).await {
                        Some(target) => {
                            let host = target.host.clone();
                            let request = options_request(
                                &endpoint,
                                &config.from_user,
                                &host,
                                target.addr.port(),
                                config.transport,
                            );
                            final_response(endpoint.request(request, target))
                                .await
                                .is_some_and(|r| r.status_code.code() < 500)
                        }
                        None => false,
                    };
                    if trunks.set_health(&config.name, &address, up) {
                        tracing::warn!(trunk = %config.name, %address, up, "trunk address health changed");
                    }
                    tokio::time::sleep(interval).await;
                }
            });
        }
    }
}

fn options_request(
    endpoint: &Endpoint,
    user: &str,
    host: &str,
    port: u16,
    transport: super::transport::Transport,
) -> Request {
    let uri = rsip::Uri::try_from(format!("sip:{host}:{port}")).unwrap_or_default();
    let mut headers = rsip::Headers::default();
    headers.push(endpoint.via(transport, &message::new_branch()));
    headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("70")));
    headers.push(Header::From(rsip::headers::From::new(format!(
        "<sip:{user}@{host}>;tag={}",
        message::random_token()
    ))));
    headers.push(Header::To(rsip::headers::To::new(format!(
        "<sip:{host}:{port}>"
    ))));
    headers.push(Header::CallId(rsip::headers::CallId::new(format!(
        "{}@gateway",
        message::random_token()
    ))));
    headers.push(
        rsip::typed::CSeq {
            seq: 1,
            method: Method::Options,
        }
        .into(),
    );
    headers.push(Header::Other("Accept".into(), "application/sdp".into()));
    Request {
        method: Method::Options,
        uri,
        version: rsip::Version::V2,
        headers,
        body: vec![],
    }
}
