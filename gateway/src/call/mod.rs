//! Calls: the sans-IO [`machine::Call`], the one [`driver`] that runs it, the outbound and
//! inbound set-up around it, and what calls share (limits, counters, the CDR log).
//!
//! - `machine`: the call's states and transitions (tested in virtual time).
//! - `driver`: the task that feeds it sockets and time; `caller`: the browser or tone caller.
//! - `outbound`, `inbound`: from a browser's `call` / a trunk's INVITE to a running call.
//! - `cdr`: the record written when a call ends; `tap`: plugins' audio frames.
//! - `workers`: the media threads calls run on.

pub mod caller;
pub mod cdr;
pub mod driver;
pub mod forward;
mod inbound;
pub mod load;
pub mod machine;
mod outbound;
mod parked;
mod preflight;
mod tap;
pub mod workers;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::media::bridge::LazyBridge;
use crate::media::codec::Codec;
use crate::media::opus::EncoderSettings;
use crate::media::session::RtpStream;
use crate::media::srtp::LocalSrtp;
use crate::rtc::mux::MediaMux;
use crate::sip::endpoint::Endpoint;
use crate::sip::sdp::LocalMedia;
use crate::sip::trunks::Trunks;
use cdr::CdrLog;
pub use inbound::{Arrival, run_inbound};
pub use machine::{CallCommand, CallEvent, Refusal};
pub use outbound::{Outbound, resolve, start_outbound};
pub use preflight::{PREFLIGHT_SECONDS, start_preflight};

pub use parked::{
    ConnectionEvent, ConnectionEvents, EventSink, ParkedCall, ParkedCalls, ResumeError,
};

/// A new inbound call handed to the connection that takes it: its id, commands and events.
/// Boxed: every signaling connection has a queue of them, and tokio's channel allocates its
/// slots 32 at a time and up front (1.3 KB unboxed, before any call is offered).
pub type OfferedCall = Box<(String, CommandSender, EventSink)>;

/// Commands a call holds from its connection before the connection is told to slow down
/// (`limit_reached`): a client that sends faster than the call's media worker takes them
/// cannot grow the gateway's memory. Hanging up needs no room: dropping the sender ends the
/// call once it has read what waits.
pub const COMMAND_QUEUE: usize = 32;

/// A call's commands, from its connection.
pub type CommandSender = mpsc::Sender<CallCommand>;

/// The call's end of [`CommandSender`].
pub type CommandReceiver = mpsc::Receiver<CallCommand>;

/// A new call's command queue.
pub fn command_channel() -> (CommandSender, CommandReceiver) {
    mpsc::channel(COMMAND_QUEUE)
}

/// A connection that registered an identity for inbound calls.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The connection's call events.
    pub events: ConnectionEvents,
    /// Hands the connection a new call.
    pub calls: mpsc::UnboundedSender<OfferedCall>,
    /// Tells the connection another one took the identity over.
    pub replaced: mpsc::UnboundedSender<String>,
}

/// Everything a call needs from the running gateway.
#[derive(Debug)]
pub struct CallContext {
    /// The configuration.
    pub config: Config,
    /// SIP endpoint.
    pub endpoint: Endpoint,
    /// Trunks.
    pub trunks: Arc<Trunks>,
    /// The shared browser media port.
    pub mux: MediaMux,
    /// The IP browsers send media to (public IP behind NAT).
    pub media_ip: IpAddr,
    /// The DTLS certificate all browser legs use.
    pub dtls: crate::rtc::DtlsCertificate,
    /// The plugin chain every call passes through (reloadable).
    pub plugins: Arc<crate::plugin::PluginHost>,
    /// CDR log, if configured.
    pub cdr: Option<CdrLog>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Set on SIGTERM: no new calls.
    pub draining: watch::Sender<bool>,
    /// Identities registered for inbound calls, by name.
    pub registered: std::sync::Mutex<std::collections::HashMap<String, Registered>>,
    /// Calls whose connection went away, waiting for their client to resume them.
    pub parked: Arc<ParkedCalls>,
    /// Turns true when running calls must end (drain deadline).
    pub shutdown: watch::Sender<bool>,
    /// The other gateways of a `[cluster]`, if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The threads calls run on.
    pub workers: workers::MediaWorkers,
}

