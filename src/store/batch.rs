//! The pipeline's batch steps (grant and finish; docs/ARCHITECTURE.md), written once for both
//! databases. Each backend supplies [`BatchOps`]: a handful of set-based statements that
//! each touch all rows of a batch at once, so a batch costs about a dozen statements
//! whatever its size. The decisions (stale? busy? fenced? retry?) are made here, in Rust,
//! between reading the rows (locked, on PostgreSQL) and writing them.
//!
//! Row order: records, then leases, then session totals (ascending), then the fleet-wide
//! session metrics (`session_stats`, `session_last_finished`, last). Every batch of every
//! process follows it, so two processes' transactions cannot deadlock.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::future::BoxFuture;

use super::*;
use crate::queue::{self, JobPayload};

/// A record as a batch step sees it.
pub(crate) struct RecState {
    pub instance_id: i64,
    pub status: RecordStatus,
    pub attempts: i64,
    pub job_id: Option<String>,
    pub lock_token: Option<i64>,
    pub session_row: i64,
    pub session_uuid: String,
    pub cancel_requested: bool,
    /// The last grant or finish request that wrote this record (replay on retry).
    pub request_id: Option<String>,
    /// `(total, added, removed, changed)` accounts of a completed record.
    pub accounts: (Option<i64>, Option<i64>, Option<i64>, Option<i64>),
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
    pub sync_type: String,
}

/// Adds to a session's totals in the caller's transaction and finishes the session when
/// its last record became terminal (invariant 3). The one place that decides it.
pub(crate) async fn session_bump<O: BatchOps + ?Sized>(
    ops: &mut O,
    session_row: i64,
    ok: i64,
    failed: i64,
    cancelled: i64,
) -> Result<Option<SessionFinished>> {
    let t = ops.session_add(session_row, ok, failed, cancelled).await?;
    if t.successful + t.failed + t.cancelled < t.total || t.status.is_finished() {
        return Ok(None);
    }
    let status = final_status(t.cancel_requested, t.successful, t.failed, t.cancelled);
    let (start, end) = ops.session_close(session_row, status).await?;
    let fin = SessionFinished {
        sync_type: t.sync_type,
        status,
        duration_seconds: (end - start).num_microseconds().unwrap_or(0) as f64 / 1e6,
        success_rate: if t.total > 0 {
            t.successful as f64 / t.total as f64
        } else {
            1.0
        },
    };
    // In the same transaction: the fleet's session metrics count each session exactly
    // once, whichever process finished it and whatever it crashed into afterwards.
    ops.session_stats_add(&fin, end).await?;
    Ok(Some(fin))
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
    pub session_uuid: String,
    pub record_id: i64,
    pub token: i64,
}

pub(crate) struct NewJob {
    pub id: String,
    pub payload: Vec<u8>,
    pub delay: Duration,
}

