//! One signaling connection's calls: their commands, their events, and the resume token
//! each was given. When the connection goes away without `hangup`, its calls are parked for
//! `[http] resume_seconds` ([`crate::call::ParkedCalls`]) instead of ending.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::call::{CallCommand, CommandSender, EventSink, ParkedCall, ParkedCalls};

struct ConnectionCall {
    commands: CommandSender,
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
        commands: CommandSender,
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
        commands: CommandSender,
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

    /// True if the connection owns the call.
    pub(super) fn contains(&self, call_id: &str) -> bool {
        self.0.contains_key(call_id)
    }

    /// Hands the call a command, or gives the error to send back: `no_such_call`, or
    /// `limit_reached` while [`crate::call::COMMAND_QUEUE`] commands wait already.
    pub(super) fn command(
        &self,
        call_id: &str,
        command: CallCommand,
    ) -> Result<(), Box<super::ServerMessage>> {
        let Some(call) = self.0.get(call_id) else {
            return Err(Box::new(super::no_such_call(call_id)));
        };
        match call.commands.try_send(command) {
            // A call that ended meanwhile: its `ended` event is on its way.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Box::new(super::error(
                super::ErrorCode::LimitReached,
                format!(
                    "call `{call_id}` has {} commands waiting; wait for their events before sending more",
                    crate::call::COMMAND_QUEUE
                ),
                Some(call_id),
            ))),
        }
    }

    /// The call's resume token.
    pub(super) fn token(&self, call_id: &str) -> Option<&str> {
        self.0.get(call_id).map(|c| c.token.as_str())
    }

    /// Takes the call off the connection; returns its commands.
    pub(super) fn remove(&mut self, call_id: &str) -> Option<CommandSender> {
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
                // With its queue full the call still ends: the sender is dropped here.
                let _ = call.commands.try_send(CallCommand::Hangup);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::COMMAND_QUEUE;
    use crate::signal::{ErrorCode, ServerMessage};

    #[tokio::test]
    async fn a_call_whose_queue_is_full_refuses_more_commands_but_still_hangs_up() {
        let mut calls = ConnectionCalls::default();
        let (commands, mut rx) = crate::call::command_channel();
        let (events, _events) = mpsc::unbounded_channel();
        calls.insert("c-1".into(), commands, EventSink::new(events));
        for _ in 0..COMMAND_QUEUE {
            assert!(calls.command("c-1", CallCommand::Hold(true)).is_ok());
        }
        match calls
            .command("c-1", CallCommand::Hold(false))
            .map_err(|e| *e)
        {
            Err(ServerMessage::Error { code, message, .. }) => {
                assert_eq!(code, ErrorCode::LimitReached);
                assert!(message.contains("commands waiting"), "{message}");
            }
            other => panic!("a full queue is refused, not {other:?}"),
        }
        // The client hangs up: no room for `hangup`, but dropping the sender ends the call
        // after what waits.
        let tx = calls.remove("c-1").unwrap();
        let _ = tx.try_send(CallCommand::Hangup);
        drop(tx);
        let mut waiting = 0;
        while let Some(command) = rx.recv().await {
            assert!(matches!(command, CallCommand::Hold(true)));
            waiting += 1;
        }
        assert_eq!(
            waiting, COMMAND_QUEUE,
            "then the end: the driver reads it as hangup"
        );
    }
}
