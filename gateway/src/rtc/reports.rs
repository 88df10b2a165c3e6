//! Lets the browser's RTCP sender and receiver reports through to the leg. The `rtc` stack
//! ends inbound RTCP inside its interceptor chain unless an interceptor marks a packet for
//! the application; the call needs the reports' "fraction lost" (RFC 3550 §6.4.1) to decide
//! how much in-band FEC the audio it sends needs.

use std::collections::VecDeque;
use std::time::Instant;

use ::rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use ::rtc::rtcp::receiver_report::ReceiverReport;
use ::rtc::rtcp::sender_report::SenderReport;
use ::rtc::sansio::Protocol;

/// Marks inbound compound RTCP that carries a report for delivery; everything else passes
/// unchanged.
#[derive(Default)]
pub struct DeliverReports {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

fn carries_report(packet: &Packet) -> bool {
    let Packet::Rtcp(packets) = packet else {
        return false;
    };
    packets.iter().any(|p| {
        let any = p.as_any();
        any.is::<ReceiverReport>() || any.is::<SenderReport>()
    })
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverReports {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = ::rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if carries_report(&msg.message.packet) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for DeliverReports {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
