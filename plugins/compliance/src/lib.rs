//! The compliance plugin: the gate in front of the trunks. In order:
//! 1. emergency numbers are always allowed (no other rule applies) and go to the emergency
//!    trunk if one is configured;
//! 2. numbers on the deny list are refused (403), and, if an allow list is given, numbers not
//!    on it (403);
//! 3. premium-rate prefixes are refused (403);
//! 4. outside calling hours, in the configured time zone, calls are refused (480);
//! 5. a client (the caller) placing more calls than the rate limit allows is refused (403);
//!    the count lives in the host's key-value store, so it holds across calls.
//!
//! A trunk's transfer (REFER) makes the gateway place a new call on a trunk at the
//! operator's cost, so its target meets rules 2 and 3 too (emergency numbers pass).
//!
//! Configuration (JSON), every part optional:
//! ```json
//! { "emergency": ["112", "110"], "emergency_trunk": "emergency",
//!   "allow": ["+49"], "deny": ["+4930666"], "premium": ["+49900", "+49137"],
//!   "hours": { "time_zone": "Europe/Berlin", "days": ["mon","tue","wed","thu","fri"],
//!              "from": "08:00", "to": "20:00" },
//!   "rate_limit": { "calls": 10, "per_seconds": 60 } }
//! ```
//! Lists hold number prefixes, compared with the dialled number without spaces; put the
//! router plugin first if callers may dial national formats.

use chrono::{Datelike, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;
use gateway_plugin_sdk::{
    CallInfo, Direction, Plugin, Reject, TransferRequest, Verdict, export_plugin, host,
};

/// Calling hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    zone: Tz,
    days: Vec<Weekday>,
    /// Minutes after midnight, `from` inclusive, `to` exclusive.
    from: u32,
    to: u32,
}

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    emergency: Vec<String>,
    emergency_trunk: Option<String>,
    allow: Vec<String>,
    deny: Vec<String>,
    premium: Vec<String>,
    hours: Option<Hours>,
    /// `(calls, per_seconds)`.
    rate_limit: Option<(i64, u32)>,
}

fn list(v: &serde_json::Value, field: &str) -> Result<Vec<String>, String> {
    match v.get(field) {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(clean))
            .collect::<Option<Vec<_>>>()
            .ok_or(format!(
                "compliance config: `{field}` must be a list of strings"
            )),
        Some(_) => Err(format!(
            "compliance config: `{field}` must be a list of strings"
        )),
    }
}

fn clean(number: &str) -> String {
    number
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.' | '/'))
        .collect()
}

