//! The CRM router: asks a CRM over HTTP who is calling, and sends known customers elsewhere.
//! An outbound call from a customer goes out on `customer_trunk` (a priority line, say); an
//! inbound call from a customer rings the browser identity the CRM names as the account's
//! owner. Everyone else keeps the route they had.
//!
//! Configuration (JSON):
//! ```json
//! { "lookup_url": "https://crm.example/api/customers/{caller}",
//!   "customer_trunk": "priority",
//!   "headers": { "authorization": "Bearer …" },
//!   "on_error": "continue" }
//! ```
//! `{caller}` becomes the caller (the browser's identity outbound, the caller's number
//! inbound), percent-encoded. The CRM answers `200` with
//! `{"customer": true, "account": "A-17", "owner": "alice"}` for a customer (`account` and
//! `owner` optional; `account` goes out as `X-CRM-Account`), `404` for a stranger. Anything
//! else — another status, a body that is not that JSON, a refused, failed or timed-out
//! request — is a failed lookup, counted as `lookup_failed`; `on_error` says what then:
//! `"continue"` (the call keeps its route) or `"reject"` (503). The gateway's `allow_http`
//! must list the URL and its `http_timeout_ms` bounds the wait.

use gateway_plugin_sdk::{
    CallInfo, Direction, HttpError, Level, Plugin, Reject, Verdict, export_plugin, host, route,
};

/// What to do when the CRM cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Keep the call's route, as for a stranger.
    Continue,
    /// Refuse the call (503).
    Reject,
}

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    lookup_url: String,
    customer_trunk: String,
    headers: Vec<(String, String)>,
    on_error: OnError,
}

impl Config {
    /// Reads the JSON configuration, naming the field that is wrong.
    pub fn parse(config: &str) -> Result<Config, String> {
        let v: serde_json::Value = serde_json::from_str(config)
            .map_err(|e| format!("crm-router config is not JSON: {e}"))?;
        let text = |field: &str| -> Result<String, String> {
            v.get(field)
                .and_then(|s| s.as_str())
                .map(str::to_string)
                .ok_or(format!(
                    "crm-router config: `{field}` (a string) is missing"
                ))
        };
        let lookup_url = text("lookup_url")?;
        if !lookup_url.contains("{caller}") {
            return Err("crm-router config: `lookup_url` must contain `{caller}`".into());
        }
        let mut headers = Vec::new();
        if let Some(map) = v.get("headers") {
            let map = map
                .as_object()
                .ok_or("crm-router config: `headers` must be a table of strings")?;
            for (name, value) in map {
                let value = value.as_str().ok_or(format!(
                    "crm-router config: headers.{name} must be a string"
                ))?;
                headers.push((name.clone(), value.to_string()));
            }
        }
        let on_error = match v.get("on_error").map(|e| e.as_str()) {
            None | Some(Some("continue")) => OnError::Continue,
            Some(Some("reject")) => OnError::Reject,
            _ => return Err("crm-router config: `on_error` is \"continue\" or \"reject\"".into()),
        };
        Ok(Config {
            lookup_url,
            customer_trunk: text("customer_trunk")?,
            headers,
            on_error,
        })
    }

    fn url_for(&self, caller: &str) -> String {
        self.lookup_url.replace("{caller}", &percent_encode(caller))
    }
}

/// What the CRM said about a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A customer, with the account and its owner's identity if the CRM gave them.
    Customer {
        account: Option<String>,
        owner: Option<String>,
    },
    /// Not a customer.
    Stranger,
    /// The CRM could not say (why).
    Failed(String),
}

/// Asks the CRM about `caller`.
pub fn lookup(config: &Config, caller: &str) -> Lookup {
    let headers: Vec<(&str, &str)> = config
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("accept", "application/json")])
        .collect();
    let response = match host::http_get(&config.url_for(caller), &headers) {
        Ok(response) => response,
        Err(HttpError::Timeout) => return Lookup::Failed("the CRM did not answer in time".into()),
        Err(e) => return Lookup::Failed(format!("{e:?}")),
    };
    match response.status {
        404 => Lookup::Stranger,
        200 => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&response.body) else {
                return Lookup::Failed("the CRM's answer is not JSON".into());
            };
            let field = |name: &str| v.get(name).and_then(|s| s.as_str()).map(str::to_string);
            match v.get("customer").and_then(|c| c.as_bool()) {
                Some(true) => Lookup::Customer {
                    account: field("account"),
                    owner: field("owner"),
                },
                Some(false) => Lookup::Stranger,
                None => Lookup::Failed("the CRM's answer has no `customer`".into()),
            }
        }
        status => Lookup::Failed(format!("the CRM answered {status}")),
    }
}

/// Everything but RFC 3986's unreserved characters, percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The plugin: one lookup per call.
pub struct CrmRouter {
    config: Config,
}

impl Plugin for CrmRouter {
    fn init(config: &str) -> Result<Self, String> {
        Ok(CrmRouter {
            config: Config::parse(config)?,
        })
    }

