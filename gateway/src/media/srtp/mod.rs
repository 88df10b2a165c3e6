//! SRTP toward a trunk keyed in the SDP (SDES, RFC 4568): the `a=crypto` attribute, the
//! per-trunk policy, and the two one-way SRTP contexts (RFC 3711) of a stream.
//!
//! SDES keys travel in the SDP in the clear, so they are only as secret as the signalling:
//! the configuration accepts SRTP on a trunk only with `transport = "tls"` unless the
//! operator says otherwise.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rtc::crypto::RTCCryptoProvider;
use rtc::srtp::context::Context;
use rtc::srtp::option::srtp_replay_protection;
use rtc::srtp::protection_profile::ProtectionProfile;
use serde::Deserialize;

/// Bytes of master key and salt for the AES_CM_128 suites (RFC 4568 §6.2: 16 + 14).
pub const KEY_SALT_LEN: usize = 30;

/// Room for the longest SRTP authentication tag the gateway's profiles append:
/// AEAD_AES_128_GCM's 16 bytes (RFC 7714 §8.2), where the SDES suites' HMAC-SHA1 tags are 10
/// or 4 (RFC 3711 §4.2). A buffer encrypted in place needs this much past its plaintext.
pub const MAX_SRTP_TAG: usize = 16;

/// Distinct SSRCs a stream's inbound context ever tries ([`InboundSsrcs`]).
const MAX_INBOUND_SSRCS: usize = 16;

/// Whether a trunk's media is SRTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    /// Plain RTP; an offer of RTP/SAVP only is refused (488).
    #[default]
    Off,
    /// SRTP when the peer agrees: our offers are RTP/AVP with `a=crypto` lines (best-effort
    /// SDES, as most PBXs do it), and a peer's offer is answered in kind.
    Optional,
    /// SRTP or no call: our offers are RTP/SAVP, and plain offers or answers are refused.
    Required,
}

/// The SDES crypto suites the gateway speaks (RFC 4568 §6.2; both AES-128 counter mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoSuite {
    /// 80-bit authentication tag: the suite every SDES peer implements.
    AesCm128HmacSha1_80,
    /// 32-bit authentication tag.
    AesCm128HmacSha1_32,
}

impl CryptoSuite {
    /// Every suite, in the order we offer them.
    pub const ALL: [CryptoSuite; 2] = [
        CryptoSuite::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32,
    ];

    /// The suite's name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            CryptoSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    fn from_name(name: &str) -> Option<CryptoSuite> {
        CryptoSuite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            CryptoSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }
}

/// One `a=crypto` line: a tag, a suite and its master key and salt.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SdesKey {
    /// The line's tag, which an answer repeats (RFC 4568 §5.1).
    pub tag: u32,
    /// The suite.
    pub suite: CryptoSuite,
    /// Master key then master salt.
    pub key_salt: [u8; KEY_SALT_LEN],
}

impl fmt::Debug for SdesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key itself: debug output ends up in logs.
        write!(f, "SdesKey({} {})", self.tag, self.suite.name())
    }
}

/// Why an `a=crypto` line is not usable; such lines are skipped, as RFC 4568 §7.1.1 has
/// the answerer do with ones it does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoLineError {
    /// Not `tag suite key-params`.
    #[error("a=crypto is not `tag suite inline:key`")]
    Syntax,
    /// A suite the gateway does not implement.
    #[error("crypto suite {0} is not supported (AES_CM_128_HMAC_SHA1_80 or _32 are)")]
    Suite(String),
    /// The key is not 30 bytes of base64, or carries an MKI (RFC 4568 §6.1).
    #[error("a=crypto key is not 30 bytes of base64 without MKI")]
    Key,
    /// Session parameters (UNENCRYPTED_SRTP, KDR, ...) change SRTP in ways not implemented.
    #[error("a=crypto session parameter {0} is not supported")]
    SessionParameter(String),
}

