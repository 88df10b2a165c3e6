//! The libopus floor: what decoding a call's Opus and encoding its answer costs with nothing
//! else around it, at the gateway's settings (`gateway/benches/media.rs`, `opus-paced`).

use std::hint::black_box;

use audiopus::coder::Decoder;
use audiopus::packet::Packet;
use audiopus::{Channels, MutSignals, SampleRate};
use gateway::media::g711::G711;
use gateway::media::opus::{EncoderSettings, FRAME_SAMPLES_8K, OpusEncoder};

use crate::client::{CallOptions, tone_loop_for};

/// One call's Opus coders as the floor runs them, with nothing around them: a decoder for
/// the browser's packets, straight through audiopus, and the gateway's own encoder
/// ([`OpusEncoder`], a call to `opus_encode` once set up), so the floor codes at the settings
/// the gateway sets and cannot drift from them.
pub struct FloorCall {
    encoder: OpusEncoder,
    decoder: Decoder,
}

impl FloorCall {
    /// A call's coders at `settings`.
    pub fn new(settings: EncoderSettings) -> FloorCall {
        FloorCall {
            encoder: OpusEncoder::new(settings).unwrap(),
            decoder: Decoder::new(SampleRate::Hz8000, Channels::Mono).unwrap(),
        }
    }

    /// One 20 ms frame both ways: decodes the browser's `packet` and encodes `frame`.
    pub fn code(&mut self, packet: &[u8], frame: &[i16; FRAME_SAMPLES_8K]) {
        let mut decoded = [0i16; FRAME_SAMPLES_8K];
        let mut encoded = [0u8; 400];
        let packet = Packet::try_from(packet).unwrap();
        let signals = MutSignals::try_from(&mut decoded[..]).unwrap();
        black_box(self.decoder.decode(Some(packet), signals, false).unwrap());
        black_box(self.encoder.encode(frame, &mut encoded).unwrap());
    }
}

/// The settings a floor codes at: the gateway's defaults, or another complexity
/// (`OPUS_COMPLEXITY=0..10`, the gateway's `media.opus_complexity`) or in-band FEC against an
/// expected loss (`OPUS_LOSS_PCT=N`) from the environment. One complexity whether lossy or
/// not, so pipeline and floor encode alike (the gateway itself switches to
/// `complexity_under_loss` while FEC is coded).
pub fn settings_from_env() -> EncoderSettings {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let complexity = var("OPUS_COMPLEXITY").unwrap_or(EncoderSettings::default().complexity);
    EncoderSettings {
        complexity,
        complexity_under_loss: complexity,
        // The default is a clean path (the browser reports no loss: no FEC is coded).
        expected_loss_pct: var("OPUS_LOSS_PCT")
            .unwrap_or(EncoderSettings::default().expected_loss_pct),
        ..EncoderSettings::default()
    }
}

/// What the load's callers send, and what the gateway's encoder is then given, a frame at a
/// time: the tone loop `loadgen`'s callers send for the gateway's answer to a G.711 call
/// ([`tone_loop_for`], the same function), and that tone decoded, through PCMU to sipp's echo
/// and back.
///
/// Why a floor of its own: the figures set against the floor (`load_ramp.py`,
/// `peer_compare.py`) are of these calls, and libopus's work depends on the signal. SILK codes
/// this clean tone as voiced speech, with a pitch and long-term prediction search
/// (`silk_VQ_WMat_EC`, `silk_LTP_analysis_filter` in `perf`), which the criterion bench's speech-like
/// signal's noise keeps it from doing: a frame of it costs 10–27 % more (docs/benchmarks-history.md §2, "afternoon").
pub fn load_signal(frames: usize) -> (Vec<Vec<u8>>, Vec<[i16; FRAME_SAMPLES_8K]>) {
    let answer = gateway::rtc::cap_audio(
        "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n",
        111,
        gateway::rtc::AudioCaps::up_to(8000),
    );
    let tone = tone_loop_for(&answer, &CallOptions::new("echo")).unwrap();
    let mut decoder = Decoder::new(SampleRate::Hz8000, Channels::Mono).unwrap();
    let (packets, frames): (Vec<Vec<u8>>, Vec<[i16; FRAME_SAMPLES_8K]>) = tone
        .iter()
        .cycle()
        .take(frames)
        .map(|packet| {
            let mut pcm = [0i16; FRAME_SAMPLES_8K];
            let signals = MutSignals::try_from(&mut pcm[..]).unwrap();
            decoder
                .decode(Some(Packet::try_from(&packet[..]).unwrap()), signals, false)
                .unwrap();
            let mut law = [0u8; FRAME_SAMPLES_8K];
            G711::Pcmu.encode(&pcm, &mut law);
            G711::Pcmu.decode(&law, &mut pcm);
            (packet.to_vec(), pcm)
        })
        .unzip();
    // A floor of silence would be no floor: the tone must be there, at its level (8000).
    let peak = frames[frames.len() - 1]
        .iter()
        .map(|s| s.unsigned_abs())
        .max();
    assert!(
        peak > Some(4000),
        "the load's tone is missing: peak {peak:?}"
    );
    (packets, frames)
}
