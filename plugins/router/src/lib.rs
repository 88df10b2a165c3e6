//! The router plugin: normalises dialled numbers to E.164 and picks the trunk by the longest
//! matching prefix, so one gateway can send each country (or each number range) to the
//! carrier that serves it best.
//!
//! Configuration (JSON):
//! ```json
//! { "country_code": "49", "national_prefix": "0", "international_prefix": "00",
//!   "routes": [ { "prefix": "+4930", "trunks": ["berlin", "de"], "caller_id": "+4930999" },
//!               { "prefix": "+49", "trunk": "de" } ],
//!   "caller_id": "+4930123456" }
//! ```
//! A route names one `trunk` or a failover order of `trunks` (tried in order on timeout,
//! 408 or 5xx), and may set the caller ID for calls it matches; the top-level `caller_id`
//! applies to the others.

use gateway_plugin_sdk::{CallInfo, Level, Plugin, Verdict, export_plugin, host};

/// One prefix's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    prefix: String,
    /// In failover order.
    trunks: Vec<String>,
    caller_id: Option<String>,
}

/// Where a number goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// E.164.
    pub number: String,
    /// Trunks in failover order; empty keeps the configured trunk.
    pub trunks: Vec<String>,
    /// Caller ID to send, if a rule sets one.
    pub caller_id: Option<String>,
}

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    country_code: String,
    national_prefix: String,
    international_prefix: String,
    /// Longest prefix first.
    routes: Vec<RouteRule>,
    caller_id: Option<String>,
}

impl Rules {
    /// Reads the JSON configuration, naming the field that is wrong.
    pub fn parse(config: &str) -> Result<Rules, String> {
        let v: serde_json::Value = serde_json::from_str(if config.trim().is_empty() {
            "{}"
        } else {
            config
        })
        .map_err(|e| format!("router config is not JSON: {e}"))?;
        let text = |field: &str, default: &str| -> Result<String, String> {
            match v.get(field) {
                None => Ok(default.to_string()),
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("router config: `{field}` must be a string")),
            }
        };
        let mut routes = Vec::new();
        for (i, r) in v
            .get("routes")
            .and_then(|r| r.as_array())
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let prefix = r
                .get("prefix")
                .and_then(|p| p.as_str())
                .ok_or(format!("router config: routes[{i}].prefix is missing"))?;
            let trunks: Vec<String> = match (r.get("trunk"), r.get("trunks")) {
                (Some(serde_json::Value::String(t)), None) => vec![t.clone()],
                (None, Some(serde_json::Value::Array(list))) if !list.is_empty() => list
                    .iter()
                    .map(|t| t.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or(format!(
                        "router config: routes[{i}].trunks must be a list of trunk names"
                    ))?,
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "router config: routes[{i}] has both `trunk` and `trunks`; keep one"
                    ));
                }
                _ => {
                    return Err(format!(
                        "router config: routes[{i}].trunk is missing (or give `trunks`, a list)"
                    ));
                }
            };
            if !prefix.starts_with('+') {
                return Err(format!(
                    "router config: routes[{i}].prefix `{prefix}` must be E.164, starting with +"
                ));
            }
            let caller_id = match r.get("caller_id") {
                None => None,
                Some(serde_json::Value::String(c)) => Some(c.clone()),
                Some(_) => {
                    return Err(format!(
                        "router config: routes[{i}].caller_id must be a string"
                    ));
                }
            };
            routes.push(RouteRule {
                prefix: prefix.to_string(),
                trunks,
                caller_id,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Rules {
            country_code: text("country_code", "")?,
            national_prefix: text("national_prefix", "0")?,
            international_prefix: text("international_prefix", "00")?,
            routes,
            caller_id: v
                .get("caller_id")
                .and_then(|c| c.as_str())
                .map(str::to_owned),
        })
    }

    /// E.164 form of a dialled number, or `None` if it is not a phone number.
    pub fn normalise(&self, dialled: &str) -> Option<String> {
        let digits: String = dialled
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.' | '/'))
            .collect();
        let e164 = if let Some(rest) = digits.strip_prefix('+') {
            format!("+{rest}")
        } else if !self.international_prefix.is_empty()
            && digits.starts_with(&self.international_prefix)
        {
            format!("+{}", &digits[self.international_prefix.len()..])
        } else if !self.country_code.is_empty()
            && !self.national_prefix.is_empty()
            && digits.starts_with(&self.national_prefix)
        {
            format!(
                "+{}{}",
                self.country_code,
                &digits[self.national_prefix.len()..]
            )
        } else {
            return None;
        };
        (e164.len() > 3 && e164[1..].chars().all(|c| c.is_ascii_digit())).then_some(e164)
    }

    /// Where a dialled number goes, or `None` if it is not a phone number.
    pub fn decide(&self, number: &str) -> Option<Decision> {
        let e164 = self.normalise(number)?;
        let rule = self
            .routes
            .iter()
            .find(|r| e164.starts_with(r.prefix.as_str()));
        Some(Decision {
            number: e164,
            trunks: rule.map(|r| r.trunks.clone()).unwrap_or_default(),
            caller_id: rule
                .and_then(|r| r.caller_id.clone())
                .or_else(|| self.caller_id.clone()),
        })
    }
}

