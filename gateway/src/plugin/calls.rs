//! One call's plugin instances, and the task that feeds them the call's events and audio in
//! order without ever making the call's media loop wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};
use wasmtime::Store;

use super::bindings;
use super::host::{self, State};
use super::{AudioFrame, CallEnd, Event, PluginChain, Reject, TransferRequest};
use crate::config::FailurePolicy;

/// Audio frames that may wait for a slow plugin (1 s); more are dropped and counted.
const AUDIO_BACKLOG: usize = 50;

/// Events that may wait for a call's plugins; beyond, events are dropped (the end of the
/// call never is). A browser pressing keys as fast as it can must not grow memory.
const EVENT_BACKLOG: usize = 256;

/// The plugin instances of one call, kept for its later events and dropped at its end.
#[derive(Default)]
pub struct CallPlugins {
    instances: Vec<(usize, Store<State>, bindings::Plugin)>,
}

impl std::fmt::Debug for CallPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallPlugins({})", self.instances.len())
    }
}

impl CallPlugins {
    pub(super) fn push(&mut self, index: usize, store: Store<State>, plugin: bindings::Plugin) {
        self.instances.push((index, store, plugin));
    }

    /// No instance is left (none configured, or all failed).
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

/// A hook run on each of a call's instances in chain order.
#[derive(Clone, Copy)]
enum Hook<'a> {
    Event(&'a Event),
    Audio(&'a AudioFrame),
    Transfer(&'a TransferRequest),
}

impl PluginChain {
    /// Passes a later event of a call to the plugins that saw its start. A failing plugin is
    /// dropped from the call (events are informational: nothing to fail closed on).
    pub async fn event(&self, call: &mut CallPlugins, call_id: &str, event: &Event) {
        self.run(call, call_id, Hook::Event(event)).await;
    }

    /// Passes 20 ms of audio to the call's plugins that asked for audio.
    pub async fn audio(&self, call: &mut CallPlugins, call_id: &str, frame: &AudioFrame) {
        self.run(call, call_id, Hook::Audio(frame)).await;
    }

    /// Asks the call's plugins, in chain order, whether the trunk may transfer the call; the
    /// first refusal decides. A plugin that fails is dropped from the call and its failure
    /// policy answers for it (`fail-closed` refuses with its `reject_code`).
    pub async fn transfer(
        &self,
        call: &mut CallPlugins,
        call_id: &str,
        request: &TransferRequest,
    ) -> Option<Reject> {
        self.run(call, call_id, Hook::Transfer(request)).await
    }

    /// Runs `hook` on each instance that wants it, under its deadline, until one refuses (a
    /// transfer); an instance that fails is logged, counted and dropped from the call.
    async fn run(&self, call: &mut CallPlugins, call_id: &str, hook: Hook<'_>) -> Option<Reject> {
        let mut i = 0;
        while i < call.instances.len() {
            let (index, store, plugin) = &mut call.instances[i];
            let index = *index;
            let loaded = &self.plugins[index];
            host::begin_hook(store, loaded.config.deadline);
            let result = match hook {
                Hook::Event(event) => plugin.call_on_event(&mut *store, call_id, event).await,
                Hook::Audio(_) if !loaded.manifest.audio => Ok(()),
                Hook::Audio(frame) => plugin.call_on_audio(&mut *store, call_id, frame).await,
                Hook::Transfer(request) => {
                    match plugin.call_on_transfer(&mut *store, call_id, request).await {
                        Ok(Some(r)) => {
                            let r = super::bounded(r);
                            tracing::info!(plugin = %loaded.config.name, sip_code = r.sip_code, reason = %r.reason, "plugin refused a transfer");
                            return Some(r);
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            };
            let Err(e) = result else {
                i += 1;
                continue;
            };
            call.instances.remove(i);
            let what = match hook {
                Hook::Event(_) => "an event",
                Hook::Audio(_) => "an audio frame",
                Hook::Transfer(_) => "a transfer",
            };
            self.failed(index, what, &e);
            if matches!(hook, Hook::Transfer(_))
                && loaded.config.policy == FailurePolicy::FailClosed
            {
                return Some(Reject {
                    sip_code: loaded.config.reject_code,
                    reason: format!("plugin `{}` failed", loaded.config.name),
                });
            }
        }
        None
    }

    fn failed(&self, index: usize, what: &str, e: &wasmtime::Error) {
        let loaded = &self.plugins[index];
        tracing::warn!(plugin = %loaded.config.name, error = %format!("{e:#}"), "plugin failed on {what}; dropped for this call");
        loaded.shared.count("failures", 1);
    }

    /// Whether any of the call's instances asked for audio.
    pub fn wants_audio(&self, call: &CallPlugins) -> bool {
        call.instances
            .iter()
            .any(|(index, ..)| self.plugins[*index].manifest.audio)
    }
}

enum Work {
    Event(Event),
    Audio(AudioFrame),
    Transfer(TransferRequest, oneshot::Sender<Option<Reject>>),
    /// Nothing follows: the feeder ends, and the call's instances are dropped.
    Finish,
}

/// Feeds one call's plugin instances from the call's task, in order, in a task of their own:
/// the call only queues work and never waits for a plugin.
#[derive(Debug)]
pub struct CallHooks {
    tx: mpsc::UnboundedSender<Work>,
    worker: tokio::task::JoinHandle<()>,
    audio: bool,
    audio_queued: Arc<AtomicUsize>,
    audio_dropped: u64,
    events_queued: Arc<AtomicUsize>,
    /// Unix milliseconds when the hooks started: the call's start, as near as they know it.
    started_ms: u64,
    /// The plugins were told how the call ended ([`CallHooks::end`]). Hooks dropped before
    /// that tell them it ended with `internal_error` ([`Drop`]).
    ended: bool,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Event(e) => write!(f, "{e:?}"),
            Work::Audio(_) => write!(f, "audio"),
            Work::Transfer(r, _) => write!(f, "transfer to {} on {}", r.number, r.trunk),
            Work::Finish => write!(f, "finish"),
        }
    }
}

impl CallHooks {
    /// Starts the feeder for a call's instances. `record`: the chain marked the call for
    /// recording, so plugins that asked for audio get it.
    pub fn spawn(
        chain: Arc<PluginChain>,
        call_id: String,
        plugins: CallPlugins,
        record: bool,
    ) -> CallHooks {
        let audio = record && chain.wants_audio(&plugins);
        let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
        let audio_queued = Arc::new(AtomicUsize::new(0));
        let queued = audio_queued.clone();
        let events_queued = Arc::new(AtomicUsize::new(0));
        let events_waiting = events_queued.clone();
        let worker = tokio::spawn(async move {
            let mut instances = plugins;
            while let Some(work) = rx.recv().await {
                match work {
                    Work::Event(e) => {
                        events_waiting.fetch_sub(1, Ordering::Relaxed);
                        chain.event(&mut instances, &call_id, &e).await;
                    }
                    Work::Audio(frame) => {
                        queued.fetch_sub(1, Ordering::Relaxed);
                        chain.audio(&mut instances, &call_id, &frame).await;
                    }
                    Work::Transfer(request, answer) => {
                        let _ =
                            answer.send(chain.transfer(&mut instances, &call_id, &request).await);
                    }
                    Work::Finish => break,
                }
            }
        });
        CallHooks {
            tx,
            worker,
            audio,
            audio_queued,
            audio_dropped: 0,
            events_queued,
            started_ms: crate::wall::unix_ms(),
            ended: false,
        }
    }

    /// Whether the call should produce audio frames for its plugins.
    pub fn wants_audio(&self) -> bool {
        self.audio
    }

    /// Queues an event, unless [`EVENT_BACKLOG`] events wait already; the call's end is
    /// always queued.
    pub fn event(&self, event: Event) {
        let waiting = self.events_queued.fetch_add(1, Ordering::Relaxed);
        if waiting >= EVENT_BACKLOG && !matches!(event, Event::Ended(_)) {
            self.events_queued.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!("plugins fell behind; an event was not delivered");
            return;
        }
        let _ = self.tx.send(Work::Event(event));
    }

    /// Queues 20 ms of audio, unless plugins are a second behind (then it is dropped).
    pub fn audio(&mut self, frame: AudioFrame) {
        if !self.audio {
            return;
        }
        if self.audio_queued.load(Ordering::Relaxed) >= AUDIO_BACKLOG {
            self.audio_dropped += 1;
            return;
        }
        self.audio_queued.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Work::Audio(frame));
    }

    /// Asks the plugins whether the trunk may transfer the call; the answer comes once the
    /// hooks queued before it have run (`None`: go ahead). A feeder that is gone answers
    /// nothing, and the receiver reads that as an error.
    pub fn transfer(&self, request: TransferRequest) -> oneshot::Receiver<Option<Reject>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Work::Transfer(request, tx));
        rx
    }

    /// Tells the plugins how the call ended, then waits until every queued hook has run
    /// and the instances are dropped (a recording's file closed).
    pub async fn end(mut self, end: CallEnd) {
        self.event(Event::Ended(end));
        self.ended = true;
        let _ = self.tx.send(Work::Finish);
        let _ = (&mut self.worker).await;
        if self.audio_dropped > 0 {
            tracing::warn!(
                frames = self.audio_dropped,
                "plugins fell behind; audio frames were not delivered"
            );
        }
    }
}

/// Hooks dropped without [`CallHooks::end`] — the call's task faulted, or a path that ends a
/// call forgot them — still tell the plugins the call ended, with `internal_error` and 500,
/// and their feeder then finishes what was queued and drops the instances. Why: a plugin
/// that keeps a ledger of calls (compliance, billing) or an open file per call (a recording)
/// must hear of every call's end, the gateway's faults' included.
impl Drop for CallHooks {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.event(Event::Ended(CallEnd {
            reason: "internal_error".into(),
            sip_code: 500,
            duration_ms: 0,
            trunk: None,
            sip_call_id: None,
            started_ms: self.started_ms,
            answered_ms: None,
        }));
    }
}