/// Set-based statements over one open transaction. Every method handles an empty slice
/// by doing nothing.
#[async_trait]
pub(crate) trait BatchOps: Send {
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
    /// Stamps records with the request that wrote them: `(record_id, request_id)`.
    async fn records_mark_request(&mut self, rows: &[(i64, &str)]) -> Result<()>;
    /// Sets a session's cancel flag.
    async fn session_request_cancel(&mut self, session_row: i64) -> Result<()>;
    /// The database's clock in Unix milliseconds: lock waits are judged by it, as leases
    /// are, so that workers whose clocks disagree never misjudge another's stamp.
    async fn db_now_ms(&mut self) -> Result<i64>;
    /// `n` fresh fencing tokens from the database-wide counter.
    async fn tokens_next(&mut self, n: usize) -> Result<Vec<i64>>;
    /// Takes (inserts or takes over) the leases; the caller has checked they are free.
    async fn locks_take(&mut self, owner: &str, ttl: Duration, leases: &[NewLease]) -> Result<()>;
    /// Expires the leases `(instance_id, token)` still carrying these tokens.
    async fn locks_release(&mut self, leases: &[(i64, i64)]) -> Result<()>;
    /// Marks records running: `(record_id, lock_wait_ms, token, request_id)`; returns
    /// their attempts. The request id is written in the same UPDATE: each record row is
    /// written once per step (a second UPDATE was half of PostgreSQL's work at 100,000
    /// records, docs/BENCHMARKS.md).
    async fn records_start(
        &mut self,
        owner: &str,
        rows: &[(i64, i64, i64, &str)],
    ) -> Result<HashMap<i64, i64>>;
    /// Makes records terminal: `(record_id, status, error)`.
    async fn records_end(&mut self, rows: &[(i64, RecordStatus, Option<String>)]) -> Result<()>;
    /// `(record_id, total, added, removed, changed, request_id)`.
    async fn records_complete(&mut self, rows: &[(i64, i64, i64, i64, i64, &str)]) -> Result<()>;
    /// Points records at a new job: `(record_id, job_id, error)`; with `to_pending` the
    /// record also goes back to `pending` (a retry), else only its job changes (busy).
    async fn records_requeue(
        &mut self,
        rows: &[(i64, String, Option<String>)],
        to_pending: bool,
    ) -> Result<()>;
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
    async fn accounts_insert(&mut self, rows: &[(i64, &Account)]) -> Result<()>;
    /// Updates accounts' attributes and privileges and clears `deleted_at`: one
    /// statement for any number, so a large diff is not a statement per account.
    async fn accounts_update(&mut self, rows: &[(i64, &Account)]) -> Result<()>;
    /// Marks `(instance_id, username, host)` accounts deleted, in one statement.
    async fn accounts_mark_deleted(&mut self, rows: &[(i64, &str, &str)]) -> Result<()>;
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
}

/// A session found by its public id.
pub(crate) struct FoundSession {
    pub row: i64,
    pub finished: bool,
}

/// One write transaction's work, over the database's [`BatchOps`]: run by
/// [`super::common::Backend::write`] and committed if it returns `Ok`.
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

/// Cancels the session `session_id`: `None` if there is none, `Some(None)` if it had
/// finished already or its running records end it later.
pub(crate) async fn cancel_by_id<O: BatchOps + ?Sized>(
    ops: &mut O,
    session_id: uuid::Uuid,
) -> Result<Option<Option<SessionFinished>>> {
    match ops.session_find(session_id).await? {
        None => Ok(None),
        Some(found) if found.finished => Ok(Some(None)),
        Some(found) => cancel(ops, found.row).await.map(Some),
    }
}

/// A history row with the sync it came from.
pub(crate) struct NewChange {
    pub instance_id: i64,
    pub instance_name: String,
    pub session_id: String,
    pub record_id: i64,
    pub change: crate::history::AccountChangeRow,
}

