//! One signaling connection's calls: their commands, their events, and the resume token
//! each was given. When the connection goes away without `hangup`, its calls are parked for
//! `[http] resume_seconds` ([`crate::call::ParkedCalls`]) instead of ending.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::call::{CallCommand, EventSink, ParkedCall, ParkedCalls};

struct ConnectionCall {
    commands: mpsc::UnboundedSender<CallCommand>,
    events: EventSink,
    token: String,
}

/// The calls a connection owns.
#[derive(Default)]
pub(super) struct ConnectionCalls(HashMap<String, ConnectionCall>);

impl ConnectionCalls {
    /// Adds a call; returns its resume token (128 random bits).
    pub(super) fn insert(
        &mut self,
        call_id: String,
        commands: mpsc::UnboundedSender<CallCommand>,
        events: EventSink,
    ) -> String {
        let token = format!(
            "{}{}",
            crate::sip::message::random_token(),
            crate::sip::message::random_token()
        );
        self.adopt(call_id, commands, events, token.clone());
        token
    }

    /// Adds a call resumed from another connection, keeping its token.
    pub(super) fn adopt(
        &mut self,
        call_id: String,
        commands: mpsc::UnboundedSender<CallCommand>,
        events: EventSink,
        token: String,
    ) {
        self.0.insert(
            call_id,
            ConnectionCall {
                commands,
                events,
                token,
            },
        );
    }

    /// The call's commands.
    pub(super) fn get(&self, call_id: &str) -> Option<&mpsc::UnboundedSender<CallCommand>> {
        self.0.get(call_id).map(|c| &c.commands)
    }

    /// Hands the call a command, or gives the `no_such_call` error to send back.
    pub(super) fn command(
        &self,
        call_id: &str,
        command: CallCommand,
    ) -> Result<(), Box<super::ServerMessage>> {
        match self.get(call_id) {
            Some(tx) => {
                let _ = tx.send(command);
                Ok(())
            }
            None => Err(Box::new(super::error(
                super::ErrorCode::NoSuchCall,
                format!("no call `{call_id}` on this connection"),
                Some(call_id),
            ))),
        }
    }

    /// The call's resume token.
    pub(super) fn token(&self, call_id: &str) -> Option<&str> {
        self.0.get(call_id).map(|c| c.token.as_str())
    }

    /// Takes the call off the connection; returns its commands.
    pub(super) fn remove(&mut self, call_id: &str) -> Option<mpsc::UnboundedSender<CallCommand>> {
        self.0.remove(call_id).map(|c| c.commands)
    }

    /// Forgets calls that ended.
    pub(super) fn retain_live(&mut self) {
        self.0.retain(|_, c| !c.commands.is_closed());
    }

    /// Calls still running.
    pub(super) fn live(&self) -> usize {
        self.0.values().filter(|c| !c.commands.is_closed()).count()
    }

    /// The connection went away: each running call waits `wait` for its client to resume
    /// it, or, with no wait, ends (BYE after answer, CANCEL before).
    pub(super) fn close(self, parked: &std::sync::Arc<ParkedCalls>, wait: Duration) {
        for (call_id, call) in self.0 {
            if call.commands.is_closed() {
                continue;
            }
            if wait.is_zero() {
                let _ = call.commands.send(CallCommand::Hangup);
                continue;
            }
            parked.park(
                call_id,
                ParkedCall {
                    token: call.token,
                    commands: call.commands,
                    events: call.events,
                },
                wait,
            );
        }
    }
}
