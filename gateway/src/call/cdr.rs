//! Call detail records: one JSON line per finished call, appended and flushed to disk before
//! the call is forgotten, so a crash loses no completed call's record.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One finished call.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Cdr {
    /// Gateway call id (browser side).
    pub call_id: String,
    /// Trunk-side Call-ID (B2BUA: unrelated to the browser's).
    pub sip_call_id: Option<String>,
    /// `outbound` (browser → trunk) or `inbound`.
    pub direction: &'static str,
    /// Who called: token subject, `anonymous`, or the trunk caller ID.
    pub from: String,
    /// What was dialled: target name or number.
    pub to: String,
    /// The trunk used.
    pub trunk: Option<String>,
    /// Unix milliseconds.
    pub started_ms: u64,
    /// Unix milliseconds, if answered.
    pub answered_ms: Option<u64>,
    /// Unix milliseconds.
    pub ended_ms: u64,
    /// Seconds from answer to end.
    pub duration_s: f64,
    /// Final SIP status.
    pub sip_code: u16,
    /// End reason as sent to the browser.
    pub end_reason: String,
    /// Opus packets from the browser.
    pub browser_packets_in: u64,
    /// Opus packets to the browser.
    pub browser_packets_out: u64,
    /// Browser frames rebuilt from FEC.
    pub browser_fec_recovered: u64,
    /// RTCP reports the browser sent on the audio it received from us.
    pub browser_reports: u64,
    /// The highest loss the browser reported, percent (none without reports).
    pub browser_reported_loss_pct: Option<f64>,
    /// RTP packets sent to the trunk.
    pub trunk_packets_out: u64,
    /// RTP packets from the trunk.
    pub trunk_packets_in: u64,
    /// Trunk frames concealed by the jitter buffer.
    pub trunk_concealed: u64,
    /// RTP packets from the trunk that never arrived.
    pub trunk_packets_lost: u64,
    /// Interarrival jitter of the trunk's RTP at the end of the call, ms (RFC 3550).
    pub trunk_jitter_ms: f64,
    /// The trunk leg's codec (`PCMU`, `PCMA`, `opus`), once negotiated.
    pub trunk_codec: Option<&'static str>,
    /// The trunk leg's SRTP crypto suite (`AES_CM_128_HMAC_SHA1_80`), or null for plain RTP.
    pub trunk_srtp: Option<&'static str>,
    /// The browser's media came through a TURN relay.
    pub browser_relayed: bool,
    /// Opus frames relayed untouched between browser and trunk (both ways): a call whose
    /// trunk speaks Opus is not transcoded.
    pub frames_relayed: u64,
}

