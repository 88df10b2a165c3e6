//! The per-call transcoding bridge, sans-IO: browser Opus ⇄ 8 kHz PCM ⇄ trunk G.711.
//!
//! Browser → trunk: each Opus packet is decoded straight to 8 kHz; a gap in sequence numbers
//! is filled from the next packet's in-band FEC (RFC 6716 §2.1.7), or concealed. Trunk →
//! browser: G.711 PCM goes through the jitter buffer and one Opus frame is produced per
//! 20 ms tick. Buffers are owned and reused: nothing allocates per packet.

use super::jitter::JitterBuffer;
use super::opus::{
    EncoderSettings, FRAME_SAMPLES_8K, MAX_PACKET, OpusDecoder, OpusEncoder, OpusError,
};

/// Counters for metrics and CDRs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BridgeStats {
    /// Opus packets received from the browser.
    pub browser_packets: u64,
    /// Browser frames lost and rebuilt from FEC.
    pub browser_fec_recovered: u64,
    /// Browser frames lost and concealed.
    pub browser_concealed: u64,
    /// Opus packets sent to the browser.
    pub browser_packets_sent: u64,
    /// RTCP report blocks the browser sent about our audio.
    pub browser_reports: u64,
    /// The highest loss the browser reported, in 1/256 (RFC 3550 §6.4.1 fraction lost).
    pub browser_reported_loss_max: u8,
}

impl BridgeStats {
    /// The highest loss the browser reported, percent to one decimal; `None` without reports.
    pub fn browser_reported_loss_pct(&self) -> Option<f64> {
        (self.browser_reports > 0)
            .then(|| (self.browser_reported_loss_max as f64 * 1000.0 / 256.0).round() / 10.0)
    }
}

/// The loss the encoder protects against, from the browser's receiver reports: it follows
/// a rise at once (the next frames carry FEC sized for it) and decays by a quarter per
/// report after, so one clean interval in a lossy call does not switch FEC off, while a
/// clean call stops paying for FEC (a quarter of the encoder's time) within a few reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LossEstimate {
    percent: u8,
}

impl LossEstimate {
    /// Takes one report's fraction lost (in 1/256); returns the new percentage when it
    /// changed.
    pub fn handle_report(&mut self, fraction_lost: u8) -> Option<u8> {
        let reported = (fraction_lost as u32 * 100).div_ceil(256) as u8;
        let decayed = (self.percent as u32 * 3 / 4) as u8;
        let next = reported.max(decayed);
        (next != self.percent).then(|| {
            self.percent = next;
            next
        })
    }

    /// The current estimate, percent.
    pub fn percent(&self) -> u8 {
        self.percent
    }
}

/// One call's transcoder.
pub struct Bridge {
    /// Coding at complexity 0 because the gateway is loaded.
    economy: bool,
    decoder: OpusDecoder,
    encoder: OpusEncoder,
    jitter: JitterBuffer,
    loss: LossEstimate,
    settings: EncoderSettings,
    last_sequence: Option<u16>,
    pcm: [i16; FRAME_SAMPLES_8K],
    out: [u8; MAX_PACKET],
    /// Counters.
    pub stats: BridgeStats,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Losses longer than this are concealed once and then left to the trunk side's silence:
/// FEC only covers the frame just before a packet.
const MAX_CONCEALED_GAP: u16 = 5;

impl Bridge {
    /// A bridge with the given Opus encoder settings and jitter-buffer depth.
    pub fn new(settings: EncoderSettings, jitter_ms: u32) -> Result<Bridge, OpusError> {
        let mut bridge = Bridge {
            decoder: OpusDecoder::new()?,
            encoder: OpusEncoder::new(settings)?,
            jitter: JitterBuffer::new(jitter_ms),
            loss: LossEstimate {
                percent: settings.expected_loss_pct,
            },
            settings,
            last_sequence: None,
            economy: false,
            pcm: [0; FRAME_SAMPLES_8K],
            out: [0; MAX_PACKET],
            stats: BridgeStats::default(),
        };
        // The encoder starts at the clean-path complexity; loss expected from the start needs
        // the under-loss one.
        if settings.expected_loss_pct > 0 {
            bridge.follow_loss()?;
        }
        Ok(bridge)
    }

