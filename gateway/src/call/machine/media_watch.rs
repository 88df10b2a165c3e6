//! Media inactivity (`media_timeout`): an answered call whose trunk sends no RTP, or whose
//! browser sends nothing, for the trunk's timeout ends with BYE. Packets only note their
//! time; the check runs on its own timer, and not while the call is held or transferred.

use std::time::{Duration, Instant};

use super::{Call, Phase};
use crate::sip::sdp;

/// The side a call's media came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaLeg {
    /// RTP from the trunk (accepted: from the source the signalling named).
    Trunk,
    /// Anything from the browser's ICE-validated address (SRTP, RTCP, STUN consent).
    Browser,
}

/// The media inactivity check of an answered call.
#[derive(Debug, Clone, Copy)]
pub(super) struct MediaWatch {
    pub(super) timeout: Duration,
    pub(super) last_trunk: Instant,
    pub(super) last_browser: Instant,
    pub(super) check_at: Instant,
}

impl Call {
    /// Media arrived from `leg` (accepted, from the address its signalling names). Cheap:
    /// it only notes the time; the check runs on its own timer.
    pub fn handle_media_received(&mut self, leg: MediaLeg, now: Instant) {
        if let Some(w) = self.media_watch.as_mut() {
            match leg {
                // The latest: a datagram read late may have arrived before one seen already.
                MediaLeg::Trunk => w.last_trunk = w.last_trunk.max(now),
                MediaLeg::Browser => w.last_browser = w.last_browser.max(now),
            }
        }
    }

    /// Starts the media inactivity check on an answered call, per its trunk's
    /// `media_timeout` (0: none).
    pub(super) fn watch_media(&mut self, now: Instant) {
        let timeout = self
            .trunk_used
            .as_ref()
            .and_then(|t| self.trunks.config(t))
            .map_or(Duration::ZERO, |c| c.media_timeout);
        self.media_watch = (!timeout.is_zero()).then_some(MediaWatch {
            timeout,
            last_trunk: now,
            last_browser: now,
            check_at: now + timeout,
        });
    }

    /// The media check's turn: a side silent for the whole timeout ends the call with BYE
    /// (`media_timeout`), unless the call is held either way (a held side may send nothing).
    pub(super) fn check_media(&mut self, now: Instant) {
        let Some(w) = self.media_watch.as_mut() else {
            return;
        };
        if self.phase != Phase::Answered {
            self.media_watch = None;
            return;
        }
        if self.held
            || self.trunk_direction != sdp::Direction::SendRecv
            || self.trunk_transfer.is_some()
        {
            w.last_trunk = now;
            w.last_browser = now;
        }
        let silent = [("trunk", w.last_trunk), ("browser", w.last_browser)]
            .into_iter()
            .find(|(_, last)| now.saturating_duration_since(*last) >= w.timeout);
        match silent {
            Some((side, _)) => {
                tracing::info!(call_id = %self.id, side, timeout_s = w.timeout.as_secs(), "no media; ending the call");
                self.media_watch = None;
                self.finish("media_timeout", 408, now);
            }
            None => w.check_at = w.last_trunk.min(w.last_browser) + w.timeout,
        }
    }
}
