//! The job queue's wire format. apalis carries one job per (record, attempt); the record
//! in `sync_instance_records`, not the job, is the source of truth (see docs/ARCHITECTURE.md).

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
    pub session_id: String,
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
