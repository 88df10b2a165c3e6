//! A browser's Opus sender, set up from the far end's description as libwebrtc sets it up
//! (`audio_encoder_opus.cc`): 48 kHz capture, VoIP mode, complexity 9 (its desktop default),
//! in-band FEC when the description says `useinbandfec=1`, and the description's
//! `maxplaybackrate` (RFC 7587 §6.1) choosing both the widest band coded and the bitrate:
//! narrowband at 12 kb/s up to 8 kHz, wideband at 20 kb/s up to 16 kHz, full band at 32 kb/s
//! otherwise; a `maxaveragebitrate` sets the bitrate instead. So the test client and `loadgen` send what Chromium sends a gateway that gave
//! that description: the demo test (tests/web) reads Chromium's own payload sizes, ~30 bytes
//! a packet for 8 kHz and ~83 for full band, and this sender's are within a few bytes.

use anyhow::Context;
use audiopus::coder::Encoder;
use audiopus::{Application, Bandwidth, Bitrate, Channels, SampleRate};
use gateway::media::tone::ToneGenerator;

/// Samples in one 20 ms frame at the 48 kHz a browser captures at.
pub const FRAME_48K: usize = 960;

/// The `maxplaybackrate` of a description's Opus line; 48 kHz when it gives none.
pub fn max_playback_rate(description: &str) -> u32 {
    parameter(description, "maxplaybackrate").unwrap_or(48_000)
}

