//! Opus for the browser leg, run at 8 kHz: libopus decodes straight to and encodes straight
//! from narrowband PCM, so the G.711 side needs no resampler and the encoder does far less
//! work than at 48 kHz. The RTP clock stays 48 kHz (RFC 7587 §4.1): 960 ticks per 20 ms.

use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Bandwidth, Bitrate, Channels, MutSignals, SampleRate, Signal};

/// PCM samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES_8K: usize = 160;
/// RTP timestamp ticks per 20 ms frame (the Opus RTP clock is always 48 kHz).
pub const RTP_TICKS_PER_FRAME: u32 = 960;
/// Largest Opus packet we produce (RFC 6716 allows 1275; voice at 8 kHz is far below).
pub const MAX_PACKET: usize = 400;

/// How long `payload` plays, in RTP ticks (48 kHz), when it is an Opus packet worth relaying
/// untouched: its table-of-contents byte and frame count parse (RFC 6716 §3.1) and it holds
/// 2.5 to 120 ms of audio. `None` for anything else: an SBC does not hand another party's
/// decoder whatever bytes a stranger sent. A relay moves its clock by this much, so a peer
/// that packs 40 or 60 ms in a packet is not taken to leave gaps.
pub fn relayable_ticks(payload: &[u8]) -> Option<u32> {
    Packet::try_from(payload)
        .ok()
        .and_then(|p| audiopus::packet::nb_samples(p, SampleRate::Hz48000).ok())
        .filter(|n| (120..=5760).contains(n))
        .map(|n| n as u32)
}

/// The libopus the gateway codes with, as it names itself ("libopus 1.6.1"): the one the
/// workspace builds from source and links statically (vendor/README.md, `audiopus_sys`).
pub fn libopus_version() -> &'static str {
    audiopus::version()
}

/// Opus failures name the operation.
#[derive(Debug, thiserror::Error)]
#[error("opus {operation} failed: {source}")]
pub struct OpusError {
    operation: &'static str,
    #[source]
    source: audiopus::Error,
}

fn err(operation: &'static str) -> impl Fn(audiopus::Error) -> OpusError {
    move |source| OpusError { operation, source }
}

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    /// 0 (cheapest) to 10, on a clean path.
    pub complexity: u8,
    /// The complexity while in-band FEC is coded (the browser reports loss); the higher of
    /// the two applies then.
    pub complexity_under_loss: u8,
    /// Expected loss towards the browser at the start of a call, percent. In-band FEC is
    /// coded only while this is above 0; calls then follow the browser's own reports
    /// ([`OpusEncoder::set_expected_loss`]).
    pub expected_loss_pct: u8,
    /// Discontinuous transmission: send almost nothing during silence.
    pub dtx: bool,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        EncoderSettings {
            // Measured (scripts/opus_quality.py, PESQ of speech through G.711 and this
            // encoder): 1 scores 4.05, within 0.03 of 5 and level with 3, at 57 % of 5's
            // cost per frame; 0 saves another 20 % for 0.02 less.
            complexity: 1,
            // Under 10 % loss with FEC, 5 scores 3.24 and 1 scores 3.11 (same measurement).
            complexity_under_loss: 5,
            // What a browser's encoder assumes too until RTCP says otherwise: on a clean path
            // FEC would cost a quarter of the encoder's time and carry nothing useful.
            expected_loss_pct: 0,
            dtx: true,
        }
    }
}

/// Narrowband PCM → Opus.
pub struct OpusEncoder {
    encoder: Encoder,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpusEncoder")
    }
}

impl OpusEncoder {
    /// A VoIP-mode mono encoder at 8 kHz with in-band FEC.
    pub fn new(settings: EncoderSettings) -> Result<Self, OpusError> {
        let mut encoder = Encoder::new(SampleRate::Hz8000, Channels::Mono, Application::Voip)
            .map_err(err("encoder create"))?;
        encoder
            .set_complexity(settings.complexity.min(10))
            .map_err(err("set complexity"))?;
        encoder
            .set_signal(Signal::Voice)
            .map_err(err("set signal"))?;
        encoder
            .set_max_bandwidth(Bandwidth::Narrowband)
            .map_err(err("set bandwidth"))?;
        // In-band FEC (LBRR) is only coded when the bitrate leaves room for it; libopus's
        // automatic rate at 8 kHz (~11 kb/s) leaves none, so FEC would be switched on and
        // never sent. 24 kb/s is what browsers use for narrowband voice with FEC.
        encoder
            .set_bitrate(Bitrate::BitsPerSecond(24_000))
            .map_err(err("set bitrate"))?;
        encoder.set_inband_fec(true).map_err(err("enable FEC"))?;
        encoder
            .set_packet_loss_perc(settings.expected_loss_pct.min(100))
            .map_err(err("set loss"))?;
        encoder.set_dtx(settings.dtx).map_err(err("set DTX"))?;
        Ok(OpusEncoder { encoder })
    }

