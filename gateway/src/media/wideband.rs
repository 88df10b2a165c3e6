//! The transcoding bridge for G.722 trunks (HD voice), sans-IO: browser Opus ⇄ 16 kHz PCM ⇄
//! trunk G.722 (the G.722 coding itself is the RTP stream's). Opus runs at 16 kHz here, so
//! the 7 kHz band G.722 carries reaches the browser instead of the 8 kHz path's telephone
//! band.
//!
//! The trunk side's jitter buffer is the narrowband one fed on a doubled clock: G.722's RTP
//! timestamps step 160 per 20 ms (RFC 3551 §4.5.2) while a frame holds 320 samples, so
//! timestamp × 2 indexes samples, and one 20 ms frame is two of the buffer's 160-sample slots.

use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Bandwidth, Bitrate, Channels, MutSignals, SampleRate, Signal};

use super::bridge::BridgeStats;
use super::jitter::{FRAME, JitterBuffer, JitterStats};
use super::session::WIDE_FRAME_SAMPLES;

/// Largest Opus packet the encoder writes.
const MAX_PACKET: usize = 1275;

/// Why the wideband bridge could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("wideband Opus {0} failed: {1}")]
pub struct WideError(&'static str, audiopus::Error);

/// One G.722 call's transcoder.
pub struct WideBridge {
    decoder: Decoder,
    encoder: Encoder,
    jitter: JitterBuffer,
    pcm: [i16; WIDE_FRAME_SAMPLES],
    out: [u8; MAX_PACKET],
    complexity: u8,
    economy: bool,
    /// Counters (shared meaning with the narrowband bridge's).
    pub stats: BridgeStats,
}

impl std::fmt::Debug for WideBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WideBridge")
            .field("stats", &self.stats)
            .finish()
    }
}

impl WideBridge {
    /// A bridge coding Opus at `complexity` with a jitter buffer `jitter_ms` deep.
    pub fn new(complexity: u8, jitter_ms: u32) -> Result<WideBridge, WideError> {
        let e = |what| move |err| WideError(what, err);
        let mut encoder = Encoder::new(SampleRate::Hz16000, Channels::Mono, Application::Voip)
            .map_err(e("encoder create"))?;
        encoder
            .set_complexity(complexity.min(10))
            .map_err(e("set complexity"))?;
        encoder.set_signal(Signal::Voice).map_err(e("set signal"))?;
        encoder
            .set_max_bandwidth(Bandwidth::Wideband)
            .map_err(e("set bandwidth"))?;
        // What browsers spend on wideband voice.
        encoder
            .set_bitrate(Bitrate::BitsPerSecond(32_000))
            .map_err(e("set bitrate"))?;
        let decoder =
            Decoder::new(SampleRate::Hz16000, Channels::Mono).map_err(e("decoder create"))?;
        Ok(WideBridge {
            decoder,
            encoder,
            // The buffer counts its depth in 160-sample slots: at 16 kHz a slot is 10 ms.
            jitter: JitterBuffer::new(jitter_ms * 2),
            pcm: [0; WIDE_FRAME_SAMPLES],
            out: [0; MAX_PACKET],
            complexity,
            economy: false,
            stats: BridgeStats::default(),
        })
    }

    /// Browser → trunk: decodes one Opus packet to 20 ms of 16 kHz PCM for `emit`.
    pub fn from_browser(&mut self, payload: &[u8], mut emit: impl FnMut(&[i16])) {
        self.stats.browser_packets += 1;
        let Ok(packet) = Packet::try_from(payload) else {
            return;
        };
        let Ok(signals) = MutSignals::try_from(&mut self.pcm[..]) else {
            return;
        };
        match self.decoder.decode(Some(packet), signals, false) {
            Ok(WIDE_FRAME_SAMPLES) => emit(&self.pcm),
            Ok(n) => tracing::debug!(samples = n, "Opus packet is not 20 ms; dropped"),
            Err(e) => tracing::debug!(error = %e, "undecodable Opus packet dropped"),
        }
    }

    /// Trunk → browser: stores 16 kHz PCM decoded from G.722 whose RTP timestamp (8 kHz
    /// clock) is `timestamp`.
    pub fn from_trunk(&mut self, timestamp: u32, pcm: &[i16]) {
        self.jitter.push(timestamp.wrapping_mul(2), pcm);
    }