fn provider() -> &'static Arc<dyn RTCCryptoProvider> {
    static PROVIDER: OnceLock<Arc<dyn RTCCryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        rtc::crypto::default_provider().expect("the rtc crate is built with its ring provider")
    })
}

impl SdesKey {
    /// A fresh key for `suite` under `tag`, from the system's secure random source.
    pub fn generate(tag: u32, suite: CryptoSuite) -> SdesKey {
        let mut key_salt = [0u8; KEY_SALT_LEN];
        provider()
            .random()
            .fill(&mut key_salt)
            .expect("the system's random source works");
        SdesKey {
            tag,
            suite,
            key_salt,
        }
    }

    /// The value of our `a=crypto:` attribute.
    pub fn attribute_value(&self) -> String {
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            BASE64.encode(self.key_salt)
        )
    }

    /// Reads the value of a peer's `a=crypto:` attribute (RFC 4568 §9.1). A lifetime is
    /// accepted and ignored: a call never comes near 2^31 packets.
    pub fn parse(value: &str) -> Result<SdesKey, CryptoLineError> {
        let mut fields = value.split_whitespace();
        let (Some(tag), Some(suite), Some(params)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(CryptoLineError::Syntax);
        };
        if let Some(session) = fields.next() {
            return Err(CryptoLineError::SessionParameter(session.to_string()));
        }
        let tag: u32 = tag.parse().map_err(|_| CryptoLineError::Syntax)?;
        let suite =
            CryptoSuite::from_name(suite).ok_or_else(|| CryptoLineError::Suite(suite.into()))?;
        // One key only (several `;`-separated keys are for rekeying, not done here).
        let inline = params
            .strip_prefix("inline:")
            .filter(|p| !p.contains(';'))
            .ok_or(CryptoLineError::Key)?;
        let mut parts = inline.split('|');
        let key = parts.next().unwrap_or_default();
        for part in parts {
            // `2^31` or a plain number is a lifetime; `n:len` is an MKI we cannot use.
            if part.contains(':') {
                return Err(CryptoLineError::Key);
            }
        }
        let bytes = BASE64.decode(key).map_err(|_| CryptoLineError::Key)?;
        let key_salt: [u8; KEY_SALT_LEN] = bytes.try_into().map_err(|_| CryptoLineError::Key)?;
        Ok(SdesKey {
            tag,
            suite,
            key_salt,
        })
    }
}

/// What our side of a stream offers: the policy and a key per suite.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalSrtp {
    /// The trunk's policy.
    pub policy: SrtpPolicy,
    /// Our keys, one per suite, tags 1.. (empty when the policy is off).
    pub keys: Vec<SdesKey>,
}

impl LocalSrtp {
    /// Fresh keys for a new stream under `policy`.
    pub fn new(policy: SrtpPolicy) -> LocalSrtp {
        let keys = match policy {
            SrtpPolicy::Off => Vec::new(),
            _ => (1..)
                .zip(CryptoSuite::ALL)
                .map(|(tag, suite)| SdesKey::generate(tag, suite))
                .collect(),
        };
        LocalSrtp { policy, keys }
    }

    /// Our key for `suite`, if we have one.
    pub fn key_for(&self, suite: CryptoSuite) -> Option<&SdesKey> {
        self.keys.iter().find(|k| k.suite == suite)
    }
}

/// The keys an offer/answer settled on for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrtpKeys {
    /// The profile the peer's SDP used: an answer mirrors it (RTP/SAVP or RTP/AVP).
    pub secure_profile: bool,
    /// Our key (we encrypt with it) under the tag the answer carries.
    pub ours: SdesKey,
    /// The peer's key (we decrypt with it).
    pub theirs: SdesKey,
}

/// A stream's SRTP: encryption with our key, decryption with the peer's.
///
/// The contexts are `Send` but not `Sync`; the stream is shared by reference while it waits
/// for a datagram, so each sits in a mutex that is never locked — only reached through
/// `get_mut`, which costs nothing.
pub struct SrtpSession {
    keys: SrtpKeys,
    outbound: Mutex<Context>,
    inbound: Mutex<Context>,
    inbound_ssrcs: InboundSsrcs,
}

