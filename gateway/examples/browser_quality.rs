//! Speech through the browser → trunk direction at one browser Opus setting, for the
//! listening-quality measurement in `scripts/opus_quality.py --browser` (PESQ): 48 kHz mono
//! PCM is coded as a browser codes it (`gateway_tests::browser_opus`: VoIP mode, complexity
//! 9, the band and bitrate a description's `maxplaybackrate` and `maxaveragebitrate` give),
//! decoded by the gateway's own decoder at 8 kHz, and coded G.711 for the trunk.
//!
//! usage: browser_quality <in.s16le at 48 kHz> <out.s16le at 8 kHz> <playback-hz> <bitrate>

use gateway::media::g711::G711;
use gateway::media::opus::{FRAME_SAMPLES_8K, OpusDecoder};
use gateway_tests::browser_opus::{BrowserOpus, FRAME_48K};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        return Err(
            "usage: browser_quality <in.s16le at 48 kHz> <out.s16le> <playback-hz> <bitrate>"
                .into(),
        );
    }
    let input: Vec<i16> = std::fs::read(&args[1])?
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let playback_hz: u32 = args[3].parse().map_err(|_| "playback-hz is a number")?;
    let bitrate: u32 = args[4].parse().map_err(|_| "bitrate is a number, b/s")?;
    let mut browser = BrowserOpus::coding_up_to(playback_hz, true, 0.0)?;
    browser.set_bitrate(bitrate)?;
    let mut decoder = OpusDecoder::new()?;
    let (mut packet, mut heard, mut law) = ([0u8; 1500], [0i16; FRAME_SAMPLES_8K], [0u8; 160]);
    let mut trunk = [0i16; FRAME_SAMPLES_8K];
    let mut output = Vec::with_capacity(input.len() / 3);
    for frame in input.chunks(FRAME_48K) {
        let mut pcm = [0i16; FRAME_48K];
        pcm[..frame.len()].copy_from_slice(frame);
        let n = browser.encode(&pcm, &mut packet)?;
        decoder.decode(&packet[..n], &mut heard)?;
        G711::Pcmu.encode(&heard, &mut law);
        G711::Pcmu.decode(&law, &mut trunk);
        output.extend(trunk.iter().flat_map(|s| s.to_le_bytes()));
    }
    std::fs::write(&args[2], output)?;
    Ok(())
}
