//! The validated configuration the gateway runs with: what every other module reads.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

pub use crate::media::session::RtpSource;
pub use crate::media::srtp::SrtpPolicy;
pub use crate::sip::edge::{DEFAULT_SIP_RATE_LIMIT, UnknownSources};
pub use crate::sip::transport::Transport;
pub use crate::sip::trunks::{Credentials, Identity, Prack, Privacy, TrunkConfig};

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
    /// The HTTP URLs it may call, and its callouts' limits.
    pub http: super::HttpPolicy,
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
    /// A call's 20 ms media tick this many ms after its time counts as late.
    #[serde(default = "default_late_tick_ms")]
    pub late_tick_ms: u32,
    /// Percent of late ticks at which calls economise (Opus complexity 0) and then new
    /// calls are refused.
    #[serde(default = "default_shed_late_pct")]
    pub shed_late_pct: u32,
    /// Percent of a core each media worker's calls may want (running, or waiting for a
    /// core) before new calls are refused: calls are refused before running ones run late.
    #[serde(default = "default_media_load_pct")]
    pub media_load_pct: u32,
    /// Percent of a core each media worker's calls may want before every call codes Opus at
    /// complexity 0 (economy), so that the box carries more calls before it refuses any.
    /// Never later than `media_load_pct`.
    #[serde(default = "default_economy_load_pct")]
    pub economy_load_pct: u32,
}

/// Ten points before the refusals: a burst of callers fills the workers between one
/// once-a-second decision and the next, and economy should have begun by the time they do.
fn default_economy_load_pct() -> u32 {
    80
}

/// On the benchmark box 250 calls clean read 0.72–0.79 and 300, whose ticks began to run
/// late, 0.85–0.91 (docs/benchmarks-history.md).
fn default_media_load_pct() -> u32 {
    90
}

/// A whole frame late: the browser's jitter buffer is about to run dry.
fn default_late_tick_ms() -> u32 {
    20
}

fn default_shed_late_pct() -> u32 {
    10
}

fn default_ring_seconds() -> u32 {
    60
}

fn default_max_calls_per_connection() -> u32 {
    4
}

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
            late_tick_ms: default_late_tick_ms(),
            shed_late_pct: default_shed_late_pct(),
            media_load_pct: default_media_load_pct(),
            economy_load_pct: default_economy_load_pct(),
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

/// A named call target: what a widget calls instead of a raw number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Trunk to place the call on.
    pub trunk: String,
    /// Number dialled on that trunk.
    pub number: String,
}

/// `[cluster]`: several gateways sharing state through Redis.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://host:port/db`.
    pub redis_url: String,
    /// From `redis_password_env` or `redis_password_file`.
    pub redis_password: Option<String>,
    /// This node's name in the cluster: letters, digits, `.`, `_`, `-`.
    pub node_id: String,
    /// Where other nodes and trunks reach this node's SIP (`host:port`).
    pub sip_address: Option<String>,
    /// How long a node's entries outlive it, seconds.
    pub lease_seconds: u32,
    /// Prefix of every Redis key (several clusters may share one Redis).
    pub key_prefix: String,
    /// Calls on all nodes together, if limited.
    pub max_calls: Option<u32>,
    /// Where the other nodes' SIP comes from (addresses or networks): an INVITE a node
    /// forwards to the node of the called browser is taken only from these.
    pub peers: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("lease_seconds", &self.lease_seconds)
            .finish_non_exhaustive()
    }
}

/// The HTTP side: signaling, demo page, metrics.
#[derive(Clone)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// `Origin` values allowed to open `/ws`; empty allows any (development only).
    pub allowed_origins: Vec<String>,
    /// The keys call tokens are verified with; `None` when tokens are not configured.
    pub tokens: Option<crate::token::TokenVerifier>,
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
    /// How long the calls of a connection that dropped without `hangup` wait for their
    /// client to `resume` them; zero ends them at once.
    pub resume_seconds: u32,
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
    /// Media worker threads (`call::workers`), default one per core.
    pub workers: usize,
    /// How long a busy media worker lets packets gather before it wakes, ms (default 2;
    /// 0 wakes per packet): `call::workers::Pace`.
    pub turn_ms: u8,
    /// The longest a busy media worker sleeps at once while it waits out a turn, µs (default
    /// 0: the rest of the turn in one sleep). For a virtual machine that carries the gateway
    /// alone: a core that naps is not given away by the host (`call::workers::sleep_in_naps`).
    pub nap_us: u16,
    /// The nice value media workers run at, -20 to 19 (default 0: the gateway's own); a
    /// negative one, which needs an `RLIMIT_NICE` that allows it or `CAP_SYS_NICE`, gives them
    /// the box's cores before its other programs (`call::workers::priority`).
    pub nice: i8,
    /// Whether media workers send each turn's datagrams through an io_uring submission ring
    /// where the kernel offers one (default true): `media::outgoing`.
    pub io_uring: bool,
    /// Whether a media worker's transcoding calls tick together, once a 20 ms frame on the
    /// worker's clock, and take the browser's audio at their tick rather than as it arrives
    /// (default true): the worker then wakes about once a frame, and a call costs less
    /// (`call::driver::clock`). The browser's audio waits up to a frame (10 ms on average)
    /// longer on its way to the trunk; false sends it on as it arrives.
    pub worker_clock: bool,
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
    /// STUN/TURN servers handed to browsers, with the TURN secret.
    pub ice_servers: crate::rtc::ice_servers::IceServers,
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
    /// Shared state with other gateways, if configured.
    pub cluster: Option<ClusterConfig>,
}
