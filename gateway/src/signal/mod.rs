//! The HTTP side: `/ws` signaling (see [`protocol`]), `/healthz`, `/metrics`, the admin
//! API (`POST /admin/plugins/reload`), and the web demo (`/`) with its widget (`/widget.js`). Knows no SIP: calls are handed to [`crate::call`].

mod admission;
mod calls;
mod metrics;
mod outbox;
pub mod protocol;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::call::{CallCommand, CallContext, ConnectionEvent, Outbound, start_outbound};
use crate::config::RegisterConflict;
use crate::media::dtmf::validate_digits;
use crate::token::{self, Claims};
use admission::{admit, authorize, signed_in_or_anonymous};
use protocol::{ClientMessage, ErrorCode, ServerMessage, VERSION};

/// The public router: signaling, the demo page and widget, `/healthz`; with `admin`, also
/// `/metrics` and `/admin/*` (when `[http] admin_listen` does not serve them apart).
pub fn router(ctx: Arc<CallContext>, admin: bool) -> Router {
    let public = Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/", get(demo_page))
        .route("/widget.js", get(widget));
    let public = if admin {
        public.merge(admin_routes())
    } else {
        public
    };
    public.with_state(ctx)
}

/// `/metrics`, `/admin/*` and `/healthz` alone, for `[http] admin_listen`.
pub fn admin_router(ctx: Arc<CallContext>) -> Router {
    admin_routes()
        .route("/healthz", get(healthz))
        .with_state(ctx)
}

fn admin_routes() -> Router<Arc<CallContext>> {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/admin/plugins/reload", post(reload_plugins))
}

/// The demo page (`web-demo/index.html`), built into the binary so one file is the product.
async fn demo_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../../web-demo/index.html"),
    )
        .into_response()
}

/// The embeddable widget (`web-demo/widget.js`). Sites load it from another origin, so it is
/// served to any (it holds no secret); short caching so fixes reach visitors.
async fn widget() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        include_str!("../../../web-demo/widget.js"),
    )
        .into_response()
}