/// A numeric parameter of a description's Opus line.
fn parameter(description: &str, name: &str) -> Option<u32> {
    opus_parameters(description)?.split(';').find_map(|p| {
        let (key, value) = p.trim().split_once('=')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The payload type a description's `a=rtpmap` gives Opus.
pub fn opus_payload_type(description: &str) -> Option<u8> {
    description.lines().find_map(|l| {
        let (pt, codec) = l.trim().strip_prefix("a=rtpmap:")?.split_once(' ')?;
        codec
            .to_ascii_lowercase()
            .starts_with("opus/")
            .then(|| pt.parse().ok())
            .flatten()
    })
}

/// The `a=fmtp` parameters of a description's Opus payload type.
pub fn opus_parameters(description: &str) -> Option<&str> {
    let prefix = format!("a=fmtp:{} ", opus_payload_type(description)?);
    description
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
}

/// A tone, coded as a browser would code it for the far end that gave a description.
pub struct BrowserOpus {
    encoder: Encoder,
    tone: ToneGenerator,
    pcm: [i16; FRAME_48K],
}

impl BrowserOpus {
    /// For the far end's `description` (its answer to our offer, or its offer).
    pub fn new(description: &str, tone_hz: f64) -> anyhow::Result<Self> {
        let fec = opus_parameters(description).is_some_and(|p| {
            p.split(';')
                .any(|p| p.trim().eq_ignore_ascii_case("useinbandfec=1"))
        });
        let mut opus = Self::coding_up_to(max_playback_rate(description), fec, tone_hz)?;
        if let Some(bitrate) = parameter(description, "maxaveragebitrate") {
            // libwebrtc takes it as the bitrate, within Opus's 6-510 kb/s.
            opus.set_bitrate(bitrate.clamp(6000, 510_000))?;
        }
        Ok(opus)
    }

    /// Codes at `bps` from now on.
    pub fn set_bitrate(&mut self, bps: u32) -> anyhow::Result<()> {
        self.encoder
            .set_bitrate(Bitrate::BitsPerSecond(bps as i32))
            .context("bitrate")
    }

    /// For a far end that renders `playback_hz` at most, with in-band FEC or not.
    pub fn coding_up_to(playback_hz: u32, fec: bool, tone_hz: f64) -> anyhow::Result<Self> {
        let (band, bitrate) = match playback_hz {
            0..=8000 => (Bandwidth::Narrowband, 12_000),
            8001..=16000 => (Bandwidth::Wideband, 20_000),
            _ => (Bandwidth::Fullband, 32_000),
        };
        let mut encoder = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip)
            .context("Opus encoder")?;
        encoder.set_complexity(9).context("complexity")?;
        encoder.set_max_bandwidth(band).context("bandwidth")?;
        encoder
            .set_bitrate(Bitrate::BitsPerSecond(bitrate))
            .context("bitrate")?;
        encoder.set_inband_fec(fec).context("FEC")?;
        Ok(BrowserOpus {
            encoder,
            tone: ToneGenerator::new(tone_hz, 48_000, 8000),
            pcm: [0; FRAME_48K],
        })
    }

    /// Codes what follows as speech (`OPUS_SET_SIGNAL` voice), as a browser codes a caller's
    /// voice. Left to itself, libopus takes a steady tone or other synthetic signal for music
    /// and codes it with CELT: at 24 kb/s narrowband the test tone became CELT (TOC
    /// configuration 19) in 95 % of packets, which costs the gateway's decoder 12.5 µs a
    /// frame where the SILK coding of speech costs 5 (a one-off measurement). A load of such
    /// callers would weigh the engines by music, not by calls.
    pub fn code_as_speech(&mut self) -> anyhow::Result<()> {
        self.encoder
            .set_signal(audiopus::Signal::Voice)
            .context("signal")
    }

    /// The next 20 ms of the tone, coded into `out`; returns the packet's length.
    pub fn next_packet(&mut self, out: &mut [u8]) -> anyhow::Result<usize> {
        self.tone.fill(&mut self.pcm);
        self.encoder.encode(&self.pcm, out).context("Opus encode")
    }

    /// 20 ms of other audio, captured at 48 kHz, coded into `out`.
    pub fn encode(&mut self, pcm: &[i16; FRAME_48K], out: &mut [u8]) -> anyhow::Result<usize> {
        self.encoder.encode(pcm, out).context("Opus encode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_far_ends_playback_rate_sets_the_band_and_the_bitrate() {
        let capped = "m=audio 9 UDP/TLS/RTP/SAVPF 109\r\na=rtpmap:109 opus/48000/2\r\n\
                      a=fmtp:109 minptime=10;useinbandfec=1;maxplaybackrate=8000\r\n";
        let open = "a=rtpmap:111 OPUS/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n";
        assert_eq!(max_playback_rate(capped), 8000);
        assert_eq!(max_playback_rate(open), 48000);
        let mean = |description: &str| {
            let mut sender = BrowserOpus::new(description, 1004.0).unwrap();
            let mut out = [0u8; 1500];
            let n: usize = (0..100)
                .map(|_| sender.next_packet(&mut out).unwrap())
                .sum();
            (n / 100, out[0] >> 3)
        };
        // RFC 6716 §3.1: TOC configurations 0-3 are SILK narrowband, 16-31 CELT (28-31 full
        // band); a tone this clean is coded by SILK at 8 kHz and CELT at full band.
        let (narrow_bytes, narrow_config) = mean(capped);
        let (full_bytes, full_config) = mean(open);
        assert!(narrow_config <= 3, "narrowband: config {narrow_config}");
        assert!(full_config >= 28, "full band: config {full_config}");
        assert!(
            narrow_bytes * 2 < full_bytes,
            "12 kb/s against 32: {narrow_bytes} and {full_bytes} bytes a packet"
        );
    }

    #[test]
    fn a_tone_coded_as_speech_stays_silk_at_the_gateways_24_kbps() {
        let capped = "a=rtpmap:111 opus/48000/2\r\n\
                      a=fmtp:111 useinbandfec=1;maxplaybackrate=8000;maxaveragebitrate=24000\r\n";
        let configs = |as_speech: bool| {
            let mut sender = BrowserOpus::new(capped, 1004.0).unwrap();
            if as_speech {
                sender.code_as_speech().unwrap();
            }
            let mut out = [0u8; 1500];
            let mut bytes = 0;
            let configs: Vec<u8> = (0..100)
                .map(|_| {
                    bytes += sender.next_packet(&mut out).unwrap();
                    out[0] >> 3
                })
                .collect();
            (configs, bytes / 100)
        };
        let (speech, bytes) = configs(true);
        assert!(
            speech.iter().all(|&c| c <= 3),
            "SILK narrowband: {speech:?}"
        );
        // SILK codes a steady tone below its target; 12 kb/s would be ~28 bytes.
        assert!(
            (35..=65).contains(&bytes),
            "24 kb/s: {bytes} bytes a packet"
        );
        // Left to itself, libopus codes the tone as music: CELT narrowband (16-19).
        let (music, _) = configs(false);
        assert!(
            music.iter().filter(|&&c| (16..=19).contains(&c)).count() > 50,
            "{music:?}"
        );
    }
}