impl CallContext {
    /// The trunk side's media for a new call: an RTP stream from the configured range.
    fn trunk_media(&self) -> Result<RtpStream, &'static str> {
        let mut rtp = RtpStream::bind(
            self.config.rtp.ip,
            self.config.rtp.port_min,
            self.config.rtp.port_max,
        )
        .map_err(|_| "no free RTP port")?;
        rtp.set_drop_counters(self.metrics.media_drops.clone());
        Ok(rtp)
    }

    /// What our SDP says about the stream `rtp_port` offering `codecs`.
    fn local_media(&self, rtp_port: u16, codecs: &[Codec], srtp: LocalSrtp) -> LocalMedia {
        LocalMedia {
            ip: self.config.rtp_advertised_ip(self.endpoint.advertised_ip()),
            port: rtp_port,
            codecs: codecs.to_vec(),
            session_id: rand::random::<u32>() as u64,
            srtp,
        }
    }

    /// Our leg for a browser's `offer` (a call's or a preflight's), and its answer, asking
    /// the browser for no wider audio than `audio`.
    ///
    /// For a call, that is the widest its dialled trunk and the trunk's failover carry
    /// ([`Trunks::audio_hz_for`]), not the widest of every trunk: with one Opus trunk beside
    /// G.711 ones, every browser coded full band at 32 kb/s, which its G.711 calls decode
    /// to 8 kHz at 0.71 % of a core a call where narrowband costs 0.56 %
    /// (docs/benchmarks-history.md §1, "What the browser sends"). The answer goes out before the
    /// plugins route the call and before the trunk chooses its codec: where either narrows or
    /// widens the audio, the call's driver asks the browser for a new offer and answers it
    /// anew (`BrowserLeg::set_audio`).
    ///
    /// [`Trunks::audio_hz_for`]: crate::sip::trunks::Trunks::audio_hz_for
    fn answer_browser(
        &self,
        offer: &str,
        audio: crate::rtc::AudioCaps,
        now: std::time::Instant,
    ) -> Result<(crate::rtc::BrowserLeg, String), crate::rtc::RtcError> {
        crate::rtc::BrowserLeg::answer(
            offer,
            self.mux.local_addr(),
            self.media_ip,
            &self.dtls,
            audio,
            now,
        )
    }

    /// A browser's side of a new call: its leg, its route on the media port and the bridges
    /// to be made, with the configured settings.
    fn browser_caller(
        &self,
        leg: Box<crate::rtc::BrowserLeg>,
        route: crate::rtc::mux::MuxRoute,
    ) -> caller::Caller {
        caller::Caller::Browser(Box::new(
            caller::BrowserCaller::new(*leg, route, self.mux.clone(), self.bridge())
                .with_wideband(
                    self.config.media.opus_complexity,
                    self.config.media.jitter_ms,
                )
                .on_worker_clock(self.config.media.worker_clock),
        ))
    }

    /// The transcoding bridge a call makes when it needs one (not when it relays Opus).
    fn bridge(&self) -> LazyBridge {
        let settings = EncoderSettings {
            complexity: self.config.media.opus_complexity,
            complexity_under_loss: self.config.media.opus_complexity_under_loss,
            ..Default::default()
        };
        LazyBridge::new(settings, self.config.media.jitter_ms)
    }

    /// What a call's driver runs with from this gateway.
    fn wiring(&self) -> driver::Wiring<'_> {
        driver::Wiring {
            endpoint: &self.endpoint,
            metrics: &self.metrics,
            shutdown: self.shutdown.subscribe(),
        }
    }

    /// The settings every call runs with.
    fn call_settings(&self) -> machine::CallSettings {
        machine::CallSettings {
            ring_timeout: Duration::from_secs(self.config.limits.ring_seconds.into()),
            ..Default::default()
        }
    }
}

/// One of the gateway's `limits.max_calls`, held for a call's whole life and given back when
/// dropped, on every exit (a panicking call task included).
#[derive(Debug)]
pub struct CallSlot(Arc<CallContext>);