fn minutes(text: &str, field: &str) -> Result<u32, String> {
    let bad = || format!("compliance config: `hours.{field}` must be HH:MM, not `{text}`");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Rules {
    /// Reads the JSON configuration, naming the field that is wrong.
    pub fn parse(config: &str) -> Result<Rules, String> {
        let v: serde_json::Value = serde_json::from_str(config)
            .map_err(|e| format!("compliance config is not JSON: {e}"))?;
        let hours = match v.get("hours") {
            None => None,
            Some(h) => {
                let zone_name = h
                    .get("time_zone")
                    .and_then(|z| z.as_str())
                    .ok_or("compliance config: `hours.time_zone` is missing (an IANA name such as Europe/Berlin)")?;
                let zone: Tz = zone_name.parse().map_err(|_| {
                    format!("compliance config: `hours.time_zone`: unknown time zone `{zone_name}`")
                })?;
                let days = match h.get("days") {
                    None => vec![
                        Weekday::Mon,
                        Weekday::Tue,
                        Weekday::Wed,
                        Weekday::Thu,
                        Weekday::Fri,
                    ],
                    Some(_) => list(h, "days")?
                        .iter()
                        .map(|d| {
                            d.parse::<Weekday>().map_err(|_| {
                                format!("compliance config: `hours.days`: `{d}` is not a weekday (mon, tue, …)")
                            })
                        })
                        .collect::<Result<_, _>>()?,
                };
                let text = |f: &str| {
                    h.get(f)
                        .and_then(|x| x.as_str())
                        .ok_or(format!("compliance config: `hours.{f}` is missing (HH:MM)"))
                };
                Some(Hours {
                    zone,
                    days,
                    from: minutes(text("from")?, "from")?,
                    to: minutes(text("to")?, "to")?,
                })
            }
        };
        let rate_limit = match v.get("rate_limit") {
            None => None,
            Some(r) => {
                let calls = r.get("calls").and_then(|c| c.as_i64()).filter(|c| *c > 0);
                let per = r
                    .get("per_seconds")
                    .and_then(|p| p.as_u64())
                    .filter(|p| *p > 0 && *p <= u32::MAX as u64);
                match (calls, per) {
                    (Some(c), Some(p)) => Some((c, p as u32)),
                    _ => {
                        return Err("compliance config: `rate_limit` needs `calls` and `per_seconds`, both positive integers".into());
                    }
                }
            }
        };
        Ok(Rules {
            emergency: list(&v, "emergency")?,
            emergency_trunk: match v.get("emergency_trunk") {
                None => None,
                Some(serde_json::Value::String(t)) => Some(t.clone()),
                Some(_) => {
                    return Err("compliance config: `emergency_trunk` must be a string".into());
                }
            },
            allow: list(&v, "allow")?,
            deny: list(&v, "deny")?,
            premium: list(&v, "premium")?,
            hours,
            rate_limit,
        })
    }

    fn within_hours(&self, now: u64) -> bool {
        let Some(h) = &self.hours else {
            return true;
        };
        let Some(local) = h.zone.timestamp_opt(now as i64, 0).single() else {
            return true;
        };
        let minute = local.hour() * 60 + local.minute();
        h.days.contains(&local.weekday()) && minute >= h.from && minute < h.to
    }

    /// Rules 2 and 3 for `number` (cleaned): the refusal, if any.
    fn refuse_number(&self, number: &str) -> Option<Reject> {
        let starts = |list: &[String]| list.iter().any(|p| number.starts_with(p.as_str()));
        let reason = if starts(&self.deny) {
            format!("{number} is on the deny list")
        } else if !self.allow.is_empty() && !starts(&self.allow) {
            format!("{number} is not on the allow list")
        } else if starts(&self.premium) {
            format!("{number} is a premium-rate number")
        } else {
            return None;
        };
        host::counter("rejected", 1);
        Some(Reject {
            sip_code: 403,
            reason,
        })
    }

    /// Whether a trunk may transfer a call to `request`'s number.
    pub fn transfer(&self, request: &TransferRequest) -> Option<Reject> {
        let number = clean(&request.number);
        if self.emergency.contains(&number) {
            return None;
        }
        let refusal = self.refuse_number(&number)?;
        host::counter("transfers_refused", 1);
        Some(refusal)
    }

    /// The verdict for a call placed at `now` (Unix seconds).
    pub fn decide(&self, call: &CallInfo, now: u64) -> Verdict {
        let number = clean(&call.number);
        let dialled = clean(&call.destination);
        let reject = |sip_code: u16, reason: String| {
            host::counter("rejected", 1);
            Verdict::Reject(Reject { sip_code, reason })
        };
        if self.emergency.iter().any(|e| *e == number || *e == dialled) {
            host::counter("emergency", 1);
            let mut route = gateway_plugin_sdk::route();
            route.trunk = self.emergency_trunk.clone();
            route.failover = Vec::new();
            return Verdict::Route(route);
        }
        if let Some(refusal) = self.refuse_number(&number) {
            return Verdict::Reject(refusal);
        }
        if !self.within_hours(now) {
            return reject(480, "outside calling hours".into());
        }
        if let Some((calls, per)) = self.rate_limit {
            // A fixed window per caller; the key expires with its window.
            let window = now / per as u64;
            let key = format!("rate:{}:{window}", call.caller);
            let count = host::kv_incr(&key, 1, Some(per));
            if count > calls {
                return reject(
                    403,
                    format!("rate limit: at most {calls} calls per {per} s"),
                );
            }
        }
        Verdict::Continue
    }
}

/// The plugin: one per call, holding the parsed rules.
pub struct Compliance {
    rules: Rules,
}

impl Plugin for Compliance {
    fn init(config: &str) -> Result<Self, String> {
        Ok(Compliance {
            rules: Rules::parse(config)?,
        })
    }

    fn on_call_start(&mut self, call: &CallInfo) -> Verdict {
        // Inbound calls are the callers' business, not ours to gate.
        if call.direction != Direction::Outbound {
            return Verdict::Continue;
        }
        self.rules.decide(call, host::now_seconds())
    }

    fn on_transfer(&mut self, _call_id: &str, request: &TransferRequest) -> Option<Reject> {
        self.rules.transfer(request)
    }
}

export_plugin!(Compliance);

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_plugin_sdk::mock;

    // Tuesday 2026-11-24 12:00:00 UTC = 13:00 in Berlin.
    const TUESDAY_NOON_UTC: u64 = 1795521600;

    fn rules() -> Compliance {
        Compliance::init(
            r#"{"emergency":["112"],"emergency_trunk":"sos","deny":["+4930666"],"premium":["+49900"],
                "hours":{"time_zone":"Europe/Berlin","from":"08:00","to":"20:00"},
                "rate_limit":{"calls":2,"per_seconds":60}}"#,
        )
        .unwrap()
    }

    fn code(v: Verdict) -> u16 {
        match v {
            Verdict::Reject(r) => r.sip_code,
            _ => 0,
        }
    }

    #[test]
    fn lists_and_premium_numbers_are_refused() {
        mock::reset();
        mock::set_now(TUESDAY_NOON_UTC);
        let mut c = rules();
        assert_eq!(code(c.on_call_start(&mock::call("a", "+49 30 666 1"))), 403);
        assert_eq!(code(c.on_call_start(&mock::call("b", "+49900123"))), 403);
        assert_eq!(code(c.on_call_start(&mock::call("c", "+4930123"))), 0);
        assert_eq!(mock::counter("rejected"), 2);
    }

    #[test]
    fn transfers_to_denied_or_premium_numbers_are_refused_and_emergency_ones_pass() {
        mock::reset();
        let mut c = rules();
        let refused = |r: Option<Reject>| r.map(|r| r.sip_code);
        assert_eq!(
            refused(c.on_transfer("x", &mock::transfer("+49 900 1"))),
            Some(403)
        );
        assert_eq!(
            refused(c.on_transfer("x", &mock::transfer("+4930666"))),
            Some(403)
        );
        assert_eq!(
            refused(c.on_transfer("x", &mock::transfer("+4930777"))),
            None
        );
        assert_eq!(refused(c.on_transfer("x", &mock::transfer("112"))), None);
        assert_eq!(mock::counter("transfers_refused"), 2);
    }

    #[test]
    fn calling_hours_follow_the_time_zone() {
        mock::reset();
        let mut c = rules();
        // 19:30 UTC is 20:30 in Berlin (CET): closed.
        mock::set_now(TUESDAY_NOON_UTC + 7 * 3600 + 1800);
        assert_eq!(code(c.on_call_start(&mock::call("a", "+4930123"))), 480);
        // 18:30 UTC is 19:30 in Berlin: open.
        mock::set_now(TUESDAY_NOON_UTC + 6 * 3600 + 1800);
        assert_eq!(code(c.on_call_start(&mock::call("a", "+4930123"))), 0);
        // Saturday.
        mock::set_now(TUESDAY_NOON_UTC + 4 * 86400);
        assert_eq!(code(c.on_call_start(&mock::call("a", "+4930123"))), 480);
    }

    #[test]
    fn the_rate_limit_is_per_caller_and_per_window() {
        mock::reset();
        mock::set_now(TUESDAY_NOON_UTC);
        let mut c = rules();
        assert_eq!(code(c.on_call_start(&mock::call("a", "+4930123"))), 0);
        assert_eq!(code(c.on_call_start(&mock::call("a", "+4930123"))), 0);
        assert_eq!(code(c.on_call_start(&mock::call("a", "+4930123"))), 403);
        assert_eq!(code(c.on_call_start(&mock::call("b", "+4930123"))), 0);
        mock::advance(60);
        assert_eq!(code(c.on_call_start(&mock::call("a", "+4930123"))), 0);
    }

    #[test]
    fn emergency_numbers_pass_every_rule() {
        mock::reset();
        // Sunday night, and the caller is over the limit.
        mock::set_now(TUESDAY_NOON_UTC + 5 * 86400 + 12 * 3600);
        let mut c = rules();
        for _ in 0..5 {
            match c.on_call_start(&mock::call("a", "112")) {
                Verdict::Route(r) => assert_eq!(r.trunk.as_deref(), Some("sos")),
                other => panic!("emergency call not routed: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let err = |c: &str| Rules::parse(c).unwrap_err();
        assert!(
            err(r#"{"hours":{"time_zone":"Mars/Olympus","from":"08:00","to":"20:00"}}"#)
                .contains("unknown time zone")
        );
        assert!(
            err(r#"{"hours":{"time_zone":"UTC","from":"8","to":"20:00"}}"#).contains("hours.from")
        );
        assert!(err(r#"{"rate_limit":{"calls":0,"per_seconds":60}}"#).contains("rate_limit"));
        assert!(err(r#"{"deny":"+49"}"#).contains("`deny`"));
    }
}
