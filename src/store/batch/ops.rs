//! [`BatchOps`]: the set-based statements each database implements for the batch steps,
//! and the rows they read and write. Each statement touches all rows of a batch at once,
//! so a batch costs about a dozen statements whatever its size.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::future::BoxFuture;

use crate::model::{
    Account, Instance, RecordStatus, SESSION_DURATION_BUCKETS, SessionStatus, SyncType,
};
use crate::store::{RenewOutcome, RenewRequest, Result, SessionFinished, StoredRow};

/// A record as a batch step sees it.
pub(crate) struct RecState {
    pub instance_id: i64,
    pub status: RecordStatus,
    pub attempts: i64,
    pub job_id: Option<String>,
    pub lock_token: Option<i64>,
    pub session_row: i64,
    pub session_uuid: uuid::Uuid,
    pub cancel_requested: bool,
    /// The last grant or finish request that wrote this record (replay on retry).
    pub request_id: Option<String>,
    /// `(total, added, removed, changed)` accounts of a completed record.
    pub accounts: (Option<i64>, Option<i64>, Option<i64>, Option<i64>),
    /// When it first found a concurrency limit of its instance full (`limits.rs`).
    pub limit_wait_since_ms: Option<i64>,
}

/// An instance's lease row.
pub(crate) struct LockState {
    pub token: i64,
    pub live: bool,
    /// The record that last held the lease is still `running`: its holder never finished.
    pub holder_running: bool,
}

/// A session's totals right after a change to them.
pub(crate) struct SessionTotals {
    pub total: i64,
    pub successful: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub cancel_requested: bool,
    pub status: SessionStatus,
    pub sync_type: SyncType,
    /// The session's public id.
    pub session_id: uuid::Uuid,
}

/// The two statements that add a finished session to the fleet-wide session metrics
/// (migration 0005), for a backend whose placeholder `n` is spelled `p(n)`. Binds: first
/// sync_type, status, duration seconds; then sync_type, success rate, completed_at, status.
pub(crate) fn session_stats_sql(p: fn(usize) -> String) -> [String; 2] {
    let cols: Vec<String> = SESSION_DURATION_BUCKETS
        .iter()
        .map(|b| format!("le_{b}"))
        .collect();
    let flags: Vec<String> = SESSION_DURATION_BUCKETS
        .iter()
        .map(|b| format!("CASE WHEN {} <= {b} THEN 1 ELSE 0 END", p(3)))
        .collect();
    let sums: Vec<String> = cols
        .iter()
        .map(|c| format!("{c} = session_stats.{c} + excluded.{c}"))
        .collect();
    let stats = format!(
        "INSERT INTO session_stats (sync_type, status, finished, duration_sum, {}) \
         VALUES ({}, {}, 1, {}, {}) ON CONFLICT (sync_type, status) DO UPDATE SET \
         finished = session_stats.finished + 1, \
         duration_sum = session_stats.duration_sum + excluded.duration_sum, {}",
        cols.join(", "),
        p(1),
        p(2),
        p(3),
        flags.join(", "),
        sums.join(", ")
    );
    // A cancelled session says nothing about the fleet's health: it does not replace the
    // last success ratio. Two sessions finishing at once: the later one wins.
    let last = format!(
        "INSERT INTO session_last_finished (sync_type, success_rate, completed_at) \
         SELECT {}, {}, {} WHERE {} <> 'cancelled' \
         ON CONFLICT (sync_type) DO UPDATE SET success_rate = excluded.success_rate, \
         completed_at = excluded.completed_at \
         WHERE excluded.completed_at >= session_last_finished.completed_at",
        p(1),
        p(2),
        p(3),
        p(4)
    );
    [stats, last]
}

/// The query that reads the fleet-wide session metrics back.
pub(crate) fn session_stats_select() -> String {
    let cols: Vec<String> = SESSION_DURATION_BUCKETS
        .iter()
        .map(|b| format!("le_{b}"))
        .collect();
    format!(
        "SELECT sync_type, status, finished, duration_sum, {} FROM session_stats ORDER BY sync_type, status",
        cols.join(", ")
    )
}

pub(crate) struct NewLease {
    pub instance_id: i64,
    pub session_uuid: uuid::Uuid,
    pub record_id: i64,
    pub token: i64,
}

