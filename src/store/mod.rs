//! The storage layer: the only code that knows SQL or which database is in use.
//!
//! [`Store`] is one interface, implemented once by `common::SqlStore<D>` over a backend
//! `D` (SQLite or PostgreSQL) that holds only what differs between them, in the manner of
//! River's driver interface; the CLI, the HTTP API and the worker pipeline call it and
//! never run SQL themselves. The conformance suite in `tests/conformance.rs` and
//! `tests/lease_faults.rs` runs the same checks against both.
//!
//! Methods read noun-then-verb. The `*_batch` methods and `pipeline_round` are the worker
//! pipeline's grant, renew and finish steps (docs/ARCHITECTURE.md); they take many
//! requests so that one process can commit the work of all its concurrent syncs in one
//! short transaction (group commit).

/// The condition on a record `r` that the rescuer acts on: running without a live lease
/// carrying its token, judged by `$now` (the database's current time as it stores it).
/// One definition, shared by the rescuer and the fleet gauge of both databases.
macro_rules! unleased_running {
    ($now:expr) => {
        concat!(
            "r.status = 'running' AND NOT EXISTS (SELECT 1 FROM sync_locks l ",
            "WHERE l.instance_id = r.instance_id AND l.token = r.lock_token AND l.expires_at > ",
            $now,
            ")"
        )
    };
}

pub(crate) mod access;
pub(crate) mod batch;
pub(crate) mod common;
mod error;
pub(crate) mod limits;
pub(crate) mod policy;
pub mod postgres;
pub(crate) mod sql;
pub(crate) mod sqlite;
pub(crate) mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::model::*;
use crate::queue::JobPayload;
pub use access::AccessStore;
pub use error::StoreError;
pub(crate) use error::describe;
pub use limits::LimitStore;
pub use policy::PolicyStore;
pub use webhooks::WebhookStore;

/// How many of `migrator`'s migrations are not among the `applied` versions.
pub(crate) fn pending(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> usize {
    migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .count()
}

/// Results at the storage boundary.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database a store talks to, with its pool, for the code that must build a
/// database-specific apalis backend.
#[derive(Clone, Debug)]
pub enum DbPool {
    /// syncpool on SQLite.
    Sqlite(sqlx::SqlitePool),
    /// syncpool on PostgreSQL.
    Postgres(sqlx::PgPool),
}

impl DbPool {
    /// Connections open, and how many of them are idle (for the pool gauges).
    pub fn size_and_idle(&self) -> (u32, usize) {
        match self {
            DbPool::Sqlite(p) => (p.size(), p.num_idle()),
            DbPool::Postgres(p) => (p.size(), p.num_idle()),
        }
    }
}

/// Timings the pipeline's batch steps need; they come from [`crate::settings::Settings`].
#[derive(Debug, Clone)]
pub struct LeaseParams {
    /// How long a lease lives without renewal.
    pub ttl: Duration,
    /// Delay before a job whose instance is leased elsewhere is tried again.
    pub busy_retry: Duration,
    /// How long a job may wait for a busy instance.
    pub lock_wait_timeout: Duration,
    /// Attempts per record.
    pub max_attempts: i64,
}

/// Step 3: take the lease of `payload.instance_id` for the job `job_id`.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    /// Unique per request, kept across retries of it: a retry after a commit whose
    /// outcome was unknown finds it on the record and replays the grant.
    pub request_id: String,
    /// The apalis job being run.
    pub job_id: String,
    /// What it carries.
    pub payload: JobPayload,
    /// The worker process's id, stored as the lease owner and the record's worker_id.
    pub owner: String,
}

