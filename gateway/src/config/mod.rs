//! The configuration file (TOML), validated up front with the file, line and field of every
//! mistake, and secrets resolved from the environment or files. Nothing here does I/O after
//! start-up.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::media::g711::G711;
use crate::media::opus::EncoderSettings;
use checker::{Checker, read_secret_file};

/// One mistake in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// 1-based line, 0 when the mistake has no place (e.g. the file could not be read).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted path of the field, e.g. `trunks.carrier.addresses`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// All mistakes found in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, as given.
    pub file: PathBuf,
    /// Every issue found, in file order.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                issue.line,
                issue.column,
                issue.field,
                issue.message
            )?;
        }
        Ok(())
    }
}

/// SIP transport for a trunk (RFC 3261 §18; TLS per RFC 5630).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Datagrams; requests are retransmitted by the transaction layer.
    Udp,
    /// One TCP connection per trunk address.
    Tcp,
    /// TCP with TLS (rustls); the certificate is checked against the address's host name.
    Tls,
}

impl Transport {
    /// The token used in Via headers and `transport=` URI parameters.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// True for transports that deliver reliably (no SIP retransmission, §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// Where a trunk's RTP may come from (RTP bleed is the classic SBC hole: a leg that
/// latches to any source hands the call's audio to whoever sprays the port range).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtpSource {
    /// Only from the exact address and port the trunk's SDP names.
    Strict,
    /// From the SDP's IP or the trunk's signalling IP, any port (NAT rewrites ports), latched
    /// to the first such source for the rest of the stream (RFC 4961 symmetric RTP).
    #[default]
    Latch,
}

/// What the SIP side does with a request from an address that is no trunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSources {
    /// Nothing: no reply, no state. Scanners learn nothing and a spoofed source is sent
    /// nothing (no reflection). The default: every legitimate peer is a configured trunk.
    #[default]
    Drop,
    /// One stateless 403 per request (no transaction, never retransmitted); for operators
    /// who want a misconfigured peer to see why it is refused.
    Reject,
}

/// What a second connection registering an identity already registered gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterConflict {
    /// It takes the identity; the first connection is told (`unregistered`). A reloaded tab
    /// re-registers before the old socket notices it is gone.
    #[default]
    Replace,
    /// It is refused while the first connection is open.
    Refuse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    sip: RawSip,
    #[serde(default)]
    rtp: RawRtp,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    webrtc: RawWebrtc,
    #[serde(default)]
    media: RawMedia,
    #[serde(default)]
    cdr: RawCdr,
    #[serde(default)]
    trunks: BTreeMap<String, Spanned<RawTrunk>>,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<RawTarget>>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    inbound: BTreeMap<String, String>,
    #[serde(default)]
    plugins: Vec<Spanned<RawPlugin>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: String,
    path: Spanned<String>,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    policy: FailurePolicy,
    reject_code: Option<Spanned<u16>>,
    memory_mb: Option<u32>,
    deadline_ms: Option<u32>,
    max_instances: Option<u32>,
    data_dir: Option<Spanned<String>>,
    data_quota_mb: Option<u64>,
}

/// What happens when a plugin traps, times out or exceeds its memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Continue as if the plugin had said `continue` (routing helpers, observers).
    #[default]
    FailOpen,
    /// Reject the call with the plugin's `reject_code` (compliance gates).
    FailClosed,
}