pub(crate) struct NewJob {
    pub id: String,
    pub payload: Vec<u8>,
    pub delay: Duration,
    /// apalis' priority: higher is fetched first among due jobs.
    pub priority: i32,
}

/// Set-based statements over one open transaction. Every method handles an empty slice
/// by doing nothing.
#[async_trait]
pub(crate) trait BatchOps: super::limits::LimitOps + super::drift::DriftOps + Send {
    /// Locks (PostgreSQL: `FOR UPDATE`) and reads records with their session's state.
    async fn records_load(&mut self, ids: &[i64]) -> Result<HashMap<i64, RecState>>;
    /// Locks and reads the lease rows of these instances.
    async fn locks_load(&mut self, instance_ids: &[i64]) -> Result<HashMap<i64, LockState>>;
    /// Reads instances; PostgreSQL share-locks them so that a concurrent delete waits
    /// (instance_delete takes the instance row first, then its accounts).
    async fn instances_load(&mut self, ids: &[i64]) -> Result<HashMap<i64, Instance>>;
    /// Ids of running records without a live lease carrying their token (unlocked read).
    async fn records_orphaned(&mut self, limit: i64) -> Result<Vec<i64>>;
    /// Ids of a session's pending and running records (unlocked read).
    async fn session_open_records(&mut self, session_row: i64) -> Result<Vec<i64>>;
    /// Stamps records with the request that wrote them.
    async fn records_mark_request(&mut self, rows: &[RequestStamp]) -> Result<()>;
    /// Sets a session's cancel flag.
    async fn session_request_cancel(&mut self, session_row: i64) -> Result<()>;
    /// The database's clock in Unix milliseconds: lock waits are judged by it, as leases
    /// are, so that workers whose clocks disagree never misjudge another's stamp.
    async fn db_now_ms(&mut self) -> Result<i64>;
    /// `n` fresh fencing tokens from the database-wide counter.
    async fn tokens_next(&mut self, n: usize) -> Result<Vec<i64>>;
    /// Takes (inserts or takes over) the leases; the caller has checked they are free.
    async fn locks_take(&mut self, owner: &str, ttl: Duration, leases: &[NewLease]) -> Result<()>;
    /// Expires the leases still carrying these tokens.
    async fn locks_release(&mut self, leases: &[LeaseKey]) -> Result<()>;
    /// Marks records running; returns their attempts. The request id is written in the same UPDATE: each record row is
    /// written once per step (a second UPDATE was half of PostgreSQL's work at 100,000
    /// records, docs/BENCHMARKS.md).
    async fn records_start(
        &mut self,
        owner: &str,
        rows: &[RecordStart],
    ) -> Result<HashMap<i64, i64>>;
    /// Makes records terminal.
    async fn records_end(&mut self, rows: &[RecordEnd]) -> Result<()>;
    /// Completes records with their account counts.
    async fn records_complete(&mut self, rows: &[RecordCompletion]) -> Result<()>;
    /// Points records at a new job; with `to_pending` the
    /// record also goes back to `pending` (a retry), else only its job changes (busy).
    async fn records_requeue(&mut self, rows: &[Requeue], to_pending: bool) -> Result<()>;
    /// Gives records back untouched by the aborted attempt.
    async fn records_handback(&mut self, ids: &[i64]) -> Result<()>;
    async fn jobs_push(&mut self, jobs: &[NewJob]) -> Result<()>;
    async fn jobs_ack(&mut self, ids: &[String]) -> Result<()>;
    /// Puts jobs back to pending, unlocked.
    async fn jobs_release(&mut self, ids: &[String]) -> Result<()>;
    async fn sessions_start(&mut self, ids: &[i64]) -> Result<()>;
    /// Adds to a session's totals; returns the totals after the change.
    async fn session_add(
        &mut self,
        session_row: i64,
        ok: i64,
        failed: i64,
        cancelled: i64,
    ) -> Result<SessionTotals>;
    /// Adds a finished session to the fleet-wide session metrics ([`session_stats_sql`]).
    async fn session_stats_add(
        &mut self,
        fin: &SessionFinished,
        completed_at: chrono::DateTime<Utc>,
    ) -> Result<()>;
    /// Marks a session finished with `status`; returns its (started_at, completed_at).
    async fn session_close(
        &mut self,
        session_row: i64,
        status: SessionStatus,
    ) -> Result<(chrono::DateTime<Utc>, chrono::DateTime<Utc>)>;
    async fn accounts_load(&mut self, instance_ids: &[i64])
    -> Result<HashMap<i64, Vec<StoredRow>>>;
    async fn accounts_insert(&mut self, rows: &[AccountWrite<'_>]) -> Result<()>;
    /// Updates accounts' attributes and privileges and clears `deleted_at`: one
    /// statement for any number, so a large diff is not a statement per account.
    async fn accounts_update(&mut self, rows: &[AccountWrite<'_>]) -> Result<()>;
    /// Marks accounts deleted, in one statement.
    async fn accounts_mark_deleted(&mut self, rows: &[AccountKey]) -> Result<()>;
    /// Appends to the account change history, in one statement.
    async fn changes_insert(&mut self, rows: &[NewChange]) -> Result<()>;
    /// Marks these instances' history as begun (their baseline is in this transaction).
    async fn instances_history_start(&mut self, ids: &[i64]) -> Result<()>;
    /// Extends the leases whose token is still current, in request order; reports
    /// each record's cancel request.
    async fn leases_renew(
        &mut self,
        ttl: Duration,
        reqs: &[RenewRequest],
    ) -> Result<Vec<RenewOutcome>>;
    /// A session's row id and whether it has finished, by its public id.
    async fn session_find(&mut self, session_id: uuid::Uuid) -> Result<Option<FoundSession>>;
    /// Writes the audit row of the change this transaction makes (a cancel).
    async fn audit_insert(&mut self, row: &crate::model::NewAuditEvent) -> Result<()>;
}

/// A session found by its public id.
pub(crate) struct FoundSession {
    pub row: i64,
    pub finished: bool,
}

/// One write transaction's work, over the database's [`BatchOps`]: run by
/// `store::common::Backend::write` and committed if it returns `Ok`.
pub(crate) type Batch<T> =
    Box<dyn for<'o> FnOnce(&'o mut dyn BatchOps) -> BoxFuture<'o, Result<T>> + Send>;

/// Boxes a closure as a [`Batch`] (a function, so that the closure's signature is
/// inferred as higher-ranked over the borrow of the ops).
pub(crate) fn batch<T, F>(f: F) -> Batch<T>
where
    F: for<'o> FnOnce(&'o mut dyn BatchOps) -> BoxFuture<'o, Result<T>> + Send + 'static,
{
    Box::new(f)
}

/// A history row with the sync it came from.
pub(crate) struct NewChange {
    pub instance_id: i64,
    pub instance_name: String,
    pub session_id: uuid::Uuid,
    pub record_id: i64,
    pub change: crate::history::AccountChangeRow,
}

// The rows the batch steps write, named (River's `JobSetStateIfRunningParams` in spirit):
// a planner fills them, each database's `BatchOps` binds them.

/// A record that starts running under a new lease.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordStart {
    pub record_id: i64,
    pub lock_wait_ms: i64,
    pub token: i64,
    pub request_id: String,
}

/// A record that ends without (or after) a sync.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordEnd {
    pub record_id: i64,
    pub status: RecordStatus,
    pub error: Option<String>,
}

/// A record completed by a sync, with its account counts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordCompletion {
    pub record_id: i64,
    pub total: i64,
    pub added: i64,
    pub removed: i64,
    pub changed: i64,
    pub request_id: String,
}

/// A record pointed at a new job (a retry, a busy wait, a rescue).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Requeue {
    pub record_id: i64,
    pub job_id: String,
    pub error: Option<String>,
}

/// The request that wrote a record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RequestStamp {
    pub record_id: i64,
    pub request_id: String,
}

/// A lease by its instance and the token it must still carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LeaseKey {
    pub instance_id: i64,
    pub token: i64,
}

/// An account of an instance, found by a sync.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AccountWrite<'a> {
    pub instance_id: i64,
    pub account: &'a Account,
}

/// An account of an instance, by its key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AccountKey {
    pub instance_id: i64,
    pub username: String,
    pub host: String,
}
