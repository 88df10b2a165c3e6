//! Short-lived call tokens: JWT (RFC 7519) signed with HS256, minted by the website's
//! backend with a secret it shares with the gateway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who is calling (a user id on the website); goes into the CDR.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Target names this token may call.
    #[serde(default)]
    pub targets: Vec<String>,
    /// May call raw numbers (not just targets): for trusted agents, never for public pages.
    #[serde(default)]
    pub numbers: bool,
}

/// Why a token was refused; the text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("token is not a JWT (three base64url parts)")]
    Malformed,
    /// `alg` is not HS256 (RFC 8725 §3.1: never accept `none` or a switched algorithm).
    #[error("token algorithm must be HS256")]
    WrongAlgorithm,
    /// The signature does not verify with the configured secret.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("token has expired; fetch a new one")]
    Expired,
}

/// Signs claims (for the website's backend, tests and the demo's token endpoint).
pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// Verifies a token at time `now` (Unix seconds).
pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<Claims, TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_json: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::Malformed)?;
    if header_json.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(TokenError::WrongAlgorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Compares secrets in time that depends on their length only, not on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "user-7".into(),
            exp,
            targets: vec!["sales".into()],
            numbers: false,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let t = sign(&claims(1000), b"secret");
        assert_eq!(verify(&t, b"secret", 999).unwrap(), claims(1000));
        assert_eq!(verify(&t, b"secret", 1000), Err(TokenError::Expired));
    }

    #[test]
    fn forgeries_are_refused() {
        let t = sign(&claims(1000), b"secret");
        assert_eq!(verify(&t, b"other", 1), Err(TokenError::BadSignature));
        let (head, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x","exp":99999,"numbers":true}"#);
        assert_eq!(
            verify(&format!("{head}.{forged_payload}.{sig}"), b"secret", 1),
            Err(TokenError::BadSignature)
        );
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            verify(&format!("{none}.{forged_payload}."), b"secret", 1),
            Err(TokenError::WrongAlgorithm)
        );
        assert_eq!(verify("abc", b"secret", 1), Err(TokenError::Malformed));
    }

    #[test]
    fn matches_the_rfc7519_shape_used_by_other_libraries() {
        // Token from jwt.io's HS256 example with secret "your-256-bit-secret" (payload has
        // no exp, so it fails to parse as our Claims: the signature check comes first).
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(
            verify(t, b"your-256-bit-secret", 1),
            Err(TokenError::Malformed),
            "signature accepted, claims incomplete"
        );
        assert_eq!(verify(t, b"wrong", 1), Err(TokenError::BadSignature));
    }
}