/// One plugin in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Name, for logs and metrics.
    pub name: String,
    /// The component (`.wasm`).
    pub path: PathBuf,
    /// The `[plugins.config]` table as JSON, passed to `init`.
    pub config_json: String,
    /// Failure policy.
    pub policy: FailurePolicy,
    /// SIP status for `fail-closed` rejections.
    pub reject_code: u16,
    /// Memory cap per instance.
    pub memory_bytes: usize,
    /// Deadline per hook call.
    pub deadline: std::time::Duration,
    /// Calls that may hold an instance of this plugin at once; beyond, the failure policy.
    pub max_instances: u32,
    /// The folder mounted at `/data` for a plugin whose manifest asks for one.
    pub data_dir: Option<PathBuf>,
    /// Once the data directory holds this much, new calls get it read-only.
    pub data_quota_bytes: u64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSip {
    udp: Option<Spanned<String>>,
    tcp: Option<Spanned<String>>,
    tls: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    public_ip: Option<Spanned<String>>,
    user_agent: Option<String>,
    #[serde(default)]
    unknown_sources: UnknownSources,
    rate_limit: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRtp {
    ip: Option<Spanned<String>>,
    port_min: Option<Spanned<u16>>,
    port_max: Option<Spanned<u16>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    token_secret_env: Option<Spanned<String>>,
    token_secret_file: Option<Spanned<String>>,
    #[serde(default)]
    anonymous: bool,
    numbers_trunk: Option<Spanned<String>>,
    admin_token_env: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
    admin_listen: Option<Spanned<String>>,
    #[serde(default)]
    register_conflict: RegisterConflict,
    token_kid: Option<String>,
    #[serde(default)]
    token_keys: Vec<Spanned<RawTokenKey>>,
    token_jwks_file: Option<Spanned<String>>,
    token_audience: Option<String>,
    token_issuer: Option<String>,
}

/// One more key tokens may be signed with: an HS256 secret (rotation) or a public key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenKey {
    kid: Option<String>,
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    public_key_file: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebrtc {
    udp: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    opus_complexity: Option<Spanned<u8>>,
    opus_complexity_under_loss: Option<Spanned<u8>>,
    jitter_ms: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCdr {
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrunk {
    addresses: Spanned<Vec<String>>,
    #[serde(default = "default_transport")]
    transport: Transport,
    username: Option<String>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    from_user: Option<String>,
    from_domain: Option<String>,
    #[serde(default = "default_codecs")]
    codecs: Spanned<Vec<String>>,
    #[serde(default)]
    register: bool,
    #[serde(default = "default_register_expires")]
    register_expires: u32,
    #[serde(default = "default_options_interval")]
    options_interval: u32,
    max_channels: Option<u32>,
    #[serde(default = "empty_list")]
    failover: Spanned<Vec<String>>,
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    rtp_source: RtpSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    trunk: Spanned<String>,
    number: Spanned<String>,
}

fn default_transport() -> Transport {
    Transport::Udp
}
fn default_codecs() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["PCMU".into(), "PCMA".into()])
}
fn empty_list() -> Spanned<Vec<String>> {
    Spanned::new(0..0, Vec::new())
}
fn default_register_expires() -> u32 {
    600
}
fn default_options_interval() -> u32 {
    30
}

/// Global limits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Concurrent calls across all trunks.
    #[serde(default = "default_max_calls")]
    pub max_calls: u32,
    /// Seconds running calls may continue after SIGTERM before they are hung up.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u32,
    /// Concurrent calls one signaling connection may hold (a page needs one; an agent's
    /// console a few).
    #[serde(default = "default_max_calls_per_connection")]
    pub max_calls_per_connection: u32,
    /// Seconds a call may ring before it is given up: an outbound call is cancelled
    /// (`no_answer`), an inbound one answered 480.
    #[serde(default = "default_ring_seconds")]
    pub ring_seconds: u32,
}

fn default_ring_seconds() -> u32 {
    60
}

fn default_max_calls_per_connection() -> u32 {
    4
}

/// Requests per second from one address before it is ignored: far above what a trunk sends
/// (a busy carrier trunk with 500 calls of 3-minute average sends ~10/s), far below a flood.
pub const DEFAULT_SIP_RATE_LIMIT: u32 = 200;

fn default_max_calls() -> u32 {
    500
}
fn default_drain_seconds() -> u32 {
    60
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_calls: default_max_calls(),
            drain_seconds: default_drain_seconds(),
            max_calls_per_connection: default_max_calls_per_connection(),
            ring_seconds: default_ring_seconds(),
        }
    }
}

/// SIP listening and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipConfig {
    /// UDP listen address.
    pub udp: SocketAddr,
    /// TCP listen address, if any.
    pub tcp: Option<SocketAddr>,
    /// TLS listen address, if any (needs `tls_cert` and `tls_key`).
    pub tls: Option<SocketAddr>,
    /// PEM certificate chain and key for the TLS listener.
    pub tls_identity: Option<(PathBuf, PathBuf)>,
    /// Address advertised in Via, Contact and SDP (1:1 NAT); the bound address otherwise.
    pub public_ip: Option<IpAddr>,
    /// The User-Agent / Server header value.
    pub user_agent: String,
    /// Requests from addresses that are no trunk: dropped or refused statelessly.
    pub unknown_sources: UnknownSources,
    /// Requests per second one source address may send before it is ignored for a while.
    pub rate_limit: u32,
}

