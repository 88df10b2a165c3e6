//! An inbound call's first moments: the trunk's INVITE rings the browser (180), and the
//! browser's answer becomes our 200, after which the ACK is awaited (§13.3.1.4).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rsip::prelude::*;
use rsip::{Header, Method, Request};

use super::{Call, CallEvent, CallSettings, Phase, TrunkLeg};
use crate::media::session::RtpSource;
use crate::plugin::Direction as CallDirection;
use crate::sip::Transmit;
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::SipLocal;
use crate::sip::extensions;
use crate::sip::message::{self, response_to};
use crate::sip::sdp::{self, LocalMedia, RemoteMedia};
use crate::sip::transport::{Target, Transport};
use crate::sip::trunks::{ChannelGuard, Trunks};

/// An INVITE from a trunk, as the call received it.
#[derive(Debug)]
pub struct InboundInvite {
    /// The id to answer it with.
    pub id: u64,
    /// The request.
    pub request: Request,
    /// Where it came from.
    pub source: SocketAddr,
    /// Over which transport.
    pub transport: Transport,
    /// The trunk it came from.
    pub trunk: String,
    /// Where that trunk's RTP may come from.
    pub rtp_source: RtpSource,
    /// The trunk channel the call holds.
    pub channel: ChannelGuard,
    /// The INVITE's offer, parsed; `None` for a late offer (no SDP: our 200 offers and the
    /// ACK answers).
    pub remote: Option<RemoteMedia>,
    /// Our trunk-side media.
    pub local: LocalMedia,
    /// The session timer (RFC 4028) our 200 sets: interval, seconds (0: none), and whether
    /// the trunk refreshes ([`super::inbound_session`]).
    pub session: (u32, bool),
}

impl Call {
    /// A call from a trunk, offered to a browser: the trunk hears 180 until the browser
    /// answers, the ring timeout passes, or either side gives up.
    pub fn inbound(
        id: &str,
        settings: CallSettings,
        sip: SipLocal,
        trunks: Arc<Trunks>,
        invite: InboundInvite,
        now: Instant,
    ) -> Call {
        let mut call = Call::new(id, CallDirection::Inbound, settings, sip, trunks);
        let tag = message::random_token();
        call.phase = Phase::Ringing;
        call.ring_deadline = Some(now + settings.ring_timeout);
        call.trunk_used = Some(invite.trunk.clone());
        call.sip_call_id = message::call_id(&invite.request);
        call.local = Some(invite.local.clone());
        if let Some(id) = &call.sip_call_id {
            call.transmits.push_back(Transmit::Listen(id.clone()));
        }
        call.events.push_back(CallEvent::TrunkSource {
            policy: invite.rtp_source,
            ip: invite.source.ip(),
        });
        if let Some(remote) = invite.remote {
            call.events.push_back(CallEvent::TrunkMedia(remote));
        }
        // The 180 makes an early dialog, so it names our target (§12.1.1): the trunk's BYE or
        // UPDATE in it comes here, or to the node that rings the browser.
        let mut ringing = response_to(&invite.request, 180, Some(&tag));
        ringing.headers.push(call.contact(&invite));
        call.transmits.push_back(Transmit::Respond {
            id: invite.id,
            response: ringing,
        });
        call.invite = Some((invite, tag));
        call
    }

    /// Our Contact for the dialog `invite` makes.
    fn contact(&self, invite: &InboundInvite) -> Header {
        let sips = crate::sip::dialog::is_sips(&invite.request.uri);
        let uri = self.sip.dialog_contact_uri("gw", invite.transport, sips);
        Header::Contact(rsip::headers::Contact::new(format!("<{uri}>")))
    }

