//! Registration to a registration-based trunk (RFC 3261 §10), sans-IO: when to send
//! REGISTER, how to answer a challenge, when to refresh, and when to retry after failure.

use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{Header, Method, Request, Response};

use super::auth;
use super::message;
use super::trunks::Credentials;

/// Refresh when this fraction of the granted lifetime has passed, so a lost REGISTER can
/// still be retransmitted (64·T1 = 32 s) before the binding expires.
const REFRESH_AT: f64 = 0.8;
/// Wait before trying again after a failure the registrar gave no Retry-After for.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Where a registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// Not yet registered; a REGISTER is due or in flight.
    Pending,
    /// Registered until the given instant.
    Registered {
        /// When the binding lapses unless refreshed.
        until: Instant,
    },
    /// The registrar refused (status) or did not answer (408); retrying later.
    Failed {
        /// SIP status, 408 for a timeout.
        code: u16,
    },
}

/// One binding at one registrar.
#[derive(Debug)]
pub struct Registration {
    registrar: String,
    aor: String,
    credentials: Option<Credentials>,
    requested: u32,
    call_id: String,
    from_tag: String,
    seq: u32,
    authorization: Vec<((u16, String), Header)>,
    challenged_now: bool,
    in_flight: bool,
    next_at: Option<Instant>,
    /// Current state.
    pub state: RegistrationState,
}

/// What the driver should do after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationStep {
    /// Send a new REGISTER now (answering a challenge).
    SendNow,
    /// Nothing until [`Registration::poll_timeout`].
    Wait,
}

impl Registration {
    /// A binding of `user@domain` at `registrar` (`sip:domain`), asking for `expires` seconds.
    pub fn new(
        user: &str,
        domain: &str,
        credentials: Option<Credentials>,
        expires: u32,
        now: Instant,
    ) -> Self {
        Registration {
            registrar: format!("sip:{domain}"),
            aor: format!("sip:{user}@{domain}"),
            credentials,
            requested: expires,
            // §10.2: one Call-ID for all REGISTERs of this binding, CSeq growing.
            call_id: format!("{}@gateway", message::random_token()),
            from_tag: message::random_token(),
            seq: 0,
            authorization: Vec::new(),
            challenged_now: false,
            in_flight: false,
            next_at: Some(now),
            state: RegistrationState::Pending,
        }
    }

    /// When the driver should next call [`Self::request`], if nothing else happens first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight { None } else { self.next_at }
    }

    /// Builds the next REGISTER. `via` and `contact` come from the endpoint.
    pub fn request(&mut self, via: Header, contact: &str) -> Request {
        self.seq += 1;
        self.in_flight = true;
        let mut headers = rsip::Headers::default();
        headers.push(via);
        headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("70")));
        headers.push(Header::From(rsip::headers::From::new(format!(
            "<{}>;tag={}",
            self.aor, self.from_tag
        ))));
        headers.push(Header::To(rsip::headers::To::new(format!(
            "<{}>",
            self.aor
        ))));
        headers.push(Header::CallId(rsip::headers::CallId::new(
            self.call_id.clone(),
        )));
        headers.push(
            rsip::typed::CSeq {
                seq: self.seq,
                method: Method::Register,
            }
            .into(),
        );
        headers.push(Header::Contact(rsip::headers::Contact::new(format!(
            "<{contact}>"
        ))));
        headers.push(Header::Expires(rsip::headers::Expires::new(
            self.requested.to_string(),
        )));
        for (_, h) in &self.authorization {
            headers.push(h.clone());
        }
        let uri = rsip::Uri::try_from(self.registrar.as_str()).unwrap_or_default();
        Request {
            method: Method::Register,
            uri,
            version: rsip::Version::V2,
            headers,
            body: vec![],
        }
    }

    /// Feeds the final response to the last REGISTER.
    pub fn handle_response(
        &mut self,
        request: &Request,
        response: &Response,
        now: Instant,
    ) -> RegistrationStep {
        self.in_flight = false;
        let code = response.status_code.code();
        match code {
            200..=299 => {
                self.challenged_now = false;
                let granted = granted_expires(response).unwrap_or(self.requested).max(1);
                let until = now + Duration::from_secs(granted as u64);
                self.state = RegistrationState::Registered { until };
                self.next_at = Some(now + Duration::from_secs_f64(granted as f64 * REFRESH_AT));
                RegistrationStep::Wait
            }
            401 | 407 => {
                let Some((challenge, creds)) =
                    auth::best_challenge(response).zip(self.credentials.as_ref())
                else {
                    return self.fail(code, now, None);
                };
                let key = (code, challenge.realm.clone());
                let seen = self.authorization.iter().any(|(k, _)| *k == key);
                // Our cached answer was refused and the nonce is not merely stale: the
                // password is wrong. Retry later rather than hammering the registrar.
                if seen && self.challenged_now && !challenge.stale {
                    return self.fail(code, now, None);
                }
                self.challenged_now = true;
                let value = auth::authorization(
                    &challenge,
                    creds,
                    "REGISTER",
                    &request.uri.to_string(),
                    1,
                    &message::random_token(),
                );
                let header = if code == 407 {
                    Header::ProxyAuthorization(rsip::headers::ProxyAuthorization::new(value))
                } else {
                    Header::Authorization(rsip::headers::Authorization::new(value))
                };
                self.authorization.retain(|(k, _)| *k != key);
                self.authorization.push((key, header));
                self.next_at = Some(now);
                RegistrationStep::SendNow
            }
            423 => {
                // §10.3: Interval Too Brief; ask again with the registrar's minimum.
                if let Some(min) = message::header_value(&response.headers, "Min-Expires")
                    .and_then(|v| v.parse().ok())
                {
                    self.requested = min;
                    self.next_at = Some(now);
                    return RegistrationStep::SendNow;
                }
                self.fail(code, now, None)
            }
            _ => {
                let wait = message::header_value(&response.headers, "Retry-After")
                    .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
                self.fail(code, now, wait.map(Duration::from_secs))
            }
        }
    }

    /// The REGISTER transaction timed out.
    pub fn handle_transaction_timeout(&mut self, now: Instant) {
        self.in_flight = false;
        self.fail(408, now, None);
    }

    fn fail(&mut self, code: u16, now: Instant, wait: Option<Duration>) -> RegistrationStep {
        self.challenged_now = false;
        self.state = RegistrationState::Failed { code };
        self.next_at = Some(now + wait.unwrap_or(RETRY_AFTER_FAILURE));
        RegistrationStep::Wait
    }
}

