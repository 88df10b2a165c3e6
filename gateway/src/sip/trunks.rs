//! The configured trunks and their live state: health (OPTIONS probes), Retry-After,
//! channel counts and TLS settings, shared by every call.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::transport::Transport;
use super::transport::{Target, split_host_port, tls_client_config};
use crate::count::SharedCount;
use crate::media::codec::Codec;
use crate::media::session::RtpSource;
use crate::media::srtp::SrtpPolicy;

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
    pub codecs: Vec<Codec>,
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
    /// Reliable provisional responses (RFC 3262) on our INVITEs.
    pub prack: Prack,
    /// An answered call whose trunk sends no RTP, or whose browser sends nothing, for this
    /// long ends with BYE (`media_timeout`); zero: never. Not counted while held.
    pub media_timeout: Duration,
    /// Session timer interval offered on our INVITEs and asked of inbound ones (RFC 4028),
    /// seconds; 0: none.
    pub session_expires: u32,
    /// Where our INVITEs carry the caller ID (RFC 3325).
    pub identity: Identity,
    /// What our INVITEs ask the trunk to withhold (RFC 3323).
    pub privacy: Privacy,
    /// SRTP keyed by SDES (RFC 4568) on this trunk's media.
    pub srtp: SrtpPolicy,
}

/// Where the caller ID goes on our INVITEs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    /// In From (the default; most trunks read it there).
    #[default]
    From,
    /// In P-Asserted-Identity (RFC 3325 §9.1), From keeping the trunk's account user.
    Pai,
    /// In both.
    Both,
}

/// Privacy asked of the trunk (RFC 3323).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    /// Nothing withheld.
    #[default]
    None,
    /// `Privacy: id` (RFC 3325 §9.3): the trunk withholds the asserted identity from the
    /// callee; From becomes anonymous (RFC 3323 §4.1.1.3).
    Id,
}

/// Whether our INVITEs ask for reliable provisional responses (RFC 3262): a trunk that sends
/// its 18x reliably waits for our PRACK before it answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prack {
    /// `Supported: 100rel`: the trunk may send 18x reliably; each gets a PRACK.
    #[default]
    Supported,
    /// `Require: 100rel`: the trunk must (a trunk that cannot answers 420).
    Required,
    /// Neither: provisional responses are unreliable (a reliable one is still PRACKed,
    /// since a trunk that sends one anyway would otherwise never answer).
    Off,
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

/// The trunks, their live state (health, Retry-After, channel counts) and TLS settings.
#[derive(Debug)]
pub struct Trunks {
    configs: HashMap<String, TrunkConfig>,
    tls: HashMap<String, Arc<rustls::ClientConfig>>,
    /// `(trunk, address)` → not to be used before this instant (Retry-After, §21.5.4).
    down_until: Mutex<HashMap<(String, String), Instant>>,
    /// `(trunk, address)` → false while OPTIONS probes fail.
    health: Mutex<HashMap<(String, String), bool>>,
    channels: HashMap<String, Arc<SharedCount>>,
    /// The widest audio any trunk's codecs carry ([`Codec::widest_audio_hz`]).
    audio_hz: u32,
}

impl Trunks {
    /// Builds the trunk table; fails when a TLS CA file is unusable.
    pub fn new(configs: impl IntoIterator<Item = TrunkConfig>) -> Result<Arc<Trunks>, String> {
        let mut map = HashMap::new();
        let mut tls = HashMap::new();
        let mut channels = HashMap::new();
        for c in configs {
            if c.transport == Transport::Tls {
                tls.insert(
                    c.name.clone(),
                    tls_client_config(c.ca_file.as_deref())
                        .map_err(|e| format!("trunk `{}`: {e}", c.name))?,
                );
            }
            channels.insert(c.name.clone(), Arc::new(SharedCount::default()));
            map.insert(c.name.clone(), c);
        }
        let audio_hz = Codec::widest_audio_hz(map.values().flat_map(|c| c.codecs.iter().copied()));
        Ok(Arc::new(Trunks {
            audio_hz,
            configs: map,
            tls,
            down_until: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            channels,
        }))
    }

    /// The widest audio any trunk's codecs carry, samples a second: as much as a browser
    /// needs to code when no trunk is named yet (a preflight).
    pub fn widest_audio_hz(&self) -> u32 {
        self.audio_hz
    }