    /// Encoder complexity for the next frames, 0-10.
    pub fn set_complexity(&mut self, complexity: u8) -> Result<(), OpusError> {
        self.encoder
            .set_complexity(complexity.min(10))
            .map_err(err("set complexity"))
    }

    /// Loss the next frames should protect against, percent: libopus codes in-band FEC
    /// (LBRR) only when this is above 0 and sizes it from the value.
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), OpusError> {
        self.encoder
            .set_packet_loss_perc(percent.min(100))
            .map_err(err("set loss"))
    }

    /// Encodes one 20 ms frame into `out`; returns the packet length. A length of 1 or 2
    /// is a DTX frame (RFC 6716 §2.1.9) and need not be sent.
    pub fn encode(
        &mut self,
        pcm: &[i16; FRAME_SAMPLES_8K],
        out: &mut [u8],
    ) -> Result<usize, OpusError> {
        self.encoder.encode(pcm, out).map_err(err("encode"))
    }
}

/// Opus → narrowband PCM, with loss concealment and FEC recovery.
pub struct OpusDecoder {
    decoder: Decoder,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpusDecoder")
    }
}

impl OpusDecoder {
    /// A mono decoder producing 8 kHz PCM from any Opus stream (libopus resamples inside).
    pub fn new() -> Result<Self, OpusError> {
        Ok(OpusDecoder {
            decoder: Decoder::new(SampleRate::Hz8000, Channels::Mono)
                .map_err(err("decoder create"))?,
        })
    }

    /// Decodes one packet into one 20 ms frame. Packets of other durations are decoded into
    /// `out` up to its length.
    pub fn decode(
        &mut self,
        packet: &[u8],
        out: &mut [i16; FRAME_SAMPLES_8K],
    ) -> Result<usize, OpusError> {
        let packet = Packet::try_from(packet).map_err(err("read packet"))?;
        let signals = MutSignals::try_from(&mut out[..]).map_err(err("output buffer"))?;
        self.decoder
            .decode(Some(packet), signals, false)
            .map_err(err("decode"))
    }

    /// Rebuilds the frame *before* `next_packet` from the FEC data it carries (RFC 6716
    /// §2.1.7); use when a packet was lost and the following one has arrived.
    pub fn recover(
        &mut self,
        next_packet: &[u8],
        out: &mut [i16; FRAME_SAMPLES_8K],
    ) -> Result<usize, OpusError> {
        let packet = Packet::try_from(next_packet).map_err(err("read packet"))?;
        let signals = MutSignals::try_from(&mut out[..]).map_err(err("output buffer"))?;
        self.decoder
            .decode(Some(packet), signals, true)
            .map_err(err("FEC decode"))
    }