/// The SSRCs an inbound context has been asked to unprotect. The context keeps state per SSRC
/// before it authenticates a packet, so a source spraying forged SSRCs (it only needs the
/// peer's address) must not grow it without bound: past [`MAX_INBOUND_SSRCS`] new ones are
/// refused unread.
#[derive(Debug, Default)]
pub struct InboundSsrcs(Vec<u32>);

impl InboundSsrcs {
    /// Authenticates and decrypts the SRTP packet in `packet` with `context` (RFC 3711 §3.3)
    /// once its SSRC is admitted, in place: the plaintext packet is `packet[..n]` for the
    /// returned `n`. A forged, replayed or truncated packet is an error.
    pub fn unprotect(
        &mut self,
        context: &mut Context,
        packet: &mut [u8],
    ) -> Result<usize, SrtpError> {
        self.admit(packet)?;
        context
            .decrypt_rtp_in_place(packet)
            .map_err(|e| SrtpError(e.to_string()))
    }

    /// Admits the SRTP packet's SSRC, or says why not.
    fn admit(&mut self, packet: &[u8]) -> Result<(), SrtpError> {
        let Some(bytes) = packet.get(8..12) else {
            return Err(SrtpError("shorter than an RTP header".into()));
        };
        let ssrc = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if !self.0.contains(&ssrc) {
            if self.0.len() >= MAX_INBOUND_SSRCS {
                return Err(SrtpError(format!("SSRC {ssrc:#x} is one too many")));
            }
            self.0.push(ssrc);
        }
        Ok(())
    }
}

/// The context in `m`, reached by exclusive borrow (no lock is ever taken).
fn exclusive(m: &mut Mutex<Context>) -> &mut Context {
    m.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpSession")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Why a packet could not be protected or unprotected.
#[derive(Debug, thiserror::Error)]
#[error("SRTP: {0}")]
pub struct SrtpError(String);

fn context(key: &SdesKey, replay_protection: bool) -> Result<Context, SrtpError> {
    let profile = key.suite.profile();
    let (master_key, master_salt) = key.key_salt.split_at(profile.key_len());
    Context::new(
        master_key,
        master_salt,
        profile,
        // RFC 3711 §3.3.2: a receiver keeps a replay list; 64 packets is its minimum.
        replay_protection.then(|| srtp_replay_protection(64)),
        None,
        provider().crypto(),
    )
    .map_err(|e| SrtpError(e.to_string()))
}

impl SrtpSession {
    /// The contexts for `keys`.
    pub fn new(keys: SrtpKeys) -> Result<SrtpSession, SrtpError> {
        Ok(SrtpSession {
            outbound: Mutex::new(context(&keys.ours, false)?),
            inbound: Mutex::new(context(&keys.theirs, true)?),
            keys,
            inbound_ssrcs: InboundSsrcs::default(),
        })
    }

    /// The keys these contexts were made from.
    pub fn keys(&self) -> &SrtpKeys {
        &self.keys
    }

    /// Encrypts the RTP packet in `buf[..plain_len]` where it lies and authenticates it
    /// (RFC 3711 §3.3); returns the SRTP packet's length. `buf` needs room for the tag after
    /// the packet (10 bytes at most for the SDES suites).
    pub fn protect(&mut self, buf: &mut [u8], plain_len: usize) -> Result<usize, SrtpError> {
        exclusive(&mut self.outbound)
            .encrypt_rtp_in_place(buf, plain_len)
            .map_err(|e| SrtpError(e.to_string()))
    }

    /// Authenticates and decrypts the SRTP packet in `packet`, leaving the plaintext at its
    /// start; returns the plaintext's length. A forged, replayed or truncated packet is an
    /// error.
    pub fn unprotect(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        self.inbound_ssrcs
            .unprotect(exclusive(&mut self.inbound), packet)
    }
}

#[cfg(test)]
mod tests;
