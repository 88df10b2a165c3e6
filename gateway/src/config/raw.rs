//! The file as written: serde shapes of every table, with spans kept for error messages.
//! [`super::Config::load`] turns them into the model.

use serde::Deserialize;
use toml::Spanned;

use std::collections::BTreeMap;

use super::{
    FailurePolicy, Identity, Limits, Prack, Privacy, RegisterConflict, RtpSource, SrtpPolicy,
    Transport, UnknownSources,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) sip: RawSip,
    #[serde(default)]
    pub(super) rtp: RawRtp,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) webrtc: RawWebrtc,
    #[serde(default)]
    pub(super) media: RawMedia,
    #[serde(default)]
    pub(super) cdr: RawCdr,
    #[serde(default)]
    pub(super) trunks: BTreeMap<String, Spanned<RawTrunk>>,
    #[serde(default)]
    pub(super) targets: BTreeMap<String, Spanned<RawTarget>>,
    #[serde(default)]
    pub(super) limits: Option<Spanned<Limits>>,
    #[serde(default)]
    pub(super) inbound: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) plugins: Vec<Spanned<RawPlugin>>,
    pub(super) cluster: Option<Spanned<RawCluster>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) redis_url: Spanned<String>,
    pub(super) redis_password_env: Option<Spanned<String>>,
    pub(super) redis_password_file: Option<Spanned<String>>,
    pub(super) node_id: Spanned<String>,
    pub(super) sip_address: Option<Spanned<String>>,
    pub(super) lease_seconds: Option<Spanned<u32>>,
    pub(super) key_prefix: Option<Spanned<String>>,
    pub(super) max_calls: Option<Spanned<u32>>,
    pub(super) peers: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub(super) name: String,
    pub(super) path: Spanned<String>,
    #[serde(default)]
    pub(super) config: toml::Table,
    #[serde(default)]
    pub(super) policy: FailurePolicy,
    pub(super) reject_code: Option<Spanned<u16>>,
    pub(super) memory_mb: Option<u32>,
    pub(super) deadline_ms: Option<u32>,
    pub(super) max_instances: Option<u32>,
    pub(super) data_dir: Option<Spanned<String>>,
    pub(super) data_quota_mb: Option<u64>,
    pub(super) allow_http: Option<Spanned<Vec<String>>>,
    pub(super) http_timeout_ms: Option<Spanned<u32>>,
    pub(super) http_max_response_bytes: Option<Spanned<u32>>,
    pub(super) http_max_concurrent: Option<Spanned<u32>>,
    pub(super) http_ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSip {
    pub(super) udp: Option<Spanned<String>>,
    pub(super) tcp: Option<Spanned<String>>,
    pub(super) tls: Option<Spanned<String>>,
    pub(super) tls_cert: Option<Spanned<String>>,
    pub(super) tls_key: Option<Spanned<String>>,
    pub(super) public_ip: Option<Spanned<String>>,
    pub(super) user_agent: Option<String>,
    #[serde(default)]
    pub(super) unknown_sources: UnknownSources,
    pub(super) rate_limit: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRtp {
    pub(super) ip: Option<Spanned<String>>,
    pub(super) port_min: Option<Spanned<u16>>,
    pub(super) port_max: Option<Spanned<u16>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    pub(super) token_secret_env: Option<Spanned<String>>,
    pub(super) token_secret_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) anonymous: bool,
    pub(super) numbers_trunk: Option<Spanned<String>>,
    pub(super) admin_token_env: Option<Spanned<String>>,
    pub(super) admin_token_file: Option<Spanned<String>>,
    pub(super) admin_listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) register_conflict: RegisterConflict,
    pub(super) resume_seconds: Option<Spanned<u32>>,
    pub(super) token_kid: Option<String>,
    #[serde(default)]
    pub(super) token_keys: Vec<Spanned<RawTokenKey>>,
    pub(super) token_jwks_file: Option<Spanned<String>>,
    pub(super) token_audience: Option<String>,
    pub(super) token_issuer: Option<String>,
}

/// One more key tokens may be signed with: an HS256 secret (rotation) or a public key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokenKey {
    pub(super) kid: Option<String>,
    pub(super) secret_env: Option<Spanned<String>>,
    pub(super) secret_file: Option<Spanned<String>>,
    pub(super) public_key_file: Option<Spanned<String>>,
    pub(super) algorithm: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebrtc {
    pub(super) udp: Option<Spanned<String>>,
    #[serde(default = "empty_list")]
    pub(super) ice_servers: Spanned<Vec<String>>,
    pub(super) turn_secret_env: Option<Spanned<String>>,
    pub(super) turn_secret_file: Option<Spanned<String>>,
    pub(super) turn_credential_seconds: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMedia {
    pub(super) opus_complexity: Option<Spanned<u8>>,
    pub(super) opus_complexity_under_loss: Option<Spanned<u8>>,
    pub(super) jitter_ms: Option<u32>,
    pub(super) workers: Option<Spanned<u32>>,
    pub(super) turn_ms: Option<Spanned<u32>>,
    pub(super) nap_us: Option<Spanned<u32>>,
    pub(super) nice: Option<Spanned<i32>>,
    pub(super) io_uring: Option<bool>,
    pub(super) worker_clock: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCdr {
    pub(super) path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrunk {
    pub(super) addresses: Spanned<Vec<String>>,
    #[serde(default = "default_transport")]
    pub(super) transport: Transport,
    pub(super) username: Option<String>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) from_user: Option<String>,
    pub(super) from_domain: Option<String>,
    #[serde(default = "default_codecs")]
    pub(super) codecs: Spanned<Vec<String>>,
    #[serde(default)]
    pub(super) register: bool,
    #[serde(default = "default_register_expires")]
    pub(super) register_expires: u32,
    #[serde(default = "default_options_interval")]
    pub(super) options_interval: u32,
    pub(super) max_channels: Option<u32>,
    #[serde(default = "empty_list")]
    pub(super) failover: Spanned<Vec<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) rtp_source: RtpSource,
    #[serde(default)]
    pub(super) prack: Prack,
    #[serde(default = "default_media_timeout")]
    pub(super) media_timeout: u32,
    #[serde(default = "default_session_expires")]
    pub(super) session_expires: Spanned<u32>,
    #[serde(default)]
    pub(super) identity: Identity,
    #[serde(default)]
    pub(super) privacy: Privacy,
    #[serde(default = "default_srtp")]
    pub(super) srtp: Spanned<SrtpPolicy>,
    #[serde(default)]
    pub(super) srtp_without_tls: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) trunk: Spanned<String>,
    pub(super) number: Spanned<String>,
}

pub(super) fn default_session_expires() -> Spanned<u32> {
    Spanned::new(0..0, 1800)
}

impl Default for RawWebrtc {
    fn default() -> Self {
        RawWebrtc {
            udp: None,
            ice_servers: empty_list(),
            turn_secret_env: None,
            turn_secret_file: None,
            turn_credential_seconds: None,
        }
    }
}

pub(super) fn default_srtp() -> Spanned<SrtpPolicy> {
    Spanned::new(0..0, SrtpPolicy::Off)
}

pub(super) fn default_media_timeout() -> u32 {
    30
}

pub(super) fn default_transport() -> Transport {
    Transport::Udp
}

pub(super) fn default_codecs() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["PCMU".into(), "PCMA".into()])
}

pub(super) fn empty_list() -> Spanned<Vec<String>> {
    Spanned::new(0..0, Vec::new())
}

pub(super) fn default_register_expires() -> u32 {
    600
}

pub(super) fn default_options_interval() -> u32 {
    30
}
