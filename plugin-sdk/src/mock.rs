//! A native stand-in for the gateway, so a plugin's `cargo test` runs its hooks, key-value
//! store and counters without wasm. State is per test thread (Rust runs each test on its own
//! thread), so tests do not see each other's keys.
//!
//! ```ignore
//! use gateway_plugin_sdk::{mock, Plugin};
//! mock::set_now(1_700_000_000);
//! let mut plugin = MyPlugin::init(r#"{"limit": 2}"#).unwrap();
//! let verdict = plugin.on_call_start(&mock::call("alice", "+4930123"));
//! assert_eq!(mock::counter("calls"), 1);
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::{CallInfo, Direction, HttpError, HttpRequest, HttpResponse, Level};

#[derive(Default)]
struct MockHost {
    /// Answers by method and URL.
    http: HashMap<(String, String), Result<HttpResponse, HttpError>>,
    /// Requests the plugin made, oldest first.
    http_sent: Vec<HttpRequest>,
    logs: Vec<(Level, String)>,
    counters: BTreeMap<String, u64>,
    /// value and expiry (mock seconds)
    kv: HashMap<String, (String, Option<u64>)>,
    now: Option<u64>,
    data_dir: Option<PathBuf>,
}

thread_local! {
    static HOST: RefCell<MockHost> = RefCell::new(MockHost::default());
}

fn with<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// Forgets logs, counters, keys, the clock and the data directory.
pub fn reset() {
    with(|h| *h = MockHost::default());
}

/// Fixes the mock clock (Unix seconds). Until set, the real clock is used.
pub fn set_now(seconds: u64) {
    with(|h| h.now = Some(seconds));
}

/// Moves the mock clock forward, expiring keys whose TTL has passed.
pub fn advance(seconds: u64) {
    let now = host::now_seconds();
    set_now(now + seconds);
}

/// Answers `method url` (exactly as the plugin will ask) with `answer` from now on. A request
/// nothing answers gets `HttpError::Denied`, as a URL outside `allow_http` would.
pub fn stub_http(method: &str, url: &str, answer: Result<HttpResponse, HttpError>) {
    with(|h| {
        h.http
            .insert((method.to_ascii_uppercase(), url.to_string()), answer)
    });
}

/// A `200` response with a JSON body, for [`stub_http`].
pub fn json_response(body: &str) -> HttpResponse {
    HttpResponse {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
    }
}

/// The HTTP requests the plugin made, oldest first.
pub fn http_requests() -> Vec<HttpRequest> {
    with(|h| h.http_sent.clone())
}

/// What the plugin logged, oldest first.
pub fn logs() -> Vec<(Level, String)> {
    with(|h| h.logs.clone())
}

/// A counter's value (0 if never touched).
pub fn counter(name: &str) -> u64 {
    with(|h| h.counters.get(name).copied().unwrap_or(0))
}

/// A key's value, as the plugin would see it.
pub fn kv(key: &str) -> Option<String> {
    host::kv_get(key)
}

/// The folder [`crate::data_dir`] returns in native builds.
pub fn set_data_dir(path: impl Into<PathBuf>) {
    with(|h| h.data_dir = Some(path.into()));
}

pub(crate) fn data_dir() -> PathBuf {
    with(|h| h.data_dir.clone()).unwrap_or_else(std::env::temp_dir)
}

/// An outbound call from `caller` to `number`, on trunk `default`, as the gateway would
/// describe it before the chain runs.
pub fn call(caller: &str, number: &str) -> CallInfo {
    CallInfo {
        call_id: format!("c-test-{number}"),
        direction: Direction::Outbound,
        caller: caller.into(),
        destination: number.into(),
        trunk: "default".into(),
        number: number.into(),
        caller_id: String::new(),
        asserted: None,
        diverted_from: None,
    }
}

/// A trunk's request to transfer a call to `number` on trunk `default`.
pub fn transfer(number: &str) -> crate::TransferRequest {
    crate::TransferRequest {
        trunk: "default".into(),
        number: number.into(),
        referred_by: None,
    }
}

/// The host functions, as [`crate::host`] calls them in native builds.
pub(crate) mod host {
    use super::with;
    use crate::{HttpError, HttpRequest, HttpResponse, Level};

    pub fn log(level: Level, message: &str) {
        with(|h| h.logs.push((level, message.to_string())));
    }

    pub fn counter(name: &str, delta: u64) {
        with(|h| *h.counters.entry(name.to_string()).or_default() += delta);
    }

    pub fn now_seconds() -> u64 {
        with(|h| h.now).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
    }

    pub fn kv_get(key: &str) -> Option<String> {
        let now = now_seconds();
        with(|h| match h.kv.get(key) {
            Some((_, Some(expiry))) if *expiry <= now => {
                h.kv.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        })
    }

    pub fn kv_set(key: &str, value: &str, ttl_seconds: Option<u32>) {
        let expiry = ttl_seconds.map(|t| now_seconds() + t as u64);
        with(|h| h.kv.insert(key.to_string(), (value.to_string(), expiry)));
    }

    pub fn http_fetch(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        with(|h| {
            h.http_sent.push(request.clone());
            let key = (request.method.to_ascii_uppercase(), request.url.clone());
            h.http.get(&key).cloned().unwrap_or_else(|| {
                Err(HttpError::Denied(format!(
                    "the mock host has no answer for {} {} (mock::stub_http)",
                    key.0, key.1
                )))
            })
        })
    }

    pub fn kv_incr(key: &str, delta: i64, ttl_seconds: Option<u32>) -> i64 {
        let current: i64 = kv_get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        let next = current.saturating_add(delta);
        kv_set(key, &next.to_string(), ttl_seconds);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host as h;

    #[test]
    fn keys_expire_with_the_mock_clock() {
        reset();
        set_now(1000);
        h::kv_set("a", "1", Some(10));
        assert_eq!(h::kv_incr("n", 2, None), 2);
        assert_eq!(h::kv_incr("n", 3, None), 5);
        advance(9);
        assert_eq!(kv("a").as_deref(), Some("1"));
        advance(1);
        assert_eq!(kv("a"), None);
        assert_eq!(kv("n").as_deref(), Some("5"));
    }

    #[test]
    fn logs_and_counters_are_recorded() {
        reset();
        h::log(Level::Info, "hello");
        h::counter("calls", 2);
        h::counter("calls", 1);
        assert_eq!(counter("calls"), 3);
        assert_eq!(counter("other"), 0);
        assert!(matches!(logs()[0], (Level::Info, ref m) if m == "hello"));
    }

    #[test]
    fn http_answers_come_from_stubs_and_requests_are_recorded() {
        reset();
        stub_http("GET", "https://crm.example/c/1", Ok(json_response("{}")));
        let answer = h::http_get("https://crm.example/c/1", &[("accept", "application/json")]);
        assert_eq!(answer.unwrap().status, 200);
        assert!(matches!(
            h::http_get("https://crm.example/c/2", &[]),
            Err(HttpError::Denied(_))
        ));
        let sent = http_requests();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].headers[0].0, "accept");
    }
}
