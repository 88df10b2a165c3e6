//! The browser leg's established audio, outside the `rtc` stack's pipeline of queues (see
//! [`BrowserLeg::handle_datagram`] and vendor/README.md): its SRTP unprotected in place with
//! the keys DTLS-SRTP agreed, the RTP and RFC 4733 events in it, the report blocks of the
//! browser's RTCP, and the Opus frames sent or relayed to it, protected the same way.

use bytes::{Bytes, BytesMut};

use super::{BrowserEvent, BrowserLeg, RtcError, stack};
use crate::media::opus::RTP_TICKS_PER_FRAME;
use crate::media::rtp::{HEADER_LEN, RtpPacket, write_header};
use crate::media::srtp::MAX_SRTP_TAG;

/// The capacity of a buffer for one protected RTP packet to the browser: an Opus frame of
/// the rates browsers use, its header and its tag fit (a larger one grows its buffer, which
/// is then not reused).
pub(super) const PACKET_BUFFER: usize = 256;

impl BrowserLeg {
    /// Authenticates and decrypts the browser's SRTP packet in place (RFC 3711 §3.3), and
    /// returns the plaintext's length; a forged, replayed or early one (before DTLS
    /// completed) is an error.
    pub(super) fn unprotect(&mut self, datagram: &mut [u8]) -> Result<usize, RtcError> {
        let contexts = self
            .pc
            .srtp_contexts()
            .ok_or_else(|| stack("SRTP before the DTLS handshake completed"))?;
        self.inbound_ssrcs
            .unprotect(contexts.inbound, datagram)
            .map_err(stack)
    }

    /// Audio or an RFC 4733 event packet from the browser, decrypted.
    pub(super) fn handle_rtp(&mut self, plain: Bytes) {
        let Ok(packet) = RtpPacket::parse(&plain) else {
            return;
        };
        let (pt, sequence) = (packet.payload_type, packet.sequence);
        if Some(pt) == self.dtmf_pt && self.last_event_sequence != Some(sequence) {
            self.last_event_sequence = Some(sequence);
            self.event_packets = self.event_packets.wrapping_add(1);
        }
        if pt == self.opus_pt {
            self.events.push_back(BrowserEvent::Opus {
                sequence: sequence.wrapping_sub(self.event_packets),
                timestamp: packet.timestamp,
                payload: plain.slice_ref(packet.payload),
            });
        } else if Some(pt) == self.dtmf_pt
            && let Some(digit) = self.dtmf.handle_packet(packet.timestamp, packet.payload)
        {
            self.events.push_back(BrowserEvent::Dtmf(digit));
        }
    }

    /// Picks the report blocks about our audio out of an RTCP compound packet: a browser
    /// that also sends audio puts them in its sender report, else in a receiver report
    /// (RFC 3550 §6.4).
    pub(super) fn receiver_reports(&mut self, packets: &[Box<dyn ::rtc::rtcp::Packet>]) {
        use ::rtc::rtcp::receiver_report::ReceiverReport;
        use ::rtc::rtcp::sender_report::SenderReport;
        for packet in packets {
            let any = packet.as_any();
            let blocks = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                &rr.reports
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                &sr.reports
            } else {
                continue;
            };
            for block in blocks.iter().filter(|b| b.ssrc == self.ssrc) {
                self.events.push_back(BrowserEvent::ReceiverReport {
                    fraction_lost: block.fraction_lost,
                });
            }
        }
    }

    /// Sends one 20 ms Opus frame to the browser. `marker` starts a talkspurt (after DTX).
    /// Protected here with the keys DTLS-SRTP agreed and sent to ICE's selected pair, like
    /// the stack would, without its pipeline (see [`Self::handle_datagram`]).
    pub fn send_opus(&mut self, payload: &[u8], marker: bool) -> Result<(), RtcError> {
        // Our frames between relayed ones: a relay after them starts anew from our clock.
        self.relay.restart();
        let timestamp = self.timestamp;
        self.timestamp = timestamp.wrapping_add(RTP_TICKS_PER_FRAME);
        self.send_packet(payload, marker, timestamp)
    }

    /// Relays an Opus packet from the trunk as it came (no transcoding), `ticks` long
    /// ([`crate::media::opus::relayable_ticks`]). It keeps the trunk's timing on our clock
    /// ([`crate::media::rtp::RelayClock`]): gaps the trunk left (DTX, loss) stay gaps, and
    /// the packet after one starts a talkspurt (RFC 3551 §4.1); a reordered packet keeps its
    /// place.
    pub fn relay_opus(
        &mut self,
        payload: &[u8],
        trunk_timestamp: u32,
        ticks: u32,
    ) -> Result<(), RtcError> {
        let placed = self
            .relay
            .place_frame(self.timestamp, trunk_timestamp, ticks);
        self.timestamp = placed.resume;
        self.send_packet(payload, placed.marker, placed.at)
    }

    /// Protects and queues one Opus packet at `timestamp`, with the next sequence number.
    fn send_packet(
        &mut self,
        payload: &[u8],
        marker: bool,
        timestamp: u32,
    ) -> Result<(), RtcError> {
        let sequence = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        let peer = self
            .media_to
            .ok_or_else(|| stack("no ICE pair selected yet: nowhere to send audio"))?;
        let contexts = self
            .pc
            .srtp_contexts()
            .ok_or_else(|| stack("no SRTP keys yet: the DTLS handshake has not completed"))?;
        let mut packet = self
            .spare
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(PACKET_BUFFER));
        packet.resize(HEADER_LEN, 0);
        write_header(
            &mut packet,
            marker,
            self.opus_pt,
            sequence,
            timestamp,
            self.ssrc,
        );
        packet.extend_from_slice(payload);
        let plain_len = packet.len();
        packet.resize(plain_len + MAX_SRTP_TAG, 0);
        let len = contexts
            .outbound
            .encrypt_rtp_in_place(&mut packet, plain_len)
            .map_err(stack)?;
        packet.truncate(len);
        self.outbox.push_back((packet, peer));
        Ok(())
    }

    /// Advances the outgoing clock by one frame without sending (DTX silence).
    pub fn skip_frame(&mut self) {
        self.relay.restart();
        self.timestamp = self.timestamp.wrapping_add(RTP_TICKS_PER_FRAME);
    }
}