    /// The widest audio trunk `first` and its failover trunks carry, samples a second: as much
    /// as a browser's call dialled to it needs to code. For a trunk not configured, the widest
    /// any trunk carries.
    pub fn audio_hz_for(&self, first: &str) -> u32 {
        if !self.configs.contains_key(first) {
            return self.audio_hz;
        }
        let chain = self.chain(first);
        Codec::widest_audio_hz(
            chain
                .iter()
                .filter_map(|name| self.configs.get(name))
                .flat_map(|c| c.codecs.iter().copied()),
        )
    }

    /// The configuration of trunk `name`.
    pub fn config(&self, name: &str) -> Option<&TrunkConfig> {
        self.configs.get(name)
    }

    /// The trunk one of whose addresses is `host` (and `port`, when given): where a
    /// transfer's Refer-To may send a call. `None` for any other host — the gateway places
    /// calls on configured trunks only.
    pub fn named_by_address(&self, host: &str, port: Option<u16>) -> Option<String> {
        let mut names: Vec<&String> = self.configs.keys().collect();
        names.sort();
        names.into_iter().find_map(|name| {
            let config = &self.configs[name];
            config
                .addresses
                .iter()
                .filter_map(|a| crate::sip::transport::split_host_port(a, config.transport))
                .any(|(h, p)| h.eq_ignore_ascii_case(host) && port.is_none_or(|want| want == p))
                .then(|| name.clone())
        })
    }

    /// `first` followed by its failover trunks, depth first, each once.
    pub fn chain(&self, first: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![first.to_string()];
        while let Some(name) = stack.pop() {
            if out.contains(&name) {
                continue;
            }
            if let Some(c) = self.configs.get(&name) {
                stack.extend(c.failover.iter().rev().cloned());
            }
            out.push(name);
        }
        out
    }

    /// Keeps `address` out of use for `for_how_long` (Retry-After, §21.5.4).
    pub fn mark_down(&self, trunk: &str, address: &str, for_how_long: Duration) {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        down.insert(
            (trunk.to_string(), address.to_string()),
            Instant::now() + for_how_long,
        );
    }

    /// Records an OPTIONS probe result; returns true when the health changed.
    pub fn set_health(&self, trunk: &str, address: &str, up: bool) -> bool {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.insert((trunk.to_string(), address.to_string()), up) != Some(up)
    }

    /// The last OPTIONS probe result for an address, `None` before the first probe.
    pub fn health(&self, trunk: &str, address: &str) -> Option<bool> {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health
            .get(&(trunk.to_string(), address.to_string()))
            .copied()
    }

    /// True while an address asked us to wait (Retry-After) or fails its OPTIONS probes.
    pub fn is_down(&self, trunk: &str, address: &str) -> bool {
        let key = (trunk.to_string(), address.to_string());
        let waiting = self
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|until| *until > Instant::now());
        let unhealthy = self
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            == Some(&false);
        waiting || unhealthy
    }

    /// The IP address of every trunk, resolved once (at start-up): only these may send
    /// requests in. Addresses that do not resolve are logged and left out.
    pub async fn sources(&self) -> HashMap<std::net::IpAddr, String> {
        let mut sources = HashMap::new();
        for name in self.names() {
            let Some(config) = self.config(&name) else {
                continue;
            };
            for address in &config.addresses {
                match self.target(config, address).await {
                    Some(target) => {
                        sources.insert(target.addr.ip(), name.clone());
                    }
                    None => {
                        tracing::warn!(trunk = %name, %address, "cannot resolve trunk address; requests from it will be refused")
                    }
                }
            }
        }
        sources
    }

    /// The configured trunk names.
    pub fn names(&self) -> Vec<String> {
        self.configs.keys().cloned().collect()
    }

    /// Takes one of the trunk's channels for a call, if any is free.
    pub fn take_channel(&self, trunk: &str) -> Option<ChannelGuard> {
        let config = self.configs.get(trunk)?;
        let counter = self.channels.get(trunk)?.clone();
        // A carrier counts channels per account: in a cluster, every node's calls count.
        let max = config.max_channels.unwrap_or(u32::MAX);
        // Lazily: a guard made and dropped for a refused call would give back a channel.
        counter
            .try_take(u32::MAX, max)
            .then(|| ChannelGuard(counter))
    }

    /// Each limited trunk's channel count, for the cluster to share.
    pub fn limited_channels(&self) -> std::collections::BTreeMap<String, Arc<SharedCount>> {
        self.channels
            .iter()
            .filter(|(name, _)| {
                self.configs
                    .get(*name)
                    .is_some_and(|c| c.max_channels.is_some())
            })
            .map(|(name, count)| (name.clone(), count.clone()))
            .collect()
    }

    /// Resolves one configured address of a trunk.
    pub async fn target(&self, trunk: &TrunkConfig, address: &str) -> Option<Target> {
        let (host, port) = split_host_port(address, trunk.transport)?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()?
            .next()?;
        Some(Target {
            addr,
            transport: trunk.transport,
            host,
            tls: self.tls.get(&trunk.name).cloned(),
        })
    }
}

