//! Test and probe signals: a sine generator and a Goertzel tone detector with an SNR figure.
//!
//! Used by `gateway dial` to tell whether an echo endpoint returned what was sent, and by
//! the end-to-end tests to check audio, not just packet counts.

use std::f64::consts::PI;

/// A continuous sine at `frequency` Hz, sampled at `rate` Hz.
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    step: f64,
    phase: f64,
    amplitude: f64,
}

impl ToneGenerator {
    /// `amplitude` is in linear 16-bit units (e.g. 8000 ≈ -12 dBFS).
    pub fn new(frequency: f64, rate: u32, amplitude: i16) -> Self {
        ToneGenerator {
            step: 2.0 * PI * frequency / rate as f64,
            phase: 0.0,
            amplitude: amplitude as f64,
        }
    }

    /// Fills `out` with the next samples, keeping phase across calls.
    pub fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            *s = (self.phase.sin() * self.amplitude) as i16;
            self.phase += self.step;
            if self.phase > 2.0 * PI {
                self.phase -= 2.0 * PI;
            }
        }
    }
}

/// The result of analysing received audio for one frequency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToneReport {
    /// Median, over analysed blocks, of tone power over everything else, in dB.
    pub snr_db: f64,
    /// Number of blocks analysed.
    pub blocks: usize,
    /// Number of blocks whose signal was above the silence floor.
    pub voiced_blocks: usize,
}

/// Accumulates PCM and measures, per block, how much of the power sits at one frequency
/// (Goertzel at the exact frequency) against the rest (noise, distortion, other tones).
#[derive(Debug, Clone)]
pub struct ToneDetector {
    coeff: f64,
    cos: f64,
    sin: f64,
    block: usize,
    s1: f64,
    s2: f64,
    energy: f64,
    filled: usize,
    snrs: Vec<f64>,
    blocks: usize,
}

/// Blocks quieter than this mean power (about -60 dBFS) are silence, not evidence.
const SILENCE_POWER: f64 = 1000.0;

impl ToneDetector {
    /// Detects `frequency` in audio sampled at `rate`, in blocks of `block` samples
    /// (longer blocks resolve the frequency more finely; 100 ms is a good default).
    pub fn new(frequency: f64, rate: u32, block: usize) -> Self {
        let w = 2.0 * PI * frequency / rate as f64;
        ToneDetector {
            coeff: 2.0 * w.cos(),
            cos: w.cos(),
            sin: w.sin(),
            block,
            s1: 0.0,
            s2: 0.0,
            energy: 0.0,
            filled: 0,
            snrs: Vec::new(),
            blocks: 0,
        }
    }

    /// Feeds samples.
    pub fn push(&mut self, pcm: &[i16]) {
        for &x in pcm {
            let x = x as f64;
            let s0 = x + self.coeff * self.s1 - self.s2;
            self.s2 = self.s1;
            self.s1 = s0;
            self.energy += x * x;
            self.filled += 1;
            if self.filled == self.block {
                self.finish_block();
            }
        }
    }

    fn finish_block(&mut self) {
        let n = self.block as f64;
        let w = self.sin.atan2(self.cos);
        // Goertzel's end state gives y = Σ x[k]·e^{jω(N-1-k)}; rotate it to the DFT term
        // X = Σ x[k]·e^{-jωk} = C - jS, with C = Σ x·cos ωk and S = Σ x·sin ωk.
        let (y_re, y_im) = (self.s1 - self.s2 * self.cos, self.s2 * self.sin);
        let (rot_cos, rot_sin) = ((w * (n - 1.0)).cos(), -(w * (n - 1.0)).sin());
        let c = y_re * rot_cos - y_im * rot_sin;
        let s = -(y_re * rot_sin + y_im * rot_cos);
        // Least-squares fit of a·cos + b·sin: the tone's energy is the projection of the
        // block onto that plane. Over a block that is not a whole number of periods cos and
        // sin are not orthogonal, and the plain 2|X|²/N can exceed the block's energy; the
        // Gram matrix (closed-form sums of cos 2ωk and sin 2ωk) corrects that exactly.
        let (sum2_cos, sum2_sin) = if (2.0 * w).sin().abs() < 1e-12 {
            (n, 0.0)
        } else {
            let amplitude = (n * w).sin() / w.sin();
            (
                amplitude * (w * (n - 1.0)).cos(),
                amplitude * (w * (n - 1.0)).sin(),
            )
        };
        let cc = n / 2.0 + sum2_cos / 2.0;
        let ss = n / 2.0 - sum2_cos / 2.0;
        let cs = sum2_sin / 2.0;
        let det = cc * ss - cs * cs;
        let tone_energy = if det.abs() < 1e-9 {
            2.0 * (c * c + s * s) / n
        } else {
            let a = (c * ss - s * cs) / det;
            let b = (s * cc - c * cs) / det;
            a * c + b * s
        }
        .clamp(0.0, self.energy);
        let rest = (self.energy - tone_energy)
            .max(self.energy * 1e-9)
            .max(1e-9);
        self.blocks += 1;
        if self.energy / n > SILENCE_POWER {
            self.snrs.push(10.0 * (tone_energy / rest).log10());
        }
        self.s1 = 0.0;
        self.s2 = 0.0;
        self.energy = 0.0;
        self.filled = 0;
    }

