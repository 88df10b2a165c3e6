//! Gateway patch (see `vendor/README.md`): the established SRTP path of a peer connection,
//! for an application that protects and unprotects its RTP itself instead of passing every
//! packet through the handler pipeline. RTCP, DTLS and STUN still go through the pipeline,
//! which shares these contexts (SRTP and SRTCP keep separate state in a context, RFC 3711
//! §3.2.3, so both users can protect with them).

use std::net::SocketAddr;

use srtp::context::Context;

use super::RTCPeerConnection;

/// The SRTP contexts DTLS-SRTP keyed (RFC 5764 §4.2).
pub struct SrtpContexts<'a> {
    /// Protects what we send.
    pub outbound: &'a mut Context,
    /// Unprotects what the peer sends.
    pub inbound: &'a mut Context,
}

impl RTCPeerConnection {
    /// The SRTP contexts: `None` until the DTLS handshake has completed.
    pub fn srtp_contexts(&mut self) -> Option<SrtpContexts<'_>> {
        let srtp = &mut self.pipeline_context.srtp_handler_context;
        Some(SrtpContexts {
            outbound: srtp.local_srtp_context.as_mut()?,
            inbound: srtp.remote_srtp_context.as_mut()?,
        })
    }

    /// Where ICE sends media: the selected candidate pair's remote address, `None` before a
    /// pair is selected. It changes only while the connection handles an input (a datagram,
    /// a timeout, a description), so an application that sends media itself may keep it
    /// between those calls rather than look it up per packet.
    pub fn selected_remote(&self) -> Option<SocketAddr> {
        let (_, remote) = self
            .pipeline_context
            .ice_handler_context
            .ice_transport
            .agent
            .get_selected_candidate_pair()?;
        Some(remote.addr())
    }
}