    /// Inbound, before the browser answered. The trunk may give up by CANCEL, or by BYE on
    /// the early dialog our 180 made (RFC 3261 §15: a caller may end an early dialog so; the
    /// INVITE then gets 487, §15.1.2). An UPDATE with an offer is refused with 500 and a
    /// Retry-After of up to ten seconds (RFC 3311 §5.2: the INVITE's offer is not answered
    /// yet, and the browser's answer is what answers it); retried once the browser answered,
    /// it is taken as any mid-call UPDATE. One without, and OPTIONS, get 200; an INFO's digit
    /// reaches the browser as in a call. A re-INVITE gets 491 (§14.1: the first INVITE's
    /// transaction is still open), a PRACK 481 (no reliable 18x of ours awaits one, RFC 3262
    /// §3), and the rest 405 as in a call. Only the host that sent the INVITE may act in its
    /// early dialog, as in a confirmed one.
    pub(super) fn while_offered(
        &mut self,
        id: u64,
        request: Request,
        source: SocketAddr,
        now: Instant,
    ) {
        let respond = |this: &mut Call, response| {
            this.transmits.push_back(Transmit::Respond { id, response });
        };
        let in_dialog = !matches!(
            request.method,
            Method::Cancel | Method::Ack | Method::Invite
        );
        match request.method {
            // The endpoint has answered the CANCEL and sent 487 (§9.2).
            Method::Cancel => {
                self.invite = None;
                self.forget_dialog();
                self.finish("remote_hangup", 487, now);
            }
            Method::Ack => {}
            _ if in_dialog && !self.names_early_dialog(&request) => {
                respond(self, response_to(&request, 481, None));
            }
            _ if in_dialog
                && self
                    .invite
                    .as_ref()
                    .is_some_and(|(invite, _)| invite.source.ip() != source.ip()) =>
            {
                tracing::warn!(source = %source.ip(), %request.method, "early-dialog request from an address that is not the INVITE's refused");
                respond(self, response_to(&request, 403, None));
            }
            Method::Bye => {
                respond(self, response_to(&request, 200, None));
                self.finish("remote_hangup", 487, now);
            }
            Method::Update if !request.body.is_empty() => {
                let mut response = response_to(&request, 500, None);
                let wait = rand::random_range(0..=10u32);
                response
                    .headers
                    .push(Header::Other("Retry-After".into(), wait.to_string()));
                respond(self, response);
            }
            Method::Update | Method::Options => {
                let mut response = response_to(&request, 200, None);
                if let Some((invite, _)) = &self.invite {
                    // A 2xx to UPDATE names our target (RFC 3311 §5.2).
                    response.headers.push(self.contact(invite));
                }
                response.headers.push(message::allow_header());
                respond(self, response);
            }
            Method::Info => {
                let code = self.take_info(&request);
                respond(self, response_to(&request, code, None));
            }
            Method::PRack => respond(self, response_to(&request, 481, None)),
            Method::Invite => {
                let response = response_to(&request, 491, Some(&message::random_token()));
                respond(self, response);
            }
            _ => {
                let mut response = response_to(&request, 405, None);
                response.headers.push(message::allow_header());
                respond(self, response);
            }
        }
    }

    /// Whether `request` is in the early dialog our 180 made: the trunk's tag as its INVITE
    /// gave it, ours as the 180 did (§12.2.2).
    fn names_early_dialog(&self, request: &Request) -> bool {
        let Some((invite, tag)) = &self.invite else {
            return false;
        };
        let from = message::from_tag(request);
        from.is_some()
            && from == message::from_tag(&invite.request)
            && message::to_tag(request).as_deref() == Some(tag.as_str())
    }

    /// The browser accepted an inbound call (its answer already applied to its leg): the
    /// trunk gets 200 with our SDP, and the call waits for the ACK.
    pub fn handle_caller_answered(&mut self, now: Instant) {
        let Some((invite, tag)) = self.invite.take() else {
            return;
        };
        let Some(dialog) = Dialog::from_uas(&invite.request, &tag) else {
            let response = response_to(&invite.request, 400, Some(&tag));
            self.transmits.push_back(Transmit::Respond {
                id: invite.id,
                response,
            });
            self.forget_dialog();
            return self.finish("rejected", 400, now);
        };
        let mut ok = response_to(&invite.request, 200, Some(&tag));
        ok.headers.push(self.contact(&invite));
        ok.headers
            .push(Header::ContentType(rsip::headers::ContentType::new(
                "application/sdp",
            )));
        ok.headers.push(message::allow_header());
        ok.headers.push(extensions::supported_header());
        ok.body = match &invite.remote {
            Some(remote) => sdp::answer(&invite.local, 1, remote),
            None => {
                self.answer_in_ack = true;
                sdp::offer(&invite.local, 1, sdp::Direction::SendRecv)
            }
        }
        .into_bytes();
        let (interval, trunk_refreshes) = invite.session;
        if interval > 0 {
            // §9: the UAS names the refresher; the INVITE's sender is its UAC.
            let refresher = if trunk_refreshes {
                extensions::Refresher::Uac
            } else {
                extensions::Refresher::Uas
            };
            ok.headers.push(extensions::session_expires_header(
                interval,
                Some(refresher),
            ));
            if trunk_refreshes {
                ok.headers
                    .push(Header::Other("Require".into(), "timer".into()));
            }
        }
        self.transmits.push_back(Transmit::Respond {
            id: invite.id,
            response: ok,
        });
        self.leg = Some(TrunkLeg {
            dialog,
            target: Target {
                addr: invite.source,
                transport: invite.transport,
                host: invite.source.ip().to_string(),
                tls: None,
            },
            _channel: invite.channel,
        });
        self.ring_deadline = None;
        // §13.3.1.4: the 2xx is retransmitted until the ACK; a UAS that gets none within
        // 64·T1 ends the dialog with BYE.
        self.ack_deadline = Some(now + 64 * self.settings.timers.t1);
        self.connect_deadline = Some(now + self.settings.connect_timeout);
        self.phase = Phase::Answered;
        self.answered_at = Some(now);
        self.watch_media(now);
        self.start_session(interval, !trunk_refreshes, now);
        self.events.push_back(CallEvent::Answered);
    }
}
