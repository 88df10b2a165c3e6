//! G.722 at 64 kbit/s (ITU-T G.722 mode 1), the HD voice codec of RFC 3551 §4.5.2: 16 kHz
//! audio, split by a quadrature mirror filter (QMF) into a lower and a higher band, each coded
//! by sub-band ADPCM — 6 bits a sample for the lower band, 2 for the higher — into one byte per
//! pair of samples. The block names in the comments (QUANTL, LOGSCL, UPPOL2 …) are G.722's
//! own.
//!
//! Bit-exact with SpanDSP's implementation (libspandsp 0.0.6, which FreeSWITCH, Asterisk and
//! baresip carry; the tests code against it), from the first sample: both sides of an ADPCM
//! stream adapt from the codes alone, so a coder that starts from other states than the
//! standard's is heard wrongly by the peer until the two drift together. The crate used
//! before (`ezk-g722` 0.1.2) started both bands' step sizes at 0 where G.722 says 32 and 8:
//! a standard decoder fed its stream disagreed with it for the first 0.3 s of every call.
//! Coding into the caller's buffers also ends an allocation per frame each way.
//!
//! One departure, on hostile input only: the receive QMF's output is saturated to 16 bits,
//! as the rest of G.722's arithmetic is, where SpanDSP lets it wrap, which turns a crafted
//! stream's overflow into a full-scale jump to the other sign.

/// The QMF's coefficients, oldest sample first.
const QMF: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

/// Samples of history the QMF keeps between calls: 24 taps, less the pair being filtered.
const HISTORY: usize = 22;

/// Pairs coded per pass through a stack buffer (a 20 ms frame is 160).
const CHUNK: usize = 160;