fn sorted_unique(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Step 3 for a batch of jobs.
pub(crate) async fn grant<O: BatchOps + ?Sized>(
    ops: &mut O,
    p: &LeaseParams,
    reqs: &[GrantRequest],
) -> Result<Vec<GrantOutcome>> {
    let recs = ops
        .records_load(&sorted_unique(
            reqs.iter().map(|r| r.payload.record_id).collect(),
        ))
        .await?;
    let instance_ids = sorted_unique(reqs.iter().map(|r| r.payload.instance_id).collect());
    let locks = ops.locks_load(&instance_ids).await?;
    let instances = ops.instances_load(&instance_ids).await?;

    let mut out: Vec<Option<GrantOutcome>> = vec![None; reqs.len()];
    let mut ack = vec![];
    let mut ended: Vec<(i64, RecordStatus, Option<String>)> = vec![];
    let mut bumps = SessionBumps::default();
    let mut busy_jobs = vec![];
    let mut busy_records = vec![];
    let mut granted: Vec<usize> = vec![];
    let mut taken: HashSet<i64> = HashSet::new();
    let mut seen_records: HashSet<i64> = HashSet::new();
    let now_ms = ops.db_now_ms().await?;
    // Time waited so far, from the stamp the first busy grant wrote with this same clock.
    let waited = |req: &GrantRequest| {
        req.payload
            .waiting_since_ms
            .map(|w| (now_ms - w).max(0))
            .unwrap_or(0)
    };
    for (i, req) in reqs.iter().enumerate() {
        let rid = req.payload.record_id;
        let iid = req.payload.instance_id;
        if let Some(rec) = recs.get(&rid)
            && rec.request_id.as_deref() == Some(req.request_id.as_str())
        {
            // A retry of this very grant after a commit whose outcome the caller never
            // learned: answer what was decided then, while the lease is still ours.
            out[i] = Some(
                match (
                    lease_alive(rec, &locks),
                    instances.get(&iid),
                    rec.lock_token,
                ) {
                    (true, Some(instance), Some(token)) => GrantOutcome::Granted {
                        token,
                        instance: Box::new(instance.clone()),
                        attempt: rec.attempts,
                        takeover: false,
                        lock_wait_ms: waited(req),
                    },
                    _ => GrantOutcome::Stale,
                },
            );
            seen_records.insert(rid);
            continue;
        }
        let Some(rec) = recs.get(&rid).filter(|r| {
            (r.status == RecordStatus::Pending || r.status == RecordStatus::Running)
                && r.job_id.as_deref() == Some(req.job_id.as_str())
        }) else {
            ack.push(req.job_id.clone());
            out[i] = Some(GrantOutcome::Stale);
            continue;
        };
        if !seen_records.insert(rid) {
            // The same job twice in one batch (duplicate delivery): the first one decides.
            out[i] = Some(GrantOutcome::Stale);
            continue;
        }
        let lock = locks.get(&iid);
        let live = lock.is_some_and(|l| l.live) || taken.contains(&iid);
        // Ends the record without a sync (cancelled, or failed before it could start).
        macro_rules! end {
            ($status:expr, $error:expr) => {
                end!($status, $error, false)
            };
            ($status:expr, $error:expr, $lock_timeout:expr) => {{
                let (status, error): (RecordStatus, Option<String>) = ($status, $error);
                ack.push(req.job_id.clone());
                ended.push((rid, status, error.clone()));
                let (failed, cancelled) = if status == RecordStatus::Cancelled {
                    (0, 1)
                } else {
                    (1, 0)
                };
                bumps.add(rec.session_row, i, 0, failed, cancelled);
                out[i] = Some(match error {
                    None => GrantOutcome::Cancelled {
                        session_finished: None,
                    },
                    Some(error) => GrantOutcome::Failed {
                        lock_timeout: $lock_timeout,
                        error,
                        session_finished: None,
                    },
                });
            }};
        }
        if rec.cancel_requested {
            if rec.status == RecordStatus::Running && live {
                // Its holder is still syncing and sees the cancel at its next heartbeat.
                ack.push(req.job_id.clone());
                out[i] = Some(GrantOutcome::Stale);
            } else {
                end!(RecordStatus::Cancelled, None);
            }
            continue;
        }
        if live {
            if rec.status == RecordStatus::Pending
                && waited(req) >= p.lock_wait_timeout.as_millis() as i64
            {
                let error = format!(
                    "gave up waiting for the lease of instance {iid}: another sync held it for more than {} s",
                    p.lock_wait_timeout.as_secs()
                );
                end!(RecordStatus::Failed, Some(error), true);
            } else {
                // Wait without holding a worker slot: a delayed copy of this job takes over.
                let mut payload = req.payload.clone();
                payload.waiting_since_ms.get_or_insert(now_ms);
                let id = queue::new_job_id();
                busy_jobs.push(NewJob {
                    id: id.clone(),
                    payload: payload.to_bytes(),
                    delay: p.busy_retry,
                });
                busy_records.push((rid, id, None));
                ack.push(req.job_id.clone());
                out[i] = Some(GrantOutcome::Busy);
            }
            continue;
        }
        if rec.attempts + 1 > p.max_attempts {
            // Only takeovers get here: a sync that keeps losing its worker must end.
            let error = format!(
                "sync abandoned: its worker stopped during each of {} attempts",
                rec.attempts
            );
            end!(RecordStatus::Failed, Some(error));
            continue;
        }
        if !instances.contains_key(&iid) {
            end!(
                RecordStatus::Failed,
                Some(format!(
                    "instance {iid} was removed before it could be synced"
                ))
            );
            continue;
        }
        taken.insert(iid);
        granted.push(i);
    }

    let tokens = ops.tokens_next(granted.len()).await?;
    let leases: Vec<NewLease> = granted
        .iter()
        .zip(&tokens)
        .map(|(&i, &token)| NewLease {
            instance_id: reqs[i].payload.instance_id,
            session_uuid: recs[&reqs[i].payload.record_id].session_uuid.clone(),
            record_id: reqs[i].payload.record_id,
            token,
        })
        .collect();
    let owner = reqs.first().map(|r| r.owner.as_str()).unwrap_or_default();
    // Records first (already locked by records_load), then leases: the one order.
    let starts: Vec<(i64, i64, i64, &str)> = granted
        .iter()
        .zip(&tokens)
        .map(|(&i, &t)| {
            let r = &reqs[i];
            (r.payload.record_id, waited(r), t, r.request_id.as_str())
        })
        .collect();
    let attempts = ops.records_start(owner, &starts).await?;
    ops.records_end(&ended).await?;
    ops.records_requeue(&busy_records, false).await?;
    ops.locks_take(owner, p.ttl, &leases).await?;
    ops.jobs_push(&busy_jobs).await?;
    ops.jobs_ack(&ack).await?;
    ops.sessions_start(&sorted_unique(
        granted
            .iter()
            .map(|&i| recs[&reqs[i].payload.record_id].session_row)
            .collect(),
    ))
    .await?;
    for (&i, &token) in granted.iter().zip(&tokens) {
        let req = &reqs[i];
        out[i] = Some(GrantOutcome::Granted {
            token,
            instance: Box::new(instances[&req.payload.instance_id].clone()),
            attempt: attempts.get(&req.payload.record_id).copied().unwrap_or(1),
            takeover: locks
                .get(&req.payload.instance_id)
                .is_some_and(|l| l.holder_running),
            lock_wait_ms: waited(req),
        });
    }
    for (session, (s, f, c, last)) in bumps.into_iter() {
        if let Some(fin) = session_bump(ops, session, s, f, c).await?
            && let Some(o) = out[last].as_mut()
        {
            o.set_session_finished(fin);
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or(GrantOutcome::Stale))
        .collect())
}

/// Step 5 for a batch of finished syncs.
pub(crate) async fn finish<O: BatchOps + ?Sized>(
    ops: &mut O,
    reqs: &[FinishRequest],
) -> Result<Vec<FinishOutcome>> {
    let recs = ops
        .records_load(&sorted_unique(reqs.iter().map(|r| r.record_id).collect()))
        .await?;
    let locks = ops
        .locks_load(&sorted_unique(reqs.iter().map(|r| r.instance_id).collect()))
        .await?;
    let mut out: Vec<FinishOutcome> = reqs
        .iter()
        .map(|_| FinishOutcome {
            record: RecordOutcome::Fenced,
            session_finished: None,
            changes: Default::default(),
        })
        .collect();
    let mut seen_records = HashSet::new();
    // The fencing check: the lease still carries our token, and the record is still the
    // running attempt that token started. The lease need not be live: a token is only
    // replaced by a grant, so an expired lease nobody took over still fences correctly
    // (the rescuer moves such a record on first if it gets there first).
    let mut valid: Vec<usize> = vec![];
    for (i, r) in reqs.iter().enumerate() {
        let Some(rec) = recs.get(&r.record_id) else {
            continue;
        };
        if rec.request_id.as_deref() == Some(r.request_id.as_str()) {
            // A retry of a finish that committed: replay what the record says it did.
            out[i].record = replayed(rec, &r.result);
            continue;
        }
        let current = locks
            .get(&r.instance_id)
            .is_some_and(|l| l.token == r.token)
            && rec.status == RecordStatus::Running
            && rec.lock_token == Some(r.token);
        if current && seen_records.insert(r.record_id) {
            valid.push(i);
        }
    }
    // A completed sync of an instance deleted meanwhile must not write accounts for it
    // (instances_load share-locks the rows on PostgreSQL, so the delete waits or wins).
    let completed_instances = ops
        .instances_load(&sorted_unique(
            valid
                .iter()
                .filter(|&&i| matches!(reqs[i].result, SyncResult::Completed(_)))
                .map(|&i| reqs[i].instance_id)
                .collect(),
        ))
        .await?;
    let gone: HashSet<usize> = valid
        .iter()
        .copied()
        .filter(|&i| {
            matches!(reqs[i].result, SyncResult::Completed(_))
                && !completed_instances.contains_key(&reqs[i].instance_id)
        })
        .collect();

    let completed: Vec<usize> = valid
        .iter()
        .copied()
        .filter(|&i| matches!(reqs[i].result, SyncResult::Completed(_)) && !gone.contains(&i))
        .collect();
    let stored = ops
        .accounts_load(&sorted_unique(
            completed.iter().map(|&i| reqs[i].instance_id).collect(),
        ))
        .await?;
    let mut inserts: Vec<(i64, &Account)> = vec![];
    let mut updates: Vec<(i64, &Account)> = vec![];
    let mut deletes: Vec<(i64, String, String)> = vec![];
    let mut completes = vec![];
    let mut changes: Vec<NewChange> = vec![];
    let mut history_start = vec![];
    for &i in &completed {
        let SyncResult::Completed(found) = &reqs[i].result else {
            continue;
        };
        let iid = reqs[i].instance_id;
        let diff = AccountDiff::compute(found, stored.get(&iid).map_or(&[], Vec::as_slice));
        // History in the inventory's own transaction, so it is fenced by the same token
        // and a replayed finish (same request id) cannot record it twice.
        let instance = &completed_instances[&iid];
        let baseline = instance.history_since.is_none();
        if baseline {
            history_start.push(iid);
        }
        let rows = crate::history::rows_for_sync(found, &diff, baseline);
        out[i].changes = crate::history::ChangeTally::of(&rows);
        changes.extend(rows.into_iter().map(|change| NewChange {
            instance_id: iid,
            instance_name: instance.name.clone(),
            session_id: reqs[i].session_id.clone(),
            record_id: reqs[i].record_id,
            change,
        }));
        inserts.extend(diff.added.iter().map(|a| (iid, *a)));
        updates.extend(
            diff.changed
                .iter()
                .map(|(a, _)| *a)
                .chain(diff.revived.iter().copied())
                .map(|a| (iid, a)),
        );
        deletes.extend(
            diff.removed
                .iter()
                .map(|(u, h, ..)| (iid, u.clone(), h.clone())),
        );
        let (total, added, removed, changed) = (
            found.len() as i64,
            (diff.added.len() + diff.revived.len()) as i64,
            diff.removed.len() as i64,
            diff.changed.len() as i64,
        );
        completes.push((
            reqs[i].record_id,
            total,
            added,
            removed,
            changed,
            reqs[i].request_id.as_str(),
        ));
        out[i].record = RecordOutcome::Completed {
            total,
            added,
            removed,
            changed,
        };
    }
    ops.accounts_insert(&inserts).await?;
    ops.accounts_update(&updates).await?;
    let deletes: Vec<(i64, &str, &str)> = deletes
        .iter()
        .map(|(i, u, h)| (*i, u.as_str(), h.as_str()))
        .collect();
    ops.accounts_mark_deleted(&deletes).await?;
    ops.changes_insert(&changes).await?;
    ops.instances_history_start(&history_start).await?;

    let mut ended = vec![];
    let mut retries = vec![];
    let mut retry_jobs = vec![];
    let mut handbacks = vec![];
    let mut handback_jobs = vec![];
    let mut ack = vec![];
    let mut bumps = SessionBumps::default();
    for &i in &valid {
        let r = &reqs[i];
        let rec = &recs[&r.record_id];
        match &r.result {
            SyncResult::Completed(_) if gone.contains(&i) => {
                ended.push((
                    r.record_id,
                    RecordStatus::Failed,
                    Some("the instance was deleted during its sync; nothing was stored".into()),
                ));
                ack.push(r.job_id.clone());
                bumps.add(rec.session_row, i, 0, 1, 0);
                out[i].record = RecordOutcome::Failed;
            }
            SyncResult::Completed(_) => {
                ack.push(r.job_id.clone());
                bumps.add(rec.session_row, i, 1, 0, 0);
            }
            SyncResult::Failed {
                error,
                retry_after: None,
            } => {
                ended.push((r.record_id, RecordStatus::Failed, Some(error.clone())));
                ack.push(r.job_id.clone());
                bumps.add(rec.session_row, i, 0, 1, 0);
                out[i].record = RecordOutcome::Failed;
            }
            SyncResult::Cancelled => {
                ended.push((r.record_id, RecordStatus::Cancelled, None));
                ack.push(r.job_id.clone());
                bumps.add(rec.session_row, i, 0, 0, 1);
                out[i].record = RecordOutcome::Cancelled;
            }
            SyncResult::Failed {
                error,
                retry_after: Some(delay),
            } => {
                let payload = JobPayload {
                    session_id: r.session_id.clone(),
                    record_id: r.record_id,
                    instance_id: r.instance_id,
                    attempt: rec.attempts + 1,
                    waiting_since_ms: None,
                };
                let id = queue::new_job_id();
                retry_jobs.push(NewJob {
                    id: id.clone(),
                    payload: payload.to_bytes(),
                    delay: *delay,
                });
                retries.push((r.record_id, id, Some(error.clone())));
                ack.push(r.job_id.clone());
                out[i].record = RecordOutcome::Retrying {
                    next_attempt: rec.attempts + 1,
                };
            }
            SyncResult::HandedBack => {
                handbacks.push(r.record_id);
                handback_jobs.push(r.job_id.clone());
                out[i].record = RecordOutcome::HandedBack;
            }
        }
    }
    ops.records_complete(&completes).await?;
    ops.records_end(&ended).await?;
    ops.records_requeue(&retries, true).await?;
    ops.records_handback(&handbacks).await?;
    // Completed records got their request id with their counts; the others get it here.
    let stamped: HashSet<i64> = completes.iter().map(|c| c.0).collect();
    let stamps: Vec<(i64, &str)> = valid
        .iter()
        .filter(|&&i| !stamped.contains(&reqs[i].record_id))
        .map(|&i| (reqs[i].record_id, reqs[i].request_id.as_str()))
        .collect();
    ops.records_mark_request(&stamps).await?;
    let releases: Vec<(i64, i64)> = valid
        .iter()
        .map(|&i| (reqs[i].instance_id, reqs[i].token))
        .collect();
    ops.locks_release(&releases).await?;
    ops.jobs_push(&retry_jobs).await?;
    ops.jobs_ack(&ack).await?;
    ops.jobs_release(&handback_jobs).await?;
    for (session, (s, f, c, last)) in bumps.into_iter() {
        out[last].session_finished = session_bump(ops, session, s, f, c).await?;
    }
    Ok(out)
}

/// The outcome a committed finish had, read back from the record it wrote.
fn replayed(rec: &RecState, result: &SyncResult) -> RecordOutcome {
    match (rec.status, result) {
        (RecordStatus::Completed, _) => {
            let (t, a, r, c) = rec.accounts;
            RecordOutcome::Completed {
                total: t.unwrap_or(0),
                added: a.unwrap_or(0),
                removed: r.unwrap_or(0),
                changed: c.unwrap_or(0),
            }
        }
        (RecordStatus::Failed, _) => RecordOutcome::Failed,
        (RecordStatus::Cancelled, _) => RecordOutcome::Cancelled,
        (_, SyncResult::HandedBack) => RecordOutcome::HandedBack,
        (_, SyncResult::Failed { .. }) => RecordOutcome::Retrying {
            next_attempt: rec.attempts + 1,
        },
        // The record moved on since (a later grant or the rescuer): nothing to replay.
        _ => RecordOutcome::Fenced,
    }
}

/// True when `rec` is running under a live lease that carries its own token.
fn lease_alive(rec: &RecState, locks: &HashMap<i64, LockState>) -> bool {
    rec.status == RecordStatus::Running
        && locks
            .get(&rec.instance_id)
            .is_some_and(|l| l.live && Some(l.token) == rec.lock_token)
}

/// The rescuer's sweep (see [`Store::records_rescue`]). Rows are locked in the one order:
/// records, leases, sessions.
pub(crate) async fn rescue<O: BatchOps + ?Sized>(
    ops: &mut O,
    p: &LeaseParams,
    limit: i64,
) -> Result<RescueOutcome> {
    let ids = ops.records_orphaned(limit).await?;
    let mut outcome = RescueOutcome::default();
    if ids.is_empty() {
        return Ok(outcome);
    }
    let recs = ops.records_load(&ids).await?;
    let locks = ops
        .locks_load(&sorted_unique(
            recs.values().map(|r| r.instance_id).collect(),
        ))
        .await?;
    let mut ended: Vec<(i64, RecordStatus, Option<String>)> = vec![];
    let mut requeued = vec![];
    let mut jobs = vec![];
    let mut ack = vec![];
    let mut bumps = SessionBumps::default();
    let mut sorted: Vec<(&i64, &RecState)> = recs.iter().collect();
    sorted.sort_by_key(|(id, _)| **id);
    for (i, (&rid, rec)) in sorted.into_iter().enumerate() {
        // Re-checked under the row locks: the sweep's read may be out of date.
        if rec.status != RecordStatus::Running || lease_alive(rec, &locks) {
            continue;
        }
        ack.extend(rec.job_id.clone());
        if rec.cancel_requested {
            ended.push((rid, RecordStatus::Cancelled, None));
            bumps.add(rec.session_row, i, 0, 0, 1);
            outcome.cancelled += 1;
        } else if rec.attempts >= p.max_attempts {
            ended.push((
                rid,
                RecordStatus::Failed,
                Some(format!(
                    "sync abandoned: its worker stopped or lost the lease during each of {} attempts",
                    rec.attempts
                )),
            ));
            bumps.add(rec.session_row, i, 0, 1, 0);
            outcome.failed += 1;
        } else {
            let payload = JobPayload {
                session_id: rec.session_uuid.clone(),
                record_id: rid,
                instance_id: rec.instance_id,
                attempt: rec.attempts + 1,
                waiting_since_ms: None,
            };
            let id = queue::new_job_id();
            jobs.push(NewJob {
                id: id.clone(),
                payload: payload.to_bytes(),
                delay: Duration::ZERO,
            });
            requeued.push((
                rid,
                id,
                Some(format!(
                    "attempt {} lost its lease (worker stopped, frozen or cut off); handed to a new attempt",
                    rec.attempts
                )),
            ));
            outcome.requeued += 1;
        }
    }
    ops.records_end(&ended).await?;
    ops.records_requeue(&requeued, true).await?;
    ops.jobs_push(&jobs).await?;
    ops.jobs_ack(&ack).await?;
    for (session, (s, f, c, _)) in bumps.into_iter() {
        if let Some(fin) = session_bump(ops, session, s, f, c).await? {
            outcome.sessions_finished.push(fin);
        }
    }
    Ok(outcome)
}

/// Cancels a session: its pending records, and running ones whose lease is gone, end now;
/// running ones under a live lease see the flag at their next heartbeat. Rows are locked
/// in the pipeline's one order (records, leases, then the session row last), so a cancel
/// racing grants and finishes cannot deadlock with them on PostgreSQL.
pub(crate) async fn cancel<O: BatchOps + ?Sized>(
    ops: &mut O,
    session_row: i64,
) -> Result<Option<SessionFinished>> {
    let ids = ops.session_open_records(session_row).await?;
    let recs = ops.records_load(&ids).await?;
    let locks = ops
        .locks_load(&sorted_unique(
            recs.values()
                .filter(|r| r.status == RecordStatus::Running)
                .map(|r| r.instance_id)
                .collect(),
        ))
        .await?;
    let mut ended: Vec<(i64, RecordStatus, Option<String>)> = vec![];
    let mut ack = vec![];
    for (&rid, rec) in &recs {
        let open = rec.status == RecordStatus::Pending
            || (rec.status == RecordStatus::Running && !lease_alive(rec, &locks));
        if open {
            ended.push((rid, RecordStatus::Cancelled, None));
            // Its queued job would only find a terminal record: retire it now so the
            // queue depth tells the truth.
            ack.extend(rec.job_id.clone());
        }
    }
    ended.sort_by_key(|e| e.0);
    ops.records_end(&ended).await?;
    ops.jobs_ack(&ack).await?;
    ops.session_request_cancel(session_row).await?;
    session_bump(ops, session_row, 0, 0, ended.len() as i64).await
}
