//! `loadgen`: headless WebRTC browsers calling through a gateway, for load and for checks.
//!
//! Each call is a real WebRTC peer (ICE, DTLS-SRTP, Opus) speaking the `/ws` protocol; it
//! sends a tone and measures what comes back, so against an echo target every call is an
//! end-to-end audio check.

use std::sync::Arc;

use clap::Parser;
use gateway_tests::client::{CallOptions, CallReport, run_call};
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Headless WebRTC calls through the gateway, with audio checks"
)]
struct Args {
    /// The gateway's signaling URL, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long)]
    ws: String,
    /// Target name (or number, if the token allows).
    #[arg(long)]
    to: String,
    /// Call token (JWT), if the gateway requires one.
    #[arg(long)]
    token: Option<String>,
    /// Calls in total.
    #[arg(long, default_value_t = 1)]
    calls: usize,
    /// Calls at the same time.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds each call stays connected.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Tone sent by each caller, Hz.
    #[arg(long, default_value_t = 1004.0)]
    tone: f64,
    /// DTMF digits each caller sends after half a second.
    #[arg(long)]
    dtmf: Option<String>,
    /// Load mode: callers send a pre-encoded Opus loop and only count and time what comes
    /// back, except every `--sample`th call, which checks the tone in full.
    #[arg(long)]
    light: bool,
    /// With `--light`: every Nth call decodes and checks the tone.
    #[arg(long, default_value_t = 10)]
    sample: usize,
    /// Code full band at 32 kb/s whatever the gateway's description allows, as a browser that
    /// ignores its `maxplaybackrate` would (by default callers code as Chromium does).
    #[arg(long)]
    full_band: bool,
    /// Seconds over which the calls are started (0: all at once, up to --concurrency).
    #[arg(long, default_value_t = 0.0)]
    ramp_seconds: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Summary {
    calls_ok: usize,
    calls_failed: usize,
    setup_ms_p50: Option<f64>,
    setup_ms_p99: Option<f64>,
    /// The slowest call's set-up, and the first call's: of 50 calls the p99's rank is the
    /// slowest, so these say whether one call alone made it.
    setup_ms_max: Option<f64>,
    setup_ms_first: Option<f64>,
    packets_sent: u64,
    packets_received: u64,
    loss_pct: f64,
    tone_detected: bool,
    tone_snr_db: Option<f64>,
    tone_calls_checked: usize,
    jitter_ms_p50: Option<f64>,
    jitter_ms_p99: Option<f64>,
    dtmf_received: usize,
    failures: Vec<String>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some((sorted[rank.min(sorted.len() - 1)] * 100.0).round() / 100.0)
}

fn ok(r: &CallReport) -> bool {
    r.setup_ms.is_some() && r.ended.as_ref().is_some_and(|e| e["reason"] == "hangup")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let options = CallOptions {
        token: args.token.clone(),
        seconds: args.seconds,
        tone_hz: args.tone,
        dtmf: args.dtmf.clone(),
        full_band: args.full_band,
        ..CallOptions::new(&args.to)
    };
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::new();
    let spacing = std::time::Duration::from_secs_f64(args.ramp_seconds / args.calls.max(1) as f64);
    for i in 0..args.calls {
        if i > 0 && !spacing.is_zero() {
            tokio::time::sleep(spacing).await;
        }
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let (ws, mut options) = (args.ws.clone(), options.clone());
        options.light = args.light && i % args.sample.max(1) != 0;
        // The sampled calls check the tone in full, sending the light callers' loop: the
        // generator codes nothing live. At 250 calls their live encoders took some 40 % of
        // its time (54 % of a core before, 32 % after, docs/benchmarks-history.md §2, "afternoon").
        options.looped_tone = args.light;
        tasks.push(tokio::spawn(async move {
            let result = run_call(&ws, &options).await;
            drop(permit);
            result
        }));
    }
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let good: Vec<&CallReport> = reports.iter().filter(|r| ok(r)).collect();
    for r in reports.iter().filter(|r| !ok(r)) {
        failures.push(format!(
            "call {:?} ended {:?}, errors {:?}",
            r.call_id, r.ended, r.errors
        ));
    }
    let mut setups: Vec<f64> = good.iter().filter_map(|r| r.setup_ms).collect();
    setups.sort_by(f64::total_cmp);
    let mut snrs: Vec<f64> = good.iter().filter_map(|r| r.tone_snr_db).collect();
    snrs.sort_by(f64::total_cmp);
    let mut jitters: Vec<f64> = good.iter().filter_map(|r| r.jitter_ms).collect();
    jitters.sort_by(f64::total_cmp);
    let sent: u64 = reports.iter().map(|r| r.packets_sent).sum();
    let received: u64 = reports.iter().map(|r| r.packets_received).sum();
    let lost: u64 = reports.iter().map(|r| r.packets_lost).sum();
    let summary = Summary {
        calls_ok: good.len(),
        calls_failed: args.calls - good.len(),
        setup_ms_p50: percentile(&setups, 50.0),
        setup_ms_p99: percentile(&setups, 99.0),
        setup_ms_max: setups.last().map(|ms| (ms * 100.0).round() / 100.0),
        setup_ms_first: reports
            .first()
            .filter(|r| ok(r))
            .and_then(|r| r.setup_ms)
            .map(|ms| (ms * 100.0).round() / 100.0),
        packets_sent: sent,
        packets_received: received,
        // Loss on the way back to the callers, from RTP sequence gaps: the pipeline's start-up
        // and the packets in flight at hang-up are not loss.
        loss_pct: if received + lost == 0 {
            0.0
        } else {
            (lost as f64 / (received + lost) as f64 * 10000.0).round() / 100.0
        },
        // Light callers do not decode: the tone verdict rests on the sampled calls.
        tone_detected: !snrs.is_empty()
            && good
                .iter()
                .filter(|r| r.tone_snr_db.is_some())
                .all(|r| r.tone_snr_db.is_some_and(|s| s >= 10.0)),
        tone_snr_db: percentile(&snrs, 50.0),
        tone_calls_checked: snrs.len(),
        jitter_ms_p50: percentile(&jitters, 50.0),
        jitter_ms_p99: percentile(&jitters, 99.0),
        dtmf_received: good
            .iter()
            .filter(|r| args.dtmf.as_ref().is_some_and(|d| &r.dtmf_received == d))
            .count(),
        failures,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "{} ok, {} failed; setup p50 {} ms, p99 {} ms; packets {} sent, {} received, {:.2} % lost; tone {} (median SNR {} dB); DTMF back on {} calls",
            summary.calls_ok,
            summary.calls_failed,
            show(summary.setup_ms_p50),
            show(summary.setup_ms_p99),
            summary.packets_sent,
            summary.packets_received,
            summary.loss_pct,
            if summary.tone_detected {
                "back"
            } else {
                "missing"
            },
            show(summary.tone_snr_db),
            summary.dtmf_received
        );
        for f in &summary.failures {
            println!("  {f}");
        }
    }
    if summary.calls_failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
