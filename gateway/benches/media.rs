//! The per-call media pipeline, per 20 ms frame both ways, against the floor: raw libopus
//! encode + decode of the same frame at the same rate (8 kHz) and settings, in the same run.
//!
//! - pipeline, browser → trunk: Opus packet (as a browser codes it for the gateway's answer
//!   to a G.711 call: narrowband, 24 kb/s) → `Bridge::from_browser` (decode, FEC/loss
//!   logic) → G.711 encode → RTP header;
//! - pipeline, trunk → browser: RTP parse → G.711 decode → jitter buffer → Opus encode;
//! - floor: `opus_decode` of the browser packet + `opus_encode` of the trunk frame, straight
//!   through audiopus, nothing else;
//! - load floor: the same for the signal `loadgen`'s callers send and sipp echoes back, the
//!   floor of the calls `scripts/load_ramp.py` and `scripts/peer_compare.py` measure;
//! - load floor, 50 calls in turn: the load floor's work for 50 calls' coders, a frame each in
//!   turn, as a box carrying those calls runs them.
//!
//! - G.722: a 20 ms frame of 16 kHz audio (two tones) encoded and decoded by the gateway's
//!   G.722 coder (`gateway::media::g722`), the HD voice trunk's side of a call.
//!
//! The UDP and SRTP work around it is not in either (it is the same syscall and cipher per
//! packet whatever the pipeline does). Prints `pipeline / floor` at the end.
//! Run: `cargo bench -p gateway --bench media` (`OPUS_COMPLEXITY=N`, `OPUS_LOSS_PCT=N` for
//! other settings).

use std::hint::black_box;
use std::time::Duration;

use audiopus::coder::Decoder;
use audiopus::packet::Packet;
use audiopus::{Channels, MutSignals, SampleRate};
use criterion::Criterion;
use gateway::media::bridge::Bridge;
use gateway::media::g711::G711;
use gateway::media::g722;
use gateway::media::opus::FRAME_SAMPLES_8K;
use gateway::media::rtp::{RtpPacket, RtpSender};
use gateway::media::tone::ToneGenerator;
use gateway_tests::browser_opus::{BrowserOpus, FRAME_48K};
use gateway_tests::floor::{FloorCall, load_signal, settings_from_env};

const FRAMES: usize = 500;

/// Ten seconds of a voice-like test signal: a tone with a second partial and some noise,
/// so the encoder works as it would on speech rather than on a pure sine.
fn signal() -> Vec<[i16; FRAME_SAMPLES_8K]> {
    let mut a = ToneGenerator::new(1004.0, 8000, 6000);
    let mut b = ToneGenerator::new(310.0, 8000, 3000);
    let mut seed = 0x1234_5678u32;
    (0..FRAMES)
        .map(|_| {
            let mut x = [0i16; FRAME_SAMPLES_8K];
            let mut y = [0i16; FRAME_SAMPLES_8K];
            a.fill(&mut x);
            b.fill(&mut y);
            for (s, t) in x.iter_mut().zip(y) {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *s = s
                    .saturating_add(t)
                    .saturating_add(((seed >> 20) as i16) - 2048);
            }
            x
        })
        .collect()
}