/// What a grant request got.
#[derive(Debug, Clone)]
pub enum GrantOutcome {
    /// The lease is ours: sync, then finish with `token`.
    Granted {
        /// The fencing token every later write of this sync carries.
        token: i64,
        /// Boxed: the other outcomes are small, and batches hold many of them.
        instance: Box<Instance>,
        /// This attempt's number.
        attempt: i64,
        /// The lease was taken over from an expired holder.
        takeover: bool,
        /// Time waited for the lease.
        lock_wait_ms: i64,
    },
    /// Another owner holds a live lease: the job was re-pushed with a delay and acked.
    Busy,
    /// The job is stale (its record is terminal or has moved on): acked, nothing to do.
    Stale,
    /// The session was cancelled: the record is now cancelled; acked.
    Cancelled {
        /// Set when this cancel ended the session.
        session_finished: Option<SessionFinished>,
    },
    /// The record failed without a sync (lock-wait timeout, too many lost workers): acked.
    Failed {
        /// Why.
        error: String,
        /// It waited longer than the lock-wait timeout.
        lock_timeout: bool,
        /// Set when this failure ended the session.
        session_finished: Option<SessionFinished>,
    },
}

impl GrantOutcome {
    pub(crate) fn set_session_finished(&mut self, fin: SessionFinished) {
        if let GrantOutcome::Cancelled { session_finished }
        | GrantOutcome::Failed {
            session_finished, ..
        } = self
        {
            *session_finished = Some(fin);
        }
    }
}

/// Step 4's heartbeat: extend the lease if it is still ours.
#[derive(Debug, Clone)]
pub struct RenewRequest {
    /// The leased instance.
    pub instance_id: i64,
    /// The token the lease was granted with.
    pub token: i64,
    /// The record being synced.
    pub record_id: i64,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewOutcome {
    /// False when the token is no longer current: stop and write nothing.
    pub held: bool,
    /// The record's session was cancelled: stop and finish as cancelled.
    pub cancel_requested: bool,
}

/// How one sync ended, as the worker reports it in step 5.
#[derive(Debug, Clone)]
pub enum SyncResult {
    /// The accounts found on the instance.
    Completed(Vec<Account>),
    /// `retry_after` is set when another attempt is allowed and wanted.
    Failed {
        /// Why.
        error: String,
        /// When set, the next attempt after this delay.
        retry_after: Option<Duration>,
    },
    /// The session was cancelled during the sync.
    Cancelled,
    /// The worker is shutting down: give the record and its job back untouched.
    HandedBack,
}

/// Step 5: a sync's outcome, fenced by its token.
#[derive(Debug, Clone)]
pub struct FinishRequest {
    /// Unique per request, kept across retries of it (see [`GrantRequest::request_id`]).
    pub request_id: String,
    /// The apalis job being run.
    pub job_id: String,
    /// The record synced.
    pub record_id: i64,
    /// The instance synced.
    pub instance_id: i64,
    /// Its session's public id.
    pub session_id: Uuid,
    /// The token of the lease the sync ran under.
    pub token: i64,
    /// How the sync ended.
    pub result: SyncResult,
}

/// What a finish wrote.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// The record completed with these account counts.
    Completed {
        /// Accounts found.
        total: i64,
        /// Accounts new since the last sync.
        added: i64,
        /// Accounts gone.
        removed: i64,
        /// Accounts changed.
        changed: i64,
    },
    /// The record failed for good.
    Failed,
    /// Another attempt is enqueued.
    Retrying {
        /// Its number.
        next_attempt: i64,
    },
    /// The record was cancelled.
    Cancelled,
    /// The record and its job were given back for another worker.
    HandedBack,
    /// The token was stale: a newer holder owns the instance; nothing was written.
    Fenced,
}

/// What a finish did.
#[derive(Debug, Clone)]
pub struct FinishOutcome {
    /// To the record.
    pub record: RecordOutcome,
    /// Set when it ended the session.
    pub session_finished: Option<SessionFinished>,
    /// The account changes it recorded, counted (empty on a replay: the first commit
    /// counted them).
    pub changes: crate::history::ChangeTally,
}

/// What the rescuer did with running records that had no live lease.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RescueOutcome {
    /// Handed to a new job (the next attempt).
    pub requeued: u64,
    /// Failed: they had used every attempt.
    pub failed: u64,
    /// Cancelled: their session was cancelled.
    pub cancelled: u64,
    /// Sessions these changes ended.
    pub sessions_finished: Vec<SessionFinished>,
}

