//! Gateway patch (see `vendor/README.md`): the established SRTP path of a peer connection,
//! for an application that protects and unprotects its RTP itself instead of passing every
//! packet through the handler pipeline. RTCP, DTLS and STUN still go through the pipeline,
//! which shares these contexts (SRTP and SRTCP keep separate state in a context, RFC 3711
//! §3.2.3, so both users can protect with them).

use std::net::SocketAddr;

use srtp::context::Context;

use super::RTCPeerConnection;

/// The SRTP contexts DTLS-SRTP keyed (RFC 5764 §4.2) and the selected candidate pair.
pub struct SrtpPath<'a> {
    /// Protects what we send.
    pub outbound: &'a mut Context,
    /// Unprotects what the peer sends.
    pub inbound: &'a mut Context,
    /// Where ICE sends media: the selected pair's remote address.
    pub peer: SocketAddr,
}

impl RTCPeerConnection {
    /// The established SRTP path: `None` until the DTLS handshake has completed and ICE has
    /// selected a pair.
    pub fn srtp_path(&mut self) -> Option<SrtpPath<'_>> {
        let (_, remote) = self
            .pipeline_context
            .ice_handler_context
            .ice_transport
            .agent
            .get_selected_candidate_pair()?;
        let peer = remote.addr();
        let srtp = &mut self.pipeline_context.srtp_handler_context;
        Some(SrtpPath {
            outbound: srtp.local_srtp_context.as_mut()?,
            inbound: srtp.remote_srtp_context.as_mut()?,
            peer,
        })
    }
}
