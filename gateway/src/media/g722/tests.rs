//! The codec against SpanDSP's (libspandsp.so.2, Debian `libspandsp2`, loaded at run time):
//! the same bytes from the same samples, and the same samples from the same bytes.

use std::ffi::{CStr, c_void};

use nix::libc;

use super::{Decoder, Encoder};

type Init = unsafe extern "C" fn(*mut c_void, i32, i32) -> *mut c_void;
type Encode = unsafe extern "C" fn(*mut c_void, *mut u8, *const i16, i32) -> i32;
type Decode = unsafe extern "C" fn(*mut c_void, *mut i16, *const u8, i32) -> i32;
type Free = unsafe extern "C" fn(*mut c_void) -> i32;

/// SpanDSP's G.722, at 64 kbit/s and 16 kHz.
struct SpanDsp {
    encode_init: Init,
    encode: Encode,
    encode_free: Free,
    decode_init: Init,
    decode: Decode,
    decode_free: Free,
}

impl SpanDsp {
    fn load() -> SpanDsp {
        // SAFETY: dlopen and dlsym are given NUL-terminated names; the library stays loaded
        // (never dlclose'd), so the function pointers stay valid for the process.
        unsafe {
            let lib = libc::dlopen(c"libspandsp.so.2".as_ptr(), libc::RTLD_NOW);
            assert!(
                !lib.is_null(),
                "libspandsp.so.2 is the reference the G.722 tests code against and it did not \
                 load: install Debian's libspandsp2 (scripts/install-deps.sh does)"
            );
            let symbol = |name: &CStr| {
                let f = libc::dlsym(lib, name.as_ptr());
                assert!(!f.is_null(), "libspandsp.so.2 has no {name:?}");
                f
            };
            // SAFETY: the signatures are SpanDSP 0.0.6's (spandsp/g722.h).
            SpanDsp {
                encode_init: std::mem::transmute::<*mut c_void, Init>(symbol(c"g722_encode_init")),
                encode: std::mem::transmute::<*mut c_void, Encode>(symbol(c"g722_encode")),
                encode_free: std::mem::transmute::<*mut c_void, Free>(symbol(c"g722_encode_free")),
                decode_init: std::mem::transmute::<*mut c_void, Init>(symbol(c"g722_decode_init")),
                decode: std::mem::transmute::<*mut c_void, Decode>(symbol(c"g722_decode")),
                decode_free: std::mem::transmute::<*mut c_void, Free>(symbol(c"g722_decode_free")),
            }
        }
    }

    /// SpanDSP's bytes for `pcm`, coded by a fresh encoder in one call.
    fn encoded(&self, pcm: &[i16]) -> Vec<u8> {
        let mut out = vec![0u8; pcm.len() / 2];
        // SAFETY: a fresh state (SpanDSP allocates it), `out` holds a byte per pair, and the
        // state is freed once.
        unsafe {
            let state = (self.encode_init)(std::ptr::null_mut(), 64000, 0);
            assert!(!state.is_null());
            let n = (self.encode)(state, out.as_mut_ptr(), pcm.as_ptr(), pcm.len() as i32);
            (self.encode_free)(state);
            assert_eq!(n as usize, out.len());
        }
        out
    }

    /// SpanDSP's samples for `codes`, decoded by a fresh decoder in one call.
    fn decoded(&self, codes: &[u8]) -> Vec<i16> {
        let mut out = vec![0i16; 2 * codes.len()];
        // SAFETY: as in `encoded`, with two samples of room per byte.
        unsafe {
            let state = (self.decode_init)(std::ptr::null_mut(), 64000, 0);
            assert!(!state.is_null());
            let n = (self.decode)(state, out.as_mut_ptr(), codes.as_ptr(), codes.len() as i32);
            (self.decode_free)(state);
            assert_eq!(n as usize, out.len());
        }
        out
    }
}

/// A deterministic noise source (xorshift).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> i32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 65536) as i32 - 32768
    }
}

