//! What a sleep costs a paced process in its caches: passes over a buffer (one load per
//! 64-byte line), back to back and with a sleep before each pass, printing the time a pass
//! takes. Run it as is and under `scripts/load_ramp.py`'s `cores_kept_awake` (or beside any
//! lowest-priority spinner on the same CPU) to see whether an idle core keeps its caches.
//!
//! Why: on a virtual machine an idle core halts, and the host may run other work on it and
//! take its caches. A media worker sleeps between its turns, the libopus floor never does,
//! so the difference is charged to the gateway (docs/benchmarks-history.md, "2026-12-05, late
//! night").
//!
//! Usage: `cache-after-sleep [--kb 1024] [--passes 1000]`, pinned with `taskset -c N`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;

/// `cache-after-sleep`'s arguments.
#[derive(Parser)]
#[command(about = "What a sleep costs a paced process in its caches")]
struct Args {
    /// The buffer passed over, KB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    kb: u64,
    /// Passes back to back and after 2 ms sleeps (a tenth as many after 20 ms).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    passes: u64,
}

fn main() {
    let Args { kb, passes } = Args::parse();
    let (kb, passes) = (kb as usize, passes as usize);
    let words = kb * 1024 / 8;
    let buffer: Vec<u64> = (0..words as u64).collect();
    // Fewer passes after the long sleep: the same few seconds each.
    for (sleep, n) in [
        (None, passes),
        (Some(Duration::from_millis(2)), passes),
        (Some(Duration::from_millis(20)), (passes / 10).max(1)),
    ] {
        let mut spent = Duration::ZERO;
        for _ in 0..n {
            if let Some(sleep) = sleep {
                std::thread::sleep(sleep);
            }
            let start = Instant::now();
            let mut sum = 0u64;
            for word in buffer.iter().step_by(8) {
                sum = sum.wrapping_add(*word);
            }
            black_box(sum);
            spent += start.elapsed();
        }
        let pass = spent / n as u32;
        let label = match sleep {
            None => "back to back".to_string(),
            Some(s) => format!("after a {} ms sleep", s.as_millis()),
        };
        println!(
            "{kb} KB, {label}: {:.2} µs a pass ({:.2} ns a line)",
            pass.as_secs_f64() * 1e6,
            pass.as_secs_f64() * 1e9 / (words / 8) as f64
        );
    }
}
