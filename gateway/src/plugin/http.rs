//! Plugins' HTTP callouts (`http-fetch`): to URLs the operator lists in the plugin's
//! `allow_http` only, each bounded in time, response size and concurrency, through a pooled
//! HTTP/1.1 client over rustls: one shared by all plugins that trust the webpki roots, one of
//! its own for a plugin that also trusts a private CA (`http_ca_file`).
//!
//! A host function of our own WIT rather than `wasi:http`: the plugin gets one blocking call
//! with a whole response and errors in the gateway's terms (`denied`, `busy`, `timeout`,
//! `too-large`), the allowlist is checked before anything is resolved, and the SDK's mock
//! can stand in for it in a plugin's native tests; `wasi:http`'s streams and resources would
//! give plugins nothing they need here at many times the surface.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::bindings::gateway::plugin::host::{HttpError, HttpRequest, HttpResponse};
use super::host::Shared;
use crate::config::HttpPolicy;

/// The largest request body a plugin may send.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Headers a plugin may set on one request.
const MAX_REQUEST_HEADERS: usize = 64;

/// Callout duration histogram bounds, seconds.
pub const DURATION_BUCKETS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// How callouts ended, in the order of [`HttpStats::outcomes`].
pub const OUTCOMES: [&str; 6] = ["ok", "denied", "busy", "timeout", "too_large", "failed"];

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

type HttpClient = Client<Https, Full<Bytes>>;

/// The client of plugins that trust the public roots only.
static PUBLIC: LazyLock<Result<HttpClient, String>> = LazyLock::new(|| client(None));

fn client(ca_file: Option<&std::path::Path>) -> Result<HttpClient, String> {
    let tls = crate::sip::transport::tls_client_config(ca_file)?;
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(32)
        .build(https))
}

/// One plugin's callouts: what it may call, and the client that calls.
pub(super) struct Callouts {
    pub(super) policy: HttpPolicy,
    client: HttpClient,
}

impl std::fmt::Debug for Callouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.policy.fmt(f)
    }
}

impl Callouts {
    /// The policy's client: the shared one, or one that also trusts its `http_ca_file`.
    pub(super) fn new(policy: &HttpPolicy) -> Result<Callouts, String> {
        let client = match &policy.ca_file {
            None => PUBLIC.clone()?,
            Some(path) => client(Some(path))?,
        };
        Ok(Callouts {
            policy: policy.clone(),
            client,
        })
    }
}

/// One plugin's callouts, for `/metrics`, and how many are in flight.
#[derive(Debug, Default)]
pub struct HttpStats {
    in_flight: AtomicUsize,
    /// By outcome, as [`OUTCOMES`] names them.
    pub outcomes: [AtomicU64; 6],
    /// Callouts that were sent, by duration ([`DURATION_BUCKETS`]; longer ones in none).
    pub buckets: [AtomicU64; 9],
    /// Callouts that were sent (not `denied` or `busy`), whatever their duration.
    pub sent: AtomicU64,
    /// Their total duration, µs.
    pub sum_us: AtomicU64,
}

impl HttpStats {
    fn record(&self, result: &Result<HttpResponse, HttpError>, sent: Option<Duration>) {
        let outcome = match result {
            Ok(_) => 0,
            Err(HttpError::Denied(_)) => 1,
            Err(HttpError::Busy) => 2,
            Err(HttpError::Timeout) => 3,
            Err(HttpError::TooLarge) => 4,
            Err(HttpError::Failed(_)) => 5,
        };
        self.outcomes[outcome].fetch_add(1, Ordering::Relaxed);
        if let Some(took) = sent {
            self.sent.fetch_add(1, Ordering::Relaxed);
            let seconds = took.as_secs_f64();
            if let Some(bucket) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
                self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            }
            self.sum_us
                .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

/// Holds one of the plugin's `http_max_concurrent` places until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Makes `request` for a plugin, if its policy allows the URL, within its timeout and the
/// running hook's `deadline`, whichever comes first; counts how it ended.
pub(super) async fn fetch(
    plugin: &Shared,
    callouts: &Callouts,
    deadline: Instant,
    request: HttpRequest,
) -> Result<HttpResponse, HttpError> {
    let (result, took) = attempt(plugin, callouts, deadline, request).await;
    if let Err(e) = &result {
        tracing::debug!(plugin = %plugin.name, error = ?e, "plugin HTTP request failed or refused");
    }
    plugin.http.record(&result, took);
    result
}

/// The callout itself, and how long it took if it was sent.
async fn attempt(
    plugin: &Shared,
    callouts: &Callouts,
    deadline: Instant,
    request: HttpRequest,
) -> (Result<HttpResponse, HttpError>, Option<Duration>) {
    let policy = &callouts.policy;
    let prepared = match prepare(policy, request) {
        Ok(prepared) => prepared,
        Err(e) => return (Err(e), None),
    };
    let in_flight = &plugin.http.in_flight;
    if !super::host::take_one(in_flight, policy.max_concurrent as usize) {
        return (Err(HttpError::Busy), None);
    }
    let _place = InFlight(in_flight);
    let started = Instant::now();
    let limit = policy
        .timeout
        .min(deadline.saturating_duration_since(started));
    let sent = send(&callouts.client, prepared, policy.max_response_bytes);
    let result = match tokio::time::timeout(limit, sent).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout),
    };
    (result, Some(started.elapsed()))
}

