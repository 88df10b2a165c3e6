//! The libopus floor as a media server meets it: `--calls N` calls' Opus decoders and
//! encoders, each given a frame every 20 ms tick, the thread asleep between ticks; prints the
//! process's CPU a call, in % of a core.
//!
//! Why beside the criterion floor (`gateway/benches/media.rs`, "load floor"): that one codes
//! frame after frame and never lets its core idle, where a media server codes 20 ms of audio
//! for every call and then waits for the next 20 ms. On a virtual machine an idle core may be
//! given to other work by the host, and what the codec finds in the caches afterwards differs
//! (docs/benchmarks-history.md, "2026-12-05, evening"). The work here is the same as the load
//! floor's — the same signal, settings and frames — but paced as real calls are.
//!
//! Usage: `opus-paced [--calls 50] [--seconds 10]`; add `--busy` to code frame after frame
//! instead (the criterion floor's way, for comparison in the same run). `OPUS_COMPLEXITY` and
//! `OPUS_LOSS_PCT` set the encoder as for the criterion bench (`settings_from_env`).

use std::time::{Duration, Instant};

use clap::Parser;

use gateway_tests::floor::{FloorCall, load_signal, settings_from_env};

/// Frames of signal, cycled (ten seconds).
const FRAMES: usize = 500;

/// `opus-paced`'s arguments.
#[derive(Parser)]
#[command(about = "The libopus floor's work for N calls, paced as real calls or frame after frame")]
struct Args {
    /// Calls whose coders each code a frame every tick.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    calls: u64,
    /// Seconds of audio to code (50 ticks a second).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Code frame after frame, never idling (the criterion floor's way).
    #[arg(long)]
    busy: bool,
}

fn main() {
    let Args {
        calls,
        seconds,
        busy,
    } = Args::parse();
    let settings = settings_from_env();
    let (packets, frames) = load_signal(FRAMES);
    let mut coders: Vec<FloorCall> = (0..calls).map(|_| FloorCall::new(settings)).collect();
    let ticks = seconds * 50;
    let (cpu_before, start) = (cpu_seconds(), Instant::now());
    for tick in 0..ticks {
        let k = tick as usize % FRAMES;
        for call in &mut coders {
            call.code(&packets[k], &frames[k]);
        }
        if !busy {
            let next = start + Duration::from_millis(20 * (tick + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
    let cpu = cpu_seconds() - cpu_before;
    // What the frames coded would have taken in real time: `busy` runs ahead of it.
    let audio = ticks as f64 * 0.020;
    println!(
        "{} {calls} calls, {ticks} ticks: {:.3} % of a core a call ({:.2} µs a frame both ways)",
        if busy { "busy" } else { "paced" },
        cpu / audio / calls as f64 * 100.0,
        cpu / (ticks as f64 * calls as f64) * 1e6,
    );
}

/// The time this (single-threaded) process has run on a core so far, seconds: the first field
/// of `/proc/self/schedstat`, in nanoseconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/schedstat")
        .expect("/proc/self/schedstat: this measures on Linux with scheduler statistics");
    let ns: f64 = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap();
    ns / 1e9
}