/// What firing a scheduled sync's cron slot did.
#[derive(Debug, Clone)]
pub enum SlotFired {
    /// Another replica claimed the slot first.
    Taken,
    /// Claimed; the last scheduled session still runs, so none was started.
    Skipped,
    /// Claimed, but there is no active instance to sync: recorded as skipped.
    NothingToSync,
    /// Claimed; this session started.
    Started(SessionCreated),
}

/// A cancelled session, and whether the cancel finished it.
#[derive(Debug, Clone)]
pub struct Cancelled {
    /// The session after the cancel.
    pub session: Session,
    /// Set when the cancel ended it.
    pub finished: Option<SessionFinished>,
}

/// Filters for `session_list`.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// Only sessions with this status.
    pub status: Option<SessionStatus>,
    /// Only sessions of this type.
    pub sync_type: Option<SyncType>,
    /// Page size.
    pub limit: i64,
    /// Sessions to skip.
    pub offset: i64,
}

/// A page of a session's records: keyset paging on the record id.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// Only records in this status.
    pub status: Option<RecordStatus>,
    /// Page size.
    pub limit: i64,
    /// Only records with a larger id (0: from the start).
    pub after: i64,
}

/// Filters for `changes_list`; newest first.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    /// Only changes of the instance of this name (as it was named then).
    pub instance: Option<String>,
    /// Only changes recorded at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only changes of this kind (`baseline`, `added`, `removed`, `changed`).
    pub kind: Option<crate::model::ChangeKind>,
    /// Only privilege-sensitive changes.
    pub sensitive_only: bool,
    /// Leave out `baseline` rows (what an instance held when its history began): the
    /// default of `changes` and `GET /api/v1/changes` unless a kind is asked for.
    pub without_baselines: bool,
    /// Page size.
    pub limit: i64,
    /// Keyset cursor: only changes with a smaller id (the last id of the previous page).
    pub after: Option<i64>,
}

/// syncpool's storage, all roles: one implementation for both databases
/// (`common::SqlStore`), one conformance suite run against both (`tests/conformance.rs`).
/// Every SQL statement lives behind it. A module that needs one role can take that
/// trait alone (`Arc<dyn PipelineWrites>`); `Arc<dyn Store>` upcasts to each.
pub trait Store:
    AdminStore
    + InventoryStore
    + SessionStore
    + OperatorReads
    + PipelineWrites
    + AccessStore
    + LimitStore
    + PolicyStore
    + WebhookStore
{
}

impl<T> Store for T where
    T: AdminStore
        + InventoryStore
        + SessionStore
        + OperatorReads
        + PipelineWrites
        + AccessStore
        + LimitStore
        + PolicyStore
        + WebhookStore
{
}