/// Holds one of a trunk's channels for the life of a call.
#[derive(Debug)]
pub struct ChannelGuard(Arc<SharedCount>);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
impl TrunkConfig {
    /// A UDP trunk speaking PCMU at `addresses`, no credentials, no limits: the base the
    /// unit tests vary.
    pub(crate) fn for_tests(name: &str, addresses: &[&str]) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            transport: Transport::Udp,
            credentials: None,
            from_user: "gw".into(),
            from_domain: None,
            codecs: vec![Codec::Pcmu],
            register: false,
            register_expires: 600,
            options_interval: 0,
            max_channels: None,
            failover: vec![],
            ca_file: None,
            rtp_source: Default::default(),
            prack: Default::default(),
            media_timeout: Duration::from_secs(30),
            session_expires: 1800,
            identity: Default::default(),
            privacy: Default::default(),
            srtp: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, failover: &[&str]) -> TrunkConfig {
        TrunkConfig {
            max_channels: Some(1),
            failover: failover.iter().map(|s| s.to_string()).collect(),
            ..TrunkConfig::for_tests(name, &["127.0.0.1:5060"])
        }
    }

    #[test]
    fn failover_chain_is_ordered_and_loop_free() {
        let t = Trunks::new([
            trunk("a", &["b", "c"]),
            trunk("b", &["c", "a"]),
            trunk("c", &[]),
        ])
        .unwrap();
        assert_eq!(t.chain("a"), vec!["a", "b", "c"]);
        assert_eq!(t.chain("c"), vec!["c"]);
    }

    #[test]
    fn a_trunks_audio_is_the_widest_of_its_failover_chain() {
        let with = |name: &str, failover: &[&str], codecs: &[Codec]| TrunkConfig {
            codecs: codecs.to_vec(),
            ..trunk(name, failover)
        };
        let t = Trunks::new([
            with("pbx", &[], &[Codec::Pcma, Codec::Pcmu]),
            with("hd", &["pbx"], &[Codec::G722, Codec::Pcmu]),
            with("backup", &["hd"], &[Codec::Pcmu]),
            with("carrier", &[], &[Codec::Opus, Codec::Pcmu]),
        ])
        .unwrap();
        // An Opus trunk elsewhere widens no other trunk's calls.
        assert_eq!(t.audio_hz_for("pbx"), 8000);
        assert_eq!(t.audio_hz_for("hd"), 16000);
        assert_eq!(
            t.audio_hz_for("backup"),
            16000,
            "its failover may carry G.722"
        );
        assert_eq!(t.audio_hz_for("carrier"), 48000);
        assert_eq!(
            t.audio_hz_for("nowhere"),
            48000,
            "not configured: the widest"
        );
        assert_eq!(t.widest_audio_hz(), 48000);
    }

    #[test]
    fn channels_are_limited_and_released() {
        let t = Trunks::new([trunk("a", &[])]).unwrap();
        let guard = t.take_channel("a").unwrap();
        assert!(t.take_channel("a").is_none());
        assert!(
            t.take_channel("a").is_none(),
            "a refusal gives back nothing it did not take"
        );
        drop(guard);
        assert!(t.take_channel("a").is_some());
    }

    #[test]
    fn retry_after_marks_an_address_down() {
        let t = Trunks::new([trunk("a", &[])]).unwrap();
        t.mark_down("a", "127.0.0.1:5060", Duration::from_secs(60));
        assert!(t.is_down("a", "127.0.0.1:5060"));
        assert!(!t.is_down("a", "127.0.0.2:5060"));
    }
}
