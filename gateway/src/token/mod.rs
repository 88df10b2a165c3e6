//! Short-lived call tokens: JWTs (RFC 7519) minted by the website's backend, verified with
//! the `jsonwebtoken` crate. HS256 with one or several shared secrets (several, told apart
//! by `kid`, so a secret can be rotated without a gap), and RS256/ES256 with public keys (a
//! PEM file or a JWK set) for sites whose identity provider signs the tokens.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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
    /// Not three base64url parts of JSON, or claims missing.
    #[error("token is not a JWT with `sub` and `exp` claims")]
    Malformed,
    /// `alg` is none of HS256, RS256, ES256 (RFC 8725 §3.1: never `none`), or no key of the
    /// gateway is for it.
    #[error("token algorithm must be HS256, RS256 or ES256, with a key the gateway has")]
    WrongAlgorithm,
    /// No configured key has the token's `kid`.
    #[error("token names a key (`kid`) the gateway does not have")]
    UnknownKey,
    /// The signature does not verify with any configured key.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("token has expired; fetch a new one")]
    Expired,
    /// `aud` is not the configured audience.
    #[error("token is for another audience (`aud`)")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("token is from another issuer (`iss`)")]
    WrongIssuer,
}

/// One key tokens may be signed with.
#[derive(Clone)]
struct VerifyingKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys and checks tokens are verified with, built once from the configuration.
#[derive(Clone, Default)]
pub struct TokenVerifier {
    keys: Vec<VerifyingKey>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Why key material could not be used; names the problem for the configuration check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl TokenVerifier {
    /// No keys: every token is refused.
    pub fn new(audience: Option<String>, issuer: Option<String>) -> TokenVerifier {
        TokenVerifier {
            keys: Vec::new(),
            audience,
            issuer,
        }
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds an HS256 shared secret, with the `kid` tokens signed with it carry (if any).
    pub fn add_secret(&mut self, kid: Option<String>, secret: &[u8]) -> Result<(), KeyError> {
        let key = DecodingKey::from_secret(secret)
            .map_err(|_| KeyError("an HS256 secret cannot be empty".into()))?;
        self.keys.push(VerifyingKey {
            kid,
            algorithm: Algorithm::HS256,
            key,
        });
        Ok(())
    }

    /// Adds a PEM public key for RS256 (an RSA key) or ES256 (a P-256 key).
    pub fn add_public_pem(
        &mut self,
        kid: Option<String>,
        algorithm: Algorithm,
        pem: &[u8],
    ) -> Result<(), KeyError> {
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
            other => {
                return Err(KeyError(format!(
                    "{other:?} is not supported; use RS256 or ES256"
                )));
            }
        }
        .map_err(|e| KeyError(format!("not a {algorithm:?} public key in PEM: {e}")))?;
        self.keys.push(VerifyingKey {
            kid,
            algorithm,
            key,
        });
        Ok(())
    }

    /// Adds every RS256 and ES256 key of a JWK set (RFC 7517), as an identity provider
    /// publishes it. Returns how many keys it added.
    pub fn add_jwks(&mut self, json: &[u8]) -> Result<usize, KeyError> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| KeyError(format!("not a JWK set (`{{\"keys\": [...]}}`): {e}")))?;
        let before = self.keys.len();
        for jwk in &set.keys {
            let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(KeyAlgorithm::RS256), _) => Algorithm::RS256,
                (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
                (Some(_), _) => continue,
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, AlgorithmParameters::EllipticCurve(ec))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                (None, _) => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                KeyError(format!(
                    "key {:?} is unusable: {e}",
                    jwk.common.key_id.as_deref().unwrap_or("(no kid)")
                ))
            })?;
            self.keys.push(VerifyingKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        match self.keys.len() - before {
            0 => Err(KeyError("the JWK set has no RS256 or ES256 key".into())),
            n => Ok(n),
        }
    }

    /// Verifies a token at time `now` (Unix seconds): a supported algorithm, a key of ours
    /// (by `kid` when the token names one), the signature, `exp`, and `aud`/`iss` when
    /// configured.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let token = token.trim();
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(TokenError::WrongAlgorithm);
        }
        let for_alg = || self.keys.iter().filter(|k| k.algorithm == header.alg);
        if for_alg().next().is_none() {
            return Err(TokenError::WrongAlgorithm);
        }
        // A token that names its key is checked against that key only (or, when no key has
        // that name, against the keys configured without one); one that names none, against
        // every key of its algorithm (a single shared secret needs no `kid`).
        let candidates: Vec<&VerifyingKey> = match &header.kid {
            Some(kid) => {
                let named: Vec<_> = for_alg()
                    .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .collect();
                if named.is_empty() {
                    for_alg().filter(|k| k.kid.is_none()).collect()
                } else {
                    named
                }
            }
            None => for_alg().collect(),
        };
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        let mut validation = Validation::new(header.alg);
        // `exp` is compared with `now` below, so tests and the clock agree; the library
        // still requires the claim.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.required_spec_claims = ["exp".to_string(), "sub".to_string()].into();
        // A configured audience or issuer is required, not just checked when present.
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let mut outcome = Err(TokenError::BadSignature);
        for key in candidates {
            use jsonwebtoken::errors::ErrorKind;
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    outcome = Err(match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::InvalidAudience => TokenError::WrongAudience,
                        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                        ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                        ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                            TokenError::WrongAudience
                        }
                        ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::WrongIssuer,
                        _ => TokenError::Malformed,
                    });
                    if *e.kind() != ErrorKind::InvalidSignature {
                        break;
                    }
                }
            }
        }
        let claims = outcome?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Signs claims with HS256 (for the website's backend, tests and the demo's token endpoint),