    /// The figures so far. Silent blocks count as blocks but not towards the SNR; with no
    /// voiced block at all the SNR is -inf.
    pub fn report(&self) -> ToneReport {
        let mut snrs = self.snrs.clone();
        snrs.sort_by(f64::total_cmp);
        let snr_db = if snrs.is_empty() {
            f64::NEG_INFINITY
        } else {
            snrs[snrs.len() / 2]
        };
        ToneReport {
            snr_db,
            blocks: self.blocks,
            voiced_blocks: snrs.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711::G711;

    fn snr_of(signal: &[i16], frequency: f64) -> ToneReport {
        let mut d = ToneDetector::new(frequency, 8000, 800);
        d.push(signal);
        d.report()
    }

    #[test]
    fn a_pure_tone_through_g711_has_high_snr() {
        let mut g = ToneGenerator::new(1000.0, 8000, 8000);
        let mut pcm = vec![0i16; 8000];
        g.fill(&mut pcm);
        let coded: Vec<i16> = pcm
            .iter()
            .map(|&s| G711::Pcmu.decode_sample(G711::Pcmu.encode_sample(s)))
            .collect();
        let r = snr_of(&coded, 1000.0);
        assert_eq!(r.voiced_blocks, 10);
        assert!(r.snr_db > 30.0, "{r:?}");
    }

    #[test]
    fn another_frequency_is_not_the_tone() {
        let mut g = ToneGenerator::new(1400.0, 8000, 8000);
        let mut pcm = vec![0i16; 8000];
        g.fill(&mut pcm);
        assert!(snr_of(&pcm, 1000.0).snr_db < 0.0);
    }

    #[test]
    fn snr_is_finite_for_frequencies_that_do_not_divide_the_block() {
        // 1004 Hz over 800 samples is 100.4 periods: the leakage must not read as a perfect tone.
        for f in [1004.0, 697.0, 1633.0, 3100.0] {
            let mut g = ToneGenerator::new(f, 8000, 8000);
            let mut pcm = vec![0i16; 8000];
            g.fill(&mut pcm);
            let coded: Vec<i16> = pcm
                .iter()
                .map(|&s| G711::Pcmu.decode_sample(G711::Pcmu.encode_sample(s)))
                .collect();
            let r = snr_of(&coded, f);
            assert!(r.snr_db > 30.0 && r.snr_db < 50.0, "{f} Hz: {r:?}");
        }
    }

    #[test]
    fn silence_is_not_evidence() {
        let r = snr_of(&[0i16; 8000], 1000.0);
        assert_eq!(r.blocks, 10);
        assert_eq!(r.voiced_blocks, 0);
        assert_eq!(r.snr_db, f64::NEG_INFINITY);
    }

    #[test]
    fn noise_lowers_the_snr() {
        let mut g = ToneGenerator::new(1000.0, 8000, 4000);
        let mut pcm = vec![0i16; 8000];
        g.fill(&mut pcm);
        let mut seed = 1u32;
        for s in pcm.iter_mut() {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            *s = s.saturating_add(((seed >> 16) as i16 >> 4) * 2);
        }
        // Tone power 4000²/2 = 8.0e6; uniform noise in ±4096 has power 4096²/3 = 5.6e6.
        let expected = 10.0 * (8.0e6f64 / 5.59e6).log10();
        let r = snr_of(&pcm, 1000.0);
        assert!(
            (r.snr_db - expected).abs() < 1.0,
            "{r:?}, expected {expected:.1} dB"
        );
    }
}