/// The RTP side: which address and ports trunk media uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpConfig {
    /// Bind address for RTP sockets.
    pub ip: IpAddr,
    /// Lowest port (even).
    pub port_min: u16,
    /// Highest port.
    pub port_max: u16,
}

/// A SIP trunk: a carrier or PBX the gateway places calls on.
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkConfig {
    /// The trunk's name in this file.
    pub name: String,
    /// `host:port` (or `host`, port 5060/5061) in failover order.
    pub addresses: Vec<String>,
    /// Transport to all addresses.
    pub transport: Transport,
    /// Digest credentials, if the trunk challenges.
    pub credentials: Option<Credentials>,
    /// User part of From (the caller ID when none is given per call).
    pub from_user: String,
    /// Host part of From and of the Request-URI; the first address's host by default.
    pub from_domain: Option<String>,
    /// Codecs offered, in preference order.
    pub codecs: Vec<G711>,
    /// Register to the trunk (registration-based trunks).
    pub register: bool,
    /// Requested registration lifetime, seconds.
    pub register_expires: u32,
    /// OPTIONS health-check interval, seconds; 0 disables.
    pub options_interval: u32,
    /// Concurrent calls on this trunk.
    pub max_channels: Option<u32>,
    /// Trunks to try next, in order, after a timeout, 408 or 5xx.
    pub failover: Vec<String>,
    /// PEM CA bundle trusted for TLS, in addition to the public roots.
    pub ca_file: Option<PathBuf>,
    /// Where this trunk's RTP may come from.
    pub rtp_source: RtpSource,
}

impl fmt::Debug for TrunkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrunkConfig")
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .field("transport", &self.transport)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|c| &c.username),
            )
            .finish_non_exhaustive()
    }
}

/// Username and password for digest authentication. The password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Digest username.
    pub username: String,
    /// Digest password, from the environment or a file.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <redacted> }}",
            self.username
        )
    }
}

/// A named call target: what a widget calls instead of a raw number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Trunk to place the call on.
    pub trunk: String,
    /// Number dialled on that trunk.
    pub number: String,
}

/// The HTTP side: signaling, demo page, metrics.
#[derive(Clone)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// `Origin` values allowed to open `/ws`; empty allows any (development only).
    pub allowed_origins: Vec<String>,
    /// The keys call tokens are verified with; `None` when tokens are not configured.
    pub tokens: Option<crate::signal::token::TokenVerifier>,
    /// Calls to named targets without a token (a public demo).
    pub anonymous: bool,
    /// The trunk for raw numbers (tokens with `numbers: true`); `None` refuses raw numbers.
    pub numbers_trunk: Option<String>,
    /// Bearer token for `/admin/*`; `None` disables the admin API.
    pub admin_token: Option<Vec<u8>>,
    /// A separate listen address for `/metrics` and `/admin/*`, so they need not face the
    /// internet; `None` serves them on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// A second registration of the same identity replaces the first, or is refused.
    pub register_conflict: RegisterConflict,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("allowed_origins", &self.allowed_origins)
            .field("tokens", &self.tokens)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("anonymous", &self.anonymous)
            .field("numbers_trunk", &self.numbers_trunk)
            .field("admin_listen", &self.admin_listen)
            .finish()
    }
}

