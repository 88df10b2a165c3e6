//! Speech through the trunk → browser direction of a G.711 call and of a G.722 call, both
//! heard by a browser decoding Opus at 16 kHz, for the HD-voice measurement in
//! `scripts/hd_quality.py` (PESQ in its wideband mode, P.862.2).
//!
//! usage: hd_quality <in.s16le> <out.s16le> <g711|g722>
//! - `g711`: the input is 8 kHz PCM: G.711 µ-law → the gateway's `Bridge` (jitter buffer,
//!   Opus at 8 kHz) → decoded at 16 kHz;
//! - `g722`: the input is 16 kHz PCM: G.722 at 64 kbit/s → the gateway's `WideBridge`
//!   (jitter buffer, Opus at 16 kHz) → decoded at 16 kHz.
//!
//! The output is 16 kHz mono PCM either way; frames the encoder left out (DTX) are silence.

use audiopus::coder::Decoder;
use audiopus::packet::Packet;
use audiopus::{Channels, MutSignals, SampleRate};
use gateway::media::bridge::Bridge;
use gateway::media::g711::G711;
use gateway::media::g722;
use gateway::media::opus::{EncoderSettings, FRAME_SAMPLES_8K};
use gateway::media::session::WIDE_FRAME_SAMPLES;
use gateway::media::wideband::WideBridge;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: hd_quality <in.s16le> <out.s16le> <g711|g722>".into());
    }
    let input: Vec<i16> = std::fs::read(&args[1])?
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let complexity = EncoderSettings::default().complexity;
    let mut packets: Vec<Option<Vec<u8>>> = Vec::new();
    match args[3].as_str() {
        "g711" => {
            let mut bridge = Bridge::new(EncoderSettings::default(), 40)?;
            let (mut law, mut trunk) = ([0u8; FRAME_SAMPLES_8K], [0i16; FRAME_SAMPLES_8K]);
            for (i, frame) in input.chunks(FRAME_SAMPLES_8K).enumerate() {
                let mut pcm = [0i16; FRAME_SAMPLES_8K];
                pcm[..frame.len()].copy_from_slice(frame);
                G711::Pcmu.encode(&pcm, &mut law);
                G711::Pcmu.decode(&law, &mut trunk);
                bridge.from_trunk(i as u32 * 160, &trunk);
                packets.push(bridge.to_browser().map(<[u8]>::to_vec));
            }
        }
        "g722" => {
            let mut bridge = WideBridge::new(complexity, 40)?;
            let (mut enc, mut dec) = (g722::Encoder::new(), g722::Decoder::new());
            let (mut codes, mut trunk) = ([0u8; WIDE_FRAME_SAMPLES], [0i16; WIDE_FRAME_SAMPLES]);
            for (i, frame) in input.chunks(WIDE_FRAME_SAMPLES).enumerate() {
                let mut pcm = [0i16; WIDE_FRAME_SAMPLES];
                pcm[..frame.len()].copy_from_slice(frame);
                let n = enc.encode(&pcm, &mut codes);
                dec.decode(&codes[..n], &mut trunk);
                // RFC 3551 §4.5.2: 160 RTP ticks per 20 ms.
                bridge.from_trunk(i as u32 * 160, &trunk);
                packets.push(bridge.to_browser().map(<[u8]>::to_vec));
            }
        }
        other => return Err(format!("`{other}`: the path is g711 or g722").into()),
    }
    let mut decoder = Decoder::new(SampleRate::Hz16000, Channels::Mono)?;
    let mut heard = [0i16; WIDE_FRAME_SAMPLES];
    let mut output = Vec::new();
    for packet in packets {
        heard.fill(0);
        if let Some(p) = packet {
            let signals = MutSignals::try_from(&mut heard[..])?;
            decoder.decode(Some(Packet::try_from(&p[..])?), signals, false)?;
        }
        output.extend(heard.iter().flat_map(|s| s.to_le_bytes()));
    }
    std::fs::write(&args[2], output)?;
    Ok(())
}
