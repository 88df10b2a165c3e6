//! The router plugin: normalises dialled numbers to E.164 and picks the trunk by the longest
//! matching prefix, so one gateway can send each country (or each number range) to the
//! carrier that serves it best.
//!
//! Configuration (JSON):
//! ```json
//! { "country_code": "49", "national_prefix": "0", "international_prefix": "00",
//!   "routes": [ { "prefix": "+4930", "trunk": "berlin" }, { "prefix": "+49", "trunk": "de" } ],
//!   "caller_id": "+4930123456" }
//! ```

// The generated bindings have as many parameters as the WIT functions.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ path: "../../plugin-sdk/wit", world: "plugin" });

use std::sync::OnceLock;

use gateway::plugin::host::{Level, counter, log};
use gateway::plugin::types::Route;

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    country_code: String,
    national_prefix: String,
    international_prefix: String,
    /// `(prefix, trunk)`, longest prefix first.
    routes: Vec<(String, String)>,
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
            let trunk = r
                .get("trunk")
                .and_then(|t| t.as_str())
                .ok_or(format!("router config: routes[{i}].trunk is missing"))?;
            if !prefix.starts_with('+') {
                return Err(format!(
                    "router config: routes[{i}].prefix `{prefix}` must be E.164, starting with +"
                ));
            }
            routes.push((prefix.to_string(), trunk.to_string()));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
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

    /// The verdict for a call.
    pub fn decide(&self, number: &str) -> Option<(String, Option<String>)> {
        let e164 = self.normalise(number)?;
        let trunk = self
            .routes
            .iter()
            .find(|(prefix, _)| e164.starts_with(prefix.as_str()))
            .map(|(_, t)| t.clone());
        Some((e164, trunk))
    }
}

static RULES: OnceLock<Rules> = OnceLock::new();

struct Router;

impl Guest for Router {
    fn init(config: String) -> Result<(), String> {
        let rules = Rules::parse(&config)?;
        let _ = RULES.set(rules);
        Ok(())
    }

    fn on_call_start(call: CallInfo) -> Verdict {
        let Some(rules) = RULES.get() else {
            return Verdict::Continue;
        };
        match rules.decide(&call.number) {
            Some((number, trunk)) => {
                log(
                    Level::Debug,
                    &format!(
                        "{} -> {number} via {}",
                        call.number,
                        trunk.as_deref().unwrap_or(&call.trunk)
                    ),
                );
                counter("routed", 1);
                Verdict::Route(Route {
                    trunk,
                    number: Some(number),
                    caller_id: rules.caller_id.clone(),
                    headers: vec![],
                    record_audio: false,
                })
            }
            // Not a phone number (a SIP user name, say): leave it to the next plugin.
            None => Verdict::Continue,
        }
    }

    fn on_event(_call_id: String, _event: Event) {}
}

export!(Router);

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            r.decide("0301234"),
            Some(("+49301234".into(), Some("berlin".into())))
        );
        assert_eq!(
            r.decide("089123"),
            Some(("+4989123".into(), Some("de".into())))
        );
        assert_eq!(r.decide("+44 20 1234"), Some(("+44201234".into(), None)));
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