/// Media processing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// Opus encoder complexity on a clean path, 0-10 (default 1: see BENCHMARKS.md for the
    /// measurement).
    pub opus_complexity: u8,
    /// The complexity while the browser reports loss and in-band FEC is coded (default 5):
    /// the FEC it codes is better by 0.13 MOS at 10 % loss than at 1.
    pub opus_complexity_under_loss: u8,
    /// Jitter buffer depth on the trunk → browser path, ms.
    pub jitter_ms: u32,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from (reloads read it again); `None` in demo mode.
    pub source: Option<PathBuf>,
    /// HTTP side.
    pub http: HttpConfig,
    /// UDP address for all browser media (one port, ICE mux).
    pub webrtc_udp: SocketAddr,
    /// Media settings.
    pub media: MediaConfig,
    /// Where CDRs are appended as JSON lines; `None` disables them.
    pub cdr_path: Option<PathBuf>,
    /// Inbound routing: the number dialled on a trunk (DID) → the browser identity to ring.
    pub inbound: BTreeMap<String, String>,
    /// The plugin chain, in order.
    pub plugins: Vec<PluginConfig>,
    /// SIP side.
    pub sip: SipConfig,
    /// RTP side.
    pub rtp: RtpConfig,
    /// Trunks by name.
    pub trunks: BTreeMap<String, TrunkConfig>,
    /// Targets by name.
    pub targets: BTreeMap<String, Target>,
    /// Limits.
    pub limits: Limits,
}

