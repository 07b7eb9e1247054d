//! The job queue's wire format and how idle workers wake. apalis carries one job per
//! (record, attempt); the record in `sync_instance_records`, not the job, is the source
//! of truth (see docs/ARCHITECTURE.md).

use serde::{Deserialize, Serialize};

/// The one queue name every producer and worker uses: a mismatch would silently create
/// jobs nobody consumes (docs/APALIS.md, "Queue names must match exactly"), so it lives in exactly one place.
pub const QUEUE: &str = "syncpool::sync_instance";

/// apalis' own retry counter is not used: syncpool schedules every next attempt itself
/// (with backoff) because apalis retries have no delay (docs/APALIS.md, "Backend retries have no delay").
pub const APALIS_MAX_ATTEMPTS: i64 = 1;

/// What a job carries. `waiting_since_ms` is set once the job found its instance leased
/// elsewhere, so that the lock-wait timeout counts from the first try.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPayload {
    /// The session's public id.
    pub session_id: uuid::Uuid,
    /// The record this job syncs.
    pub record_id: i64,
    /// The instance whose lease it needs.
    pub instance_id: i64,
    /// This attempt's number, from 1.
    pub attempt: i64,
    /// Unix milliseconds of the first time the instance was found busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since_ms: Option<i64>,
}

impl JobPayload {
    /// The payload as stored in the queue (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings and integers always serialises")
    }
}

/// A fresh job id. apalis decodes ids as ULIDs, and one it cannot decode stops the
/// worker that fetched it, so ids are only ever made here.
pub fn new_job_id() -> String {
    ulid::Ulid::new().to_string()
}

/// Passes the stored bytes through untouched. apalis would otherwise decode the payload
/// before our handler runs, and a payload that fails to decode ends the whole worker
/// (docs/APALIS.md, "One undecodable payload"); decoding in the handler turns that into one failed job.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl apalis::prelude::Codec<Vec<u8>> for RawBytes {
    type Error = std::convert::Infallible;
    type Compact = Vec<u8>;
    fn encode(&self, val: &Vec<u8>) -> Result<Vec<u8>, Self::Error> {
        Ok(val.clone())
    }
    fn decode(&self, val: &Vec<u8>) -> Result<Vec<u8>, Self::Error> {
        Ok(val.clone())
    }
}

/// Wakes an idle worker every `period` so it looks for jobs.
///
/// apalis 1.0's `IntervalStrategy` re-arms its timer after firing without polling the new
/// timer, so no waker is registered and an idle worker fetches again only at its next
/// heartbeat (seen: delayed retries picked up 10 s late, exactly on heartbeats). This
/// strategy polls the fresh timer at once, which registers the wake-up.
#[derive(Debug)]
pub struct Every {
    period: std::time::Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Every {
    /// A strategy that fires every `period`.
    pub fn new(period: std::time::Duration) -> Self {
        Self {
            period,
            sleep: None,
        }
    }
}

impl Clone for Every {
    fn clone(&self) -> Self {
        Self::new(self.period)
    }
}

impl apalis::prelude::PollStrategy for Every {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &apalis::prelude::PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        let period = self.period;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
        if sleep.as_mut().poll(cx).is_ready() {
            let mut next = Box::pin(tokio::time::sleep(period));
            // Polling the new timer is what registers the next wake-up.
            let _ = next.as_mut().poll(cx);
            self.sleep = Some(next);
            return std::task::Poll::Ready(Some(()));
        }
        std::task::Poll::Pending
    }
}

/// Wakes an idle worker when its notification stream says jobs were added (PostgreSQL's
/// NOTIFY), and every `period` in any case.
///
/// apalis' combined strategy polls its parts in order and stops at the first that is
/// ready, and reads one notification per fetch. A session's INSERT sends one notification
/// per job, so after the first session each worker held a backlog of thousands: the stream
/// was always ready, the timer behind it was never polled again, and an idle worker woke
/// only at its next queue heartbeat (10 s): later sessions ran at a fifth of the first
/// one's rate (docs/BENCHMARKS.md). This strategy drains every notification that has
/// arrived, so the stream is pending again and a new one wakes the worker, and always
/// polls the timer too. A stream that ends (its connection failed) is opened afresh at the
/// next tick: a clone of the template starts a new listener.
pub struct NotifyOrEvery<S> {
    template: S,
    notes: Option<S>,
    every: Every,
}

