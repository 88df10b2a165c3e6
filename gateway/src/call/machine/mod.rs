//! The call as a sans-IO state machine: the whole life of one call, outbound (browser →
//! trunk) and inbound (trunk → browser): routing, ringing and early media, the answer,
//! hold as an offer/answer exchange, hang-up from either side, CANCEL races, the ring,
//! connect and ACK timeouts, and the end reason. It takes SIP messages, the caller's
//! commands and `now`, and yields [`Transmit`]s for the SIP endpoint and [`CallEvent`]s for
//! the signaling side, the media and the plugins. The driver in [`super::driver`] does the
//! I/O; every transition is tested here in virtual time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsip::{Method, Request};

use crate::plugin::Direction as CallDirection;
use crate::sip::Transmit;
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::SipLocal;
use crate::sip::extensions;
use crate::sip::message::{self, response_to};
use crate::sip::sdp::{self, LocalMedia};
use crate::sip::transaction::{ClientEvent, Timers};
use crate::sip::transport::Target;
use crate::sip::trunks::{ChannelGuard, Trunks};
use crate::sip::uac::{CallFailure, CallRequest, Candidate, Uac};

mod in_dialog;
mod inbound;
mod io;
mod media_watch;
mod session;
mod transfer;
mod trunk_leg;

pub use inbound::InboundInvite;
pub use io::{CallCommand, CallEvent, Refusal};
pub use media_watch::MediaLeg;
pub use session::inbound_session;

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Outbound: the plugins and the trunk table are being asked where it goes.
    Routing,
    /// Outbound: INVITE sent, nothing back yet.
    Dialing,
    /// Outbound: 180 received. Inbound: the browser was offered the call and rings.
    Ringing,
    /// Outbound: 183 with SDP: the browser hears the trunk's early media.
    EarlyMedia,
    /// Both legs are up.
    Answered,
    /// Over (the trunk leg may still be finishing its BYE or CANCEL).
    Ended,
}

/// Settings every call takes from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct CallSettings {
    /// How long a call may ring before it is given up (`no_answer`).
    pub ring_timeout: Duration,
    /// How long the browser's ICE and DTLS may take.
    pub connect_timeout: Duration,
    /// SIP timers (64·T1 bounds the ACK wait and a CANCEL's completion).
    pub timers: Timers,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            ring_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(15),
            timers: Timers::default(),
        }
    }
}

/// Where an outbound call goes, once the plugins and the trunk table have said.
#[derive(Debug)]
pub struct Route {
    /// The INVITE's contents.
    pub request: CallRequest,
    /// Addresses to try, in order.
    pub candidates: Vec<Candidate>,
    /// Our trunk-side media.
    pub local: LocalMedia,
}

/// The established trunk dialog.
#[derive(Debug)]
struct TrunkLeg {
    dialog: Dialog,
    target: Target,
    _channel: ChannelGuard,
}

/// Our re-INVITE waiting for its answer.
#[derive(Debug)]
struct Reinvite {
    tx: u64,
    seq: u32,
    hold: bool,
    /// A session refresh (RFC 4028) by re-INVITE, for a trunk that refused UPDATE: the
    /// direction stays as it is and the browser hears nothing of it.
    refresh: bool,
}

