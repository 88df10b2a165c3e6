//! Which of a call's event sources woke its task, so that a wake-up polls only those.
//!
//! A call listens to ten sources: its route or transfer being decided, SIP responses and
//! requests, its clock (`super::clock`), the browser's datagrams (mux and direct path), the
//! trunk's RTP socket, the signaling side's commands and the shutdown. `tokio::select!`
//! polls every one of them each time the task wakes, and it wakes for every media packet,
//! 50 times a second each way. Here each source is polled with a waker of its own, which
//! marks the source due before it wakes the task; a turn polls the due sources only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// One of a call's event sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Routing,
    Transfer,
    Response,
    Request,
    Timer,
    MuxRoute,
    DirectPath,
    Rtp,
    Command,
    Shutdown,
}

impl Source {
    const ALL: [Source; 10] = [
        Source::Routing,
        Source::Transfer,
        Source::Response,
        Source::Request,
        Source::Timer,
        Source::MuxRoute,
        Source::DirectPath,
        Source::Rtp,
        Source::Command,
        Source::Shutdown,
    ];

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// What the sources' wakers share with the task.
#[derive(Default)]
struct Shared {
    /// One bit per [`Source`] that woke since the task last polled it.
    due: AtomicU32,
    task: AtomicWaker,
}

/// A source's waker: marks it due, then wakes the task.
struct SourceWaker {
    shared: Arc<Shared>,
    bit: u32,
}

impl Wake for SourceWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Marked first: the task, once woken, must find the mark.
        self.shared.due.fetch_or(self.bit, Ordering::AcqRel);
        self.shared.task.wake();
    }
}

/// A call's sources, their wakers and which are due.
pub(super) struct Sources {
    shared: Arc<Shared>,
    wakers: Vec<Waker>,
    /// Where the next turn starts asking.
    next: usize,
}

impl Sources {
    /// Every source due: the first turn asks them all.
    pub(super) fn new() -> Sources {
        let shared = Arc::new(Shared::default());
        shared
            .due
            .store((1 << Source::ALL.len()) - 1, Ordering::Relaxed);
        let wakers = Source::ALL
            .iter()
            .map(|s| {
                Waker::from(Arc::new(SourceWaker {
                    shared: shared.clone(),
                    bit: s.bit(),
                }))
            })
            .collect();
        Sources {
            shared,
            wakers,
            next: 0,
        }
    }

    /// Marks `source` due after a change it has no waker for: a timer moved, a new socket.
    pub(super) fn mark(&self, source: Source) {
        self.shared.due.fetch_or(source.bit(), Ordering::AcqRel);
    }

    /// Starts a turn of the task woken with `task`. Each turn starts asking one source further
    /// on, so a source that is always ready cannot starve the others (what `select!`'s random
    /// start does).
    pub(super) fn turn(&mut self, task: &Waker) -> Turn<'_> {
        // Registered before the marks are taken: a wake-up after this finds the task's waker.
        self.shared.task.register(task);
        let due = self.shared.due.swap(0, Ordering::AcqRel);
        let start = self.next;
        self.next = (self.next + 1) % Source::ALL.len();
        Turn {
            sources: self,
            due,
            asked: 0,
            start,
        }
    }
}

/// One poll of the task: the due sources, each asked at most once.
pub(super) struct Turn<'a> {
    sources: &'a Sources,
    due: u32,
    /// The due sources that said `Pending`: their wakers are registered.
    asked: u32,
    start: usize,
}