    /// Codes FEC at the complexity meant for it while loss is expected, and goes back to the
    /// cheaper clean-path complexity when it is not. Runs only when the estimate changes.
    fn follow_loss(&mut self) -> Result<(), OpusError> {
        self.encoder.set_expected_loss(self.loss.percent())?;
        self.encoder.set_complexity(self.complexity())
    }

    /// Browser → trunk: decodes one Opus packet and hands each resulting 20 ms frame (the
    /// recovered or concealed ones first) to `emit`.
    pub fn from_browser(
        &mut self,
        sequence: u16,
        packet: &[u8],
        mut emit: impl FnMut(&[i16; FRAME_SAMPLES_8K]),
    ) {
        self.stats.browser_packets += 1;
        if let Some(last) = self.last_sequence {
            let gap = sequence.wrapping_sub(last);
            if gap == 0 || gap > 0x8000 {
                return; // duplicate or reordered behind us: already played out
            }
            let missing = gap - 1;
            for i in 0..missing.min(MAX_CONCEALED_GAP) {
                let recovered = if i + 1 == missing {
                    self.decoder.recover(packet, &mut self.pcm)
                } else {
                    self.decoder.conceal(&mut self.pcm)
                };
                match recovered {
                    Ok(_) => {
                        if i + 1 == missing {
                            self.stats.browser_fec_recovered += 1;
                        } else {
                            self.stats.browser_concealed += 1;
                        }
                        emit(&self.pcm);
                    }
                    Err(e) => tracing::debug!(error = %e, "loss recovery failed"),
                }
            }
        }
        self.last_sequence = Some(sequence);
        match self.decoder.decode(packet, &mut self.pcm) {
            Ok(FRAME_SAMPLES_8K) => emit(&self.pcm),
            Ok(n) => tracing::debug!(samples = n, "Opus packet is not 20 ms; dropped"),
            Err(e) => tracing::debug!(error = %e, "undecodable Opus packet dropped"),
        }
    }

    /// Trunk → browser: stores decoded G.711 PCM that starts at RTP `timestamp`.
    pub fn from_trunk(&mut self, timestamp: u32, pcm: &[i16]) {
        self.jitter.push(timestamp, pcm);
    }

    /// Produces the next 20 ms Opus packet for the browser; `None` when there is nothing to
    /// send (DTX during silence).
    pub fn to_browser(&mut self) -> Option<&[u8]> {
        self.jitter.pop(&mut self.pcm);
        let n = match self.encoder.encode(&self.pcm, &mut self.out) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "Opus encode failed");
                return None;
            }
        };
        // RFC 6716 §2.1.9: packets of 1-2 bytes are DTX, nothing worth sending.
        if n <= 2 {
            return None;
        }
        self.stats.browser_packets_sent += 1;
        Some(&self.out[..n])
    }

    /// The browser reported on the audio we send it (RTCP, RFC 3550 §6.4.1): in-band FEC
    /// follows the loss it sees.
    pub fn handle_browser_report(&mut self, fraction_lost: u8) {
        self.stats.browser_reports += 1;
        self.stats.browser_reported_loss_max =
            self.stats.browser_reported_loss_max.max(fraction_lost);
        if self.loss.handle_report(fraction_lost).is_some()
            && let Err(e) = self.follow_loss()
        {
            tracing::debug!(error = %e, "FEC not adapted to the browser's loss");
        }
    }

    /// Economy under load: Opus at complexity 0 whatever the settings, until `on` is false.
    pub fn set_economy(&mut self, on: bool) {
        if self.economy == on {
            return;
        }
        self.economy = on;
        if let Err(e) = self.follow_loss() {
            tracing::debug!(error = %e, "Opus complexity not changed");
        }
    }

    /// The encoder's complexity now.
    pub fn complexity(&self) -> u8 {
        if self.economy {
            0
        } else if self.loss.percent() > 0 {
            self.settings
                .complexity
                .max(self.settings.complexity_under_loss)
        } else {
            self.settings.complexity
        }
    }

    /// The loss in-band FEC protects against now, percent.
    pub fn expected_loss(&self) -> u8 {
        self.loss.percent()
    }

    /// Jitter-buffer counters (trunk → browser).
    pub fn jitter_stats(&self) -> super::jitter::JitterStats {
        self.jitter.stats
    }
}