/// Administration: the schema, planner statistics, cleanup, the scheduler's cron slots and the console's stored secrets.
#[async_trait]
pub trait AdminStore: Send + Sync + 'static {
    /// The pool, for the apalis backend of the same database.
    fn pool(&self) -> DbPool;
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// Applies syncpool's and apalis' migrations; safe when several processes start at once.
    async fn migrate(&self) -> Result<()>;
    /// True when the database answers and every migration is applied.
    async fn ready(&self) -> Result<bool>;
    /// Refreshes the query planner's statistics (SQLite needs them; docs/APALIS.md, "Planner statistics").
    async fn analyze(&self) -> Result<()>;
    /// Deletes finished sessions older than `days`, their records and jobs, expired
    /// leases, and account history older than `history_days`.
    async fn cleanup(&self, days: i64, history_days: i64, audit_days: i64)
    -> Result<CleanupCounts>;
    /// How many of syncpool's migrations are not applied; `None` without any syncpool
    /// table.
    async fn migrations_pending(&self) -> Result<Option<usize>>;
    /// Claims a cron slot; false when another replica claimed it first.
    async fn schedule_slot_claim(
        &self,
        name: &str,
        slot: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool>;
    /// Fires a `scheduled` sync for a cron slot in one transaction: claims the slot
    /// (`Taken` if another replica did), skips it while a scheduled session still runs,
    /// or starts the session and records it on the slot.
    async fn schedule_sync_fire(
        &self,
        name: &str,
        slot: chrono::DateTime<chrono::Utc>,
    ) -> Result<SlotFired>;
    /// The secret called `name`, stored as `candidate` when there is none yet: every
    /// caller, in every process, gets the one stored first (insert if absent, then read).
    async fn secret_get_or_insert(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>>;
    /// Records a signed-out console session's nonce until `expires_at` (its cookie's
    /// expiry: after that the cookie is refused anyway, and cleanup drops the row).
    async fn console_nonce_revoke(
        &self,
        nonce: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<()>;
    /// Whether a console session's nonce was signed out.
    async fn console_nonce_revoked(&self, nonce: &str) -> Result<bool>;
}

/// The inventory: instances, their stored accounts and the account change history.
#[async_trait]
pub trait InventoryStore: Send + Sync + 'static {
    /// Registers an instance; a taken name is a conflict.
    async fn instance_insert(&self, new: &NewInstance) -> Result<Instance>;
    /// All or nothing: a duplicate name rejects the whole list.
    async fn instance_insert_many(&self, new: &[NewInstance]) -> Result<u64>;
    /// Every instance, by name.
    async fn instance_list(&self) -> Result<Vec<Instance>>;
    /// One instance by id.
    async fn instance_get(&self, id: i64) -> Result<Option<Instance>>;
    /// One instance by name.
    async fn instance_get_by_name(&self, name: &str) -> Result<Option<Instance>>;
    /// Deletes an instance and its accounts; false when there was none.
    async fn instance_delete(&self, id: i64) -> Result<bool>;
    /// Replaces an instance's fields (already validated).
    async fn instance_update(&self, id: i64, new: &NewInstance) -> Result<Instance>;
    /// The stored accounts of an instance (deleted ones on request).
    async fn accounts_list(
        &self,
        instance_id: i64,
        include_deleted: bool,
    ) -> Result<Vec<StoredAccount>>;
    /// A page of the account change history, newest first.
    async fn changes_list(&self, filter: &ChangeFilter) -> Result<Vec<AccountChange>>;
}

/// Sessions: starting, reading and cancelling them.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Enqueues a session over `instance_ids` (None: every active instance) atomically.
    async fn session_create(
        &self,
        sync_type: SyncType,
        instance_ids: Option<&[i64]>,
    ) -> Result<SessionCreated>;
    /// A session with all its records.
    async fn session_get(&self, session_id: Uuid) -> Result<Option<SessionDetail>>;
    /// A session's summary and totals, without its records.
    async fn session_summary(&self, session_id: Uuid) -> Result<Option<Session>>;
    /// How many of a session's records are in each status (statuses with none left out).
    async fn session_record_counts(&self, session_id: Uuid) -> Result<Vec<(RecordStatus, i64)>>;
    /// A page of a session's records in id order, with the session's summary (read
    /// first, to find the session and to skip statuses it holds none of, so callers
    /// that show both need not read it again); `None` if there is no such session.
    async fn session_records(
        &self,
        session_id: Uuid,
        filter: &RecordFilter,
    ) -> Result<Option<(Session, Vec<Record>)>>;
    /// A page of sessions, newest first, and how many match in all.
    async fn session_list(&self, filter: &SessionFilter) -> Result<(Vec<Session>, i64)>;
    /// Up to `limit` session ids between `lo` and `hi` (inclusive) in id order: the
    /// sessions whose id starts with a given prefix (the CLI's short ids).
    async fn session_ids_between(&self, lo: Uuid, hi: Uuid, limit: i64) -> Result<Vec<Uuid>>;
    /// Cancels pending records, and running ones whose lease is gone, now; running ones
    /// with a live lease stop at their next heartbeat.
    async fn session_cancel(&self, session_id: Uuid) -> Result<Option<Cancelled>>;
    /// A new session over the instances whose records in a finished session failed or
    /// were cancelled, naming it (`retry_of`). None: no such session; `Conflict`: it is
    /// still running, or none of its records of a registered instance failed or was
    /// cancelled.
    async fn session_retry(&self, session_id: Uuid) -> Result<Option<SessionCreated>>;
}