impl Turn<'_> {
    /// The sources in this turn's order.
    pub(super) fn order(&self) -> impl Iterator<Item = Source> + use<> {
        let start = self.start;
        (0..Source::ALL.len()).map(move |i| Source::ALL[(start + i) % Source::ALL.len()])
    }

    /// Asks `source` with its own waker if it is due and `enabled`. A source that is
    /// disabled, or that answered `Ready` (it registered no waker then), stays due.
    pub(super) fn poll<T>(
        &mut self,
        source: Source,
        enabled: bool,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let bit = source.bit();
        if !enabled || self.due & bit == 0 {
            return Poll::Pending;
        }
        let waker = &self.sources.wakers[source as usize];
        let answer = poll(&mut Context::from_waker(waker));
        if answer.is_pending() {
            self.asked |= bit;
        }
        answer
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Whatever was due and not left waiting on its waker is due next turn.
        let keep = self.due & !self.asked;
        if keep != 0 {
            self.sources.shared.due.fetch_or(keep, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;

    /// A task waker that counts its wake-ups.
    struct Counter(std::sync::atomic::AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_turn_asks_only_the_sources_that_woke_and_those_that_answered() {
        let counter = Arc::new(Counter(Default::default()));
        let task = Waker::from(counter.clone());
        let mut sources = Sources::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
        let mut sleep = pin!(tokio::time::sleep(std::time::Duration::from_secs(3600)));
        let mut asked = Vec::new();

        // The first turn asks everything; both say Pending and register their wakers.
        let mut turn = sources.turn(&task);
        for source in turn.order() {
            match source {
                Source::Command => {
                    asked.push(source);
                    assert!(turn.poll(source, true, |cx| rx.poll_recv(cx)).is_pending());
                }
                Source::Timer => {
                    asked.push(source);
                    assert!(
                        turn.poll(source, true, |cx| sleep.as_mut().poll(cx))
                            .is_pending()
                    );
                }
                // Disabled: stays due.
                Source::Transfer => {
                    assert!(turn.poll(source, false, |_| Poll::Ready(())).is_pending())
                }
                _ => {}
            }
        }
        drop(turn);
        assert_eq!(asked.len(), 2);

        // A message wakes the task through the command source only.
        tx.send(7).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        let mut turn = sources.turn(&task);
        let mut polled = Vec::new();
        for source in turn.order() {
            let got = turn.poll(source, true, |cx| {
                polled.push(source);
                match source {
                    Source::Command => rx.poll_recv(cx).map(|m| m.map(u32::from)),
                    Source::Timer => sleep.as_mut().poll(cx).map(|()| None),
                    _ => Poll::Pending,
                }
            });
            if let Poll::Ready(m) = got {
                assert_eq!(m, Some(7));
                break;
            }
        }
        drop(turn);
        assert!(polled.contains(&Source::Command));
        assert!(!polled.contains(&Source::Timer), "the timer did not wake");
        assert!(
            polled.contains(&Source::Transfer),
            "a disabled source stays due"
        );

        // The command source answered Ready: it is asked again, and now waits (with the
        // sources the last turn did not reach).
        let mut turn = sources.turn(&task);
        let mut polled = Vec::new();
        for source in turn.order() {
            let _ = turn.poll(source, source != Source::Transfer, |cx| {
                polled.push(source);
                match source {
                    Source::Command => rx.poll_recv(cx),
                    _ => Poll::Pending,
                }
            });
        }
        drop(turn);
        assert!(polled.contains(&Source::Command));
        assert!(!polled.contains(&Source::Timer));

        // Nothing woke: a turn asks nothing.
        let mut turn = sources.turn(&task);
        let mut polled = 0;
        for source in turn.order() {
            let _ = turn.poll(source, source != Source::Transfer, |_| {
                polled += 1;
                Poll::<()>::Pending
            });
        }
        assert_eq!(polled, 0);
    }

    #[test]
    fn a_source_that_is_always_ready_does_not_starve_the_others() {
        let task = Waker::from(Arc::new(Counter(Default::default())));
        let mut sources = Sources::new();
        // The RTP socket floods; a command waits once; everything else is pending.
        let mut command_waiting = true;
        let mut served = Vec::new();
        for _ in 0..Source::ALL.len() {
            let mut turn = sources.turn(&task);
            for source in turn.order() {
                let got = turn.poll(source, true, |_| match source {
                    Source::Rtp => Poll::Ready(source),
                    Source::Command if command_waiting => Poll::Ready(source),
                    _ => Poll::Pending,
                });
                if let Poll::Ready(source) = got {
                    if source == Source::Command {
                        command_waiting = false;
                    }
                    served.push(source);
                    break;
                }
            }
        }
        assert!(served.contains(&Source::Command), "served only {served:?}");
        assert!(served.contains(&Source::Rtp));
    }
}
