//! The STUN and TURN servers a browser is told to use, with TURN credentials minted per
//! client by the TURN REST API scheme (draft-uberti-behave-turn-rest-00) that coturn's
//! `use-auth-secret` checks: the username is `<expiry>:<who>`, the password the base64 of
//! HMAC-SHA1 over the username with the secret both share. Nothing is stored: the TURN
//! server recomputes the password, and refuses it once the expiry has passed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

/// One entry of `RTCConfiguration.iceServers`, as the browser takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN only: `<expiry>:<who>`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    /// TURN only: the password for `username`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential: Option<String>,
}

/// The configured servers and the TURN secret.
#[derive(Clone, Default)]
pub struct IceServers {
    stun: Vec<String>,
    turn: Vec<String>,
    secret: Vec<u8>,
    lifetime: Duration,
}

impl std::fmt::Debug for IceServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("IceServers")
            .field("stun", &self.stun)
            .field("turn", &self.turn)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Why an `ice_servers` entry is not usable.
pub fn check_url(url: &str) -> Result<bool, String> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "stun" | "stuns" => Ok(false),
        "turn" | "turns" => Ok(true),
        _ => Err(format!(
            "`{url}` is not a stun:, stuns:, turn: or turns: URL (RFC 7064, RFC 7065)"
        )),
    }
}

impl IceServers {
    /// `urls` already checked with [`check_url`]; `secret` is coturn's `static-auth-secret`
    /// (needed when any URL is TURN); credentials live `lifetime`.
    pub fn new(urls: &[String], secret: Vec<u8>, lifetime: Duration) -> IceServers {
        let (turn, stun) = urls
            .iter()
            .cloned()
            .partition(|u| check_url(u).unwrap_or(false));
        IceServers {
            stun,
            turn,
            secret,
            lifetime,
        }
    }

    /// True when nothing is configured: the browser uses its own defaults (host candidates).
    pub fn is_empty(&self) -> bool {
        self.stun.is_empty() && self.turn.is_empty()
    }

    /// The servers for one client, `who` naming it in the TURN username (its token's subject,
    /// or `anonymous`), with credentials valid from `now` for the configured lifetime.
    pub fn for_client(&self, who: &str, now: SystemTime) -> Vec<IceServer> {
        let mut servers = Vec::new();
        if !self.stun.is_empty() {
            servers.push(IceServer {
                urls: self.stun.clone(),
                username: None,
                credential: None,
            });
        }
        if !self.turn.is_empty() {
            let expiry = now
                .checked_add(self.lifetime)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let (username, credential) = turn_credential(&self.secret, expiry, who);
            servers.push(IceServer {
                urls: self.turn.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }
}

/// The TURN REST API credential for `who` until `expiry` (Unix seconds): `who` loses any
/// `:` (the username's separator) and is cut to 64 characters.
pub fn turn_credential(secret: &[u8], expiry: u64, who: &str) -> (String, String) {
    let who: String = who.chars().filter(|c| *c != ':').take(64).collect();
    let username = format!("{expiry}:{who}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    let credential = BASE64.encode(mac.finalize().into_bytes());
    (username, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_coturns_rest_api_hmac() {
        // The example of draft-uberti-behave-turn-rest-00 §2.2 uses this secret and
        // username; the password below was computed independently with
        // `printf %s 1433895918506:my_username | openssl dgst -sha1 -hmac 1234 -binary | base64`.
        let (user, pass) = turn_credential(b"1234", 1433895918506, "my_username");
        assert_eq!(user, "1433895918506:my_username");
        assert_eq!(pass, OPENSSL_PASSWORD);
        let (user, _) = turn_credential(b"1234", 7, "a:b:c");
        assert_eq!(user, "7:abc", "no separator smuggled into the name");
    }

    const OPENSSL_PASSWORD: &str = "1LvDyUFpAxqpTLksY42CXh79SyI=";

    #[test]
    fn stun_and_turn_are_told_apart_and_only_turn_gets_credentials() {
        let urls = [
            "stun:stun.example.com:3478".to_string(),
            "turn:turn.example.com:3478?transport=udp".to_string(),
            "turns:turn.example.com:443?transport=tcp".to_string(),
        ];
        let servers = IceServers::new(
            &urls,
            b"0123456789abcdef".to_vec(),
            Duration::from_secs(600),
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let list = servers.for_client("agent-7", now);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].urls, [urls[0].clone()]);
        assert!(list[0].username.is_none());
        assert_eq!(list[1].urls, [urls[1].clone(), urls[2].clone()]);
        assert_eq!(list[1].username.as_deref(), Some("1000600:agent-7"));
        assert!(check_url("http://x").is_err());
        assert!(!format!("{servers:?}").contains("0123456789abcdef"));
    }
}