/// A call's bridge, made when the call first needs it: a call relayed to an Opus trunk never
/// does, and a bridge is libopus's encoder and decoder and a second of jitter buffer, some
/// 80 KB with what they allocate (heaptrack, docs/benchmarks-history.md §2).
pub struct LazyBridge {
    bridge: Option<Box<Bridge>>,
    settings: EncoderSettings,
    jitter_ms: u32,
    /// Opus could not be set up: not tried again (the call has no transcoded audio).
    failed: bool,
    /// The browser's reports before the bridge was made: for the CDR, and the loss its
    /// encoder starts out protecting against.
    early_reports: u64,
    early_loss_max: u8,
    loss: LossEstimate,
}

impl LazyBridge {
    /// A bridge to be made with these settings and jitter-buffer depth.
    pub fn new(settings: EncoderSettings, jitter_ms: u32) -> LazyBridge {
        LazyBridge {
            bridge: None,
            settings,
            jitter_ms,
            failed: false,
            early_reports: 0,
            early_loss_max: 0,
            loss: LossEstimate {
                percent: settings.expected_loss_pct,
            },
        }
    }

    /// The bridge, made now if it was not; `None` if Opus cannot be set up (said once).
    pub fn get(&mut self) -> Option<&mut Bridge> {
        if self.bridge.is_none() && !self.failed {
            let settings = EncoderSettings {
                expected_loss_pct: self.loss.percent(),
                ..self.settings
            };
            match Bridge::new(settings, self.jitter_ms) {
                Ok(bridge) => self.bridge = Some(Box::new(bridge)),
                Err(e) => {
                    self.failed = true;
                    tracing::error!(error = %e, "no Opus bridge: the call has no audio");
                }
            }
        }
        self.bridge.as_deref_mut()
    }

    /// The bridge, if it was made.
    pub fn made(&mut self) -> Option<&mut Bridge> {
        self.bridge.as_deref_mut()
    }

    /// A receiver report block from the browser about our audio (see
    /// [`Bridge::handle_browser_report`]); kept for the bridge if it is not made yet.
    pub fn handle_browser_report(&mut self, fraction_lost: u8) {
        match self.bridge.as_deref_mut() {
            Some(bridge) => bridge.handle_browser_report(fraction_lost),
            None => {
                self.early_reports += 1;
                self.early_loss_max = self.early_loss_max.max(fraction_lost);
                self.loss.handle_report(fraction_lost);
            }
        }
    }