/// Most notifications read in one poll: enough to drain any burst quickly without
/// holding the task for long; the rest are read at the next poll.
const DRAIN_AT_MOST: usize = 4096;

impl<S: Clone> NotifyOrEvery<S> {
    /// Wakes on items of `notes` (a clone of it, opened lazily) and every `period`.
    pub fn new(notes: S, period: std::time::Duration) -> Self {
        Self {
            notes: Some(notes.clone()),
            template: notes,
            every: Every::new(period),
        }
    }
}

impl<S: Clone> Clone for NotifyOrEvery<S> {
    fn clone(&self) -> Self {
        Self {
            notes: Some(self.template.clone()),
            template: self.template.clone(),
            every: self.every.clone(),
        }
    }
}

impl<S: futures::Stream + Unpin + Clone> apalis::prelude::PollStrategy for NotifyOrEvery<S> {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        snapshot: &apalis::prelude::PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        use futures::StreamExt;
        use std::task::Poll;
        let mut notified = false;
        if let Some(notes) = self.notes.as_mut() {
            for _ in 0..DRAIN_AT_MOST {
                match notes.poll_next_unpin(cx) {
                    Poll::Ready(Some(_)) => notified = true,
                    Poll::Ready(None) => {
                        tracing::warn!("job notifications stopped; polling until they are back");
                        self.notes = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        let tick = self.every.poll_drive(cx, snapshot).is_ready();
        if tick && self.notes.is_none() {
            self.notes = Some(self.template.clone());
        }
        if notified || tick {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use apalis::prelude::{PollSnapshot, PollStrategy};

    use super::NotifyOrEvery;

    /// A listener with `left` notifications waiting, then nothing (or its end); each clone
    /// is a new listener, counted in `opened`.
    struct Listener {
        left: Arc<AtomicUsize>,
        ends: bool,
        opened: Arc<AtomicUsize>,
    }

    impl Clone for Listener {
        fn clone(&self) -> Self {
            self.opened.fetch_add(1, Ordering::SeqCst);
            Listener {
                left: self.left.clone(),
                ends: self.ends,
                opened: self.opened.clone(),
            }
        }
    }

    impl futures::Stream for Listener {
        type Item = ();
        fn poll_next(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<()>> {
            let left = self.left.load(Ordering::SeqCst);
            if left > 0 {
                self.left.store(left - 1, Ordering::SeqCst);
                Poll::Ready(Some(()))
            } else if self.ends {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        }
    }

    fn listener(left: usize, ends: bool) -> (Listener, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (left, opened) = (
            Arc::new(AtomicUsize::new(left)),
            Arc::new(AtomicUsize::new(0)),
        );
        let l = Listener {
            left: left.clone(),
            ends,
            opened: opened.clone(),
        };
        (l, left, opened)
    }

    #[tokio::test]
    async fn a_backlog_of_notifications_is_drained_and_the_timer_still_fires() {
        let (l, left, _) = listener(10_000, false);
        let mut s = NotifyOrEvery::new(l, Duration::from_millis(20));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let snap = PollSnapshot::default();
        assert!(s.poll_drive(&mut cx, &snap).is_ready(), "notified");
        for _ in 0..3 {
            let _ = s.poll_drive(&mut cx, &snap);
        }
        assert_eq!(
            left.load(Ordering::SeqCst),
            0,
            "a burst is read in a few polls, not one notification per fetch"
        );
        assert!(s.poll_drive(&mut cx, &snap).is_pending(), "nothing new");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            s.poll_drive(&mut cx, &snap).is_ready(),
            "the timer fires behind a listener (it never did behind a backlog)"
        );
    }

    #[tokio::test]
    async fn a_listener_that_ends_is_opened_again_at_the_next_tick() {
        let (l, _, opened) = listener(0, true);
        let mut s = NotifyOrEvery::new(l, Duration::from_millis(20));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let snap = PollSnapshot::default();
        let before = opened.load(Ordering::SeqCst);
        assert!(
            s.poll_drive(&mut cx, &snap).is_pending(),
            "an ended listener wakes nobody"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            s.poll_drive(&mut cx, &snap).is_ready(),
            "the timer still does"
        );
        assert_eq!(
            opened.load(Ordering::SeqCst),
            before + 1,
            "and a new listener is opened"
        );
    }
}