/// The operator's reads: leases, the queue, the console's instance views, the fleet's gauges.
#[async_trait]
pub trait OperatorReads: Send + Sync + 'static {
    /// Every lease row (live or lapsed, oldest first) with the jobs waiting for its instance.
    async fn locks_list(&self) -> Result<Vec<crate::model::Lease>>;
    /// How many records finished (completed, failed or cancelled) in the last
    /// `seconds`, by the database's clock: `queue`'s "done in the last hour".
    async fn records_finished_since(&self, seconds: i64) -> Result<i64>;
    /// How many workers of syncpool's queue sent apalis a heartbeat in the last
    /// `within_seconds` (apalis' workers table): 0 means no worker is running.
    async fn workers_live(&self, within_seconds: i64) -> Result<i64>;
    /// syncpool's jobs in the apalis queue: depth by state and the job due longest. With
    /// `cap`, each count stops at `cap + 1` (done jobs pile up until cleanup; a page that
    /// must stay fast reads a bounded number of index entries).
    async fn queue_stats(&self, cap: Option<i64>) -> Result<crate::model::QueueStats>;
    /// A page of instances in id order (`after`: the last id of the previous page), each
    /// with its newest record's status and its live account count.
    async fn instance_overview(
        &self,
        limit: i64,
        after: i64,
    ) -> Result<Vec<crate::model::InstanceOverview>>;
    /// An instance's newest records, with their sessions.
    async fn instance_syncs(
        &self,
        instance_id: i64,
        limit: i64,
    ) -> Result<Vec<crate::model::InstanceSync>>;
    /// The fleet-wide figures for the gauges.
    async fn fleet_gauges(&self) -> Result<FleetGauges>;
}

/// The worker pipeline's writes: grant, renew, finish (alone or as one group-commit round), the rescuer, and the queue's own repairs.
#[async_trait]
pub trait PipelineWrites: Send + Sync + 'static {
    /// Step 3 for a batch of jobs, in one transaction.
    async fn lease_grant_batch(
        &self,
        params: &LeaseParams,
        reqs: &[GrantRequest],
    ) -> Result<Vec<GrantOutcome>>;
    /// Heartbeats for a batch of leases, in one transaction.
    async fn lease_renew_batch(
        &self,
        params: &LeaseParams,
        reqs: &[RenewRequest],
    ) -> Result<Vec<RenewOutcome>>;
    /// Step 5 for a batch of syncs, in one transaction; each fenced by its token.
    async fn record_finish_batch(&self, reqs: &[FinishRequest]) -> Result<Vec<FinishOutcome>>;
    /// How long a group-commit round waits, after its first request, for others to join
    /// it (docs/BENCHMARKS.md, "Issue #21, where each target ends").
    fn round_window(&self) -> std::time::Duration;
    /// One group-commit round: finishes, then renewals, then grants. On SQLite in one
    /// all-or-nothing transaction (one write-lock acquisition instead of three); on
    /// PostgreSQL one transaction per kind, in that order, for its lock order (a failure
    /// may leave the earlier kinds committed: every step replays safely).
    async fn pipeline_round(
        &self,
        params: &LeaseParams,
        finishes: &[FinishRequest],
        renews: &[RenewRequest],
        grants: &[GrantRequest],
    ) -> Result<(Vec<FinishOutcome>, Vec<RenewOutcome>, Vec<GrantOutcome>)>;
    /// The rescuer's sweep: running records whose lease is gone (their worker died,
    /// froze past the TTL, lost the lease to a takeover or panicked) are handed to a new
    /// job, failed at the attempt limit, or cancelled with their session. Judged by the
    /// database clock; at most `limit` records per call.
    async fn records_rescue(&self, params: &LeaseParams, limit: i64) -> Result<RescueOutcome>;
    /// Retires a job that can never run (an undecodable payload).
    async fn job_kill(&self, job_id: &str, reason: &str) -> Result<()>;
    /// Puts the apalis jobs still locked by these worker names back to pending.
    async fn jobs_handback(&self, worker_names: &[String]) -> Result<u64>;
}

