//! Speech through the trunk → browser direction at one Opus setting, for the listening-
//! quality measurement in `scripts/opus_quality.py` (PESQ): 8 kHz mono PCM goes through
//! G.711 as a trunk would send it, then the gateway's own path (`Bridge`: jitter buffer,
//! Opus encoder with the given complexity and expected loss), and is decoded as a browser
//! would, at 8 kHz; frames the encoder left out (DTX) are concealed, as a browser does.
//!
//! usage: opus_quality <in.s16le> <out.s16le> <complexity|g711> [expected-loss-%] [lost-%]
//! (raw 16-bit little-endian mono PCM at 8 kHz both ways; `g711` stops after G.711, the
//! ceiling no Opus setting can pass; `lost-%` drops that share of the Opus packets at random,
//! and the decoder rebuilds each from the next packet's in-band FEC, or conceals it)

use gateway::media::bridge::Bridge;
use gateway::media::g711::G711;
use gateway::media::opus::{EncoderSettings, FRAME_SAMPLES_8K, OpusDecoder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err(
            "usage: opus_quality <in.s16le> <out.s16le> <complexity|g711> [expected-loss-%] [lost-%]"
                .into(),
        );
    }
    let input: Vec<i16> = std::fs::read(&args[1])?
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let g711_only = args[3] == "g711";
    let complexity: u8 = if g711_only {
        0
    } else {
        args[3]
            .parse()
            .map_err(|_| "complexity is 0-10 or `g711`")?
    };
    let expected_loss_pct: u8 = match args.get(4) {
        Some(l) => l.parse().map_err(|_| "expected loss is a percentage")?,
        None => 0,
    };
    let lost_pct: u32 = match args.get(5) {
        Some(l) => l.parse().map_err(|_| "lost share is a percentage")?,
        None => 0,
    };
    let codec = G711::Pcmu;
    // A fixed pseudo-random loss pattern (xorshift), the same for every setting compared.
    let mut seed = 0x2545_f491_u32;
    let mut lost = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed % 100 < lost_pct
    };
    let settings = EncoderSettings {
        complexity,
        expected_loss_pct,
        ..EncoderSettings::default()
    };
    let mut bridge = Bridge::new(settings, 40)?;
    let mut decoder = OpusDecoder::new()?;
    let mut law = [0u8; FRAME_SAMPLES_8K];
    let mut trunk = [0i16; FRAME_SAMPLES_8K];
    let mut heard = [0i16; FRAME_SAMPLES_8K];
    let mut output = Vec::with_capacity(input.len() * 2);
    // What reaches the browser: a packet, nothing (DTX), or a packet lost on the way.
    let mut packets: Vec<Option<(Vec<u8>, bool)>> = Vec::new();
    for (i, frame) in input.chunks(FRAME_SAMPLES_8K).enumerate() {
        let mut pcm = [0i16; FRAME_SAMPLES_8K];
        pcm[..frame.len()].copy_from_slice(frame);
        codec.encode(&pcm, &mut law);
        codec.decode(&law, &mut trunk);
        if g711_only {
            output.extend(trunk.iter().flat_map(|s| s.to_le_bytes()));
            continue;
        }
        bridge.from_trunk(i as u32 * FRAME_SAMPLES_8K as u32, &trunk);
        packets.push(bridge.to_browser().map(|p| (p.to_vec(), lost())));
    }
    for i in 0..packets.len() {
        match (&packets[i], packets.get(i + 1)) {
            (Some((packet, false)), _) => decoder.decode(packet, &mut heard)?,
            (Some((_, true)), Some(Some((next, false)))) => decoder.recover(next, &mut heard)?,
            _ => decoder.conceal(&mut heard)?,
        };
        output.extend(heard.iter().flat_map(|s| s.to_le_bytes()));
    }
    std::fs::write(&args[2], output)?;
    Ok(())
}