/// Relative plugin paths are relative to the configuration file's folder.
fn path_base(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

impl Config {
    /// Reads, parses and validates a file; secrets are read from the environment and files.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            issues: vec![ConfigIssue {
                line: 0,
                column: 0,
                field: "(file)".into(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        let mut config = Self::parse(&text, path, &|name| std::env::var(name).ok())?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates `text`; `env` looks up environment variables (injected for tests).
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let fail = |issues| ConfigError {
            file: path.to_path_buf(),
            issues,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            let message = e.message().to_string();
            let field = message
                .split('`')
                .nth(1)
                .filter(|_| {
                    message.starts_with("unknown field") || message.starts_with("missing field")
                })
                .unwrap_or("(syntax)")
                .to_string();
            fail(vec![ConfigIssue {
                line,
                column,
                field,
                message: e.message().replace('\n', " "),
            }])
        })?;
        let mut c = Checker {
            source: text,
            issues: Vec::new(),
        };
        let parse_sock = |s: &str| s.parse::<SocketAddr>().ok();
        let parse_ip = |s: &str| s.parse::<IpAddr>().ok();

        let udp = c.addr(&raw.sip.udp, "sip.udp", Some("0.0.0.0:5060"), parse_sock);
        let tcp = c.addr(&raw.sip.tcp, "sip.tcp", None, parse_sock);
        let tls = c.addr(&raw.sip.tls, "sip.tls", None, parse_sock);
        let public_ip = c.addr(&raw.sip.public_ip, "sip.public_ip", None, parse_ip);
        let tls_identity = match (&raw.sip.tls_cert, &raw.sip.tls_key) {
            (Some(cert), Some(key)) => {
                Some((PathBuf::from(cert.get_ref()), PathBuf::from(key.get_ref())))
            }
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                c.issue(
                    v.span(),
                    "sip.tls_cert",
                    "set both `tls_cert` and `tls_key`, or neither",
                );
                None
            }
        };
        if let Some(v) = &raw.sip.tls
            && tls_identity.is_none()
        {
            c.issue(
                v.span(),
                "sip.tls",
                "a TLS listener needs `tls_cert` and `tls_key` (PEM files)",
            );
        }
        let rtp_ip = c.addr(&raw.rtp.ip, "rtp.ip", Some("0.0.0.0"), parse_ip);
        let port_min = raw.rtp.port_min.as_ref().map_or(20000, |p| *p.get_ref());
        let port_max = raw.rtp.port_max.as_ref().map_or(29999, |p| *p.get_ref());
        if port_max <= port_min
            && let Some(p) = raw.rtp.port_max.as_ref().or(raw.rtp.port_min.as_ref())
        {
            c.issue(p.span(), "rtp.port_max", format!("the RTP range {port_min}..{port_max} is empty; make port_max larger than port_min"));
        }
        let http_listen = c.addr(
            &raw.http.listen,
            "http.listen",
            Some("0.0.0.0:8080"),
            parse_sock,
        );
        let admin_listen = c.addr(
            &raw.http.admin_listen,
            "http.admin_listen",
            None,
            parse_sock,
        );
        if let Some(limit) = raw.sip.rate_limit.as_ref().filter(|l| *l.get_ref() == 0) {
            c.issue(
                limit.span(),
                "sip.rate_limit",
                "a rate limit of 0 would ignore every peer, trunks included; leave it out for the default (200 requests/s)",
            );
        }
        let webrtc_udp = c.addr(
            &raw.webrtc.udp,
            "webrtc.udp",
            Some("0.0.0.0:10000"),
            parse_sock,
        );
        let tokens = c.token_keys(env, &raw.http);
        let admin_token = c.secret(
            env,
            ("http.admin_token_env", &raw.http.admin_token_env),
            ("http.admin_token_file", &raw.http.admin_token_file),
        );
        if let Some(t) = &raw.http.numbers_trunk
            && !raw.trunks.contains_key(t.get_ref())
        {
            c.issue(
                t.span(),
                "http.numbers_trunk",
                format!("no trunk named `{}`", t.get_ref()),
            );
        }
        let mut plugins = Vec::new();
        for (i, spanned) in raw.plugins.iter().enumerate() {
            let p = spanned.get_ref();
            let field = |f: &str| format!("plugins[{i}].{f}");
            // Relative to the configuration file (an absolute path replaces the base).
            let plugin_path = path_base(path).join(p.path.get_ref());
            if !plugin_path.is_file() {
                c.issue(
                    p.path.span(),
                    field("path"),
                    format!(
                        "no plugin file at `{}`; build the plugin for wasm32-wasip2 first",
                        plugin_path.display()
                    ),
                );
            }
            if plugins.iter().any(|q: &PluginConfig| q.name == p.name) {
                c.issue(
                    spanned.span(),
                    field("name"),
                    format!("two plugins are named `{}`", p.name),
                );
            }
            let reject_code = p.reject_code.as_ref().map_or(503, |c| *c.get_ref());
            if !(400..700).contains(&reject_code)
                && let Some(code) = &p.reject_code
            {
                c.issue(
                    code.span(),
                    field("reject_code"),
                    "a rejection needs a 4xx, 5xx or 6xx SIP status",
                );
            }
            plugins.push(PluginConfig {
                name: p.name.clone(),
                path: plugin_path,
                config_json: serde_json::to_string(&p.config).unwrap_or_else(|_| "{}".into()),
                policy: p.policy,
                reject_code,
                memory_bytes: p.memory_mb.unwrap_or(16) as usize * 1024 * 1024,
                deadline: std::time::Duration::from_millis(
                    p.deadline_ms.unwrap_or(20).max(1) as u64
                ),
                max_instances: p.max_instances.unwrap_or(1000).max(1),
                data_dir: p
                    .data_dir
                    .as_ref()
                    .map(|d| path_base(path).join(d.get_ref())),
                data_quota_bytes: p.data_quota_mb.unwrap_or(1024).saturating_mul(1024 * 1024),
            });
        }
        let defaults = EncoderSettings::default();
        let mut complexity = |v: &Option<Spanned<u8>>, key: &str, default: u8| match v {
            Some(v) if *v.get_ref() > 10 => {
                c.issue(v.span(), key, "Opus complexity goes from 0 to 10");
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        };
        let opus_complexity = complexity(
            &raw.media.opus_complexity,
            "media.opus_complexity",
            defaults.complexity,
        );
        let opus_complexity_under_loss = complexity(
            &raw.media.opus_complexity_under_loss,
            "media.opus_complexity_under_loss",
            defaults.complexity_under_loss,
        );

        let mut trunks = BTreeMap::new();
        for (name, spanned) in &raw.trunks {
            let t = spanned.get_ref();
            let field = |f: &str| format!("trunks.{name}.{f}");
            if t.addresses.get_ref().is_empty() {
                c.issue(
                    t.addresses.span(),
                    field("addresses"),
                    "list at least one `host:port`",
                );
            }
            for a in t.addresses.get_ref() {
                if crate::sip::transport::split_host_port(a, t.transport).is_none() {
                    c.issue(
                        t.addresses.span(),
                        field("addresses"),
                        format!("`{a}` is not `host` or `host:port`"),
                    );
                }
            }
            let mut codecs = Vec::new();
            for name in t.codecs.get_ref() {
                match G711::from_encoding_name(name) {
                    Some(codec) => codecs.push(codec),
                    None => c.issue(
                        t.codecs.span(),
                        field("codecs"),
                        format!("unknown codec `{name}`; the trunk side speaks PCMU and PCMA"),
                    ),
                }
            }
            if codecs.is_empty() && t.codecs.get_ref().is_empty() {
                c.issue(
                    t.codecs.span(),
                    field("codecs"),
                    "list at least one of PCMU, PCMA",
                );
            }
            let password = match (&t.password_env, &t.password_file) {
                (Some(var), None) => match env(var.get_ref()) {
                    Some(p) => Some(p),
                    None => {
                        c.issue(var.span(), field("password_env"), format!("environment variable `{}` is not set; export it before starting the gateway", var.get_ref()));
                        None
                    }
                },
                (None, Some(file)) => match read_secret_file(file.get_ref())
                    .and_then(|p| String::from_utf8(p).map_err(|_| "it is not UTF-8 text".into()))
                {
                    Ok(p) => Some(p.trim_end_matches(['\r', '\n']).to_string()),
                    Err(e) => {
                        c.issue(
                            file.span(),
                            field("password_file"),
                            format!("cannot read `{}`: {e}", file.get_ref()),
                        );
                        None
                    }
                },
                (Some(v), Some(_)) => {
                    c.issue(
                        v.span(),
                        field("password_env"),
                        "set `password_env` or `password_file`, not both",
                    );
                    None
                }
                (None, None) => None,
            };
            let credentials = match (&t.username, password) {
                (Some(username), Some(password)) => Some(Credentials {
                    username: username.clone(),
                    password,
                }),
                (Some(_), None) if t.password_env.is_none() && t.password_file.is_none() => {
                    c.issue(
                        spanned.span(),
                        field("username"),
                        "a username needs `password_env` or `password_file`",
                    );
                    None
                }
                (None, Some(_)) => {
                    c.issue(
                        spanned.span(),
                        field("username"),
                        "a password is configured but no `username`",
                    );
                    None
                }
                _ => None,
            };
            if t.register && credentials.is_none() && t.username.is_none() {
                c.issue(
                    spanned.span(),
                    field("register"),
                    "registration needs `username` and a password",
                );
            }
            for other in t.failover.get_ref() {
                if !raw.trunks.contains_key(other) {
                    c.issue(
                        t.failover.span(),
                        field("failover"),
                        format!("no trunk named `{other}`"),
                    );
                } else if other == name {
                    c.issue(
                        t.failover.span(),
                        field("failover"),
                        "a trunk cannot fail over to itself",
                    );
                }
            }
            if t.transport != Transport::Tls
                && let Some(ca) = &t.ca_file
            {
                c.issue(
                    ca.span(),
                    field("ca_file"),
                    "`ca_file` only applies to `transport = \"tls\"`",
                );
            }
            if let Some(user) = t.from_user.as_ref().or(t.username.as_ref())
                && let Err(e) = crate::sip::values::check_user("the caller ID", user)
            {
                c.issue(
                    spanned.span(),
                    field("from_user"),
                    format!("{e}; it becomes the user part of From (set `from_user` when the digest username is not one)"),
                );
            }
            trunks.insert(
                name.clone(),
                TrunkConfig {
                    name: name.clone(),
                    addresses: t.addresses.get_ref().clone(),
                    transport: t.transport,
                    credentials,
                    from_user: t
                        .from_user
                        .clone()
                        .or_else(|| t.username.clone())
                        .unwrap_or_else(|| "gateway".into()),
                    from_domain: t.from_domain.clone(),
                    codecs,
                    register: t.register,
                    register_expires: t.register_expires,
                    options_interval: t.options_interval,
                    max_channels: t.max_channels,
                    failover: t.failover.get_ref().clone(),
                    ca_file: t.ca_file.as_ref().map(|p| PathBuf::from(p.get_ref())),
                    rtp_source: t.rtp_source,
                },
            );
        }
        let mut targets = BTreeMap::new();
        for (name, spanned) in &raw.targets {
            let t = spanned.get_ref();
            if !raw.trunks.contains_key(t.trunk.get_ref()) {
                c.issue(
                    t.trunk.span(),
                    format!("targets.{name}.trunk"),
                    format!("no trunk named `{}`", t.trunk.get_ref()),
                );
            }
            if let Err(e) = crate::sip::values::check_user("the number", t.number.get_ref()) {
                c.issue(
                    t.number.span(),
                    format!("targets.{name}.number"),
                    format!("{e}; write the number as the trunk expects it, e.g. +4930123456"),
                );
            }
            targets.insert(
                name.clone(),
                Target {
                    trunk: t.trunk.get_ref().clone(),
                    number: t.number.get_ref().clone(),
                },
            );
        }
        if !c.issues.is_empty() {
            c.issues.sort_by_key(|i| (i.line, i.column));
            return Err(fail(c.issues));
        }
        let (Some(udp), Some(rtp_ip), Some(http_listen), Some(webrtc_udp)) =
            (udp, rtp_ip, http_listen, webrtc_udp)
        else {
            unreachable!("every unparsed address recorded an issue");
        };
        Ok(Config {
            source: None,
            http: HttpConfig {
                listen: http_listen,
                allowed_origins: raw.http.allowed_origins,
                tokens,
                admin_token,
                anonymous: raw.http.anonymous,
                numbers_trunk: raw.http.numbers_trunk.map(|t| t.into_inner()),
                admin_listen,
                register_conflict: raw.http.register_conflict,
            },
            webrtc_udp,
            media: MediaConfig {
                opus_complexity,
                opus_complexity_under_loss,
                jitter_ms: raw.media.jitter_ms.unwrap_or(60),
            },
            cdr_path: raw.cdr.path.map(PathBuf::from),
            inbound: raw.inbound,
            plugins,
            sip: SipConfig {
                udp,
                tcp,
                tls,
                tls_identity,
                public_ip,
                user_agent: raw
                    .sip
                    .user_agent
                    .unwrap_or_else(|| format!("gateway/{}", env!("CARGO_PKG_VERSION"))),
                unknown_sources: raw.sip.unknown_sources,
                rate_limit: raw
                    .sip
                    .rate_limit
                    .map_or(DEFAULT_SIP_RATE_LIMIT, |l| *l.get_ref()),
            },
            rtp: RtpConfig {
                ip: rtp_ip,
                port_min,
                port_max,
            },
            trunks,
            targets,
            limits: raw.limits,
        })
    }

    /// The configuration of demo mode (`gateway run` with no file): signaling on port 8080,
    /// browser media on UDP 10000, anonymous calls to the targets `echo` and `tone` on the
    /// built-in demo trunk at `demo_trunk`. SIP stays on loopback.
    pub fn demo(demo_trunk: SocketAddr) -> Config {
        let text = format!(
            "[sip]\nudp = \"127.0.0.1:0\"\n\n[rtp]\nip = \"127.0.0.1\"\nport_min = 30000\nport_max = 30999\n\n\
             [http]\nlisten = \"0.0.0.0:8080\"\nanonymous = true\n\n[webrtc]\nudp = \"0.0.0.0:10000\"\n\n\
             [trunks.demo]\naddresses = [\"{demo_trunk}\"]\noptions_interval = 0\n\n\
             [targets.echo]\ntrunk = \"demo\"\nnumber = \"echo\"\n\n[targets.tone]\ntrunk = \"demo\"\nnumber = \"tone\"\n"
        );
        Config::parse(&text, Path::new("(demo)"), &|_| None)
            .expect("the demo configuration is valid")
    }

    /// The address our trunk-side SDP advertises: the public IP behind 1:1 NAT, else the RTP
    /// bind address, else (bound to all interfaces) the SIP endpoint's own address.
    pub fn rtp_advertised_ip(&self, endpoint_ip: IpAddr) -> IpAddr {
        self.sip
            .public_ip
            .unwrap_or(if self.rtp.ip.is_unspecified() {
                endpoint_ip
            } else {
                self.rtp.ip
            })
    }

    /// The trunk named `name`, or an error listing the configured names.
    pub fn trunk(&self, name: &str) -> Result<&TrunkConfig, String> {
        self.trunks.get(name).ok_or_else(|| {
            let names: Vec<_> = self.trunks.keys().map(String::as_str).collect();
            format!(
                "no trunk named `{name}`; configured trunks: {}",
                if names.is_empty() {
                    "(none)".into()
                } else {
                    names.join(", ")
                }
            )
        })
    }
}

mod checker;
#[cfg(test)]
mod tests;
