//! Collects every mistake in a configuration file with its place, and reads the secrets and
//! keys the file names (from the environment, or from small regular files).

use toml::Spanned;

use super::{ConfigIssue, RawHttp, line_col};

/// The most a key file (a PEM public key, a JWK set) may hold.
const MAX_KEY_FILE: u64 = 1024 * 1024;

/// The most a secret file may hold: a password or key is short.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a secret file: a regular file of at most [`MAX_SECRET_FILE`] bytes (a device or a
/// pipe named by mistake would otherwise hang start-up or fill memory).
pub(super) fn read_secret_file(path: &str) -> Result<Vec<u8>, String> {
    read_small_file(path, MAX_SECRET_FILE)
}

fn read_small_file(path: &str, max: u64) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!(
            "it holds {} bytes; such a file holds at most {max}",
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

pub(super) struct Checker<'a> {
    pub(super) source: &'a str,
    pub(super) issues: Vec<ConfigIssue>,
}

impl Checker<'_> {
    /// Every key call tokens may be signed with: `token_secret_*` (with `token_kid`), each
    /// `[[http.token_keys]]` entry, and `token_jwks_file`. `None` when there is none.
    pub(super) fn token_keys(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        http: &RawHttp,
    ) -> Option<crate::token::TokenVerifier> {
        use crate::token::TokenVerifier;
        let mut verifier =
            TokenVerifier::new(http.token_audience.clone(), http.token_issuer.clone());
        if let Some(secret) = self.secret(
            env,
            ("http.token_secret_env", &http.token_secret_env),
            ("http.token_secret_file", &http.token_secret_file),
        ) {
            // `secret` holds at least 16 bytes: adding it cannot fail.
            let _ = verifier.add_secret(http.token_kid.clone(), &secret);
        }
        for (i, spanned) in http.token_keys.iter().enumerate() {
            let key = spanned.get_ref();
            let field = |f: &str| format!("http.token_keys[{i}].{f}");
            let secret = self.secret(
                env,
                (&field("secret_env"), &key.secret_env),
                (&field("secret_file"), &key.secret_file),
            );
            let given_secret = key.secret_env.is_some() || key.secret_file.is_some();
            match (&key.public_key_file, given_secret) {
                (None, true) => {
                    if let Some(secret) = secret {
                        let _ = verifier.add_secret(key.kid.clone(), &secret);
                    }
                }
                (Some(file), false) => {
                    let algorithm = match key.algorithm.as_ref().map(|a| a.get_ref().as_str()) {
                        Some("RS256") => jsonwebtoken::Algorithm::RS256,
                        Some("ES256") => jsonwebtoken::Algorithm::ES256,
                        _ => {
                            self.issue(
                                key.algorithm.as_ref().map_or(spanned.span(), |a| a.span()),
                                field("algorithm"),
                                "a public key needs `algorithm = \"RS256\"` or `\"ES256\"`",
                            );
                            continue;
                        }
                    };
                    let added = read_small_file(file.get_ref(), MAX_KEY_FILE).and_then(|pem| {
                        verifier
                            .add_public_pem(key.kid.clone(), algorithm, &pem)
                            .map_err(|e| e.to_string())
                    });
                    if let Err(e) = added {
                        self.issue(
                            file.span(),
                            field("public_key_file"),
                            format!("cannot use `{}`: {e}", file.get_ref()),
                        );
                    }
                }
                _ => self.issue(
                    spanned.span(),
                    field("kid"),
                    "give each token key `secret_env`, `secret_file` or `public_key_file` (one of them)",
                ),
            }
        }
        if let Some(file) = &http.token_jwks_file {
            let added = read_small_file(file.get_ref(), MAX_KEY_FILE)
                .and_then(|json| verifier.add_jwks(&json).map_err(|e| e.to_string()));
            if let Err(e) = added {
                self.issue(
                    file.span(),
                    "http.token_jwks_file",
                    format!("cannot use `{}`: {e}", file.get_ref()),
                );
            }
        }
        (!verifier.is_empty()).then_some(verifier)
    }

    /// `[webrtc] ice_servers` with the TURN secret they need and the credentials' lifetime.
    pub(super) fn ice_servers(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        raw: &super::raw::RawWebrtc,
    ) -> crate::rtc::ice_servers::IceServers {
        use crate::rtc::ice_servers::{IceServers, check_url};
        let mut turn = false;
        for url in raw.ice_servers.get_ref() {
            match check_url(url) {
                Ok(is_turn) => turn |= is_turn,
                Err(e) => self.issue(raw.ice_servers.span(), "webrtc.ice_servers", e),
            }
        }
        // Neither setting given: `secret` says nothing and gives none; TURN needs one.
        let secret = self.secret(
            env,
            ("webrtc.turn_secret_env", &raw.turn_secret_env),
            ("webrtc.turn_secret_file", &raw.turn_secret_file),
        );
        if turn && raw.turn_secret_env.is_none() && raw.turn_secret_file.is_none() {
            self.issue(
                raw.ice_servers.span(),
                "webrtc.ice_servers",
                "TURN servers need the secret they share with the gateway (coturn's static-auth-secret): set turn_secret_env or turn_secret_file",
            );
        }
        let seconds = match &raw.turn_credential_seconds {
            Some(s) if *s.get_ref() < 60 || *s.get_ref() > 86_400 => {
                self.issue(
                    s.span(),
                    "webrtc.turn_credential_seconds",
                    "TURN credentials live from 60 s to a day (86400 s)",
                );
                3600
            }
            Some(s) => *s.get_ref(),
            None => 3600,
        };
        IceServers::new(
            raw.ice_servers.get_ref(),
            secret.unwrap_or_default(),
            std::time::Duration::from_secs(seconds.into()),
        )
    }

    /// A secret given by environment variable or file (one of them), at least 16 bytes.
    /// `[cluster]`, checked: a `redis://` URL, a node id fit for a Redis key, a lease of
    /// 3 s to 5 min.
    pub(super) fn cluster(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        raw: &Option<Spanned<super::raw::RawCluster>>,
    ) -> Option<super::ClusterConfig> {
        let raw = raw.as_ref()?.get_ref();
        let url = raw.redis_url.get_ref();
        let unusable = match redis_url_error(url) {
            None if !url.starts_with("redis://") => Some("it must start with redis://".into()),
            why => why,
        };
        if let Some(why) = unusable {
            self.issue(
                raw.redis_url.span(),
                "cluster.redis_url",
                format!("`{url}` is not a Redis URL ({why}); write redis://host:6379/0"),
            );
        }
        let node_id = raw.node_id.get_ref();
        let fit = |s: &str| {
            (1..=64).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !fit(node_id) {
            self.issue(
                raw.node_id.span(),
                "cluster.node_id",
                "1 to 64 letters, digits, `.`, `_` or `-`, unique in the cluster (the pod or host name)",
            );
        }
        let key_prefix = raw
            .key_prefix
            .as_ref()
            .map_or("gateway".to_string(), |p| p.get_ref().clone());
        if let Some(p) = raw.key_prefix.as_ref().filter(|p| !fit(p.get_ref())) {
            self.issue(
                p.span(),
                "cluster.key_prefix",
                "1 to 64 letters, digits, `.`, `_` or `-`",
            );
        }
        if let Some(a) = &raw.sip_address
            && a.get_ref()
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            self.issue(
                a.span(),
                "cluster.sip_address",
                "write host:port, the address other nodes and the trunks reach this node's SIP at",
            );
        }
        let lease_seconds = match &raw.lease_seconds {
            Some(l) if !(3..=300).contains(l.get_ref()) => {
                self.issue(
                    l.span(),
                    "cluster.lease_seconds",
                    "3 to 300 s: how long a dead node's registrations and counts outlive it",
                );
                15
            }
            Some(l) => *l.get_ref(),
            None => 15,
        };
        if let Some(m) = raw.max_calls.as_ref().filter(|m| *m.get_ref() == 0) {
            self.issue(
                m.span(),
                "cluster.max_calls",
                "0 would refuse every call; leave it out for no cluster-wide limit",
            );
        }
        // Another system's password, whatever its length (Redis accepts any).
        let password = self
            .secret_of_length(
                env,
                ("cluster.redis_password_env", &raw.redis_password_env),
                ("cluster.redis_password_file", &raw.redis_password_file),
                1,
            )
            .map(|p| String::from_utf8_lossy(&p).into_owned());
        let mut peers = Vec::new();
        for peer in raw.peers.iter().flat_map(|p| p.get_ref()) {
            match peer
                .parse::<ipnet::IpNet>()
                .or_else(|_| peer.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            {
                Ok(net) => peers.push(net),
                Err(_) => self.issue(
                    raw.peers.as_ref().map_or(0..0, |p| p.span()),
                    "cluster.peers",
                    format!(
                        "`{peer}` is neither an IP address nor a network; write the other nodes' \
                         SIP addresses or their network, e.g. [\"10.0.0.0/24\"]"
                    ),
                ),
            }
        }
        Some(super::ClusterConfig {
            redis_url: url.clone(),
            redis_password: password,
            node_id: node_id.clone(),
            sip_address: raw.sip_address.as_ref().map(|a| a.get_ref().clone()),
            lease_seconds,
            key_prefix,
            max_calls: raw.max_calls.as_ref().map(|m| *m.get_ref()),
            peers,
        })
    }

    pub(super) fn secret(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        env_setting: (&str, &Option<Spanned<String>>),
        file_setting: (&str, &Option<Spanned<String>>),
    ) -> Option<Vec<u8>> {
        // A key the gateway signs or checks with: short ones can be guessed.
        self.secret_of_length(env, env_setting, file_setting, 16)
    }

    /// A secret from the environment or a file, at least `min_len` bytes.
    pub(super) fn secret_of_length(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        (env_field, var): (&str, &Option<Spanned<String>>),
        (file_field, file): (&str, &Option<Spanned<String>>),
        min_len: usize,
    ) -> Option<Vec<u8>> {
        let value = match (var, file) {
            (Some(var), None) => match env(var.get_ref()) {
                Some(v) => (var.span(), env_field, v.into_bytes()),
                None => {
                    self.issue(var.span(), env_field, format!("environment variable `{}` is not set; export it before starting the gateway", var.get_ref()));
                    return None;
                }
            },
            (None, Some(path)) => match read_secret_file(path.get_ref()) {
                Ok(v) => (path.span(), file_field, v.trim_ascii_end().to_vec()),
                Err(e) => {
                    self.issue(
                        path.span(),
                        file_field,
                        format!("cannot read `{}`: {e}", path.get_ref()),
                    );
                    return None;
                }
            },
            (Some(v), Some(_)) => {
                let short = |f: &str| f.rsplit('.').next().unwrap_or(f).to_string();
                self.issue(
                    v.span(),
                    env_field,
                    format!(
                        "set `{}` or `{}`, not both",
                        short(env_field),
                        short(file_field)
                    ),
                );
                return None;
            }
            (None, None) => return None,
        };
        let (span, field, bytes) = value;
        if bytes.len() < min_len {
            self.issue(
                span,
                field,
                "the secret must be at least 16 bytes; use 32 random bytes",
            );
            return None;
        }
        Some(bytes)
    }

    /// A number that goes up to `max`: `default` where it is left out; over it, the issue
    /// `message` for `field` (and `default`).
    pub(super) fn at_most<T: Copy + PartialOrd>(
        &mut self,
        value: &Option<Spanned<T>>,
        max: T,
        field: &str,
        default: T,
        message: impl Into<String>,
    ) -> T {
        self.within(value, ..=max, field, default, message)
    }

    /// A number within `range`: `default` where it is left out; outside it, the issue
    /// `message` for `field` (and `default`).
    pub(super) fn within<T: Copy + PartialOrd>(
        &mut self,
        value: &Option<Spanned<T>>,
        range: impl std::ops::RangeBounds<T>,
        field: &str,
        default: T,
        message: impl Into<String>,
    ) -> T {
        match value {
            Some(v) if !range.contains(v.get_ref()) => {
                self.issue(v.span(), field, message);
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    }

    pub(super) fn issue(
        &mut self,
        span: std::ops::Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = line_col(self.source, span.start);
        self.issues.push(ConfigIssue {
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    pub(super) fn addr<T>(
        &mut self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: Option<&str>,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        match value {
            Some(v) => {
                let parsed = parse(v.get_ref());
                if parsed.is_none() {
                    self.issue(
                        v.span(),
                        field,
                        format!(
                            "`{}` is not a valid address here; write it like `0.0.0.0:5060`",
                            v.get_ref()
                        ),
                    );
                }
                parsed
            }
            None => default.and_then(parse),
        }
    }
}

/// Why the Redis client cannot use `url`, if it cannot.
fn redis_url_error(url: &str) -> Option<String> {
    use redis::IntoConnectionInfo;
    url.into_connection_info().err().map(|e| e.to_string())
}
