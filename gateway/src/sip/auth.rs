//! Digest authentication for requests the trunk challenges with 401/407
//! (RFC 3261 §22, RFC 2617, RFC 7616 and RFC 8760 for SHA-256).

use md5::{Digest, Md5};
use rsip::Response;
use sha2::Sha256;

use super::trunks::Credentials;

/// Hash algorithm of a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (RFC 2617), the default when the challenge names none.
    Md5,
    /// SHA-256 (RFC 8760).
    Sha256,
}

/// One parsed `Digest` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Protection space.
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Opaque value to echo back.
    pub opaque: Option<String>,
    /// Hash to use.
    pub algorithm: Algorithm,
    /// The server offered `qop=auth` (we never use `auth-int`).
    pub qop_auth: bool,
    /// The previous credentials were right but the nonce expired (RFC 2617 §3.2.1).
    pub stale: bool,
}

/// Splits `a=b, c="d,e"` into pairs, honouring quotes.
fn params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            value = quoted[..end].to_string();
            rest = quoted.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.push((name, value));
    }
    out
}

/// Parses one `WWW-Authenticate` / `Proxy-Authenticate` value. Returns `None` for other
/// schemes or algorithms we do not implement (`-sess`, SHA-512-256).
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, rest) = value.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut realm = None;
    let mut nonce = None;
    let mut ch = Challenge {
        realm: String::new(),
        nonce: String::new(),
        opaque: None,
        algorithm: Algorithm::Md5,
        qop_auth: false,
        stale: false,
    };
    for (name, value) in params(rest) {
        match name.as_str() {
            "realm" => realm = Some(value),
            "nonce" => nonce = Some(value),
            "opaque" => ch.opaque = Some(value),
            "stale" => ch.stale = value.eq_ignore_ascii_case("true"),
            "qop" => {
                ch.qop_auth = value
                    .split(',')
                    .any(|q| q.trim().eq_ignore_ascii_case("auth"))
            }
            "algorithm" => {
                ch.algorithm = match value.to_ascii_uppercase().as_str() {
                    "MD5" => Algorithm::Md5,
                    "SHA-256" => Algorithm::Sha256,
                    _ => return None,
                }
            }
            _ => {}
        }
    }
    ch.realm = realm?;
    ch.nonce = nonce?;
    Some(ch)
}

/// The challenge to answer in a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate):
/// SHA-256 when offered, as RFC 8760 §2.4 asks clients to prefer the strongest.
pub fn best_challenge(response: &Response) -> Option<Challenge> {
    let wanted = if response.status_code.code() == 407 {
        "proxy-authenticate"
    } else {
        "www-authenticate"
    };
    response
        .headers
        .iter()
        .filter_map(|h| {
            let text = h.to_string();
            let (name, value) = text.split_once(':')?;
            (name.trim().to_ascii_lowercase() == wanted)
                .then(|| parse_challenge(value))
                .flatten()
        })
        .max_by_key(|c| c.algorithm == Algorithm::Sha256)
}

fn hash(algorithm: Algorithm, data: &str) -> String {
    match algorithm {
        Algorithm::Md5 => format!("{:x}", Md5::digest(data.as_bytes())),
        Algorithm::Sha256 => format!("{:x}", Sha256::digest(data.as_bytes())),
    }
}

/// The `Authorization` / `Proxy-Authorization` value answering `challenge` for a request
/// with `method` and Request-URI `uri`. `nc` counts uses of this nonce (RFC 7616 §3.4).
pub fn authorization(
    challenge: &Challenge,
    credentials: &Credentials,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let alg = challenge.algorithm;
    let ha1 = hash(
        alg,
        &format!(
            "{}:{}:{}",
            credentials.username, challenge.realm, credentials.password
        ),
    );
    let ha2 = hash(alg, &format!("{method}:{uri}"));
    let algorithm = match alg {
        Algorithm::Md5 => "MD5",
        Algorithm::Sha256 => "SHA-256",
    };
    let mut value = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", algorithm={algorithm}",
        credentials.username, challenge.realm, challenge.nonce
    );
    let response = if challenge.qop_auth {
        let nc = format!("{nc:08x}");
        value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        hash(
            alg,
            &format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", challenge.nonce),
        )
    } else {
        hash(alg, &format!("{ha1}:{}:{ha2}", challenge.nonce))
    };
    value.push_str(&format!(", response=\"{response}\""));
    if let Some(opaque) = &challenge.opaque {
        value.push_str(&format!(", opaque=\"{opaque}\""));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, pw: &str) -> Credentials {
        Credentials {
            username: user.into(),
            password: pw.into(),
        }
    }

    #[test]
    fn rfc2617_example_without_qop() {
        // RFC 2069-style digest, as in RFC 2617 §3.5 with qop omitted (value computed by
        // the reference algorithm with Mufasa / "Circle Of Life").
        let ch = parse_challenge(
            r#"Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093""#,
        )
        .unwrap();
        let v = authorization(
            &ch,
            &creds("Mufasa", "Circle Of Life"),
            "GET",
            "/dir/index.html",
            1,
            "x",
        );
        assert!(
            v.contains(r#"response="670fd8c2df070c60b045671b8b24ff02""#),
            "{v}"
        );
    }

    #[test]
    fn rfc2617_example_with_qop_auth() {
        let ch = parse_challenge(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert!(ch.qop_auth);
        let v = authorization(
            &ch,
            &creds("Mufasa", "Circle Of Life"),
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        );
        assert!(
            v.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{v}"
        );
        assert!(v.contains("nc=00000001"));
        assert!(v.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#));
    }

    #[test]
    fn rfc7616_sha256_example() {
        // RFC 7616 §3.9.1.
        let ch = parse_challenge(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .unwrap();
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        let v = authorization(
            &ch,
            &creds("Mufasa", "Circle of Life"),
            "GET",
            "/dir/index.html",
            1,
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        assert!(
            v.contains(
                r#"response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1""#
            ),
            "{v}"
        );
    }

    #[test]
    fn unsupported_schemes_and_algorithms_are_skipped() {
        assert_eq!(parse_challenge(r#"Basic realm="x""#), None);
        assert_eq!(
            parse_challenge(r#"Digest realm="x", nonce="y", algorithm=MD5-sess"#),
            None
        );
        assert_eq!(
            parse_challenge(r#"Digest nonce="y""#),
            None,
            "realm is required"
        );
    }
}
