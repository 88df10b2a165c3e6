//! Calls whose signaling connection went away without a `hangup`: they keep running (media
//! does not need the WebSocket) for `[http] resume_seconds`, holding their events, until the
//! client comes back with the call's resume token on a new connection, or the time is up
//! and they end as a hang-up would.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::machine::{CallCommand, CallEvent};

/// One call event for a signaling connection, `(gateway call id, event)`. Boxed: tokio's
/// channel allocates its slots 32 at a time and up front, so at 152 bytes an unboxed event
/// made each connection's queue 4.9 KB before its first event (heaptrack,
/// docs/benchmarks-history.md §2).
pub type ConnectionEvent = Box<(String, CallEvent)>;

/// A signaling connection's call events.
pub type ConnectionEvents = mpsc::UnboundedSender<ConnectionEvent>;

/// Events one parked call holds for its client; beyond, the oldest are dropped (the end of
/// the call, last, always stays).
const HELD_EVENTS: usize = 64;

enum SinkState {
    Live(ConnectionEvents),
    Held(VecDeque<(String, CallEvent)>),
}

/// Where one call's events go: the connection that owns the call, or, while the call waits
/// to be resumed, a short queue handed to the connection that resumes it.
#[derive(Clone)]
pub struct EventSink(Arc<Mutex<Sink>>);

struct Sink {
    to: SinkState,
    /// Some event has passed (or been held).
    passed_any: bool,
    /// The call's end ([`CallEvent::Ended`]) has passed.
    ended: bool,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl EventSink {
    /// A sink feeding `events`.
    pub fn new(events: ConnectionEvents) -> EventSink {
        EventSink(Arc::new(Mutex::new(Sink {
            to: SinkState::Live(events),
            passed_any: false,
            ended: false,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the call's end has been passed on (or held).
    pub fn has_ended(&self) -> bool {
        self.state().ended
    }

    /// Whether any of the call's events has been passed on (or held).
    pub fn has_passed_any(&self) -> bool {
        self.state().passed_any
    }

    /// Passes an event on, or holds it while the call is parked.
    pub fn send(&self, item: (String, CallEvent)) {
        let mut sink = self.state();
        sink.passed_any = true;
        sink.ended |= matches!(item.1, CallEvent::Ended { .. });
        match &mut sink.to {
            SinkState::Live(events) => {
                let _ = events.send(Box::new(item));
            }
            SinkState::Held(queue) => {
                if queue.len() == HELD_EVENTS {
                    queue.pop_front();
                }
                queue.push_back(item);
            }
        }
    }

    /// Holds events from now on (the connection is gone).
    pub fn hold(&self) {
        self.state().to = SinkState::Held(VecDeque::new());
    }

    /// Hands the held events to `events`, and every later one.
    pub fn attach(&self, events: ConnectionEvents) {
        let mut sink = self.state();
        if let SinkState::Held(queue) = &mut sink.to {
            for item in queue.drain(..) {
                let _ = events.send(Box::new(item));
            }
        }
        sink.to = SinkState::Live(events);
    }
}

/// A call waiting for its client.
pub struct ParkedCall {
    /// The secret the client got with the call.
    pub token: String,
    /// The call's commands.
    pub commands: super::CommandSender,
    /// The call's events, held meanwhile.
    pub events: EventSink,
}

/// Why a call could not be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// No call by that id waits (never was, resumed already, or its time ran out).
    #[error("no call `{0}` waits to be resumed (it ended, or its resume time ran out)")]
    NotParked(String),
    /// The token is not the call's.
    #[error("the resume token is not the one given with call `{0}`")]
    WrongToken(String),
}

/// The calls waiting for their clients, gateway-wide.
#[derive(Default)]
pub struct ParkedCalls(Mutex<HashMap<String, ParkedCall>>);

impl std::fmt::Debug for ParkedCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParkedCalls({})", self.lock().len())
    }
}

impl ParkedCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ParkedCall>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks `call` for `wait`; then, unless resumed, it is hung up.
    pub fn park(self: &Arc<Self>, call_id: String, call: ParkedCall, wait: Duration) {
        call.events.hold();
        let token = call.token.clone();
        self.lock().insert(call_id.clone(), call);
        let parked = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let mut calls = parked.lock();
            if calls.get(&call_id).is_some_and(|c| c.token == token) {
                let call = calls.remove(&call_id).expect("checked");
                tracing::info!(%call_id, "not resumed in time: hung up");
                let _ = call.commands.try_send(CallCommand::Hangup);
            }
        });
    }

    /// Takes the call back for the client holding its `token`. A wrong token leaves the call
    /// parked (its owner may still come).
    pub fn resume(&self, call_id: &str, token: &str) -> Result<ParkedCall, ResumeError> {
        let mut calls = self.lock();
        let call = calls
            .get(call_id)
            .ok_or_else(|| ResumeError::NotParked(call_id.into()))?;
        if !rtc::crypto::constant_time_eq(call.token.as_bytes(), token.as_bytes()) {
            return Err(ResumeError::WrongToken(call_id.into()));
        }
        if call.commands.is_closed() {
            calls.remove(call_id);
            return Err(ResumeError::NotParked(call_id.into()));
        }
        Ok(calls.remove(call_id).expect("checked"))
    }

    /// How many calls wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(token: &str) -> (ParkedCall, crate::call::CommandReceiver) {
        let (commands, rx) = crate::call::command_channel();
        let (events, _) = mpsc::unbounded_channel();
        let call = ParkedCall {
            token: token.into(),
            commands,
            events: EventSink::new(events),
        };
        (call, rx)
    }

    #[tokio::test]
    async fn a_call_resumes_with_its_token_only_and_ends_when_nobody_comes() {
        let calls = Arc::new(ParkedCalls::default());
        let (call, _rx) = parked("secret-1");
        calls.park("c-1".into(), call, Duration::from_secs(20));
        assert_eq!(
            calls.resume("c-1", "guess").err(),
            Some(ResumeError::WrongToken("c-1".into()))
        );
        assert!(calls.resume("c-1", "secret-1").is_ok());
        assert_eq!(
            calls.resume("c-1", "secret-1").err(),
            Some(ResumeError::NotParked("c-1".into())),
            "resumed once"
        );
        // Nobody comes for c-2: hung up once the time is up.
        let (call, mut rx) = parked("secret-2");
        calls.park("c-2".into(), call, Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(rx.try_recv().ok(), Some(CallCommand::Hangup));
        assert!(calls.is_empty());
    }

    #[test]
    fn held_events_reach_the_connection_that_resumes() {
        let (old, _old_rx) = mpsc::unbounded_channel();
        let sink = EventSink::new(old);
        sink.hold();
        for _ in 0..(HELD_EVENTS + 5) {
            sink.send(("c-1".into(), CallEvent::Ringing));
        }
        sink.send(("c-1".into(), CallEvent::Answered));
        let (new, mut rx) = mpsc::unbounded_channel();
        sink.attach(new);
        let mut got = Vec::new();
        while let Ok(item) = rx.try_recv() {
            got.push(item.1);
        }
        assert_eq!(got.len(), HELD_EVENTS, "bounded");
        assert_eq!(got.last(), Some(&CallEvent::Answered), "the newest kept");
        sink.send(("c-1".into(), CallEvent::Ringing));
        assert!(rx.try_recv().is_ok(), "live again");
    }
}
