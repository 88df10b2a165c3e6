//! What the gateway offers a plugin: logging, counters on `/metrics`, a key-value store shared
//! by the plugin's instances (with expiry), the time, and HTTP requests to the URLs the
//! operator allows. Inside the gateway these are host calls; in a native build (a plugin's
//! `cargo test`) they go to the [`mock`](crate::mock).

use crate::{HttpError, HttpRequest, HttpResponse, Level};

#[cfg(target_arch = "wasm32")]
use crate::bindings::gateway::plugin::host as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::mock::host as imp;

/// Writes to the gateway's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// Adds to the counter `gateway_plugin_counter{plugin, name}`.
pub fn counter(name: &str, delta: u64) {
    imp::counter(name, delta)
}

/// The value under `key`, unless missing or expired.
pub fn kv_get(key: &str) -> Option<String> {
    imp::kv_get(key)
}

/// Stores `value` under `key`, forgotten after `ttl_seconds` if given.
pub fn kv_set(key: &str, value: &str, ttl_seconds: Option<u32>) {
    imp::kv_set(key, value, ttl_seconds)
}

/// Adds `delta` to the integer under `key` (missing counts as 0) and returns the result; the
/// TTL, if given, restarts.
pub fn kv_incr(key: &str, delta: i64, ttl_seconds: Option<u32>) -> i64 {
    imp::kv_incr(key, delta, ttl_seconds)
}

/// Seconds since the Unix epoch.
pub fn now_seconds() -> u64 {
    imp::now_seconds()
}

/// Makes an HTTP(S) request and waits for the whole response. The gateway sends it only if
/// the plugin's `allow_http` setting lists the URL (else [`HttpError::Denied`]), and gives up
/// after the plugin's `http_timeout_ms` ([`HttpError::Timeout`]). The hook's own deadline
/// keeps running meanwhile.
pub fn http_fetch(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
    imp::http_fetch(request)
}

/// `GET url` with `headers`: [`http_fetch`] for the common case.
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, HttpError> {
    http_fetch(&HttpRequest {
        method: "GET".into(),
        url: url.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: Vec::new(),
    })
}