/// One call.
#[derive(Debug)]
pub struct Call {
    id: String,
    direction: CallDirection,
    settings: CallSettings,
    sip: SipLocal,
    trunks: Arc<Trunks>,
    phase: Phase,
    local: Option<LocalMedia>,
    sdp_version: u64,
    uac: Option<Uac>,
    leg: Option<TrunkLeg>,
    /// Inbound: the trunk's INVITE until it has its final response, and our To tag.
    invite: Option<(InboundInvite, String)>,
    /// In-dialog requests that arrived before the 2xx they race, replayed after it.
    early: Vec<(u64, Request, SocketAddr)>,
    ring_deadline: Option<Instant>,
    connect_deadline: Option<Instant>,
    ack_deadline: Option<Instant>,
    caller_connected: bool,
    held: bool,
    reinvite: Option<Reinvite>,
    /// The dialog the trunk ended while our re-INVITE waited: kept to ACK its 2xx.
    closed_leg: Option<(Dialog, Target)>,
    bye: Option<u64>,
    bye_after_ack: bool,
    trunk_used: Option<String>,
    sip_call_id: Option<String>,
    answered_at: Option<Instant>,
    /// Media inactivity (`media_timeout`): when each side last sent media, and when to look.
    media_watch: Option<media_watch::MediaWatch>,
    /// The trunk's direction from its last offer (a trunk holding us may send nothing).
    trunk_direction: sdp::Direction,
    /// The session timer (RFC 4028), once answered with one.
    session: Option<session::SessionTimer>,
    /// Inbound late offer: our 200 offered, and the trunk's answer comes in its ACK.
    answer_in_ack: bool,
    /// Our transfer (RFC 3515): the REFER's transaction until answered, then its implicit
    /// subscription until the final NOTIFY.
    refer: Option<transfer::Refer>,
    /// A transfer the trunk asked for: the new leg being placed.
    trunk_transfer: Option<transfer::TrunkTransfer>,
    /// The old leg's BYE after a trunk transfer, and its Call-ID to forget once answered.
    transfer_bye: Option<(u64, String)>,
    end: Option<(String, u16)>,
    failure: Option<CallFailure>,
    next_tx: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<CallEvent>,
}

/// The `ended.reason` for a failed INVITE.
pub fn failure_reason(code: u16) -> &'static str {
    match code {
        486 | 600 => "busy",
        408 | 480 => "no_answer",
        487 => "hangup",
        404 | 484 | 604 => "not_found",
        500..=599 => "trunk_unavailable",
        _ => "rejected",
    }
}