impl CallContext {
    /// True once the gateway drains (SIGTERM): no new calls or registrations.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Why the media has no room for a new call, or `None` when it has: every worker is
    /// asked for more than `limits.media_load_pct` of a core ([`workers::MediaWorkers::has_room`]),
    /// or the calls' ticks run late ([`load::LoadLevel::Shedding`]).
    pub fn media_full(&self) -> Option<&'static str> {
        if self.metrics.load.level() == load::LoadLevel::Shedding {
            Some("its media runs late")
        } else if !self
            .workers
            .has_room(f64::from(self.config.limits.media_load_pct) / 100.0)
        {
            Some("its media workers are busy")
        } else {
            None
        }
    }

    /// How full the media workers are against `limits.economy_load_pct` (never later than
    /// `media_load_pct`), for the load level ([`load::LoadMonitor::handle_timeout`]).
    pub fn media_demand(&self) -> load::Demand {
        let limits = &self.config.limits;
        let economy = f64::from(limits.economy_load_pct.min(limits.media_load_pct)) / 100.0;
        if !self.workers.has_room(economy) {
            load::Demand::High
        } else if self.workers.has_room(economy * load::CALM_SHARE) {
            load::Demand::Calm
        } else {
            load::Demand::Steady
        }
    }

    /// Takes a call slot, or `None` when `limits.max_calls` calls run already. The check and
    /// the increment are one atomic step, so a burst of calls cannot overshoot the limit.
    /// In a cluster, `[cluster] max_calls` bounds all nodes' calls together too.
    pub fn take_call_slot(self: &Arc<Self>) -> Option<CallSlot> {
        let cluster_max = self.cluster.as_ref().and_then(|c| c.max_calls());
        self.metrics
            .calls
            .try_take(
                self.config.limits.max_calls,
                cluster_max.unwrap_or(u32::MAX),
            )
            .then(|| CallSlot(self.clone()))
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.metrics.calls.release();
    }
}

/// Gateway-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Calls in progress, here (and, in a cluster, on the other nodes).
    pub calls: Arc<crate::count::SharedCount>,
    /// Calls started.
    pub calls_total: AtomicU64,
    /// Calls answered.
    pub calls_answered: AtomicU64,
    /// Sum of setup times (INVITE → 2xx), µs, for the average.
    pub setup_us_sum: AtomicU64,
    /// Setup-time histogram: counts per bucket of [`SETUP_BUCKETS`] (cumulative on output).
    pub setup_buckets: [AtomicU64; SETUP_BUCKETS.len()],
    /// Ended calls by reason.
    pub ended: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Browser frames recovered from FEC, all calls.
    pub fec_recovered: AtomicU64,
    /// Trunk frames concealed, all calls.
    pub trunk_concealed: AtomicU64,
    /// RTP packets received from trunks, all ended calls.
    pub trunk_received: AtomicU64,
    /// RTP packets from trunks that never arrived, all ended calls.
    pub trunk_lost: AtomicU64,
    /// Per-call trunk jitter histogram, counts per bucket of [`JITTER_BUCKETS_MS`].
    pub jitter_buckets: [AtomicU64; JITTER_BUCKETS_MS.len()],
    /// Calls with a jitter figure.
    pub jitter_calls: AtomicU64,
    /// Sum of per-call jitter, µs.
    pub jitter_us_sum: AtomicU64,
    /// Opus frames relayed untouched between browser and trunk, all ended calls.
    pub frames_relayed: AtomicU64,
    /// Opus frames decoded from or encoded for browsers (transcoded calls), all ended calls.
    pub frames_transcoded: AtomicU64,
    /// Pre-call tests (`preflight`) started.
    pub preflights_total: AtomicU64,
    /// Browsers asked for a new offer because their trunk's codec changed
    /// (`renegotiation_needed`).
    pub renegotiations_asked: AtomicU64,
    /// Such asks withheld: the call's browser was asked ten times in the last minute already.
    pub renegotiations_withheld: AtomicU64,
    /// The media load, from the calls' tick lateness.
    pub load: load::LoadMonitor,
    /// Media datagrams refused (wrong source, not RTP), live.
    pub media_drops: Arc<crate::media::MediaDrops>,
}

/// Upper bounds, ms, of the per-call jitter histogram (`+Inf` is implied).
pub const JITTER_BUCKETS_MS: [f64; 6] = [1.0, 5.0, 10.0, 20.0, 50.0, 100.0];

/// Upper bounds, seconds, of the setup-time histogram (`+Inf` is implied).
pub const SETUP_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

impl Metrics {
    /// Counts one ended call under `reason` (`gateway_calls_ended_total`).
    pub fn count_ended(&self, reason: &str) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        match ended.get_mut(reason) {
            Some(count) => *count += 1,
            None => {
                ended.insert(reason.to_string(), 1);
            }
        }
    }

    /// Counts one answered call's setup time.
    pub fn record_setup(&self, setup: Duration) {
        self.setup_us_sum
            .fetch_add(setup.as_micros() as u64, Ordering::Relaxed);
        if let Some(i) = SETUP_BUCKETS.iter().position(|b| setup.as_secs_f64() <= *b) {
            self.setup_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}
