//! Call detail records: one JSON line per finished call, appended and flushed to disk before
//! the call is forgotten, so a crash loses no completed call's record.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One finished call.
#[derive(Debug, Clone, Serialize, PartialEq)]
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

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
