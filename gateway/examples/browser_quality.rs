//! Speech through the browser → trunk direction at one browser Opus setting, for the
//! listening-quality measurement in `scripts/opus_quality.py --browser` (PESQ): 48 kHz mono
//! PCM is coded as a browser codes it (`gateway_tests::browser_opus`: VoIP mode, complexity
//! 9, the band and bitrate a description's `maxplaybackrate` and `maxaveragebitrate` give),
//! decoded by the gateway's own decoder at 8 kHz, and coded G.711 for the trunk; or, with
//! `g722`, decoded at 16 kHz as an HD-voice call's (`WideBridge`) and coded G.722.
//!
//! usage: browser_quality <in.s16le at 48 kHz> <out.s16le> <playback-hz> <bitrate> [g711|g722]
//! (the output is what the trunk decodes: 8 kHz PCM for G.711, 16 kHz for G.722)

use gateway::media::g711::G711;
use gateway::media::g722;
use gateway::media::opus::{EncoderSettings, FRAME_SAMPLES_8K, OpusDecoder};
use gateway::media::wideband::WideBridge;
use gateway_tests::browser_opus::{BrowserOpus, FRAME_48K};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if !(5..=6).contains(&args.len()) {
        return Err(
            "usage: browser_quality <in.s16le at 48 kHz> <out.s16le> <playback-hz> <bitrate> [g711|g722]"
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
    if args.get(5).map(String::as_str) == Some("g722") {
        return hd_voice(&input, &mut browser, &args[2]);
    }
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

/// The G.722 call's path: the gateway's wideband bridge decodes at 16 kHz, G.722 at 64 kb/s.
fn hd_voice(
    input: &[i16],
    browser: &mut BrowserOpus,
    out: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut bridge = WideBridge::new(EncoderSettings::default().complexity, 40)?;
    let (mut enc, mut dec) = (g722::Encoder::new(), g722::Decoder::new());
    let (mut codes, mut trunk) = ([0u8; FRAME_48K], [0i16; FRAME_48K]);
    let mut packet = [0u8; 1500];
    let mut output = Vec::with_capacity(input.len() / 3 * 2);
    for frame in input.chunks(FRAME_48K) {
        let mut pcm = [0i16; FRAME_48K];
        pcm[..frame.len()].copy_from_slice(frame);
        let n = browser.encode(&pcm, &mut packet)?;
        bridge.from_browser(&packet[..n], |wide| {
            let n = enc.encode(wide, &mut codes);
            let n = dec.decode(&codes[..n], &mut trunk);
            output.extend(trunk[..n].iter().flat_map(|s| s.to_le_bytes()));
        });
    }
    std::fs::write(out, output)?;
    Ok(())
}