/// Checks a plugin's request against its policy and the HTTP grammar; nothing is resolved
/// or sent before it passes.
fn prepare(
    policy: &HttpPolicy,
    request: HttpRequest,
) -> Result<hyper::Request<Full<Bytes>>, HttpError> {
    let denied = |why: String| Err(HttpError::Denied(why));
    let method = match request.method.to_ascii_uppercase().as_str() {
        "GET" => hyper::Method::GET,
        "POST" => hyper::Method::POST,
        "PUT" => hyper::Method::PUT,
        "PATCH" => hyper::Method::PATCH,
        "DELETE" => hyper::Method::DELETE,
        "HEAD" => hyper::Method::HEAD,
        other => return denied(format!("method `{}` is not allowed", cut(other))),
    };
    let url = match url::Url::parse(&request.url) {
        Ok(url) => url,
        Err(e) => {
            return denied(format!(
                "`{}` is not an absolute URL: {e}",
                cut(&request.url)
            ));
        }
    };
    if !policy.allow.iter().any(|p| p.allows(&url)) {
        return denied(format!(
            "`{}` is not in this plugin's allow_http",
            cut(url.as_str())
        ));
    }
    if request.body.len() > MAX_REQUEST_BODY {
        return denied(format!(
            "the request body is {} bytes; at most {MAX_REQUEST_BODY}",
            request.body.len()
        ));
    }
    if request.headers.len() > MAX_REQUEST_HEADERS {
        return denied(format!("more than {MAX_REQUEST_HEADERS} headers"));
    }
    let uri: hyper::Uri = match url.as_str().parse() {
        Ok(uri) => uri,
        Err(e) => return denied(format!("`{}`: {e}", cut(url.as_str()))),
    };
    let mut out = hyper::Request::builder().method(method).uri(uri);
    let mut agent = false;
    for (name, value) in &request.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return denied(format!("header `{}` is not valid HTTP", cut(name)));
        };
        // Framing and routing are the host's: a plugin must not smuggle a second request
        // or reach another host through the allowed one.
        if matches!(
            name.as_str(),
            "host"
                | "content-length"
                | "connection"
                | "transfer-encoding"
                | "te"
                | "upgrade"
                | "keep-alive"
                | "proxy-authorization"
                | "proxy-connection"
                | "trailer"
        ) {
            return denied(format!("header `{name}` is set by the gateway"));
        }
        agent |= name == hyper::header::USER_AGENT;
        out = out.header(name, value);
    }
    if !agent {
        out = out.header(hyper::header::USER_AGENT, "webrtc-sip-gateway-plugin");
    }
    out.body(Full::new(Bytes::from(request.body)))
        .or_else(|e| denied(e.to_string()))
}