    /// Packet-loss concealment for one frame when nothing usable arrived.
    pub fn conceal(&mut self, out: &mut [i16; FRAME_SAMPLES_8K]) -> Result<usize, OpusError> {
        let signals = MutSignals::try_from(&mut out[..]).map_err(err("output buffer"))?;
        self.decoder
            .decode(None, signals, false)
            .map_err(err("conceal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::tone::{ToneDetector, ToneGenerator};

    fn tone_frames(n: usize) -> Vec<[i16; FRAME_SAMPLES_8K]> {
        let mut g = ToneGenerator::new(1004.0, 8000, 8000);
        (0..n)
            .map(|_| {
                let mut f = [0i16; FRAME_SAMPLES_8K];
                g.fill(&mut f);
                f
            })
            .collect()
    }

    /// The codec is the libopus the workspace builds, not a system library found at link
    /// time: Debian 12's 1.3.1 cost the gateway 6–15 % more a transcoded call, and its FEC
    /// scored lower under loss (BENCHMARKS.md §1 and §5).
    #[test]
    fn the_codec_is_libopus_1_5_or_newer() {
        let version = libopus_version();
        let parsed = version.strip_prefix("libopus ").and_then(|v| {
            let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        });
        let Some(major_minor) = parsed else {
            panic!("libopus names itself {version:?}, not \"libopus X.Y…\"");
        };
        assert!(
            major_minor >= (1, 5),
            "the gateway links {version}: the workspace's audiopus_sys stand-in \
             (vendor/audiopus_sys) is not in effect"
        );
    }

    #[test]
    fn a_tone_survives_opus_at_8k() {
        let mut enc = OpusEncoder::new(EncoderSettings::default()).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut det = ToneDetector::new(1004.0, 8000, 800);
        let mut packet = [0u8; MAX_PACKET];
        let mut pcm = [0i16; FRAME_SAMPLES_8K];
        for (i, frame) in tone_frames(100).iter().enumerate() {
            let n = enc.encode(frame, &mut packet).unwrap();
            assert!(n > 2 && n < 200, "{n}");
            assert_eq!(
                dec.decode(&packet[..n], &mut pcm).unwrap(),
                FRAME_SAMPLES_8K
            );
            if i >= 10 {
                det.push(&pcm);
            }
        }
        let r = det.report();
        assert!(r.snr_db > 15.0, "{r:?}");
    }

    /// Decodes a tone stream losing every 5th packet, recovering each loss either from the
    /// next packet's FEC data or by concealment; returns the SNR of the result.
    fn snr_with_losses(use_fec: bool) -> f64 {
        let mut enc = OpusEncoder::new(EncoderSettings {
            // FEC is coded at the complexity used while the browser reports loss.
            complexity: EncoderSettings::default().complexity_under_loss,
            expected_loss_pct: 20,
            dtx: false,
            ..Default::default()
        })
        .unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut det = ToneDetector::new(1004.0, 8000, 800);
        let mut packets = Vec::new();
        for frame in tone_frames(150) {
            let mut p = [0u8; MAX_PACKET];
            let n = enc.encode(&frame, &mut p).unwrap();
            packets.push(p[..n].to_vec());
        }
        let mut pcm = [0i16; FRAME_SAMPLES_8K];
        for i in 0..packets.len() {
            if i % 5 == 3 {
                if use_fec {
                    assert_eq!(
                        dec.recover(&packets[i + 1], &mut pcm).unwrap(),
                        FRAME_SAMPLES_8K
                    );
                } else {
                    assert_eq!(dec.conceal(&mut pcm).unwrap(), FRAME_SAMPLES_8K);
                }
            } else {
                dec.decode(&packets[i], &mut pcm).unwrap();
            }
            if i >= 20 {
                det.push(&pcm);
            }
        }
        det.report().snr_db
    }

    #[test]
    fn lost_frames_are_recovered_from_fec_or_concealed() {
        let fec = snr_with_losses(true);
        let plc = snr_with_losses(false);
        eprintln!("20 % loss: FEC {fec:.1} dB, concealment {plc:.1} dB");
        // Measured here: FEC 14.3 dB, concealment -1.7 dB (libopus 1.6.1; 16.4 and -1.4 dB
        // with 1.3.1). Without FEC data in the packets both would be equal: this pins that
        // the encoder really sends FEC.
        assert!(fec > 10.0, "FEC keeps the tone clean: {fec:.1} dB");
        assert!(
            fec > plc + 6.0,
            "FEC beats concealment: FEC {fec:.1}, PLC {plc:.1}"
        );
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = [0i16; FRAME_SAMPLES_8K];
        assert!(
            dec.decode(&[0xff, 0xff, 0xff], &mut pcm).is_err(),
            "a corrupt packet is an error, not a panic"
        );
    }

    #[test]
    fn only_well_formed_opus_is_relayed() {
        let mut encoder = OpusEncoder::new(EncoderSettings::default()).unwrap();
        let mut out = [0u8; MAX_PACKET];
        let n = encoder.encode(&[0i16; FRAME_SAMPLES_8K], &mut out).unwrap();
        assert_eq!(relayable_ticks(&out[..n]), Some(RTP_TICKS_PER_FRAME));
        // Code 1 (two frames of equal size) of 20 ms: 40 ms.
        assert_eq!(relayable_ticks(&[0xf9, 0xff, 0xfe]), Some(1920));
        assert_eq!(relayable_ticks(&[]), None, "empty");
        // Code 3 (arbitrary frame count) announcing 63 frames of 20 ms: 1.26 s, not a packet.
        assert_eq!(relayable_ticks(&[0b0001_1011, 63]), None);
    }
}