/// The lifetime the registrar granted: our Contact's `expires` parameter, else the Expires
/// header (§10.2.4).
fn granted_expires(response: &Response) -> Option<u32> {
    let from_contact = response.contact_header().ok().and_then(|c| {
        let v = c.value().to_ascii_lowercase();
        let at = v.find("expires=")?;
        v[at + 8..]
            .split(|ch: char| !ch.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    from_contact.or_else(|| {
        message::header_value(&response.headers, "Expires")?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    /// True when a REGISTER should be sent at `now`.
    fn due(r: &Registration, now: Instant) -> bool {
        r.poll_timeout().is_some_and(|at| at <= now)
    }

    use super::*;

    fn via() -> Header {
        Header::Via(rsip::headers::Via::new(
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKr",
        ))
    }

    fn reply(req: &Request, code: u16, extra: &[(&str, &str)]) -> Response {
        let mut r = message::response_to(req, code, Some("reg"));
        for (n, v) in extra {
            r.headers.push(Header::Other(n.to_string(), v.to_string()));
        }
        r
    }

    fn reg(now: Instant) -> Registration {
        Registration::new(
            "acme",
            "carrier.test",
            Some(Credentials {
                username: "acme".into(),
                password: "pw".into(),
            }),
            600,
            now,
        )
    }

    #[test]
    fn challenge_is_answered_then_refreshed_at_80_percent_of_the_grant() {
        let t0 = Instant::now();
        let mut r = reg(t0);
        assert!(due(&r, t0));
        let first = r.request(via(), "sip:gw@127.0.0.1:5060");
        assert!(!due(&r, t0), "one REGISTER in flight at a time");
        let step = r.handle_response(
            &first,
            &reply(
                &first,
                401,
                &[("WWW-Authenticate", r#"Digest realm="carrier", nonce="n1""#)],
            ),
            t0,
        );
        assert_eq!(step, RegistrationStep::SendNow);
        let second = r.request(via(), "sip:gw@127.0.0.1:5060");
        let text = second.to_string();
        assert!(
            text.contains("Authorization: Digest username=\"acme\""),
            "{text}"
        );
        assert!(text.contains("CSeq: 2 REGISTER"));
        assert_eq!(
            message::call_id(&second),
            message::call_id(&first),
            "same Call-ID for the binding"
        );
        r.handle_response(&second, &reply(&second, 200, &[("Expires", "100")]), t0);
        assert_eq!(
            r.state,
            RegistrationState::Registered {
                until: t0 + Duration::from_secs(100)
            }
        );
        assert!(!due(&r, t0 + Duration::from_secs(79)));
        assert!(due(&r, t0 + Duration::from_secs(80)));
    }

    #[test]
    fn refused_credentials_back_off_instead_of_looping() {
        let t0 = Instant::now();
        let mut r = reg(t0);
        let challenge = [("WWW-Authenticate", r#"Digest realm="carrier", nonce="n1""#)];
        let a = r.request(via(), "sip:gw@h");
        assert_eq!(
            r.handle_response(&a, &reply(&a, 401, &challenge), t0),
            RegistrationStep::SendNow
        );
        let b = r.request(via(), "sip:gw@h");
        assert_eq!(
            r.handle_response(&b, &reply(&b, 401, &challenge), t0),
            RegistrationStep::Wait
        );
        assert_eq!(r.state, RegistrationState::Failed { code: 401 });
        assert!(due(&r, t0 + RETRY_AFTER_FAILURE));
    }

    #[test]
    fn timeouts_and_retry_after_are_honoured() {
        let t0 = Instant::now();
        let mut r = reg(t0);
        r.request(via(), "sip:gw@h");
        r.handle_transaction_timeout(t0);
        assert_eq!(r.state, RegistrationState::Failed { code: 408 });
        let req = r.request(via(), "sip:gw@h");
        r.handle_response(&req, &reply(&req, 503, &[("Retry-After", "300")]), t0);
        assert!(!due(&r, t0 + Duration::from_secs(299)));
        assert!(due(&r, t0 + Duration::from_secs(300)));
    }

    #[test]
    fn interval_too_brief_retries_with_min_expires() {
        let t0 = Instant::now();
        let mut r = reg(t0);
        let req = r.request(via(), "sip:gw@h");
        assert_eq!(
            r.handle_response(&req, &reply(&req, 423, &[("Min-Expires", "1800")]), t0),
            RegistrationStep::SendNow
        );
        assert!(
            r.request(via(), "sip:gw@h")
                .to_string()
                .contains("Expires: 1800")
        );
    }
}