/// Ten seconds of 16 kHz test signal in second-long pieces: speech-like (two tones and a
/// little noise), quiet noise, silence, full-scale noise, a full-scale square wave, a chirp
/// and a DC step — the full-scale pieces drive the quantizers and the QMF to their limits.
fn signal() -> Vec<i16> {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    (0..160_000)
        .map(|i| {
            let t = f64::from(i) / 16_000.0;
            let tone = |hz: f64, amp: f64| (2.0 * std::f64::consts::PI * hz * t).sin() * amp;
            let x = match i / 16_000 {
                0 | 7 => tone(440.0, 9000.0) + tone(2300.0, 3000.0) + f64::from(noise.next() / 16),
                1 => f64::from(noise.next() / 300),
                2 => 0.0,
                3 => f64::from(noise.next()),
                4 => {
                    if tone(180.0, 1.0) >= 0.0 {
                        32767.0
                    } else {
                        -32768.0
                    }
                }
                5 => tone(100.0 + 7000.0 * (t - 5.0), 30000.0),
                6 => 20000.0,
                _ => tone(6500.0, 12000.0) + tone(300.0, 12000.0),
            };
            x.clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Our encoder's bytes for `pcm`, given to it in pieces of the lengths in `pieces`, in turn.
fn encoded_in_pieces(pcm: &[i16], pieces: &[usize]) -> Vec<u8> {
    let mut encoder = Encoder::new();
    let (mut out, mut at, mut next) = (Vec::new(), 0, pieces.iter().cycle());
    while at < pcm.len() {
        let n = (*next.next().unwrap()).min(pcm.len() - at);
        let mut bytes = vec![0u8; n / 2];
        assert_eq!(encoder.encode(&pcm[at..at + n], &mut bytes), n / 2);
        out.extend_from_slice(&bytes);
        at += n;
    }
    out
}

/// Our decoder's samples for `codes`, given to it in pieces of the lengths in `pieces`.
fn decoded_in_pieces(codes: &[u8], pieces: &[usize]) -> Vec<i16> {
    let mut decoder = Decoder::new();
    let (mut out, mut at, mut next) = (Vec::new(), 0, pieces.iter().cycle());
    while at < codes.len() {
        let n = (*next.next().unwrap()).min(codes.len() - at);
        let mut pcm = vec![0i16; 2 * n];
        assert_eq!(decoder.decode(&codes[at..at + n], &mut pcm), 2 * n);
        out.extend_from_slice(&pcm);
        at += n;
    }
    out
}

/// Asserts our samples are SpanDSP's, but where the receive QMF overflowed: there ours sit
/// at the rail and SpanDSP's wrapped to the other sign. Returns how many overflowed.
fn assert_same_but_saturated(ours: &[i16], spandsp: &[i16]) -> usize {
    assert_eq!(ours.len(), spandsp.len());
    let mut overflowed = 0;
    for (i, (&a, &b)) in ours.iter().zip(spandsp).enumerate() {
        if a == b {
            continue;
        }
        let wrapped = (a == i16::MAX && b < 0) || (a == i16::MIN && b >= 0);
        assert!(wrapped, "sample {i}: ours {a}, SpanDSP's {b}");
        overflowed += 1;
    }
    overflowed
}

#[test]
fn encodes_what_spandsp_encodes_from_the_first_sample_however_the_frames_are_cut() {
    let spandsp = SpanDsp::load();
    let pcm = signal();
    let reference = spandsp.encoded(&pcm);
    // 20 ms frames as calls send them, and pieces shorter and longer than the codec's own
    // chunk (a piece's odd last sample would be left, so these are even).
    for pieces in [&[320][..], &[2, 34, 600, 1000], &[318, 322, 4, 5000]] {
        let ours = encoded_in_pieces(&pcm, pieces);
        let first = ours.iter().zip(&reference).position(|(a, b)| a != b);
        assert_eq!(
            first, None,
            "pieces {pieces:?}: the bytes differ from SpanDSP's"
        );
    }
}

#[test]
fn decodes_what_spandsp_decodes_and_saturates_where_it_would_wrap() {
    let spandsp = SpanDsp::load();
    // A real stream, and bytes a hostile trunk might send instead.
    let stream = spandsp.encoded(&signal());
    let mut noise = Noise(7);
    let hostile: Vec<u8> = (0..80_000).map(|_| noise.next() as u8).collect();
    for (what, codes) in [("coded signal", &stream), ("random bytes", &hostile)] {
        let reference = spandsp.decoded(codes);
        for pieces in [&[160][..], &[1, 17, 300, 500]] {
            let ours = decoded_in_pieces(codes, pieces);
            let overflowed = assert_same_but_saturated(&ours, &reference);
            // The full-scale pieces of the signal overshoot the receive QMF: the saturation
            // is exercised, not only allowed.
            if what == "coded signal" {
                assert!(overflowed > 0, "the full-scale signal never overflowed");
            }
        }
    }
}

#[test]
fn tones_in_either_band_come_back_through_encoder_and_decoder() {
    // 200 Hz and 1 kHz in the lower band, 6 kHz in the higher (2 bits a sample there).
    for (hz, floor_db) in [(200.0, 40.0), (1000.0, 40.0), (6000.0, 20.0)] {
        let pcm: Vec<i16> = (0..16_000)
            .map(|i| {
                ((f64::from(i) * 2.0 * std::f64::consts::PI * hz / 16_000.0).sin() * 12000.0) as i16
            })
            .collect();
        let decoded = decoded_in_pieces(&encoded_in_pieces(&pcm, &[320]), &[160]);
        // The two QMFs delay the signal by 22 samples.
        let (mut signal, mut error) = (0.0, 0.0);
        for (a, b) in pcm[1000..15_000].iter().zip(&decoded[1022..]) {
            signal += f64::from(*a).powi(2);
            error += (f64::from(*a) - f64::from(*b)).powi(2);
        }
        let snr = 10.0 * (signal / error.max(1.0)).log10();
        eprintln!("{hz} Hz: {snr:.1} dB");
        assert!(
            snr > floor_db,
            "a {hz} Hz tone came back at {snr:.1} dB SNR"
        );
    }
}

#[test]
fn codes_only_what_the_buffers_hold() {
    let pcm = [1000i16; 9];
    let mut encoder = Encoder::new();
    let mut out = [0u8; 8];
    // Nine samples are four pairs: the odd one is left.
    assert_eq!(encoder.encode(&pcm, &mut out), 4);
    // Room for two bytes: two pairs coded.
    assert_eq!(encoder.encode(&pcm, &mut out[..2]), 2);
    let mut decoder = Decoder::new();
    let mut samples = [0i16; 5];
    // Five samples of room: two bytes decoded, four samples written.
    assert_eq!(decoder.decode(&out, &mut samples), 4);
    assert_eq!(decoder.decode(&[], &mut samples), 0);
    assert_eq!(decoder.decode(&out, &mut []), 0);
}
