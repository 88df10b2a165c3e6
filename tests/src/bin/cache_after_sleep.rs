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
//! With `--huge` the buffer sits on 2 MB pages (`MADV_HUGEPAGE`; it prints how much of it the
//! kernel backed so), so a pass needs a handful of TLB entries rather than one per 4 KB: what
//! the TLB's refill adds to the caches' shows as the difference. With `--chase` a pass follows
//! a chain of lines in random order, each load waiting for the one before, as a walk through a
//! call's boxed and hashed state does, where the sequential pass lets the prefetcher run ahead.
//!
//! With `--sleeps-us` the sleeps are the ones named; with `--nap-us` each is slept in naps of
//! that length, as a media worker does where `[media] nap_us` asks.
//!
//! Usage: `cache-after-sleep [--kb 1024] [--passes 1000] [--huge] [--chase]
//! [--sleeps-us 2000,20000] [--nap-us N]`, pinned with `taskset -c N`.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use clap::Parser;
use gateway::call::workers::sleep_in_naps;
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous};

/// `cache-after-sleep`'s arguments.
#[derive(Parser)]
#[command(about = "What a sleep costs a paced process in its caches")]
struct Args {
    /// The buffer passed over, KB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    kb: u64,
    /// Passes back to back and after each sleep.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    passes: u64,
    /// Back the buffer with 2 MB pages (transparent huge pages, `MADV_HUGEPAGE`).
    #[arg(long)]
    huge: bool,
    /// Visit the lines as a chain in random order (dependent loads) instead of in sequence.
    #[arg(long)]
    chase: bool,
    /// The sleeps before a pass, µs, comma-separated (a tenth as many passes after those
    /// longer than 2 ms).
    #[arg(long, value_delimiter = ',', default_values_t = [2_000u64, 20_000])]
    sleeps_us: Vec<u64>,
    /// Sleep in naps of this many µs: a thread that wakes this often.
    #[arg(long)]
    nap_us: Option<u64>,
}

/// A huge page's size on x86-64.
const HUGE: usize = 2 << 20;
/// Words in a 64-byte line.
const LINE_WORDS: usize = 8;

/// A buffer of `words` words, on 2 MB pages where `huge` and the kernel allow. Never freed: the
/// probe runs once.
fn buffer(words: usize, huge: bool) -> &'static mut [u64] {
    let len = (words * 8).div_ceil(HUGE) * HUGE;
    // One huge page more, so that the buffer can start on a 2 MB boundary.
    // SAFETY: a fresh anonymous mapping, placed where the kernel chooses; nothing aliases it.
    let map = unsafe {
        mmap_anonymous(
            None,
            NonZeroUsize::new(len + HUGE).expect("a buffer of at least a line"),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    }
    .expect("mmap of the buffer");
    let start = (map.as_ptr() as usize).next_multiple_of(HUGE);
    let start = NonNull::new(start as *mut std::ffi::c_void).expect("mapped, so not null");
    if huge {
        // A kernel without THP says so; the probe runs on small pages then and prints it.
        // SAFETY: advice on `len` bytes from `start`, inside the mapping made above.
        if let Err(e) = unsafe { madvise(start, len, MmapAdvise::MADV_HUGEPAGE) } {
            eprintln!("madvise(MADV_HUGEPAGE): {e}");
        }
    }
    // SAFETY: `words` words from `start` lie inside the mapping, which is zeroed, aligned,
    // never unmapped and handed out once.
    unsafe { std::slice::from_raw_parts_mut(start.as_ptr().cast::<u64>(), words) }
}

/// The process's anonymous memory on huge pages, KB (`/proc/self/smaps_rollup`).
fn anon_huge_kb() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Links every line's first word to the next line of a random cycle through all of them.
fn link_randomly(buffer: &mut [u64]) {
    let lines = buffer.len() / LINE_WORDS;
    let mut order: Vec<usize> = (0..lines).collect();
    // A fixed-seed xorshift shuffle: the same chain every run.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..lines).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for (i, &line) in order.iter().enumerate() {
        buffer[line * LINE_WORDS] = (order[(i + 1) % lines] * LINE_WORDS) as u64;
    }
}

/// One pass over the buffer: every line once.
fn pass(buffer: &[u64], chase: bool) -> u64 {
    if chase {
        let mut at = 0usize;
        for _ in 0..buffer.len() / LINE_WORDS {
            at = buffer[at] as usize;
        }
        return at as u64;
    }
    let mut sum = 0u64;
    for word in buffer.iter().step_by(LINE_WORDS) {
        sum = sum.wrapping_add(*word);
    }
    sum
}

fn main() {
    let Args {
        kb,
        passes,
        huge,
        chase,
        sleeps_us,
        nap_us,
    } = Args::parse();
    let (kb, passes) = (kb as usize, passes as usize);
    let words = (kb * 1024 / 8).next_multiple_of(LINE_WORDS);
    let buffer = buffer(words, huge);
    for (i, word) in buffer.iter_mut().enumerate() {
        *word = i as u64;
    }
    if chase {
        link_randomly(buffer);
    }
    println!(
        "{kb} KB, {}, {} KB of the process's memory on huge pages",
        if chase {
            "a chain of lines in random order"
        } else {
            "lines in sequence"
        },
        anon_huge_kb()
    );
    // Fewer passes after the long sleeps: about the same few seconds each.
    let mut rounds = vec![(Duration::ZERO, passes)];
    rounds.extend(sleeps_us.iter().map(|&us| {
        let sleep = Duration::from_micros(us);
        (
            sleep,
            if us > 2_000 {
                (passes / 10).max(1)
            } else {
                passes
            },
        )
    }));
    for (sleep, n) in rounds {
        let mut spent = Duration::ZERO;
        for _ in 0..n {
            // The gateway's own wait (`[media] nap_us`): one sleep, or naps of `nap_us`.
            sleep_in_naps(sleep, Duration::from_micros(nap_us.unwrap_or(0)));
            let start = Instant::now();
            black_box(pass(buffer, chase));
            spent += start.elapsed();
        }
        let each = spent / n as u32;
        let label = match (sleep.is_zero(), nap_us) {
            (true, _) => "back to back".to_string(),
            (false, None) => format!("after a {} µs sleep", sleep.as_micros()),
            (false, Some(nap)) => format!("after {} µs in naps of {nap} µs", sleep.as_micros()),
        };
        println!(
            "{kb} KB, {label}: {:.2} µs a pass ({:.2} ns a line)",
            each.as_secs_f64() * 1e6,
            each.as_secs_f64() * 1e9 / (words / LINE_WORDS) as f64
        );
    }
}
