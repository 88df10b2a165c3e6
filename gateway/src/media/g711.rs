//! G.711 µ-law (PCMU) and A-law (PCMA), ITU-T G.711, table driven.
//!
//! Decoding is a 256-entry lookup. Encoding is a lookup on the significant bits of the
//! linear sample (14 bits for µ-law, 13 for A-law: G.711 ignores the rest), so the hot
//! path is one shift and one load per sample. The tables are built at compile time from
//! the reference segment algorithm (the Sun/CCITT `g711.c` formulation).

const BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 8159;
const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

const fn segment(value: i32, ends: &[i32; 8]) -> usize {
    let mut i = 0;
    while i < 8 {
        if value <= ends[i] {
            return i;
        }
        i += 1;
    }
    8
}

/// µ-law encoding of a 14-bit linear value (the 16-bit sample shifted right by 2).
const fn ulaw_from_14bit(mut pcm: i32) -> u8 {
    let mask = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    if pcm > ULAW_CLIP {
        pcm = ULAW_CLIP;
    }
    pcm += BIAS >> 2;
    let seg = segment(pcm, &SEG_UEND);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let uval = ((seg as i32) << 4) | ((pcm >> (seg + 1)) & 0xF);
    (uval ^ mask) as u8
}

/// A-law encoding of a 13-bit linear value (the 16-bit sample shifted right by 3).
const fn alaw_from_13bit(mut pcm: i32) -> u8 {
    let mask = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let seg = segment(pcm, &SEG_AEND);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mut aval = (seg as i32) << 4;
    if seg < 2 {
        aval |= (pcm >> 1) & 0xF;
    } else {
        aval |= (pcm >> seg) & 0xF;
    }
    (aval ^ mask) as u8
}

const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u as i32;
    let mut t = ((u & 0x0F) << 3) + BIAS;
    t <<= (u & 0x70) >> 4;
    (if u & 0x80 != 0 { BIAS - t } else { t - BIAS }) as i16
}

const fn alaw_to_linear(a: u8) -> i16 {
    let a = (a ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

static ULAW_ENCODE: [u8; 16384] = {
    let mut table = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        table[i] = ulaw_from_14bit(i as i32 - 8192);
        i += 1;
    }
    table
};

static ALAW_ENCODE: [u8; 8192] = {
    let mut table = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        table[i] = alaw_from_13bit(i as i32 - 4096);
        i += 1;
    }
    table
};

static ULAW_DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_to_linear(i as u8);
        i += 1;
    }
    table
};

static ALAW_DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_to_linear(i as u8);
        i += 1;
    }
    table
};

/// The two G.711 companding laws, as negotiated by RTP payload type 0 and 8 (RFC 3551 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum G711 {
    /// µ-law, static payload type 0.
    Pcmu,
    /// A-law, static payload type 8.
    Pcma,
}

impl G711 {
    /// The static RTP payload type (RFC 3551 table 4).
    pub const fn payload_type(self) -> u8 {
        match self {
            G711::Pcmu => 0,
            G711::Pcma => 8,
        }
    }

    /// The SDP encoding name (`a=rtpmap:0 PCMU/8000`).
    pub const fn encoding_name(self) -> &'static str {
        match self {
            G711::Pcmu => "PCMU",
            G711::Pcma => "PCMA",
        }
    }

    /// The codec whose static payload type is `pt`, if any.
    pub const fn from_payload_type(pt: u8) -> Option<G711> {
        match pt {
            0 => Some(G711::Pcmu),
            8 => Some(G711::Pcma),
            _ => None,
        }
    }

    /// The codec with this SDP encoding name (case-insensitive, RFC 4566 §6).
    pub fn from_encoding_name(name: &str) -> Option<G711> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(G711::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(G711::Pcma)
        } else {
            None
        }
    }

    /// Encodes one sample.
    #[inline]
    pub fn encode_sample(self, sample: i16) -> u8 {
        match self {
            G711::Pcmu => ULAW_ENCODE[((sample >> 2) as i32 + 8192) as usize],
            G711::Pcma => ALAW_ENCODE[((sample >> 3) as i32 + 4096) as usize],
        }
    }

    /// Decodes one sample.
    #[inline]
    pub fn decode_sample(self, byte: u8) -> i16 {
        match self {
            G711::Pcmu => ULAW_DECODE[byte as usize],
            G711::Pcma => ALAW_DECODE[byte as usize],
        }
    }

    /// Encodes `pcm` into `out`; both must have the same length.
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) {
        for (o, &s) in out.iter_mut().zip(pcm) {
            *o = self.encode_sample(s);
        }
    }

    /// Decodes `bytes` into `out`; both must have the same length.
    pub fn decode(self, bytes: &[u8], out: &mut [i16]) {
        for (o, &b) in out.iter_mut().zip(bytes) {
            *o = self.decode_sample(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_encodes_to_the_g711_idle_codes() {
        assert_eq!(G711::Pcmu.encode_sample(0), 0xFF);
        assert_eq!(G711::Pcma.encode_sample(0), 0xD5);
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for law in [G711::Pcmu, G711::Pcma] {
            for code in 0..=255u8 {
                let linear = law.decode_sample(code);
                let again = law.encode_sample(linear);
                // µ-law has two codes for zero (0x7F and 0xFF); everything else is exact.
                if law == G711::Pcmu && linear == 0 {
                    continue;
                }
                assert_eq!(again, code, "{law:?} code {code:#04x} -> {linear}");
            }
        }
    }

    #[test]
    fn quantisation_error_is_within_the_segment_step() {
        for law in [G711::Pcmu, G711::Pcma] {
            for s in (-32768i32..=32767).step_by(7) {
                let s = s as i16;
                let back = law.decode_sample(law.encode_sample(s)) as i32;
                let err = (back - s as i32).abs();
                // The largest segment step is 1024 (µ-law) / 1024 (A-law): half of it bounds the error,
                // plus clipping at the top of the µ-law range.
                assert!(err <= 1024, "{law:?} {s} -> {back}");
            }
        }
    }

    #[test]
    fn matches_known_reference_values() {
        // From the ITU-T G.711 tables: full-scale positive and negative.
        assert_eq!(G711::Pcmu.decode_sample(0x80), 32124);
        assert_eq!(G711::Pcmu.decode_sample(0x00), -32124);
        assert_eq!(G711::Pcma.decode_sample(0xAA), 32256);
        assert_eq!(G711::Pcma.decode_sample(0x2A), -32256);
    }
}