    /// The next 20 ms Opus packet for the browser; `None` for DTX.
    pub fn to_browser(&mut self) -> Option<&[u8]> {
        let mut half = [0i16; FRAME];
        for i in 0..2 {
            self.jitter.pop(&mut half);
            self.pcm[i * FRAME..(i + 1) * FRAME].copy_from_slice(&half);
        }
        let n = match self.encoder.encode(&self.pcm, &mut self.out) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "Opus encode failed");
                return None;
            }
        };
        if n <= 2 {
            return None;
        }
        self.stats.browser_packets_sent += 1;
        Some(&self.out[..n])
    }

    /// Economy under load: complexity 0 until `on` is false.
    pub fn set_economy(&mut self, on: bool) {
        if self.economy == on {
            return;
        }
        self.economy = on;
        let complexity = if on { 0 } else { self.complexity };
        if let Err(e) = self.encoder.set_complexity(complexity) {
            tracing::debug!(error = %e, "Opus complexity not changed");
        }
    }

    /// Jitter-buffer counters (trunk → browser), in 10 ms slots.
    pub fn jitter_stats(&self) -> JitterStats {
        self.jitter.stats
    }
}

/// A call's wideband bridge, made when it first needs one (a trunk that answered G.722):
/// the other calls never carry its 2.5 KB and libopus's state. As with
/// [`super::bridge::LazyBridge`], a libopus refusal is said once and not tried again.
pub struct LazyWide {
    bridge: Option<Box<WideBridge>>,
    /// Opus complexity and jitter depth, ms, until the first try takes them.
    settings: Option<(u8, u32)>,
}

impl LazyWide {
    /// A bridge to be made coding Opus at `complexity`, with a jitter buffer `jitter_ms` deep.
    pub fn new(complexity: u8, jitter_ms: u32) -> LazyWide {
        LazyWide {
            bridge: None,
            settings: Some((complexity, jitter_ms)),
        }
    }

    /// The bridge, made now if it was not; `None` if Opus could not be set up.
    pub fn get(&mut self) -> Option<&mut WideBridge> {
        if self.bridge.is_none()
            && let Some((complexity, jitter_ms)) = self.settings.take()
        {
            match WideBridge::new(complexity, jitter_ms) {
                Ok(bridge) => self.bridge = Some(Box::new(bridge)),
                Err(e) => tracing::error!(error = %e, "no wideband bridge; the call has no audio"),
            }
        }
        self.bridge.as_deref_mut()
    }

    /// The bridge, if it was made.
    pub fn made(&self) -> Option<&WideBridge> {
        self.bridge.as_deref()
    }

    /// The bridge, if it was made, to change.
    pub fn made_mut(&mut self) -> Option<&mut WideBridge> {
        self.bridge.as_deref_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::tone::{ToneDetector, ToneGenerator};

    #[test]
    fn a_7_khz_band_tone_crosses_opus_at_16_khz_both_ways() {
        // 5 kHz is above what the narrowband path can carry at all.
        let mut browser = WideBridge::new(5, 40).unwrap();
        let mut trunk_tone = ToneGenerator::new(5000.0, 16000, 8000);
        let mut detector = ToneDetector::new(5000.0, 16000, 1600);
        let mut frame = [0i16; WIDE_FRAME_SAMPLES];
        let mut decoder = Decoder::new(SampleRate::Hz16000, Channels::Mono).unwrap();
        let mut decoded = [0i16; WIDE_FRAME_SAMPLES];
        let mut back = Vec::new();
        for i in 0..100u32 {
            trunk_tone.fill(&mut frame);
            browser.from_trunk(1000 + i * 160, &frame);
            if let Some(packet) = browser.to_browser() {
                let packet = packet.to_vec();
                let signals = MutSignals::try_from(&mut decoded[..]).unwrap();
                let n = decoder
                    .decode(Some(Packet::try_from(&packet[..]).unwrap()), signals, false)
                    .unwrap();
                assert_eq!(n, WIDE_FRAME_SAMPLES);
                if i > 20 {
                    detector.push(&decoded);
                }
                // And the same packet back through the browser → trunk direction.
                browser.from_browser(&packet, |pcm| back.extend_from_slice(pcm));
            }
        }
        let snr = detector.report().snr_db;
        assert!(snr >= 20.0, "trunk → browser 5 kHz tone at {snr} dB");
        let mut back_detector = ToneDetector::new(5000.0, 16000, 1600);
        back_detector.push(&back[back.len() / 2..]);
        let snr = back_detector.report().snr_db;
        assert!(snr >= 20.0, "browser → trunk 5 kHz tone at {snr} dB");
    }
}