/// Opens the store a URL names: `sqlite://PATH` (created if missing) or `postgres://...`.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    connect_with(url, true).await
}

/// Opens a database that must already exist with syncpool's current schema, for commands
/// that only read or change existing rows: they never create a file or a table.
pub async fn connect_existing(url: &str) -> Result<Arc<dyn Store>> {
    let store = connect_with(url, false).await?;
    match store.migrations_pending().await? {
        Some(0) => Ok(store),
        None => Err(StoreError::NoDatabase(format!(
            "the database at {} has no syncpool tables: create them with `syncpool migrate`",
            crate::redact::url(url)
        ))),
        Some(n) => Err(StoreError::NoDatabase(format!(
            "the database at {} lacks {n} of this version's migrations: run `syncpool migrate`",
            crate::redact::url(url)
        ))),
    }
}

async fn connect_with(url: &str, create: bool) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url, create).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url, create).await?))
    } else {
        Err(StoreError::UnsupportedUrl(crate::redact::url(url)))
    }
}

/// Session totals changed by one batch, applied once per session at the end of the
/// batch's transaction in ascending session order. Applying them last keeps the hot
/// session rows locked for the shortest time, and one order everywhere means two
/// processes' batches cannot deadlock on them (PostgreSQL).
#[derive(Default)]
pub(crate) struct SessionBumps {
    /// session row -> (successful, failed, cancelled, index of the last request touching it)
    by_session: std::collections::BTreeMap<i64, (i64, i64, i64, usize)>,
}

impl SessionBumps {
    pub(crate) fn add(
        &mut self,
        session_row: i64,
        index: usize,
        ok: i64,
        failed: i64,
        cancelled: i64,
    ) {
        let e = self
            .by_session
            .entry(session_row)
            .or_insert((0, 0, 0, index));
        e.0 += ok;
        e.1 += failed;
        e.2 += cancelled;
        e.3 = e.3.max(index);
    }
    pub(crate) fn into_iter(self) -> impl Iterator<Item = (i64, (i64, i64, i64, usize))> {
        self.by_session.into_iter()
    }
}

/// Reads a status column; the schema's CHECK constraints make a failure a bug.
/// Reads a session id stored as text (SQLite's columns, the history's on both).
pub(crate) fn parse_uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Other(format!("session id {text}: {e}")))
}

pub(crate) fn parse_status<T: std::str::FromStr<Err = String>>(text: String) -> Result<T> {
    text.parse().map_err(StoreError::Other)
}

/// Rejects a list of instance ids of which some do not exist, naming them.
pub(crate) fn check_all_found(wanted: &[i64], found: impl Iterator<Item = i64>) -> Result<()> {
    let found: std::collections::HashSet<i64> = found.collect();
    let missing: Vec<i64> = wanted
        .iter()
        .copied()
        .filter(|id| !found.contains(id))
        .collect();
    // A few ids and a count: 100,000 unknown ids must not make a 700 KB error message.
    const SHOWN: usize = 5;
    match missing.len() {
        0 => Ok(()),
        n => {
            let some: Vec<String> = missing.iter().take(SHOWN).map(i64::to_string).collect();
            let more = if n > SHOWN {
                format!(" and {} more ({n} in all)", n - SHOWN)
            } else {
                String::new()
            };
            Err(StoreError::NotFound(format!(
                "unknown instance id{}: {}{more}",
                if n == 1 { "" } else { "s" },
                some.join(", ")
            )))
        }
    }
}

/// Decides what a finished session's status is, from its final totals.
pub fn final_status(
    cancel_requested: bool,
    successful: i64,
    failed: i64,
    cancelled: i64,
) -> SessionStatus {
    if cancel_requested || cancelled > 0 {
        SessionStatus::Cancelled
    } else if failed == 0 {
        SessionStatus::Completed
    } else if successful == 0 {
        SessionStatus::Failed
    } else {
        SessionStatus::CompletedWithErrors
    }
}

pub use crate::history::StoredRow;