/// with `kid` in the header when given. Panics on an empty secret, which no configuration
/// accepts.
pub fn sign_with(claims: &Claims, secret: &[u8], kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_secret(secret).expect("a non-empty HS256 secret");
    jsonwebtoken::encode(&header, claims, &key).expect("HS256 signing of claims cannot fail")
}

/// Signs claims with HS256 and no `kid`.
pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    sign_with(claims, secret, None)
}

/// Compares secrets in time that depends on their length only, not on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "user-7".into(),
            exp,
            targets: vec!["sales".into()],
            numbers: false,
        }
    }

    fn verifier(secret: &[u8]) -> TokenVerifier {
        let mut v = TokenVerifier::new(None, None);
        v.add_secret(None, secret).unwrap();
        v
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let t = sign(&claims(1000), b"secret");
        let v = verifier(b"secret");
        assert_eq!(v.verify(&t, 999).unwrap(), claims(1000));
        assert_eq!(v.verify(&t, 1000), Err(TokenError::Expired));
    }

    #[test]
    fn forgeries_are_refused() {
        let t = sign(&claims(1000), b"secret");
        assert_eq!(
            verifier(b"other").verify(&t, 1),
            Err(TokenError::BadSignature)
        );
        let v = verifier(b"secret");
        let (head, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x","exp":99999,"numbers":true}"#);
        assert_eq!(
            v.verify(&format!("{head}.{forged_payload}.{sig}"), 1),
            Err(TokenError::BadSignature)
        );
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert!(v.verify(&format!("{none}.{forged_payload}."), 1).is_err());
        // An RS256 header on an HS256-only gateway: no algorithm switching (RFC 8725 §2.1).
        let rs = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        assert_eq!(
            v.verify(&format!("{rs}.{forged_payload}.{sig}"), 1),
            Err(TokenError::WrongAlgorithm)
        );
        assert_eq!(v.verify("abc", 1), Err(TokenError::Malformed));
    }

    #[test]
    fn matches_the_rfc7519_shape_used_by_other_libraries() {
        // Token from jwt.io's HS256 example with secret "your-256-bit-secret": signature
        // good, but it has no `exp`, which this gateway requires.
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(
            verifier(b"your-256-bit-secret").verify(t, 1),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verifier(b"wrong").verify(t, 1),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn rotation_keeps_old_and_new_secrets_apart_by_kid() {
        let mut v = TokenVerifier::new(None, None);
        v.add_secret(Some("2026-11".into()), b"old secret").unwrap();
        v.add_secret(Some("2026-12".into()), b"new secret").unwrap();
        let old = sign_with(&claims(1000), b"old secret", Some("2026-11"));
        let new = sign_with(&claims(1000), b"new secret", Some("2026-12"));
        assert!(v.verify(&old, 1).is_ok());
        assert!(v.verify(&new, 1).is_ok());
        // Without a kid, every secret is tried.
        assert!(v.verify(&sign(&claims(1000), b"new secret"), 1).is_ok());
        // A kid names one key: the other secret does not stand in for it.
        let crossed = sign_with(&claims(1000), b"new secret", Some("2026-11"));
        assert_eq!(v.verify(&crossed, 1), Err(TokenError::BadSignature));
        let unknown = sign_with(&claims(1000), b"new secret", Some("2027-01"));
        assert_eq!(v.verify(&unknown, 1), Err(TokenError::UnknownKey));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        #[derive(Serialize)]
        struct WithAudience<'a> {
            sub: &'a str,
            exp: u64,
            aud: &'a str,
            iss: &'a str,
        }
        let mut v = TokenVerifier::new(Some("gateway".into()), Some("https://shop.example".into()));
        v.add_secret(None, b"secret").unwrap();
        let token = |aud, iss| {
            let c = WithAudience {
                sub: "u",
                exp: 1000,
                aud,
                iss,
            };
            let key = EncodingKey::from_secret(b"secret").unwrap();
            jsonwebtoken::encode(&Header::default(), &c, &key).unwrap()
        };
        assert!(
            v.verify(&token("gateway", "https://shop.example"), 1)
                .is_ok()
        );
        assert_eq!(
            v.verify(&token("other", "https://shop.example"), 1),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            v.verify(&token("gateway", "https://evil.example"), 1),
            Err(TokenError::WrongIssuer)
        );
        // Required once configured: a token without them is refused too (the library checks
        // the missing claims in no fixed order).
        let bare = sign(&claims(1000), b"secret");
        assert!(matches!(
            v.verify(&bare, 1),
            Err(TokenError::WrongAudience | TokenError::WrongIssuer)
        ));
        let mut only_aud = TokenVerifier::new(Some("gateway".into()), None);
        only_aud.add_secret(None, b"secret").unwrap();
        assert_eq!(only_aud.verify(&bare, 1), Err(TokenError::WrongAudience));
    }

    #[test]
    fn es256_tokens_verify_with_a_pem_key_and_a_jwk_set() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("idp-1".into());
        let token = jsonwebtoken::encode(&header, &claims(1000), &private).unwrap();

        let mut by_pem = TokenVerifier::new(None, None);
        by_pem
            .add_public_pem(None, Algorithm::ES256, pair.public_key_pem().as_bytes())
            .unwrap();
        assert_eq!(by_pem.verify(&token, 1).unwrap(), claims(1000));

        // The same key as an identity provider publishes it: x and y of the P-256 point.
        let point = pair.public_key_raw();
        assert_eq!(point[0], 4, "uncompressed point");
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "idp-1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]});
        let mut by_jwks = TokenVerifier::new(None, None);
        assert_eq!(by_jwks.add_jwks(jwks.to_string().as_bytes()), Ok(1));
        assert_eq!(by_jwks.verify(&token, 1).unwrap(), claims(1000));
        // An HS256 token forged with the public key as its secret is refused (RFC 8725 §2.1).
        let forged = sign(&claims(1000), pair.public_key_pem().as_bytes());
        assert_eq!(by_pem.verify(&forged, 1), Err(TokenError::WrongAlgorithm));
        assert!(by_jwks.add_jwks(b"{\"keys\": []}").is_err());
        assert!(
            by_pem
                .add_public_pem(None, Algorithm::RS256, b"not pem")
                .is_err()
        );
    }
}