/// `POST /admin/plugins/reload` with `Authorization: Bearer <http.admin_token>`: new calls
/// use the plugins as the configuration file now lists them; running calls keep theirs.
async fn reload_plugins(headers: HeaderMap, State(ctx): State<Arc<CallContext>>) -> Response {
    let Some(expected) = &ctx.config.http.admin_token else {
        return (
            StatusCode::NOT_FOUND,
            "the admin API is off: set http.admin_token_env or http.admin_token_file\n",
        )
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token::constant_time_eq(given.as_bytes(), expected) {
        return (
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <admin token>`\n",
        )
            .into_response();
    }
    match ctx.plugins.reload_file(ctx.config.source.clone()).await {
        Ok(names) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "reloaded": names })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({ "error": e, "running": "unchanged" })),
        )
            .into_response(),
    }
}

async fn healthz(State(ctx): State<Arc<CallContext>>) -> Response {
    if ctx.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if let Some(why) = ctx.media_full() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("overloaded: {why}; new calls are refused\n"),
        )
            .into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn ws(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(ctx): State<Arc<CallContext>>,
) -> Response {
    let allowed = &ctx.config.http.allowed_origins;
    // Browsers always send Origin on WebSocket upgrades, so a page that is not on the list
    // is refused before any call can be attempted (cross-site WebSocket hijacking). A client
    // without Origin is not a browser (a backend, the load generator): tokens still apply.
    if let Some(origin) = headers.get(header::ORIGIN)
        && !allowed.is_empty()
    {
        let origin = origin.to_str().unwrap_or("");
        if !allowed.iter().any(|a| a == origin) {
            return (
                StatusCode::FORBIDDEN,
                format!("origin `{origin}` is not allowed; add it to [http] allowed_origins\n"),
            )
                .into_response();
        }
    }
    // Signaling is a handful of small JSON messages per call (an SDP offer is a few KiB), so
    // the library's 128 KiB read and write buffers per connection were most of a call's
    // memory (measured: 0.39 MB per call before); 64 KiB bounds any one message.
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(MAX_SIGNAL_MESSAGE)
        .max_frame_size(MAX_SIGNAL_MESSAGE)
        .on_upgrade(move |socket| connection(socket, ctx))
}

/// The largest signaling message accepted; a larger one drops the connection (its calls end
/// as if the browser had gone) and is logged.
const MAX_SIGNAL_MESSAGE: usize = 64 * 1024;

fn error(code: ErrorCode, message: impl Into<String>, call_id: Option<&str>) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        call_id: call_id.map(str::to_owned),
    }
}

/// The error for a message naming a call this connection does not own.
fn no_such_call(call_id: &str) -> ServerMessage {
    error(
        ErrorCode::NoSuchCall,
        format!("no call `{call_id}` on this connection"),
        Some(call_id),
    )
}

/// The identity a connection registered: removed from the table when the connection ends,
/// however it ends, unless another connection has taken it since.
struct Registration {
    ctx: Arc<CallContext>,
    identity: String,
    calls: mpsc::UnboundedSender<crate::call::OfferedCall>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registered = self
            .ctx
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if registered
            .get(&self.identity)
            .is_some_and(|r| r.calls.same_channel(&self.calls))
        {
            registered.remove(&self.identity);
            if let Some(cluster) = &self.ctx.cluster {
                cluster.unregister(&self.identity);
            }
        }
    }
}

async fn connection(socket: WebSocket, ctx: Arc<CallContext>) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut out_rx) = outbox::Outbox::new();
    let writer = tokio::spawn(async move {
        while let Some(text) = out_rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
    });
    let auth_required = !ctx.config.http.anonymous;
    // TURN credentials go to whoever may call: everyone in anonymous mode, token holders
    // otherwise (with `authenticated`), so a stranger gets no relay from a closed gateway.
    let ice_servers = if auth_required {
        Vec::new()
    } else {
        ctx.config
            .ice_servers
            .for_client("anonymous", std::time::SystemTime::now())
    };
    out.send(ServerMessage::Hello {
        version: VERSION,
        auth_required,
        ice_servers,
    });
    let mut claims: Option<Claims> = None;
    let mut calls = calls::ConnectionCalls::default();
    // Inbound calls for an identity this connection registered arrive here.
    let (offered_tx, mut offered) = mpsc::unbounded_channel::<crate::call::OfferedCall>();
    // Every call of this connection reports here; the events become wire messages.
    let (call_events, mut call_event_rx) = mpsc::unbounded_channel::<ConnectionEvent>();
    let (replaced_tx, mut replaced) = mpsc::unbounded_channel::<String>();
    let mut registration: Option<Registration> = None;
    let mut drain = ctx.draining.subscribe();
    // A running preflight ends by itself at this instant: one at a time per connection.
    let mut preflight_until: Option<std::time::Instant> = None;
    loop {
        if out.overflowed() {
            tracing::info!(
                waiting = outbox::OUTBOX,
                "signaling connection closed: its client stopped reading its messages"
            );
            break;
        }
        let frame = tokio::select! {
            frame = stream.next() => match frame {
                Some(frame) => frame,
                None => break,
            },
            Some(call) = offered.recv() => {
                let (call_id, commands, events) = *call;
                calls.insert(call_id, commands, events);
                continue;
            }
            Some(item) = call_event_rx.recv() => {
                let (call_id, event) = *item;
                // An inbound call's `incoming` may overtake the call itself (two channels).
                while let Ok(call) = offered.try_recv() {
                    let (id, commands, events) = *call;
                    calls.insert(id, commands, events);
                }
                if let Some(mut message) = protocol::from_call_event(call_id, event) {
                    if let ServerMessage::Incoming { call_id, resume_token, .. } = &mut message {
                        *resume_token = calls.token(call_id).unwrap_or_default().to_string();
                    }
                    out.send(message);
                }
                continue;
            }
            // Draining: a registered browser is told to take its inbound calls to another
            // node (through the load balancer), and this one stops ringing it.
            Ok(()) = drain.changed(), if registration.is_some() => {
                if *drain.borrow() && let Some(r) = registration.take() {
                    out.send(ServerMessage::Reconnect {
                        identity: r.identity.clone(),
                        reason: "this gateway is shutting down; connect again and register".into(),
                    });
                }
                continue;
            }
            Some(identity) = replaced.recv() => {
                out.send(ServerMessage::Unregistered {
                    identity,
                    reason: "another connection registered this identity".into(),
                });
                continue;
            }
        };
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => {
                out.send(error(
                    ErrorCode::BadJson,
                    "binary frames are not part of the protocol; send JSON text",
                    None,
                ));
                continue;
            }
            Ok(Message::Close(_)) => break,
            // A message over the size limit, or a broken connection.
            Err(e) => {
                tracing::info!(error = %e, "signaling connection dropped");
                break;
            }
            Ok(_) => continue,
        };
        calls.retain_live();
        let message = match protocol::parse(&text) {
            Ok(m) => m,
            Err((code, why)) => {
                out.send(error(code, why, None));
                continue;
            }
        };
        // A token is good until its `exp`, not until the socket closes: every use checks it
        // again, and a client sends `auth` with a fresh token to go on.
        if matches!(
            message,
            ClientMessage::Call { .. }
                | ClientMessage::Register { .. }
                | ClientMessage::Preflight { .. }
        ) && claims
            .as_ref()
            .is_some_and(|c| c.exp <= crate::wall::unix_secs())
        {
            claims = None;
            out.send(error(
                ErrorCode::Unauthorized,
                "the token has expired; send `auth` with a fresh token and try again",
                None,
            ));
            continue;
        }
        match message {
            ClientMessage::Auth { token } => match &ctx.config.http.tokens {
                None => {
                    out.send(error(
                        ErrorCode::Unauthorized,
                        "this gateway has no token secret configured",
                        None,
                    ));
                }
                Some(tokens) => match tokens.verify(&token, crate::wall::unix_secs()) {
                    Ok(c) => {
                        out.send(ServerMessage::Authenticated {
                            subject: c.sub.clone(),
                            ice_servers: ctx
                                .config
                                .ice_servers
                                .for_client(&c.sub, std::time::SystemTime::now()),
                        });
                        claims = Some(c);
                    }
                    Err(e) => {
                        out.send(error(ErrorCode::Unauthorized, e.to_string(), None));
                    }
                },
            },
            ClientMessage::Call { to, sdp } => {
                let (trunk, number) = match authorize(&ctx, claims.as_ref(), &to) {
                    Ok(route) => route,
                    Err((code, why)) => {
                        out.send(error(code, why, None));
                        continue;
                    }
                };
                let slot = match admit(&ctx, calls.live()) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        out.send(*refusal);
                        continue;
                    }
                };
                let call_id = format!("c-{}", crate::sip::message::random_token());
                let from = claims
                    .as_ref()
                    .map_or("anonymous".to_string(), |c| c.sub.clone());
                let call = Outbound {
                    call_id: call_id.clone(),
                    from,
                    to,
                    trunk,
                    number,
                };
                let (commands, command_rx) = crate::call::command_channel();
                let events = crate::call::EventSink::new(call_events.clone());
                match start_outbound(&ctx, slot, call, &sdp, events.clone(), command_rx) {
                    Ok(answer) => {
                        let resume_token = calls.insert(call_id.clone(), commands, events);
                        out.send(ServerMessage::Answer {
                            call_id,
                            sdp: answer,
                            resume_token,
                        });
                    }
                    Err(e) => {
                        out.send(error(ErrorCode::BadSdp, e.to_string(), None));
                    }
                }
            }
            ClientMessage::Preflight { sdp } => {
                if let Err((code, why)) = signed_in_or_anonymous(&ctx, claims.as_ref()) {
                    out.send(error(code, why, None));
                    continue;
                }
                if preflight_until.is_some_and(|t| t > std::time::Instant::now()) {
                    out.send(error(
                        ErrorCode::LimitReached,
                        "a preflight is running on this connection already; wait for it to end",
                        None,
                    ));
                    continue;
                }
                let started = admit(&ctx, calls.live()).and_then(|slot| {
                    crate::call::start_preflight(&ctx, slot, &sdp)
                        .map_err(|e| Box::new(error(ErrorCode::BadSdp, e.to_string(), None)))
                });
                match started {
                    Ok(answer) => {
                        let seconds = crate::call::PREFLIGHT_SECONDS;
                        preflight_until = Some(
                            std::time::Instant::now() + std::time::Duration::from_secs(seconds),
                        );
                        out.send(ServerMessage::PreflightAnswer {
                            sdp: answer,
                            seconds,
                        });
                    }
                    Err(refusal) => {
                        out.send(*refusal);
                    }
                }
            }
            ClientMessage::Register { .. } if ctx.is_draining() => {
                out.send(error(
                    ErrorCode::Draining,
                    "this gateway is shutting down; connect again and register on another",
                    None,
                ));
            }
            ClientMessage::Register { identity: wanted } => {
                // Taking someone's inbound calls needs proof of being them: a token whose
                // subject is the identity, anonymous mode or not (anonymous is for calling
                // demo targets).
                let Some(c) = &claims else {
                    out.send(error(
                        ErrorCode::Unauthorized,
                        "`register` needs a token: send `auth` first",
                        None,
                    ));
                    continue;
                };
                if c.sub != wanted {
                    out.send(error(ErrorCode::Forbidden, format!("this connection may not take calls for `{wanted}`; register as the token's subject"), None));
                    continue;
                }
                let entry = crate::call::Registered {
                    events: call_events.clone(),
                    calls: offered_tx.clone(),
                    replaced: replaced_tx.clone(),
                };
                let displaced = {
                    let mut registered = ctx.registered.lock().unwrap_or_else(|e| e.into_inner());
                    let current = registered
                        .get(&wanted)
                        .filter(|r| !r.calls.same_channel(&offered_tx) && !r.calls.is_closed())
                        .cloned();
                    if current.is_some()
                        && ctx.config.http.register_conflict == RegisterConflict::Refuse
                    {
                        drop(registered);
                        out.send(error(
                            ErrorCode::Conflict,
                            format!(
                                "`{wanted}` is registered on another connection; close it first"
                            ),
                            None,
                        ));
                        continue;
                    }
                    registered.insert(wanted.clone(), entry);
                    if let Some(cluster) = &ctx.cluster {
                        cluster.register(&wanted);
                    }
                    current
                };
                if let Some(previous) = displaced {
                    let _ = previous.replaced.send(wanted.clone());
                }
                out.send(ServerMessage::Registered {
                    identity: wanted.clone(),
                });
                if registration.as_ref().map(|r| &r.identity) != Some(&wanted) {
                    registration = Some(Registration {
                        ctx: ctx.clone(),
                        identity: wanted,
                        calls: offered_tx.clone(),
                    });
                }
            }
            ClientMessage::Answer { call_id, sdp } => {
                if let Err(e) = calls.command(&call_id, CallCommand::Answer(sdp)) {
                    out.send(*e);
                }
            }
            ClientMessage::Renegotiate { call_id, sdp } => {
                if let Err(e) = calls.command(&call_id, CallCommand::Renegotiate(sdp)) {
                    out.send(*e);
                }
            }
            ClientMessage::Dtmf { call_id, digits } => {
                let sent = match validate_digits(&digits) {
                    Err(bad) => Err(Box::new(error(
                        ErrorCode::BadMessage,
                        format!("`{bad}` is not a DTMF digit; use 0-9, *, #, A-D"),
                        Some(&call_id),
                    ))),
                    Ok(()) => calls.command(&call_id, CallCommand::Dtmf(digits)),
                };
                if let Err(e) = sent {
                    out.send(*e);
                }
            }
            ClientMessage::Hold { call_id } => {
                if let Err(e) = calls.command(&call_id, CallCommand::Hold(true)) {
                    out.send(*e);
                }
            }
            ClientMessage::Unhold { call_id } => {
                if let Err(e) = calls.command(&call_id, CallCommand::Hold(false)) {
                    out.send(*e);
                }
            }
            ClientMessage::Transfer { call_id, to } => {
                if !calls.contains(&call_id) {
                    out.send(no_such_call(&call_id));
                    continue;
                }
                // The same checks as a `call`: a target the token allows, or a number
                // only with a token that allows numbers.
                match authorize(&ctx, claims.as_ref(), &to) {
                    Ok((_, number)) => {
                        if let Err(e) = calls.command(&call_id, CallCommand::Transfer(number)) {
                            out.send(*e);
                        }
                    }
                    Err((code, why)) => {
                        out.send(error(code, why, Some(&call_id)));
                    }
                }
            }
            // Needs no `auth`: the token given with the call is the proof.
            ClientMessage::Resume { call_id, token } => match ctx.parked.resume(&call_id, &token) {
                Ok(parked) => {
                    tracing::info!(%call_id, "call resumed on a new connection");
                    out.send(ServerMessage::Resumed {
                        call_id: call_id.clone(),
                    });
                    parked.events.attach(call_events.clone());
                    calls.adopt(call_id, parked.commands, parked.events, parked.token);
                }
                Err(e) => {
                    out.send(error(
                        ErrorCode::ResumeRefused,
                        e.to_string(),
                        Some(&call_id),
                    ));
                }
            },
            ClientMessage::Hangup { call_id } => match calls.remove(&call_id) {
                Some(tx) => {
                    // With its queue full the call still ends: `tx` is dropped here.
                    let _ = tx.try_send(CallCommand::Hangup);
                }
                None => {
                    out.send(no_such_call(&call_id));
                }
            },
        }
    }
    drop(registration);
    // The page went away without hanging up: its calls wait for it to come back and
    // `resume` them, or end (BYE after answer, CANCEL before).
    calls.close(
        &ctx.parked,
        std::time::Duration::from_secs(ctx.config.http.resume_seconds.into()),
    );
    if out.overflowed() {
        // The writer waits on a window the client does not open: drop the socket.
        writer.abort();
    } else {
        drop(out);
        let _ = writer.await;
    }
}
