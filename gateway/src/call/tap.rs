//! The call's audio for plugins that asked for it: what each side said, cut into the 20 ms
//! frames of the WIT `audio-frame`, both sides aligned to the call's own 20 ms clock.

use std::collections::VecDeque;

use crate::media::session::FRAME_SAMPLES;
use crate::plugin::AudioFrame;

/// Audio waiting for the next frame, per side; at most one second, the oldest dropped first
/// (a side that runs fast must not grow memory).
const MAX_BACKLOG: usize = 8000;

/// Collects each side's decoded audio until the next 20 ms tick.
#[derive(Debug, Default)]
pub struct AudioTap {
    browser: VecDeque<i16>,
    trunk: VecDeque<i16>,
}

fn push(buffer: &mut VecDeque<i16>, pcm: &[i16]) {
    buffer.extend(pcm.iter().copied());
    let excess = buffer.len().saturating_sub(MAX_BACKLOG);
    buffer.drain(..excess);
}

fn take(buffer: &mut VecDeque<i16>) -> Vec<i16> {
    // A side that sent nothing this tick (hold, loss, silence suppression) reads as silence.
    let mut frame: Vec<i16> = buffer.drain(..FRAME_SAMPLES.min(buffer.len())).collect();
    frame.resize(FRAME_SAMPLES, 0);
    frame
}

impl AudioTap {
    /// Audio the browser sent (decoded from Opus).
    pub fn browser(&mut self, pcm: &[i16]) {
        push(&mut self.browser, pcm);
    }

    /// Audio the trunk sent (decoded from G.711).
    pub fn trunk(&mut self, pcm: &[i16]) {
        push(&mut self.trunk, pcm);
    }

    /// The next 20 ms of both sides, the caller first.
    pub fn frame(&mut self, browser_is_caller: bool) -> AudioFrame {
        let (browser, trunk) = (take(&mut self.browser), take(&mut self.trunk));
        if browser_is_caller {
            AudioFrame {
                caller: browser,
                callee: trunk,
            }
        } else {
            AudioFrame {
                caller: trunk,
                callee: browser,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_align_both_sides_and_pad_silence() {
        let mut tap = AudioTap::default();
        tap.browser(&[1; 160]);
        tap.trunk(&[2; 100]);
        let f = tap.frame(true);
        assert_eq!((f.caller.len(), f.callee.len()), (160, 160));
        assert!(f.caller.iter().all(|s| *s == 1));
        assert_eq!((f.callee[99], f.callee[100]), (2, 0));
        let f = tap.frame(false);
        assert!(f.caller.iter().chain(&f.callee).all(|s| *s == 0));
    }

    #[test]
    fn a_fast_side_is_bounded() {
        let mut tap = AudioTap::default();
        for _ in 0..100 {
            tap.trunk(&[3; 160]);
        }
        assert_eq!(tap.trunk.len(), MAX_BACKLOG);
    }
}