/// Sends a checked request and reads the whole response, refusing a body over `max`.
async fn send(
    client: &HttpClient,
    request: hyper::Request<Full<Bytes>>,
    max: usize,
) -> Result<HttpResponse, HttpError> {
    let response = client
        .request(request)
        .await
        .map_err(|e| HttpError::Failed(chain(&e)))?;
    let (parts, body) = response.into_parts();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(HttpError::TooLarge);
    }
    let body = Limited::new(body, max).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            HttpError::TooLarge
        } else {
            HttpError::Failed(format!("reading the response: {e}"))
        }
    })?;
    Ok(HttpResponse {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_bytes().to_vec(),
    })
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: …").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A plugin-supplied text, cut for an error message.
fn cut(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UrlPattern;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on loopback that answers every request with `reply` (or never, if empty).
    async fn server(reply: &'static [u8]) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    if reply.is_empty() {
                        let _ = stream.read(&mut buf).await;
                    } else {
                        let _ = stream.write_all(reply).await;
                    }
                });
            }
        });
        port
    }

    fn policy(port: u16) -> HttpPolicy {
        HttpPolicy {
            allow: vec![UrlPattern::parse(&format!("http://127.0.0.1:{port}/*")).unwrap()],
            timeout: Duration::from_millis(300),
            max_response_bytes: 100,
            max_concurrent: 1,
            ca_file: None,
        }
    }

    fn callouts(port: u16) -> Callouts {
        Callouts::new(&policy(port)).unwrap()
    }

    fn get(url: String) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            url,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn a_response_comes_back_whole_and_a_large_one_is_refused() {
        let shared = Shared::new("t");
        let ok = server(b"HTTP/1.1 201 Created\r\nx-a: b\r\ncontent-length: 2\r\n\r\nhi").await;
        let answer = fetch(
            &shared,
            &callouts(ok),
            later(),
            get(format!("http://127.0.0.1:{ok}/x")),
        )
        .await
        .unwrap();
        assert_eq!((answer.status, answer.body.as_slice()), (201, &b"hi"[..]));
        assert!(answer.headers.contains(&("x-a".into(), "b".into())));
        let big: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(500))
                .into_bytes()
                .into_boxed_slice(),
        );
        let big = server(big).await;
        let answer = fetch(
            &shared,
            &callouts(big),
            later(),
            get(format!("http://127.0.0.1:{big}/")),
        )
        .await;
        assert!(matches!(answer, Err(HttpError::TooLarge)), "{answer:?}");
        assert_eq!(shared.http.outcomes[0].load(Ordering::Relaxed), 1);
        assert_eq!(shared.http.outcomes[4].load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn one_in_flight_makes_the_next_busy_and_silence_times_out() {
        let shared = Shared::new("t");
        let port = server(b"").await;
        let p = callouts(port);
        let url = format!("http://127.0.0.1:{port}/slow");
        let (first, second) = tokio::join!(fetch(&shared, &p, later(), get(url.clone())), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            fetch(&shared, &p, later(), get(url.clone())).await
        });
        assert!(matches!(first, Err(HttpError::Timeout)), "{first:?}");
        assert!(matches!(second, Err(HttpError::Busy)), "{second:?}");
        // The hook's deadline cuts a callout before its own timeout.
        let started = Instant::now();
        let cut = fetch(&shared, &p, started + Duration::from_millis(50), get(url)).await;
        assert!(matches!(cut, Err(HttpError::Timeout)));
        assert!(started.elapsed() < Duration::from_millis(250));
    }

    #[tokio::test]
    async fn https_is_verified_against_the_public_roots_and_the_plugins_own_ca() {
        let dir = std::env::temp_dir().join(format!("plugin-https-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let (ca, key) = (dir.join("ca.pem"), dir.join("key.pem"));
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
        let tls = crate::sip::transport::tls_server_config(&ca, &key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        let shared = Shared::new("t");
        let mut p = policy(port);
        p.allow = vec![UrlPattern::parse(&format!("https://127.0.0.1:{port}/*")).unwrap()];
        let url = format!("https://127.0.0.1:{port}/customer");
        let public = Callouts::new(&p).unwrap();
        let refused = fetch(&shared, &public, later(), get(url.clone())).await;
        assert!(
            matches!(&refused, Err(HttpError::Failed(why)) if why.contains("certificate")),
            "a server the public roots do not vouch for is refused: {refused:?}"
        );
        p.ca_file = Some(ca);
        let private = Callouts::new(&p).unwrap();
        let answer = fetch(&shared, &private, later(), get(url)).await.unwrap();
        assert_eq!(answer.body, b"secret");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn requests_outside_the_policy_or_the_grammar_are_denied_before_sending() {
        let p = policy(8080);
        let denied = |request: HttpRequest| match prepare(&p, request) {
            Err(HttpError::Denied(why)) => why,
            other => panic!("not denied: {other:?}"),
        };
        assert!(denied(get("http://127.0.0.1:8081/".into())).contains("allow_http"));
        assert!(denied(get("/relative".into())).contains("absolute URL"));
        let mut smuggle = get("http://127.0.0.1:8080/".into());
        smuggle.headers = vec![("Transfer-Encoding".into(), "chunked".into())];
        assert!(denied(smuggle).contains("set by the gateway"));
        let mut split = get("http://127.0.0.1:8080/".into());
        split.headers = vec![("x-a".into(), "b\r\nhost: evil".into())];
        assert!(denied(split).contains("not valid HTTP"));
        let mut method = get("http://127.0.0.1:8080/".into());
        method.method = "CONNECT".into();
        assert!(denied(method).contains("CONNECT"));
        assert!(prepare(&p, get("http://127.0.0.1:8080/ok".into())).is_ok());
    }
}