/// Appends CDRs to a file.
#[derive(Debug, Clone)]
pub struct CdrLog {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl CdrLog {
    /// A log at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        CdrLog {
            path,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Appends one record and waits until it is on disk (fdatasync).
    pub async fn append(&self, cdr: &Cdr) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(cdr).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let path = self.path.clone();
        let lock = self.lock.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(&line)?;
            file.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// Who a call was between, for its record.
#[derive(Debug, Clone)]
pub struct Parties {
    /// Gateway call id.
    pub call_id: String,
    /// Caller.
    pub from: String,
    /// What was dialled.
    pub to: String,
}

/// What is known of a call as its task starts on a media worker: enough for the record of a
/// call that a fault ends there before its driver runs ([`record_fault`]).
#[derive(Debug, Clone)]
pub struct Placed {
    /// Who it is between.
    pub parties: Parties,
    /// Browser → trunk or trunk → browser.
    pub direction: crate::plugin::Direction,
    /// The trunk's Call-ID, for a call from a trunk.
    pub sip_call_id: Option<String>,
    /// Unix milliseconds.
    pub started_ms: u64,
}

/// What a call's media did, for its record.
#[derive(Debug, Default)]
pub struct MediaSummary {
    /// The bridge's and jitter buffer's figures (transcoded calls).
    pub bridge: (
        crate::media::bridge::BridgeStats,
        crate::media::jitter::JitterStats,
    ),
    /// The trunk stream's counters.
    pub rtp: crate::media::session::RtpStats,
    /// The trunk leg's codec, once negotiated.
    pub trunk_codec: Option<crate::media::codec::Codec>,
    /// The trunk leg's SRTP suite, when its media was SRTP.
    pub trunk_srtp: Option<crate::media::srtp::CryptoSuite>,
    /// The browser's media came through a TURN relay.
    pub browser_relayed: bool,
    /// Opus frames relayed untouched (both ways).
    pub frames_relayed: u64,
}

/// Records a call the driver ran to its end: its media figures come from the outcome.
pub async fn record_outcome(
    ctx: &super::CallContext,
    parties: &Parties,
    started_ms: u64,
    outcome: super::driver::Outcome,
) {
    let summary = MediaSummary {
        bridge: match &outcome.caller {
            super::caller::Caller::Browser(b) => b.media_stats(),
            super::caller::Caller::Tone(_) => Default::default(),
        },
        rtp: outcome.rtp,
        trunk_codec: outcome.trunk_codec,
        trunk_srtp: outcome.trunk_srtp,
        browser_relayed: match &outcome.caller {
            super::caller::Caller::Browser(b) => b.leg.relayed(),
            super::caller::Caller::Tone(_) => false,
        },
        frames_relayed: outcome.relayed,
    };
    record(
        ctx,
        parties,
        started_ms,
        &outcome.call,
        summary,
        outcome.hooks,
    )
    .await;
}

/// Counts a finished call in `/metrics`, tells its plugins it ended (they finish their work,
/// a recording's file, first) and appends its CDR.
pub async fn record(
    ctx: &super::CallContext,
    parties: &Parties,
    started_ms: u64,
    call: &super::machine::Call,
    summary: MediaSummary,
    hooks: Option<crate::plugin::CallHooks>,
) {
    use std::sync::atomic::Ordering;
    let metrics = &ctx.metrics;
    let (reason, code) = call
        .end()
        .cloned()
        .unwrap_or_else(|| ("hangup".into(), 200));
    metrics.count_ended(&reason);
    let MediaSummary {
        bridge: (media, jitter),
        rtp,
        trunk_codec,
        trunk_srtp,
        browser_relayed,
        frames_relayed,
    } = summary;
    metrics
        .fec_recovered
        .fetch_add(media.browser_fec_recovered, Ordering::Relaxed);
    metrics
        .trunk_concealed
        .fetch_add(jitter.concealed, Ordering::Relaxed);
    metrics
        .trunk_received
        .fetch_add(rtp.received, Ordering::Relaxed);
    metrics.trunk_lost.fetch_add(rtp.lost, Ordering::Relaxed);
    metrics
        .frames_relayed
        .fetch_add(frames_relayed, Ordering::Relaxed);
    metrics.frames_transcoded.fetch_add(
        media.browser_packets + media.browser_packets_sent,
        Ordering::Relaxed,
    );
    if rtp.received > 0 {
        let jitter_ms = rtp.jitter as f64 / 8.0;
        if let Some(i) = super::JITTER_BUCKETS_MS
            .iter()
            .position(|b| jitter_ms <= *b)
        {
            metrics.jitter_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        metrics.jitter_calls.fetch_add(1, Ordering::Relaxed);
        metrics
            .jitter_us_sum
            .fetch_add((jitter_ms * 1000.0) as u64, Ordering::Relaxed);
    }
    let ended_ms = crate::wall::unix_ms();
    let answered_ms = call
        .answered_at()
        .map(|at| ended_ms.saturating_sub(at.elapsed().as_millis() as u64));
    let record = Cdr {
        call_id: parties.call_id.clone(),
        sip_call_id: call.sip_call_id().map(str::to_string),
        direction: direction_name(call.direction()),
        from: parties.from.clone(),
        to: parties.to.clone(),
        trunk: call.trunk_used().map(str::to_string),
        started_ms,
        answered_ms,
        ended_ms,
        duration_s: answered_ms.map_or(0.0, |a| (ended_ms - a) as f64 / 1000.0),
        sip_code: code,
        end_reason: reason,
        browser_packets_in: media.browser_packets,
        browser_packets_out: media.browser_packets_sent,
        browser_fec_recovered: media.browser_fec_recovered,
        browser_reports: media.browser_reports,
        browser_reported_loss_pct: media.browser_reported_loss_pct(),
        trunk_packets_out: rtp.sent,
        trunk_packets_in: rtp.received,
        trunk_concealed: jitter.concealed,
        trunk_packets_lost: rtp.lost,
        trunk_jitter_ms: rtp.jitter as f64 / 8.0,
        trunk_codec: trunk_codec.map(|c| c.encoding_name()),
        trunk_srtp: trunk_srtp.map(|s| s.name()),
        browser_relayed,
        frames_relayed,
    };
    if let Some(hooks) = hooks {
        hooks
            .end(crate::plugin::CallEnd {
                reason: record.end_reason.clone(),
                sip_code: record.sip_code,
                duration_ms: answered_ms.map_or(0, |a| ended_ms.saturating_sub(a)),
                trunk: record.trunk.clone(),
                sip_call_id: record.sip_call_id.clone(),
                started_ms,
                answered_ms,
            })
            .await;
    }
    append(ctx, &record).await;
}

/// Records a call that a fault in the gateway ended on its media worker before its driver ran
/// (`super::driver::fault::contain_task`): it counts among the ended calls (`internal_error`)
/// and its CDR says so, with no media and no answer. Why: a CDR is the one place an operator
/// (and billing) sees every call; a call missing there cannot be looked into. Its plugins hear
/// of its end as their hooks are dropped (`crate::plugin::CallHooks`).
pub async fn record_fault(ctx: &super::CallContext, placed: &Placed) {
    ctx.metrics.count_ended("internal_error");
    let record = Cdr {
        call_id: placed.parties.call_id.clone(),
        sip_call_id: placed.sip_call_id.clone(),
        direction: direction_name(placed.direction),
        from: placed.parties.from.clone(),
        to: placed.parties.to.clone(),
        started_ms: placed.started_ms,
        ended_ms: crate::wall::unix_ms(),
        sip_code: 500,
        end_reason: "internal_error".into(),
        ..Cdr::default()
    };
    append(ctx, &record).await;
}

fn direction_name(direction: crate::plugin::Direction) -> &'static str {
    match direction {
        crate::plugin::Direction::Outbound => "outbound",
        crate::plugin::Direction::Inbound => "inbound",
    }
}

/// Appends `record` to the CDR log, if the gateway keeps one.
async fn append(ctx: &super::CallContext, record: &Cdr) {
    if let Some(log) = &ctx.cdr
        && let Err(e) = log.append(record).await
    {
        tracing::error!(error = %e, call_id = %record.call_id, "CDR could not be written");
    }
}