impl Call {
    fn new(
        id: &str,
        direction: CallDirection,
        settings: CallSettings,
        sip: SipLocal,
        trunks: Arc<Trunks>,
    ) -> Call {
        Call {
            id: id.to_string(),
            direction,
            settings,
            sip,
            trunks,
            phase: Phase::Routing,
            local: None,
            sdp_version: 1,
            uac: None,
            leg: None,
            invite: None,
            early: Vec::new(),
            ring_deadline: None,
            connect_deadline: None,
            ack_deadline: None,
            caller_connected: false,
            held: false,
            reinvite: None,
            closed_leg: None,
            bye: None,
            bye_after_ack: false,
            trunk_used: None,
            sip_call_id: None,
            answered_at: None,
            media_watch: None,
            trunk_direction: sdp::Direction::SendRecv,
            session: None,
            answer_in_ack: false,
            refer: None,
            trunk_transfer: None,
            transfer_bye: None,
            end: None,
            failure: None,
            next_tx: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A call from the browser to a trunk, waiting for its route. `connect_deadline`
    /// starts now: the browser already has our answer and is connecting.
    pub fn outbound(
        id: &str,
        settings: CallSettings,
        sip: SipLocal,
        trunks: Arc<Trunks>,
        now: Instant,
    ) -> Call {
        let mut call = Call::new(id, CallDirection::Outbound, settings, sip, trunks);
        call.connect_deadline = Some(now + settings.connect_timeout);
        call
    }

    /// The gateway's id for the call.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The trunk table the call places its INVITEs with.
    pub fn trunks(&self) -> &Arc<Trunks> {
        &self.trunks
    }

    /// Outbound or inbound.
    pub fn direction(&self) -> CallDirection {
        self.direction
    }

    /// Where the call stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When both legs came up.
    pub fn answered_at(&self) -> Option<Instant> {
        self.answered_at
    }

    /// The end reason and SIP status, once ended.
    pub fn end(&self) -> Option<&(String, u16)> {
        self.end.as_ref()
    }

    /// Why the trunk did not connect, when it did not.
    pub fn failure(&self) -> Option<&CallFailure> {
        self.failure.as_ref()
    }

    /// The trunk used (the last one tried, or the one that answered).
    pub fn trunk_used(&self) -> Option<&str> {
        self.trunk_used.as_deref()
    }

    /// The trunk side's Call-ID.
    pub fn sip_call_id(&self) -> Option<&str> {
        self.sip_call_id.as_deref()
    }

    /// True while the trunk media must pause (hold).
    pub fn held(&self) -> bool {
        self.held
    }

    /// Inbound: true while the browser may still answer.
    pub fn is_offered(&self) -> bool {
        self.invite.is_some() && self.phase == Phase::Ringing
    }

    /// True once the call is over and nothing on the trunk is left to finish: the driver
    /// may stop.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Ended
            && self.uac.as_ref().is_none_or(|u| u.is_done())
            && self.bye.is_none()
            && self.reinvite.is_none()
            && !self.bye_after_ack
            && self.transmits.is_empty()
            && self.events.is_empty()
    }

    fn tx_id(&mut self) -> u64 {
        self.next_tx += 1;
        self.next_tx
    }

    /// Ends the call (once) and takes the trunk leg down as its state requires.
    fn finish(&mut self, reason: &str, code: u16, now: Instant) {
        if self.end.is_some() {
            return;
        }
        self.phase = Phase::Ended;
        self.end = Some((reason.to_string(), code));
        self.ring_deadline = None;
        self.connect_deadline = None;
        self.events.push_back(CallEvent::Ended {
            reason: reason.to_string(),
            sip_code: code,
        });
        if let Some(uac) = self.uac.as_mut() {
            uac.cancel(now, reason);
            self.pump_uac(now);
        }
        if let Some((invite, tag)) = self.invite.take() {
            // The browser never answered: the trunk's INVITE gets its final response. One the
            // trunk ended itself (BYE on the early dialog) gets 487 (RFC 3261 §15.1.2).
            let code = match reason {
                "no_answer" => 480,
                "remote_hangup" => 487,
                "internal_error" => 500,
                _ => 603,
            };
            self.transmits.push_back(Transmit::Respond {
                id: invite.id,
                response: response_to(&invite.request, code, Some(&tag)),
            });
            self.forget_dialog();
        }
        self.hang_up_leg();
    }

    fn forget_dialog(&mut self) {
        if let Some(id) = self.sip_call_id.clone() {
            self.transmits.push_back(Transmit::Forget(id));
        }
    }

    /// BYE on an established trunk leg; after the ACK when we still wait for it (§15).
    fn hang_up_leg(&mut self) {
        if self.leg.is_none() || self.bye.is_some() {
            return;
        }
        if self.ack_deadline.is_some() {
            self.bye_after_ack = true;
            return;
        }
        let tx = self.tx_id();
        let leg = self.leg.as_mut().expect("checked");
        let via = self.sip.via(leg.target.transport, &message::new_branch());
        let reason = self.end.as_ref().map_or("hangup", |(r, _)| r.as_str());
        let extra = vec![extensions::reason_header(reason)];
        let request = leg.dialog.request(Method::Bye, via, extra, vec![]);
        let target = leg.target.clone();
        self.bye = Some(tx);
        self.transmits.push_back(Transmit::Request {
            tx,
            request,
            target,
        });
    }

    /// The plugins and trunk table decided: place the call, or end it with `Err((reason,
    /// code))` (a plugin's refusal, no trunk, no media).
    pub fn handle_route(&mut self, route: Result<Route, (&str, u16)>, now: Instant) {
        if self.phase != Phase::Routing {
            return;
        }
        match route {
            Err((reason, code)) => self.finish(reason, code, now),
            Ok(route) => {
                self.phase = Phase::Dialing;
                self.ring_deadline = Some(now + self.settings.ring_timeout);
                self.local = Some(route.local);
                self.uac = Some(Uac::new(
                    self.sip.clone(),
                    self.trunks.clone(),
                    route.request,
                    route.candidates,
                    self.settings.timers,
                    now,
                ));
                self.pump_uac(now);
            }
        }
    }

    /// The response (or timeout) of one of the call's client transactions.
    pub fn handle_sip_response(&mut self, tx: u64, event: ClientEvent, now: Instant) {
        if let Some(uac) = self.uac.as_mut().filter(|u| u.owns(tx)) {
            uac.handle_response(tx, event, now);
            return self.pump_uac(now);
        }
        let code = match &event {
            ClientEvent::Response(r) => r.status_code.code(),
            ClientEvent::Timeout => 408,
        };
        if code < 200 {
            return;
        }
        if self.bye == Some(tx) {
            self.bye = None;
            self.forget_dialog();
            return;
        }
        if let Some((_, call_id)) = self.transfer_bye.take_if(|(t, _)| *t == tx) {
            self.transmits.push_back(Transmit::Forget(call_id));
            return;
        }
        if self.handle_refresh_answer(tx, &event, code, now) {
            return;
        }
        if self.handle_refer_answer(tx, code) {
            return;
        }
        if let Some(pending) = self.reinvite.take_if(|r| r.tx == tx) {
            self.on_reinvite_answer(pending, event, code, now);
        }
    }

    fn refuse(&mut self, kind: Refusal, message: String) {
        self.events.push_back(CallEvent::Refused { kind, message });
    }

    /// The browser's media connected (`true`) or failed for good (`false`).
    pub fn handle_caller_media(&mut self, connected: bool, now: Instant) {
        if connected {
            self.caller_connected = true;
            self.connect_deadline = None;
        } else {
            let code = if self.answered_at.is_some() { 200 } else { 487 };
            self.finish("media_failed", code, now);
        }
    }

    /// A command from the browser's side. `Answer` is the driver's (it needs the leg).
    pub fn handle_command(&mut self, command: CallCommand, now: Instant) {
        match command {
            CallCommand::Hangup => {
                let code = if self.answered_at.is_some() { 200 } else { 487 };
                self.finish("hangup", code, now);
            }
            CallCommand::Hold(hold) => self.hold(hold),
            CallCommand::Transfer(number) => self.transfer(&number),
            CallCommand::Dtmf(_) | CallCommand::Answer(_) | CallCommand::Renegotiate(_) => {}
        }
    }

    /// The gateway's drain deadline passed.
    pub fn handle_shutdown(&mut self, now: Instant) {
        let code = if self.answered_at.is_some() { 200 } else { 487 };
        self.finish("shutdown", code, now);
    }

    /// The call's task failed (a panic in the gateway, `call::driver`'s `fault`): the call
    /// ends as any other would, its trunk leg hung up (BYE, CANCEL, or 500 to the trunk's
    /// INVITE), so that a fault costs its caller the call and nobody a trunk channel.
    pub fn handle_fault(&mut self, now: Instant) {
        self.finish("internal_error", 500, now);
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.ring_deadline) {
            self.ring_deadline = None;
            tracing::info!(call_id = %self.id, "nobody answered within the ring timeout");
            let code = if self.direction == CallDirection::Inbound {
                480
            } else {
                408
            };
            self.finish("no_answer", code, now);
        }
        if due(self.connect_deadline) {
            self.connect_deadline = None;
            if !self.caller_connected {
                tracing::warn!(
                    call_id = %self.id,
                    timeout = ?self.settings.connect_timeout,
                    "the browser's media (ICE and DTLS) did not connect in time; ending the call"
                );
                self.handle_caller_media(false, now);
            }
        }
        if due(self.ack_deadline) {
            self.ack_deadline = None;
            tracing::warn!(call_id = %self.id, "the trunk never ACKed our 200; ending the call with BYE");
            self.bye_after_ack = false;
            self.finish("no_ack", 408, now);
            self.hang_up_leg();
        }
        if due(self.media_watch.map(|w| w.check_at)) {
            self.check_media(now);
        }
        if due(self.session_due()) {
            self.handle_session_timeout(now);
        }
        if let Some(uac) = self.uac.as_mut()
            && due(uac.poll_timeout())
        {
            uac.handle_timeout(now);
            self.pump_uac(now);
        }
    }

    /// When [`Self::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ring_deadline,
            self.connect_deadline,
            self.ack_deadline,
            self.media_watch.map(|w| w.check_at),
            self.session_due(),
            self.uac.as_ref().and_then(|u| u.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Next thing for the SIP endpoint.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the outside.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