/// The plugin: one per call, holding the parsed rules.
pub struct Router {
    rules: Rules,
}

impl Plugin for Router {
    fn init(config: &str) -> Result<Self, String> {
        Ok(Router {
            rules: Rules::parse(config)?,
        })
    }

    fn on_call_start(&mut self, call: &CallInfo) -> Verdict {
        if call.direction != gateway_plugin_sdk::Direction::Outbound {
            return Verdict::Continue;
        }
        // Not a phone number (a SIP user name, say): leave it to the next plugin.
        let Some(decision) = self.rules.decide(&call.number) else {
            return Verdict::Continue;
        };
        host::log(
            Level::Debug,
            &format!(
                "{} -> {} via {:?}",
                call.number, decision.number, decision.trunks
            ),
        );
        host::counter("routed", 1);
        let mut trunks = decision.trunks.into_iter();
        let mut route = gateway_plugin_sdk::route();
        route.trunk = trunks.next();
        route.failover = trunks.collect();
        route.number = Some(decision.number);
        route.caller_id = decision.caller_id;
        Verdict::Route(route)
    }
}

export_plugin!(Router);

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_plugin_sdk::mock;

    fn rules() -> Rules {
        Rules::parse(r#"{"country_code":"49","routes":[{"prefix":"+49","trunk":"de"},{"prefix":"+4930","trunk":"berlin"},{"prefix":"+1","trunk":"us"}]}"#).unwrap()
    }

    #[test]
    fn numbers_are_normalised_to_e164() {
        let r = rules();
        assert_eq!(r.normalise("030 1234-567"), Some("+49301234567".into()));
        assert_eq!(r.normalise("0049 89 123"), Some("+4989123".into()));
        assert_eq!(r.normalise("+1 (555) 0100"), Some("+15550100".into()));
        assert_eq!(r.normalise("sales"), None);
    }

    #[test]
    fn the_longest_prefix_wins() {
        let r = rules();
        let d = r.decide("0301234").unwrap();
        assert_eq!(
            (d.number.as_str(), d.trunks),
            ("+49301234", vec!["berlin".to_string()])
        );
        let d = r.decide("089123").unwrap();
        assert_eq!(
            (d.number.as_str(), d.trunks),
            ("+4989123", vec!["de".to_string()])
        );
        let d = r.decide("+44 20 1234").unwrap();
        assert_eq!((d.number.as_str(), d.trunks), ("+44201234", vec![]));
    }

    #[test]
    fn a_route_gives_failover_order_and_caller_id() {
        let mut router = Router::init(
            r#"{"caller_id":"+4930100","routes":[{"prefix":"+1","trunks":["us-a","us-b"],"caller_id":"+15550000"},{"prefix":"+49","trunk":"de"}]}"#,
        )
        .unwrap();
        let Verdict::Route(r) = router.on_call_start(&mock::call("alice", "+1 555 0100")) else {
            panic!("expected a route");
        };
        assert_eq!(r.trunk.as_deref(), Some("us-a"));
        assert_eq!(r.failover, vec!["us-b".to_string()]);
        assert_eq!(r.number.as_deref(), Some("+15550100"));
        assert_eq!(r.caller_id.as_deref(), Some("+15550000"));
        let Verdict::Route(r) = router.on_call_start(&mock::call("alice", "+49 89 1")) else {
            panic!("expected a route");
        };
        assert_eq!(r.caller_id.as_deref(), Some("+4930100"));
        assert!(matches!(
            router.on_call_start(&mock::call("alice", "sales")),
            Verdict::Continue
        ));
        assert_eq!(mock::counter("routed"), 2);
    }

    #[test]
    fn bad_configuration_names_the_field() {
        assert!(Rules::parse("nope").unwrap_err().contains("not JSON"));
        assert!(
            Rules::parse(r#"{"routes":[{"prefix":"49","trunk":"x"}]}"#)
                .unwrap_err()
                .contains("routes[0].prefix")
        );
        assert!(
            Rules::parse(r#"{"routes":[{"prefix":"+49"}]}"#)
                .unwrap_err()
                .contains("routes[0].trunk")
        );
    }
}