/// Lower band: quantizer decision levels (QUANTL) in units of the step size.
const Q6: [i32; 30] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919,
];
/// Lower band: the 6-bit code for each decision interval, negative and positive.
const ILN: [i32; 31] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4,
];
const ILP: [i32; 31] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32,
];
/// Lower band: the 6-bit code's reconstruction levels (INVQBL).
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// Lower band: the code's top 4 bits' reconstruction levels (INVQAL), which the
/// predictor adapts from at every bit rate.
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// Lower band: step size multipliers (LOGSCL), indexed through `RL42`.
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
const RL42: [i32; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Higher band: the 2-bit code for each interval (QUANTH), its reconstruction levels
/// (INVQAH) and step size multipliers (LOGSCH) through `RH2`.
const IHN: [i32; 3] = [0, 1, 0];
const IHP: [i32; 3] = [0, 3, 2];
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
const WH: [i32; 3] = [0, -214, 798];
const RH2: [i32; 4] = [2, 1, 2, 1];
/// The step size's antilog table (SCALEL, SCALEH).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];

/// The QMF's two filters over 24 `taps`, oldest first: the coefficients over the even taps,
/// and reversed over the odd ones.
fn qmf(taps: &[i32; 24]) -> (i32, i32) {
    let (mut even_taps, mut odd_taps) = (0, 0);
    for i in 0..12 {
        even_taps += taps[2 * i] * QMF[i];
        odd_taps += taps[2 * i + 1] * QMF[11 - i];
    }
    (even_taps, odd_taps)
}

/// Saturates to 16 bits, as G.722's arithmetic does.
fn sat(x: i32) -> i32 {
    x.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
}

/// One band's ADPCM state: its step size and the adaptive predictor (block 4), which encoder
/// and decoder run alike from the quantized differences.
#[derive(Debug, Clone)]
struct Band {
    /// The signal estimate (`s`), and its zero section's part (`sz`).
    s: i32,
    sz: i32,
    /// The last two reconstructed signals (`r`) and partially reconstructed ones (`p`).
    r: [i32; 2],
    p: [i32; 2],
    /// The pole section's two coefficients and the zero section's six, with its last six
    /// quantized differences (`d`).
    a: [i32; 2],
    b: [i32; 6],
    d: [i32; 6],
    /// The log step size (`nb`) and the step size (`det`).
    nb: i32,
    det: i32,
}

impl Band {
    /// A band at G.722's reset state: everything zero but the step size.
    fn new(det: i32) -> Band {
        Band {
            s: 0,
            sz: 0,
            r: [0; 2],
            p: [0; 2],
            a: [0; 2],
            b: [0; 6],
            d: [0; 6],
            nb: 0,
            det,
        }
    }

    /// The step size for the next sample from the log step size, adapted by `w` and kept
    /// within `nb_max` (LOGSCL and SCALEL; LOGSCH and SCALEH with `shift` 10 for the higher
    /// band, 8 for the lower).
    fn scale(&mut self, w: i32, nb_max: i32, shift: i32) {
        self.nb = (((self.nb * 127) >> 7) + w).clamp(0, nb_max);
        let antilog = ILB[((self.nb >> 6) & 31) as usize];
        let wd = shift - (self.nb >> 11);
        self.det = (if wd < 0 {
            antilog << -wd
        } else {
            antilog >> wd
        }) << 2;
    }

    /// Block 4: adapts the predictor to the quantized difference `d` and predicts the next
    /// sample (RECONS, PARREC, UPPOL2, UPPOL1, UPZERO, DELAYA, FILTEP, FILTEZ, PREDIC).
    fn adapt(&mut self, d: i32) {
        let r = sat(self.s + d);
        let p = sat(self.sz + d);
        // UPPOL2: the second pole coefficient. Signs compare by their bit, as G.722's
        // 16-bit words do.
        let sign = |x: i32| x < 0;
        let wd1 = sat(self.a[0] << 2);
        let wd2 = if sign(p) == sign(self.p[0]) {
            -wd1
        } else {
            wd1
        }
        .min(32767);
        let same_p1 = sign(p) == sign(self.p[1]);
        let a2 = ((wd2 >> 7) + if same_p1 { 128 } else { -128 } + ((self.a[1] * 32512) >> 15))
            .clamp(-12288, 12288);
        // UPPOL1: the first, kept within 15360 - |a2| so the predictor stays stable.
        let wd1 = if sign(p) == sign(self.p[0]) {
            192
        } else {
            -192
        };
        let a1 = sat(wd1 + ((self.a[0] * 32640) >> 15));
        let limit = sat(15360 - a2);
        let a1 = a1.clamp(-limit, limit);
        // FILTEP: the pole section's estimate.
        let sp = sat(((a1 * sat(r + r)) >> 15) + ((a2 * sat(self.r[0] + self.r[0])) >> 15));
        self.r = [r, self.r[0]];
        self.p = [p, self.p[0]];
        self.a = [a1, a2];
        // UPZERO, DELAYA and FILTEZ: each zero coefficient leaks and steps towards agreeing
        // in sign with `d`, the differences shift by one, and the zero section's estimate
        // sums the new coefficients over them.
        let step = if d == 0 { 0 } else { 128 };
        let mut sz = 0;
        let mut last = d;
        for (b, older) in self.b.iter_mut().zip(self.d.iter_mut()) {
            let wd2 = if sign(*older) == sign(d) { step } else { -step };
            *b = sat(wd2 + ((*b * 32640) >> 15));
            let shifted = std::mem::replace(older, last);
            sz += (*b * sat(last + last)) >> 15;
            last = shifted;
        }
        self.sz = sat(sz);
        // PREDIC
        self.s = sat(sp + self.sz);
    }
}

/// A G.722 encoder: 16 kHz samples in, a byte per pair out.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// The last samples the QMF has seen, oldest first.
    history: [i32; HISTORY],
    low: Band,
    high: Band,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder at the reset state.
    pub fn new() -> Encoder {
        Encoder {
            history: [0; HISTORY],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Encodes the pairs of samples in `pcm` into `out`, a byte each, as many as both hold
    /// (an odd last sample is left); returns the bytes written.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        let pairs = (pcm.len() / 2).min(out.len());
        let mut window = [0i32; HISTORY + 2 * CHUNK];
        for (pcm, out) in pcm[..2 * pairs]
            .chunks(2 * CHUNK)
            .zip(out[..pairs].chunks_mut(CHUNK))
        {
            window[..HISTORY].copy_from_slice(&self.history);
            for (w, &x) in window[HISTORY..].iter_mut().zip(pcm) {
                *w = i32::from(x);
            }
            for (k, code) in out.iter_mut().enumerate() {
                // The transmit QMF, over the 24 latest samples.
                let (odd, even) = qmf(window[2 * k..2 * k + 24].try_into().unwrap());
                let low = self.encode_low((even + odd) >> 14);
                let high = self.encode_high((even - odd) >> 14);
                *code = ((high << 6) | low) as u8;
            }
            let end = 2 * out.len();
            self.history.copy_from_slice(&window[end..end + HISTORY]);
        }
        pairs
    }

    /// The lower band's 6-bit code for `xl` (SUBTRA, QUANTL, then INVQAL, LOGSCL, SCALEL
    /// and block 4).
    fn encode_low(&mut self, xl: i32) -> i32 {
        let band = &mut self.low;
        let el = sat(xl - band.s);
        let magnitude = if el >= 0 { el } else { !el };
        // The first decision level above the magnitude: the levels grow with their index, so
        // a binary search finds what G.722's linear one does.
        let det = band.det;
        let i = 1 + Q6[1..].partition_point(|&q| magnitude >= (q * det) >> 12);
        let code = if el < 0 { ILN[i] } else { ILP[i] };
        let top = (code >> 2) as usize;
        let d = (det * QM4[top]) >> 15;
        band.scale(WL[RL42[top] as usize], 18432, 8);
        band.adapt(d);
        code
    }

    /// The higher band's 2-bit code for `xh` (SUBTRA, QUANTH, then INVQAH, LOGSCH, SCALEH
    /// and block 4).
    fn encode_high(&mut self, xh: i32) -> i32 {
        let band = &mut self.high;
        let eh = sat(xh - band.s);
        let magnitude = if eh >= 0 { eh } else { !eh };
        let level = 1 + usize::from(magnitude >= (564 * band.det) >> 12);
        let code = if eh < 0 { IHN[level] } else { IHP[level] };
        let d = (band.det * QM2[code as usize]) >> 15;
        band.scale(WH[RH2[code as usize] as usize], 22528, 10);
        band.adapt(d);
        code
    }
}

/// A G.722 decoder: a byte per pair of 16 kHz samples.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// The last sums and differences of the bands the receive QMF has seen, interleaved,
    /// oldest first.
    history: [i32; HISTORY],
    low: Band,
    high: Band,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder at the reset state.
    pub fn new() -> Decoder {
        Decoder {
            history: [0; HISTORY],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Decodes the bytes of `codes` into `pcm`, two samples each, as many as `pcm` has room
    /// for; returns the samples written.
    pub fn decode(&mut self, codes: &[u8], pcm: &mut [i16]) -> usize {
        let pairs = codes.len().min(pcm.len() / 2);
        let mut window = [0i32; HISTORY + 2 * CHUNK];
        for (codes, pcm) in codes[..pairs]
            .chunks(CHUNK)
            .zip(pcm[..2 * pairs].chunks_mut(2 * CHUNK))
        {
            window[..HISTORY].copy_from_slice(&self.history);
            for (k, &code) in codes.iter().enumerate() {
                let rl = self.decode_low(i32::from(code) & 0x3f);
                let rh = self.decode_high(i32::from(code) >> 6);
                window[HISTORY + 2 * k] = rl + rh;
                window[HISTORY + 2 * k + 1] = rl - rh;
            }
            // The receive QMF, over the 24 latest sums and differences; saturated,
            // not wrapped (the module's text).
            for (k, out) in pcm.chunks_exact_mut(2).enumerate() {
                let (x2, x1) = qmf(window[2 * k..2 * k + 24].try_into().unwrap());
                out[0] = sat(x1 >> 11) as i16;
                out[1] = sat(x2 >> 11) as i16;
            }
            let end = 2 * codes.len();
            self.history.copy_from_slice(&window[end..end + HISTORY]);
        }
        2 * pairs
    }

    /// The lower band's signal from its 6-bit code (INVQBL, RECONS, LIMIT), and its step
    /// size and predictor adapted from the code's top 4 bits (INVQAL, LOGSCL, SCALEL,
    /// block 4).
    fn decode_low(&mut self, code: i32) -> i32 {
        let band = &mut self.low;
        let rl = (band.s + ((band.det * QM6[code as usize]) >> 15)).clamp(-16384, 16383);
        let top = (code >> 2) as usize;
        let d = (band.det * QM4[top]) >> 15;
        band.scale(WL[RL42[top] as usize], 18432, 8);
        band.adapt(d);
        rl
    }

    /// The higher band's signal from its 2-bit code (INVQAH, RECONS, LIMIT, LOGSCH,
    /// SCALEH, block 4).
    fn decode_high(&mut self, code: i32) -> i32 {
        let band = &mut self.high;
        let d = (band.det * QM2[code as usize]) >> 15;
        let rh = (band.s + d).clamp(-16384, 16383);
        band.scale(WH[RH2[code as usize] as usize], 22528, 10);
        band.adapt(d);
        rh
    }
}

#[cfg(test)]
mod tests;