    fn on_call_start(&mut self, call: &CallInfo) -> Verdict {
        let caller = match call.direction {
            Direction::Outbound => &call.caller,
            Direction::Inbound => call.asserted.as_ref().unwrap_or(&call.caller),
        };
        match lookup(&self.config, caller) {
            Lookup::Customer { account, owner } => {
                host::counter("customers", 1);
                let mut r = route();
                if let Some(account) = account.filter(|a| a.len() <= 64) {
                    r.headers.push(("X-CRM-Account".into(), account));
                }
                match call.direction {
                    Direction::Outbound => r.trunk = Some(self.config.customer_trunk.clone()),
                    Direction::Inbound => r.number = owner,
                }
                Verdict::Route(r)
            }
            Lookup::Stranger => {
                host::counter("strangers", 1);
                Verdict::Continue
            }
            Lookup::Failed(why) => {
                host::counter("lookup_failed", 1);
                host::log(Level::Warn, &format!("CRM lookup for a call failed: {why}"));
                match self.config.on_error {
                    OnError::Continue => Verdict::Continue,
                    OnError::Reject => Verdict::Reject(Reject {
                        sip_code: 503,
                        reason: "the CRM could not be asked".into(),
                    }),
                }
            }
        }
    }
}

export_plugin!(CrmRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_plugin_sdk::{HttpResponse, mock};

    const CONFIG: &str = r#"{"lookup_url":"https://crm.example/c/{caller}","customer_trunk":"priority","headers":{"authorization":"Bearer t"}}"#;

    fn status(code: u16) -> HttpResponse {
        HttpResponse {
            status: code,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    #[test]
    fn a_customer_goes_out_on_the_customer_trunk_with_the_account() {
        mock::reset();
        mock::stub_http(
            "GET",
            "https://crm.example/c/alice",
            Ok(mock::json_response(r#"{"customer":true,"account":"A-17"}"#)),
        );
        let mut plugin = CrmRouter::init(CONFIG).unwrap();
        let Verdict::Route(r) = plugin.on_call_start(&mock::call("alice", "+4930123")) else {
            panic!("a customer is routed");
        };
        assert_eq!(r.trunk.as_deref(), Some("priority"));
        assert_eq!(r.headers, vec![("X-CRM-Account".into(), "A-17".into())]);
        let sent = mock::http_requests();
        assert_eq!(
            sent[0].headers[0],
            ("authorization".into(), "Bearer t".into())
        );
        assert_eq!(mock::counter("customers"), 1);
    }

    #[test]
    fn a_stranger_keeps_the_route_and_the_caller_is_encoded() {
        mock::reset();
        mock::stub_http(
            "GET",
            "https://crm.example/c/%2B49%2030%201",
            Ok(status(404)),
        );
        let mut plugin = CrmRouter::init(CONFIG).unwrap();
        let verdict = plugin.on_call_start(&mock::call("+49 30 1", "+4930123"));
        assert!(matches!(verdict, Verdict::Continue));
        assert_eq!(mock::counter("strangers"), 1);
    }

    #[test]
    fn a_failed_lookup_follows_on_error() {
        mock::reset();
        mock::stub_http("GET", "https://crm.example/c/bob", Err(HttpError::Timeout));
        let mut plugin = CrmRouter::init(CONFIG).unwrap();
        assert!(matches!(
            plugin.on_call_start(&mock::call("bob", "1")),
            Verdict::Continue
        ));
        mock::stub_http("GET", "https://crm.example/c/bob", Ok(status(500)));
        let strict = r#"{"lookup_url":"https://crm.example/c/{caller}","customer_trunk":"priority","on_error":"reject"}"#;
        let mut plugin = CrmRouter::init(strict).unwrap();
        assert!(matches!(
            plugin.on_call_start(&mock::call("bob", "1")),
            Verdict::Reject(Reject { sip_code: 503, .. })
        ));
        assert_eq!(mock::counter("lookup_failed"), 2);
    }

    #[test]
    fn an_inbound_customer_rings_the_owner() {
        mock::reset();
        mock::stub_http(
            "GET",
            "https://crm.example/c/%2B4930555",
            Ok(mock::json_response(
                r#"{"customer":true,"owner":"agent-7"}"#,
            )),
        );
        let mut plugin = CrmRouter::init(CONFIG).unwrap();
        let mut call = mock::call("+4930555", "sales");
        call.direction = Direction::Inbound;
        let Verdict::Route(r) = plugin.on_call_start(&call) else {
            panic!("a customer is routed");
        };
        assert_eq!((r.number.as_deref(), r.trunk), (Some("agent-7"), None));
    }

    #[test]
    fn the_configuration_names_what_is_wrong() {
        for (config, says) in [
            ("{", "not JSON"),
            (r#"{"customer_trunk":"p"}"#, "lookup_url"),
            (
                r#"{"lookup_url":"https://x/","customer_trunk":"p"}"#,
                "{caller}",
            ),
            (
                r#"{"lookup_url":"https://x/{caller}","customer_trunk":"p","on_error":"panic"}"#,
                "on_error",
            ),
        ] {
            let err = Config::parse(config).unwrap_err();
            assert!(err.contains(says), "{config}: {err}");
        }
    }
}