fn main() {
    let settings = settings_from_env();
    println!(
        "Opus complexity {}, expected loss {} %",
        settings.complexity, settings.expected_loss_pct
    );
    let frames = signal();
    // What the browser sends: the signal as a browser captures it (48 kHz) and codes it for
    // the gateway's answer to a G.711 call (narrowband, 24 kb/s), once, up front;
    // and, for the comparison at the end, as it codes it for one that does not (full band,
    // 32 kb/s).
    let captured = at_48k(&frames);
    let browser_packets = |playback_hz: u32, bitrate: u32| -> Vec<Vec<u8>> {
        let mut browser = BrowserOpus::coding_up_to(playback_hz, true, 0.0).unwrap();
        browser.set_bitrate(bitrate).unwrap();
        // The test signal stands in for speech, and is coded as a browser codes speech.
        browser.code_as_speech().unwrap();
        captured
            .iter()
            .map(|f| {
                let mut out = [0u8; 1500];
                let n = browser.encode(f, &mut out).unwrap();
                out[..n].to_vec()
            })
            .collect()
    };
    let packets = browser_packets(8000, 24_000);
    let full_band = browser_packets(48_000, 32_000);
    // And for the gateway's answer to a G.722 call (wideband, 32 kb/s).
    let wide = browser_packets(16_000, 32_000);
    // What the trunk sends: the signal as G.711 µ-law RTP.
    let mut trunk_sender = RtpSender::new();
    let trunk_packets: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut out = [0u8; 12 + FRAME_SAMPLES_8K];
            let n = trunk_sender.next_header(&mut out, 0, FRAME_SAMPLES_8K as u32);
            G711::Pcmu.encode(f, &mut out[n..]);
            out.to_vec()
        })
        .collect();

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .sample_size(60)
        .configure_from_args();

    let mut bridge = Bridge::new(settings, 40).unwrap();
    let mut sender = RtpSender::new();
    let mut out = [0u8; 12 + FRAME_SAMPLES_8K];
    let mut pcm = [0i16; FRAME_SAMPLES_8K];
    let mut i = 0usize;
    let mut seq = 0u16;
    c.bench_function("pipeline: 20 ms both ways", |bench| {
        bench.iter(|| {
            let k = i % FRAMES;
            i += 1;
            seq = seq.wrapping_add(1);
            // Browser → trunk.
            bridge.from_browser(seq, &packets[k], |frame| {
                let n = sender.next_header(&mut out, 0, FRAME_SAMPLES_8K as u32);
                G711::Pcmu.encode(frame, &mut out[n..]);
                black_box(&out);
            });
            // Trunk → browser.
            let rtp = RtpPacket::parse(&trunk_packets[k]).unwrap();
            G711::Pcmu.decode(rtp.payload, &mut pcm);
            bridge.from_trunk(rtp.timestamp, &pcm);
            black_box(bridge.to_browser());
        })
    });

    // The pipeline's floor, then the floor of the load's calls (same settings).
    let (load_packets, load_frames) = load_signal(FRAMES);
    for (name, packets, frames) in [
        (FLOOR, &packets, &frames),
        (LOAD_FLOOR, &load_packets, &load_frames),
    ] {
        let mut call = FloorCall::new(settings);
        let mut j = 0usize;
        c.bench_function(name, |bench| {
            bench.iter(|| {
                let k = j % FRAMES;
                j += 1;
                call.code(&packets[k], &frames[k]);
            })
        });
    }
    // The load floor as a box carrying CALLS calls runs it: each call's decoder and encoder in
    // turn, a frame each. Why: one coder pair coding frame after frame keeps its state in the
    // core's caches, where a call's state waits while the other calls' pass through, as in the
    // gateway. On the Intel Xeon of 2026-12-05 this read 15–23 % *cheaper* than one pair, in
    // four runs, not dearer: not explained yet (each of these coders is in its first few
    // thousand frames, the one pair far beyond; a call's coders are in their first too).
    const CALLS: usize = 50;
    let mut calls: Vec<FloorCall> = (0..CALLS).map(|_| FloorCall::new(settings)).collect();
    let mut n = 0usize;
    c.bench_function(LOAD_FLOOR_CALLS, |bench| {
        bench.iter(|| {
            let (call, k) = (n % CALLS, (n / CALLS) % FRAMES);
            n += 1;
            calls[call].code(&load_packets[k], &load_frames[k]);
        })
    });
    // What the browser's band costs the gateway: its packets decoded to the 8 kHz a G.711
    // call needs, and to the 16 kHz of a G.722 call, capped (as the gateway's answer asks)
    // and not (a browser's default). The signal has nothing above 4 kHz, so the wideband
    // stream's upper band is near silent: a floor for what speech would cost.
    let decodes: [(&str, &[Vec<u8>], SampleRate); 4] = [
        (DECODE_NARROW, &packets, SampleRate::Hz8000),
        (DECODE_FULL_TO_8K, &full_band, SampleRate::Hz8000),
        (DECODE_WIDE, &wide, SampleRate::Hz16000),
        (DECODE_FULL_TO_16K, &full_band, SampleRate::Hz16000),
    ];
    let mut decoded_16k = [0i16; 2 * FRAME_SAMPLES_8K];
    for (name, stream, rate) in decodes {
        let mut decoder = Decoder::new(rate, Channels::Mono).unwrap();
        let samples = if rate == SampleRate::Hz8000 {
            FRAME_SAMPLES_8K
        } else {
            2 * FRAME_SAMPLES_8K
        };
        let mut m = 0usize;
        c.bench_function(name, |bench| {
            bench.iter(|| {
                let packet = Packet::try_from(stream[m % FRAMES].as_slice()).unwrap();
                m += 1;
                let signals = MutSignals::try_from(&mut decoded_16k[..samples]).unwrap();
                black_box(decoder.decode(Some(packet), signals, false).unwrap());
            })
        });
    }
    let mut wide = vec![0i16; FRAMES * 2 * FRAME_SAMPLES_8K];
    let (mut low, mut high) = (
        ToneGenerator::new(440.0, 16_000, 8000),
        ToneGenerator::new(5200.0, 16_000, 2000),
    );
    let mut upper = vec![0i16; wide.len()];
    low.fill(&mut wide);
    high.fill(&mut upper);
    for (w, u) in wide.iter_mut().zip(&upper) {
        *w = w.saturating_add(*u);
    }
    let (mut encoder, mut decoder) = (g722::Encoder::new(), g722::Decoder::new());
    let (mut codes, mut decoded) = ([0u8; FRAME_SAMPLES_8K], [0i16; 2 * FRAME_SAMPLES_8K]);
    let mut k = 0usize;
    c.bench_function(G722, |bench| {
        bench.iter(|| {
            let frame = wide.chunks(2 * FRAME_SAMPLES_8K).nth(k % FRAMES).unwrap();
            k += 1;
            let n = encoder.encode(black_box(frame), &mut codes);
            black_box(decoder.decode(&codes[..n], &mut decoded));
        })
    });
    c.final_summary();

    // The ratio, from criterion's own estimates (median of each).
    let median = |name: &str| -> Option<f64> {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()?
            .join("criterion")
            // criterion's file-name-safe form of the benchmark's name
            .join(name.replace([':', '/'], "_"))
            .join("new")
            .join("estimates.json");
        let text = std::fs::read_to_string(dir).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    match (median("pipeline: 20 ms both ways"), median(FLOOR)) {
        (Some(p), Some(f)) => println!(
            "\nper 20 ms frame, both ways: pipeline {:.2} µs, libopus floor {:.2} µs, ratio {:.3}× (goal ≤ 1.3×)\n\
             one call = 50 frames/s: pipeline {:.3} % of a core, floor {:.3} %",
            p / 1000.0,
            f / 1000.0,
            p / f,
            p * 50.0 / 1e7,
            f * 50.0 / 1e7
        ),
        _ => println!("(criterion estimates not found; see target/criterion)"),
    }
    if let Some(t) = median(LOAD_FLOOR) {
        println!(
            "the load's calls (loadgen's tone, echoed): libopus floor {:.2} µs a frame, {:.3} % of a core per call",
            t / 1000.0,
            t * 50.0 / 1e7
        );
        if let Some(c) = median(LOAD_FLOOR_CALLS) {
            println!(
                "  with {CALLS} calls' coders in turn: {:.2} µs a frame, {:.3} % of a core per call ({:.2}× one call's)",
                c / 1000.0,
                c * 50.0 / 1e7,
                c / t
            );
        }
    }
    if let Some(t) = median(G722) {
        println!(
            "G.722, a 20 ms frame encoded and decoded: {:.2} µs, {:.3} % of a core per call",
            t / 1000.0,
            t * 50.0 / 1e7
        );
    }
    let mean_len = |s: &[Vec<u8>]| s.iter().map(Vec::len).sum::<usize>() as f64 / s.len() as f64;
    println!("browser packets decoded, a frame:");
    for (name, stream, _) in decodes {
        if let Some(t) = median(name) {
            println!(
                "  {name}: {:.2} µs ({:.1} bytes)",
                t / 1000.0,
                mean_len(stream)
            );
        }
    }
}

