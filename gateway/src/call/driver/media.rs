//! The driver's media work per call: the 20 ms tick (audio to the browser, the tone, plugin
//! frames), trunk RTP arriving, and the browser leg's events (its Opus to the trunk).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Run;
use crate::call::caller::Caller;
use crate::call::machine::{Call, CallCommand, CallEvent, MediaLeg};
use crate::media::codec::Codec;
use crate::media::incoming;
use crate::media::session::{FRAME_SAMPLES, Received};
use crate::plugin::{Event, Party};
use crate::rtc::BrowserEvent;
use crate::rtc::mux::Datagram;

impl Run<'_> {
    /// Every 20 ms: audio to the caller, the tone to the trunk, plugins' audio frames.
    pub(super) fn tick(&mut self, call: &mut Call) {
        let answered = self.answered_at;
        if self.tapping
            && answered.is_some()
            && let Some(h) = self.hooks.as_mut()
        {
            h.audio(self.tap.frame(self.browser_party == Party::Caller));
        }
        let relaying = self.relaying();
        let trunk_ready = self.rtp.remote().is_some();
        let economy = self.wiring.metrics.load.level() >= crate::call::load::LoadLevel::Economy;
        let wideband = self.wideband();
        if let Caller::Browser(b) = &mut self.caller {
            if let Some(bridge) = b.bridge.made() {
                bridge.set_economy(economy);
            }
            if let Some(w) = b.wide.made_mut() {
                w.set_economy(economy);
            }
        }
        match &mut self.caller {
            // Relayed calls send the trunk's packets as they arrive, on its clock.
            Caller::Browser(_) if relaying => {}
            // Nothing from the trunk yet: silence, without encoding it.
            Caller::Browser(b) if !trunk_ready => {
                b.leg.skip_frame();
                b.talkspurt = true;
            }
            Caller::Browser(b) => {
                let packet = if wideband {
                    b.wide.get().and_then(|w| w.to_browser())
                } else {
                    b.bridge.get().and_then(|bridge| bridge.to_browser())
                };
                match packet {
                    Some(packet) if b.connected => {
                        let start = std::mem::take(&mut b.talkspurt);
                        if let Err(e) = b.leg.send_opus(packet, start) {
                            tracing::debug!(error = %e, "Opus to browser");
                        }
                    }
                    _ => {
                        b.leg.skip_frame();
                        b.talkspurt = true;
                    }
                }
            }
            Caller::Tone(t) => {
                // The tone caller is always there: its side never goes silent.
                call.handle_media_received(MediaLeg::Browser, Instant::now());
                let mut frame = [0i16; FRAME_SAMPLES];
                t.tone.fill(&mut frame);
                let before = self.rtp.stats.sent;
                let held = self
                    .rtp
                    .remote()
                    .is_some_and(|r| !r.direction.peer_receives());
                self.rtp.send_frame(&frame);
                if held && self.rtp.stats.sent == before {
                    t.frames_held += 1;
                }
                let Some(at) = answered else { return };
                let elapsed = at.elapsed().as_secs_f64();
                if t.dtmf_sent.is_empty() && !t.digits.is_empty() && elapsed >= 0.5 {
                    self.rtp.send_digits(&t.digits);
                    t.dtmf_sent = t.digits.clone();
                }
                // Let queued digits finish, but never more than 5 s past the requested length.
                let digits_pending = !self.rtp.digits_idle() && elapsed < t.seconds + 5.0;
                if elapsed >= t.seconds && !digits_pending {
                    call.handle_command(CallCommand::Hangup, Instant::now());
                }
            }
        }
    }

    /// Takes the datagrams waiting on the trunk's RTP socket: audio and digits to the caller.
    pub(super) fn read_trunk(&mut self, call: &mut Call) {
        incoming::with_scratch(|scratch| {
            let mut got = [incoming::Got::empty(); incoming::BATCH];
            loop {
                let bufs = &mut scratch.datagrams;
                let count = self.rtp.recv_waiting(bufs, &mut got).unwrap_or(0);
                for (buf, got) in bufs.iter_mut().zip(&got).take(count) {
                    let accepted = self.rtp.stats.received;
                    let pcm = &mut scratch.pcm;
                    let data = &mut buf[..got.len];
                    let heard = self.rtp.handle_received(data, got, pcm);
                    if self.rtp.stats.received != accepted {
                        call.handle_media_received(MediaLeg::Trunk, got.at);
                    }
                    self.trunk_audio(heard, data, pcm, call.held());
                }
                if count < incoming::BATCH {
                    break;
                }
            }
        })
    }

    /// A datagram from the browser, to its leg; true when the call opened a direct path for
    /// the browser's media with it.
    pub(super) fn browser_datagram(&mut self, call: &mut Call, (datagram, peer): Datagram) -> bool {
        let Caller::Browser(b) = &mut self.caller else {
            return false;
        };
        let now = Instant::now();
        if !b.leg.handle_datagram(datagram, peer, now) {
            self.wiring
                .metrics
                .media_drops
                .browser_source
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let opened = b.follow_media(now);
        call.handle_media_received(MediaLeg::Browser, now);
        opened
    }

    /// Takes the datagrams waiting on the browser's direct path (at the tick of a call on its
    /// worker's clock): audio to the trunk, the rest to the browser leg.
    pub(super) fn read_browser(&mut self, call: &mut Call) {
        while let Caller::Browser(b) = &mut self.caller
            && let Some((datagram, more)) = b.try_recv_direct()
        {
            self.browser_datagram(call, datagram);
            self.caller_events(call);
            if !more {
                break;
            }
        }
    }

    /// True while the trunk speaks G.722: the 16 kHz bridge transcodes.
    pub(super) fn wideband(&self) -> bool {
        self.rtp.remote().is_some_and(|r| r.codec == Codec::G722)
    }

    /// True while the trunk speaks Opus: the browser's packets are relayed, not transcoded.
    pub(super) fn relaying(&self) -> bool {
        self.rtp
            .remote()
            .is_some_and(|r| r.codec == crate::media::codec::Codec::Opus)
    }

    /// Trunk audio and digits, to the caller. `data` is the datagram (for relayed frames),
    /// `pcm` the decoded G.711 audio.
    pub(super) fn trunk_audio(&mut self, got: Received, data: &[u8], pcm: &[i16], held: bool) {
        match got {
            Received::Encoded {
                start,
                len,
                timestamp,
            } => {
                let payload = &data[start..start + len];
                let Some(ticks) = crate::media::opus::relayable_ticks(payload) else {
                    self.wiring
                        .metrics
                        .media_drops
                        .trunk_malformed
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if let Caller::Browser(b) = &mut self.caller
                    && b.connected
                    && !held
                {
                    match b.leg.relay_opus(payload, timestamp, ticks) {
                        Ok(()) => self.relayed += 1,
                        Err(e) => tracing::debug!(error = %e, "Opus relay to browser"),
                    }
                }
            }
            Received::Audio { samples, timestamp } => match &mut self.caller {
                // On hold the trunk's music is not ours to forward.
                Caller::Browser(_) if held => {}
                Caller::Browser(b) if samples == crate::media::session::WIDE_FRAME_SAMPLES => {
                    if let Some(w) = b.wide.get() {
                        w.from_trunk(timestamp, &pcm[..samples]);
                    }
                }
                Caller::Browser(b) => {
                    if let Some(bridge) = b.bridge.get() {
                        bridge.from_trunk(timestamp, &pcm[..samples]);
                    }
                    if self.tapping {
                        self.tap.trunk(&pcm[..samples]);
                    }
                }
                Caller::Tone(t) if self.answered_at.is_some() => t.answered.push(&pcm[..samples]),
                Caller::Tone(t) => t.early.push(&pcm[..samples]),
            },
            Received::Digit(d) => self.event(CallEvent::Dtmf(d)),
            Received::Nothing => {}
        }
    }

    /// The browser leg's events: media state, Opus to the trunk, in-band digits.
    pub(super) fn caller_events(&mut self, call: &mut Call) {
        let Caller::Browser(b) = &mut self.caller else {
            return;
        };
        let held = call.held();
        let relaying = self.rtp.remote().is_some_and(|r| r.codec == Codec::Opus);
        let wideband = self.rtp.remote().is_some_and(|r| r.codec == Codec::G722);
        // Until the trunk's SDP names its codec and address the browser's audio goes nowhere:
        // it is not decoded either (an Opus trunk may never need a decoder).
        let trunk_ready = self.rtp.remote().is_some();
        while let Some(event) = b.leg.poll_event() {
            match event {
                BrowserEvent::Connected => {
                    b.connected = true;
                    call.handle_caller_media(true, Instant::now());
                }
                // The call waits: a browser changing networks restarts ICE (`renegotiate`);
                // one that never does fails some 30 s later.
                BrowserEvent::Interrupted => tracing::info!(
                    call_id = %call.id(),
                    "nothing from the browser for 5 s; waiting for it or an ICE restart"
                ),
                BrowserEvent::Failed => {
                    // Also seen when a browser closes its connection after the call ended.
                    if call.end().is_none() {
                        tracing::warn!(call_id = %call.id(), "the browser's media failed (ICE or DTLS gave up); ending the call");
                    }
                    call.handle_caller_media(false, Instant::now())
                }
                BrowserEvent::Opus { .. } if !trunk_ready => {}
                BrowserEvent::Opus {
                    payload, timestamp, ..
                } if relaying => match crate::media::opus::relayable_ticks(&payload) {
                    None => {
                        self.wiring
                            .metrics
                            .media_drops
                            .browser_malformed
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) if held => {}
                    Some(ticks) => {
                        self.rtp.send_encoded(&payload, timestamp, ticks);
                        self.relayed += 1;
                    }
                },
                BrowserEvent::Opus { payload, .. } if wideband => {
                    let rtp = &mut self.rtp;
                    if let Some(w) = b.wide.get() {
                        w.from_browser(&payload, |pcm| {
                            if !held {
                                rtp.send_frame(pcm);
                            }
                        });
                    }
                }
                BrowserEvent::Opus {
                    sequence, payload, ..
                } => {
                    let (rtp, tap, tapping) = (&mut self.rtp, &mut self.tap, self.tapping);
                    // On hold the browser's audio is decoded (to keep the decoder's state)
                    // but not forwarded.
                    if let Some(bridge) = b.bridge.get() {
                        bridge.from_browser(sequence, &payload, |pcm| {
                            if !held {
                                rtp.send_frame(&pcm[..FRAME_SAMPLES]);
                                if tapping {
                                    tap.browser(&pcm[..FRAME_SAMPLES]);
                                }
                            }
                        });
                    }
                }
                BrowserEvent::Dtmf(d) => {
                    if let Some(h) = &self.hooks {
                        h.event(Event::Dtmf((self.browser_party, d.to_string())));
                    }
                    self.rtp.send_digits(&d.to_string());
                }
                BrowserEvent::ReceiverReport { fraction_lost } => {
                    b.bridge.handle_browser_report(fraction_lost)
                }
            }
        }
    }
}
