//! The configuration file (TOML), validated up front with the file, line and field of every
//! mistake, and secrets resolved from the environment or files. Nothing here does I/O after
//! start-up.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::media::codec::Codec;
use crate::media::opus::EncoderSettings;
use checker::{Checker, read_secret_file};
pub use model::*;
pub use plugins::{HttpPolicy, UrlPattern};
use raw::*;

/// The most media worker threads `[media] workers` may ask for.
const MAX_WORKERS: u32 = 256;
/// The longest turn `[media] turn_ms` may ask for: a packet waits up to a turn in the gateway,
/// and more than a quarter frame starts to show in the browser's jitter buffer.
const MAX_TURN_MS: u32 = 5;
/// The longest nap `[media] nap_us` may ask for: a nap longer than the host polls a halted
/// core (KVM: 200 µs by default) keeps nothing, and one of a turn is no nap.
const MAX_NAP_US: u32 = 1_000;

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
        let limits = match &raw.limits {
            Some(l) if !(1..=3600).contains(&l.get_ref().ring_seconds) => {
                c.issue(
                    l.span(),
                    "limits.ring_seconds",
                    "ring_seconds must be between 1 and 3600 (how long a call may ring)",
                );
                Limits::default()
            }
            Some(l) if !(1..=100).contains(&l.get_ref().shed_late_pct) => {
                c.issue(
                    l.span(),
                    "limits.shed_late_pct",
                    "shed_late_pct is a percentage of late media ticks: 1 to 100",
                );
                Limits::default()
            }
            Some(l) if !(1..=100).contains(&l.get_ref().media_load_pct) => {
                c.issue(
                    l.span(),
                    "limits.media_load_pct",
                    "media_load_pct is a percentage of a core each media worker may be asked \
                     for: 1 to 100",
                );
                Limits::default()
            }
            Some(l) if !(1..=100).contains(&l.get_ref().economy_load_pct) => {
                c.issue(
                    l.span(),
                    "limits.economy_load_pct",
                    "economy_load_pct is a percentage of a core each media worker may be asked \
                     for before calls economise: 1 to 100",
                );
                Limits::default()
            }
            Some(l) => l.get_ref().clone(),
            None => Limits::default(),
        };
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
        let ice_servers = c.ice_servers(env, &raw.webrtc);
        let tokens = c.token_keys(env, &raw.http);
        let cluster = c.cluster(env, &raw.cluster);
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
        let plugins = plugins::plugins(&mut c, &raw.plugins, path);
        let defaults = EncoderSettings::default();
        let complexity = |c: &mut Checker, v: &Option<Spanned<u8>>, key: &str, default: u8| {
            c.at_most(v, 10, key, default, "Opus complexity goes from 0 to 10")
        };
        let opus_complexity = complexity(
            &mut c,
            &raw.media.opus_complexity,
            "media.opus_complexity",
            defaults.complexity,
        );
        let opus_complexity_under_loss = complexity(
            &mut c,
            &raw.media.opus_complexity_under_loss,
            "media.opus_complexity_under_loss",
            defaults.complexity_under_loss,
        );
        let workers = match &raw.media.workers {
            Some(w) if !(1..=MAX_WORKERS).contains(w.get_ref()) => {
                c.issue(
                    w.span(),
                    "media.workers",
                    format!(
                        "media workers go from 1 to {MAX_WORKERS} (leave it out for one per core)"
                    ),
                );
                1
            }
            Some(w) => *w.get_ref() as usize,
            // One per core: a worker is one thread's worth of calls.
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let turn_ms = c.at_most(
            &raw.media.turn_ms,
            MAX_TURN_MS,
            "media.turn_ms",
            2,
            format!(
                "a media worker's turn goes from 0 (wake per packet) to {MAX_TURN_MS} ms: \
                 every packet may wait that long in the gateway"
            ),
        ) as u8;
        let nap_us = c.at_most(
            &raw.media.nap_us,
            MAX_NAP_US,
            "media.nap_us",
            0,
            format!(
                "a media worker's nap goes from 0 (the rest of a turn in one sleep) to \
                 {MAX_NAP_US} µs; 100 keeps a virtual machine's core from the host"
            ),
        ) as u16;
        let nice = c.within(
            &raw.media.nice,
            -20..=19, // setpriority(2)
            "media.nice",
            0,
            "a media worker's nice value goes from -20 (first) to 19 (last); 0 leaves the \
             gateway's own",
        ) as i8;

        let mut trunks = BTreeMap::new();
        for (name, spanned) in &raw.trunks {
            let t = spanned.get_ref();
            let field = |f: &str| format!("trunks.{name}.{f}");
            let expires = *t.session_expires.get_ref();
            if expires != 0 && expires < crate::sip::extensions::MIN_SE {
                c.issue(
                    t.session_expires.span(),
                    field("session_expires"),
                    format!(
                        "{expires} s is below RFC 4028's minimum of {} s (0 turns session timers off)",
                        crate::sip::extensions::MIN_SE
                    ),
                );
            }
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
                match Codec::from_name(name) {
                    Some(codec) => codecs.push(codec),
                    None => c.issue(
                        t.codecs.span(),
                        field("codecs"),
                        format!(
                            "unknown codec `{name}`; the trunk side speaks opus, G722, PCMU and PCMA"
                        ),
                    ),
                }
            }
            if codecs.is_empty() && t.codecs.get_ref().is_empty() {
                c.issue(
                    t.codecs.span(),
                    field("codecs"),
                    "list at least one of opus, G722, PCMU, PCMA",
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
            let srtp = *t.srtp.get_ref();
            for other in t.failover.get_ref() {
                match raw.trunks.get(other) {
                    None => c.issue(
                        t.failover.span(),
                        field("failover"),
                        format!("no trunk named `{other}`"),
                    ),
                    Some(_) if other == name => c.issue(
                        t.failover.span(),
                        field("failover"),
                        "a trunk cannot fail over to itself",
                    ),
                    Some(o) if *o.get_ref().srtp.get_ref() != srtp => c.issue(
                        t.failover.span(),
                        field("failover"),
                        format!("`{other}` has another srtp setting: a failover trunk gets the same SDP offer, so its srtp must match"),
                    ),
                    Some(_) => {}
                }
            }
            if srtp != SrtpPolicy::Off && t.transport != Transport::Tls && !t.srtp_without_tls {
                c.issue(
                    t.srtp.span(),
                    field("srtp"),
                    "SDES carries the SRTP keys in the SDP, readable on the path unless the signalling is TLS: use transport = \"tls\", or set srtp_without_tls = true to accept that",
                );
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
                    prack: t.prack,
                    media_timeout: std::time::Duration::from_secs(t.media_timeout.into()),
                    session_expires: *t.session_expires.get_ref(),
                    identity: t.identity,
                    privacy: t.privacy,
                    srtp: *t.srtp.get_ref(),
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
        let resume_seconds = c.at_most(
            &raw.http.resume_seconds,
            600,
            "http.resume_seconds",
            20,
            "at most 600 s: a parked call holds a call slot and its media meanwhile (0 turns resuming off)",
        );
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
            cluster,
            http: HttpConfig {
                listen: http_listen,
                allowed_origins: raw.http.allowed_origins,
                tokens,
                admin_token,
                anonymous: raw.http.anonymous,
                numbers_trunk: raw.http.numbers_trunk.map(|t| t.into_inner()),
                admin_listen,
                register_conflict: raw.http.register_conflict,
                resume_seconds,
            },
            webrtc_udp,
            ice_servers,
            media: MediaConfig {
                opus_complexity,
                opus_complexity_under_loss,
                jitter_ms: raw.media.jitter_ms.unwrap_or(60),
                workers,
                turn_ms,
                nap_us,
                nice,
                io_uring: raw.media.io_uring.unwrap_or(true),
                worker_clock: raw.media.worker_clock.unwrap_or(true),
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
            limits,
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
mod model;
mod plugins;
mod raw;
#[cfg(test)]
mod tests;