    /// The bridge's counters (zero for what it never did) and its jitter buffer's.
    pub fn stats(&self) -> (BridgeStats, super::jitter::JitterStats) {
        let (mut stats, jitter) = self
            .bridge
            .as_ref()
            .map(|b| (b.stats, b.jitter_stats()))
            .unwrap_or_default();
        stats.browser_reports += self.early_reports;
        stats.browser_reported_loss_max = stats.browser_reported_loss_max.max(self.early_loss_max);
        (stats, jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::tone::{ToneDetector, ToneGenerator};

    /// A browser's stream: a tone with in-band FEC, as browsers send once they see loss.
    fn opus_tone(n: usize) -> Vec<Vec<u8>> {
        let mut enc = OpusEncoder::new(EncoderSettings {
            dtx: false,
            expected_loss_pct: 10,
            ..Default::default()
        })
        .unwrap();
        let mut g = ToneGenerator::new(1004.0, 8000, 8000);
        (0..n)
            .map(|_| {
                let mut f = [0i16; FRAME_SAMPLES_8K];
                g.fill(&mut f);
                let mut p = [0u8; MAX_PACKET];
                let len = enc.encode(&f, &mut p).unwrap();
                p[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn browser_audio_keeps_its_timing_through_losses() {
        let mut bridge = Bridge::new(EncoderSettings::default(), 40).unwrap();
        let packets = opus_tone(60);
        let mut frames = 0;
        let mut det = ToneDetector::new(1004.0, 8000, 800);
        for (i, p) in packets.iter().enumerate() {
            if i % 10 == 5 || i == 30 || i == 31 {
                continue; // lost in the network
            }
            bridge.from_browser(1000u16.wrapping_add(i as u16), p, |pcm| {
                frames += 1;
                det.push(pcm);
            });
        }
        assert_eq!(frames, 60, "every 20 ms slot produced exactly one frame");
        assert!(bridge.stats.browser_fec_recovered >= 6);
        assert!(det.report().snr_db > 10.0, "{:?}", det.report());
    }

    #[test]
    fn duplicates_and_stale_packets_are_ignored() {
        let mut bridge = Bridge::new(EncoderSettings::default(), 40).unwrap();
        let packets = opus_tone(3);
        let mut frames = 0;
        bridge.from_browser(10, &packets[0], |_| frames += 1);
        bridge.from_browser(10, &packets[0], |_| frames += 1);
        bridge.from_browser(9, &packets[1], |_| frames += 1);
        bridge.from_browser(11, &packets[1], |_| frames += 1);
        assert_eq!(frames, 2);
    }

    #[test]
    fn trunk_audio_becomes_opus_for_the_browser() {
        let mut bridge = Bridge::new(
            EncoderSettings {
                dtx: true,
                ..Default::default()
            },
            40,
        )
        .unwrap();
        let mut g = ToneGenerator::new(1004.0, 8000, 8000);
        let mut dec = OpusDecoder::new().unwrap();
        let mut det = ToneDetector::new(1004.0, 8000, 800);
        let mut pcm = [0i16; FRAME_SAMPLES_8K];
        let mut out = [0i16; FRAME_SAMPLES_8K];
        let mut sent = 0;
        for i in 0..80u32 {
            g.fill(&mut pcm);
            bridge.from_trunk(5000 + i * 160, &pcm);
            if let Some(packet) = bridge.to_browser() {
                sent += 1;
                dec.decode(packet, &mut out).unwrap();
                if i > 20 {
                    det.push(&out);
                }
            }
        }
        assert!(sent >= 70, "{sent}");
        assert!(det.report().snr_db > 15.0, "{:?}", det.report());
        // Silence from the trunk: DTX keeps the browser leg nearly quiet.
        let mut quiet = 0;
        for i in 80..130u32 {
            bridge.from_trunk(5000 + i * 160, &[0i16; FRAME_SAMPLES_8K]);
            if bridge.to_browser().is_some() {
                quiet += 1;
            }
        }
        assert!(quiet < 20, "DTX: {quiet} of 50 silent frames sent");
    }

    #[test]
    fn loss_estimate_rises_at_once_and_decays_per_report() {
        let mut loss = LossEstimate::default();
        assert_eq!(loss.handle_report(0), None, "clean from the start: no FEC");
        assert_eq!(
            loss.handle_report(26),
            Some(11),
            "26/256 is 10.2 %, rounded up"
        );
        assert_eq!(loss.handle_report(0), Some(8));
        assert_eq!(
            loss.handle_report(13),
            Some(6),
            "5.1 % rounds up to 6, as 8 decays to 6"
        );
        let mut reports = 1;
        while loss.handle_report(0).is_some() {
            reports += 1;
        }
        assert_eq!(loss.percent(), 0, "a clean path switches FEC off");
        assert!(reports <= 6, "within a few reports: {reports}");
    }

    /// Energy of `pcm` at `hz` (Goertzel), for telling two tones apart.
    fn power_at(pcm: &[i16], hz: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * hz / 8000.0;
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in pcm {
            let s = x as f64 + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
    }

    /// Encodes frames that alternate between 600 Hz and 1400 Hz through the bridge, then
    /// loses each 1400 Hz frame and rebuilds it from the next packet: only in-band FEC can
    /// bring back 1400 Hz (concealment continues the 600 Hz before the gap). Returns how
    /// many of the rebuilt frames carry 1400 Hz.
    fn rebuilt_from_fec(bridge: &mut Bridge) -> usize {
        let mut low = ToneGenerator::new(600.0, 8000, 8000);
        let mut high = ToneGenerator::new(1400.0, 8000, 8000);
        let mut packets = Vec::new();
        let mut pcm = [0i16; FRAME_SAMPLES_8K];
        for i in 0..40u32 {
            if i % 2 == 0 {
                low.fill(&mut pcm)
            } else {
                high.fill(&mut pcm)
            }
            bridge.from_trunk(i * 160, &pcm);
            packets.push(bridge.to_browser().expect("a tone is never DTX").to_vec());
        }
        let (mut lost, mut rebuilt) = (0, 0);
        // Past the jitter buffer's delay: decode a 600 Hz packet, lose the next (1400 Hz)
        // one, and rebuild it from the one after.
        for i in 10..36 {
            let mut dec = OpusDecoder::new().unwrap();
            let mut out = [0i16; FRAME_SAMPLES_8K];
            dec.decode(&packets[i], &mut out).unwrap();
            if power_at(&out, 600.0) < power_at(&out, 1400.0) {
                continue;
            }
            lost += 1;
            dec.recover(&packets[i + 2], &mut out).unwrap();
            // Measured: rebuilt from FEC 1400 Hz has 1.4-6.5x the energy of 600 Hz; concealed
            // it has 1/20000th.
            if power_at(&out, 1400.0) > power_at(&out, 600.0) {
                rebuilt += 1;
            }
        }
        assert!(lost >= 10, "{lost} frames lost");
        rebuilt
    }

    #[test]
    fn fec_is_coded_only_while_the_browser_reports_loss() {
        let settings = EncoderSettings {
            dtx: false,
            ..Default::default()
        };
        let mut clean = Bridge::new(settings, 20).unwrap();
        clean.handle_browser_report(0);
        assert_eq!(clean.expected_loss(), 0);
        assert_eq!(
            clean.complexity(),
            settings.complexity,
            "cheap on a clean path"
        );
        assert_eq!(rebuilt_from_fec(&mut clean), 0, "no FEC on a clean path");

        let mut lossy = Bridge::new(settings, 20).unwrap();
        lossy.handle_browser_report(64);
        assert_eq!(lossy.expected_loss(), 25);
        assert_eq!(lossy.complexity(), settings.complexity_under_loss);
        let rebuilt = rebuilt_from_fec(&mut lossy);
        assert!(
            rebuilt >= 12,
            "FEC rebuilt only {rebuilt} of 13 lost frames"
        );
        assert_eq!(lossy.stats.browser_reports, 1);
        assert_eq!(lossy.stats.browser_reported_loss_max, 64);
        while lossy.expected_loss() > 0 {
            lossy.handle_browser_report(0);
        }
        assert_eq!(
            lossy.complexity(),
            settings.complexity,
            "back once the path is clean"
        );
    }

    #[test]
    fn a_lazy_bridge_is_made_on_first_use_and_keeps_the_reports_before_it() {
        let settings = EncoderSettings::default();
        let mut lazy = LazyBridge::new(settings, 40);
        assert!(lazy.made().is_none(), "nothing made up front");
        // Reports before the bridge (a relayed call has only these): counted for the CDR,
        // and the loss they show is what the bridge's encoder starts out protecting against.
        lazy.handle_browser_report(64);
        lazy.handle_browser_report(10);
        assert!(lazy.made().is_none(), "a report makes no bridge");
        assert_eq!(lazy.stats().0.browser_reports, 2);
        assert_eq!(lazy.stats().0.browser_reported_loss_max, 64);
        let bridge = lazy.get().expect("Opus set up");
        // 25 % from the first report, decayed by a quarter by the second's 4 %.
        assert_eq!(bridge.expected_loss(), 18);
        assert_eq!(bridge.complexity(), settings.complexity_under_loss);
        bridge.handle_browser_report(128);
        assert!(lazy.made().is_some());
        let (stats, _) = lazy.stats();
        assert_eq!(stats.browser_reports, 3);
        assert_eq!(stats.browser_reported_loss_max, 128);
    }
}