const FLOOR: &str = "floor: libopus decode + encode";
const LOAD_FLOOR: &str = "load floor: libopus decode + encode of loadgen's tone";
const LOAD_FLOOR_CALLS: &str = "load floor, 50 calls in turn";

const G722: &str = "g722: encode + decode a 20 ms frame";

const DECODE_NARROW: &str = "decode to 8 kHz: browser narrowband 24 kb/s";
const DECODE_FULL_TO_8K: &str = "decode to 8 kHz: browser full band 32 kb/s";
const DECODE_WIDE: &str = "decode to 16 kHz: browser wideband 32 kb/s";
const DECODE_FULL_TO_16K: &str = "decode to 16 kHz: browser full band 32 kb/s";

/// The 8 kHz signal as a browser captures it, at 48 kHz (linear interpolation: the audio
/// stays below 4 kHz, as speech bound for a G.711 call mostly is).
fn at_48k(frames: &[[i16; FRAME_SAMPLES_8K]]) -> Vec<[i16; FRAME_48K]> {
    let samples: Vec<i16> = frames.iter().flatten().copied().collect();
    let mut out = vec![[0i16; FRAME_48K]; frames.len()];
    for (i, s) in out.iter_mut().flatten().enumerate() {
        let (at, frac) = (i / 6, (i % 6) as f64 / 6.0);
        let a = f64::from(samples[at]);
        let b = f64::from(*samples.get(at + 1).unwrap_or(&samples[at]));
        *s = (a + (b - a) * frac) as i16;
    }
    out
}
