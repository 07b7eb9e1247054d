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

pub(crate) mod drift;
mod limits;
mod ops;
mod plan;

pub(crate) use drift::{DriftOps, NewEvent, OpenViolation, ViolationWrites};
pub(crate) use limits::{LimitOps, LimitWait, keys_of, normal_key};
pub(crate) use ops::*;

use super::*;
use crate::queue::{self, JobPayload};

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
    let data = serde_json::json!({
        "session_id": t.session_id, "sync_type": t.sync_type, "status": status,
        "total": t.total, "successful": t.successful, "failed": t.failed,
        "cancelled": t.cancelled, "duration_seconds": fin.duration_seconds,
    });
    let event = NewEvent::new(crate::model::EventType::SessionFinished, None, data);
    ops.events_insert(&[event]).await?;
    Ok(Some(fin))
}

fn sorted_unique(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Step 3 for a batch of jobs: read under lock, decide ([`plan::plan_grants`]), write.
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
    let now_ms = ops.db_now_ms().await?;
    let window = limits::owed_window(now_ms, p.busy_retry);
    let limits = limits::Limits::load(ops, &instances, window).await?;
    let st = plan::GrantState {
        recs: &recs,
        locks: &locks,
        instances: &instances,
        limits: &limits,
        now_ms,
    };
    let plan = plan::plan_grants(p, reqs, &st);
    write_grants(ops, p, reqs, &st, plan).await
}

async fn write_grants<O: BatchOps + ?Sized>(
    ops: &mut O,
    p: &LeaseParams,
    reqs: &[GrantRequest],
    st: &plan::GrantState<'_>,
    mut plan: plan::GrantPlan,
) -> Result<Vec<GrantOutcome>> {
    let tokens = ops.tokens_next(plan.granted.len()).await?;
    let granted: Vec<(&GrantRequest, i64)> =
        plan.granted.iter().map(|&i| &reqs[i]).zip(tokens).collect();
    let leases: Vec<NewLease> = granted
        .iter()
        .map(|&(r, token)| NewLease {
            instance_id: r.payload.instance_id,
            session_uuid: st.recs[&r.payload.record_id].session_uuid,
            record_id: r.payload.record_id,
            token,
        })
        .collect();
    let owner = reqs.first().map(|r| r.owner.as_str()).unwrap_or_default();
    // Records first (already locked by records_load), then leases: the one order.
    let starts: Vec<RecordStart> = granted
        .iter()
        .map(|&(r, token)| RecordStart {
            record_id: r.payload.record_id,
            lock_wait_ms: st.waited(r),
            token,
            request_id: r.request_id.clone(),
        })
        .collect();
    let attempts = ops.records_start(owner, &starts).await?;
    ops.records_end(&plan.ended).await?;
    ops.records_requeue(&plan.busy_records, false).await?;
    ops.records_requeue(&plan.takeover_waits, true).await?;
    ops.records_limit_wait(&plan.limit_waits).await?;
    ops.locks_take(owner, p.ttl, &leases).await?;
    ops.jobs_push(&plan.busy_jobs).await?;
    ops.jobs_ack(&plan.ack).await?;
    let sessions = granted
        .iter()
        .map(|(r, _)| st.recs[&r.payload.record_id].session_row);
    ops.sessions_start(&sorted_unique(sessions.collect()))
        .await?;
    for (&i, &(req, token)) in plan.granted.iter().zip(&granted) {
        let iid = req.payload.instance_id;
        plan.out[i] = Some(GrantOutcome::Granted {
            token,
            instance: Box::new(st.instances[&iid].clone()),
            attempt: attempts.get(&req.payload.record_id).copied().unwrap_or(1),
            takeover: st.locks.get(&iid).is_some_and(|l| l.holder_running),
            lock_wait_ms: st.waited(req),
        });
    }
    for (session, (s, f, c, last)) in plan.bumps.into_iter() {
        if let Some(fin) = session_bump(ops, session, s, f, c).await?
            && let Some(o) = plan.out[last].as_mut()
        {
            o.set_session_finished(fin);
        }
    }
    Ok(plan
        .out
        .into_iter()
        .map(|o| o.unwrap_or(GrantOutcome::Stale))
        .collect())
}

/// Step 5 for a batch of finished syncs: read under lock, fence, decide
/// ([`plan::plan_inventory`], [`plan::plan_records`]), write.
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
    let (mut out, valid) = plan::fence_finishes(reqs, &recs, &locks);
    let is_completed = |i: &usize| matches!(reqs[*i].result, SyncResult::Completed(_));
    // A completed sync of an instance deleted meanwhile must not write accounts for it
    // (instances_load share-locks the rows on PostgreSQL, so the delete waits or wins).
    let instances = ops
        .instances_load(&sorted_unique(
            valid
                .iter()
                .filter(|i| is_completed(i))
                .map(|&i| reqs[i].instance_id)
                .collect(),
        ))
        .await?;
    let (completed, gone): (Vec<usize>, Vec<usize>) = valid
        .iter()
        .copied()
        .filter(is_completed)
        .partition(|&i| instances.contains_key(&reqs[i].instance_id));
    let stored = ops
        .accounts_load(&sorted_unique(
            completed.iter().map(|&i| reqs[i].instance_id).collect(),
        ))
        .await?;
    let inventory = plan::plan_inventory(reqs, &completed, &instances, &stored, &mut out);
    let gone: HashSet<usize> = gone.into_iter().collect();
    let records = plan::plan_records(reqs, &recs, &valid, &gone, &mut out);
    // Read after the instances' share locks: a new policy's evaluation of an instance
    // (which locks it for update) ends before this reads, or starts after this commits.
    let policy = drift::current(ops).await?;
    let synced: Vec<(&Instance, Vec<crate::policy::AccountView<'_>>)> = match &policy {
        None => vec![],
        Some(_) => completed
            .iter()
            .filter_map(|&i| match &reqs[i].result {
                SyncResult::Completed(found) => Some((
                    &instances[&reqs[i].instance_id],
                    found.iter().map(Into::into).collect(),
                )),
                _ => None,
            })
            .collect(),
    };
    let drift = policy.as_ref().map(|p| (p, synced.as_slice()));
    write_finishes(ops, reqs, &valid, inventory, records, drift, &mut out).await?;
    Ok(out)
}

/// The policy in force and the instances a finish syncs, with their new accounts.
type Synced<'a, 'b> = Option<(
    &'a Policy,
    &'a [(&'a Instance, Vec<crate::policy::AccountView<'b>>)],
)>;

async fn write_finishes<O: BatchOps + ?Sized>(
    ops: &mut O,
    reqs: &[FinishRequest],
    valid: &[usize],
    inventory: plan::InventoryPlan<'_>,
    records: plan::RecordsPlan,
    drift: Synced<'_, '_>,
    out: &mut [FinishOutcome],
) -> Result<()> {
    ops.accounts_insert(&inventory.inserts).await?;
    ops.accounts_update(&inventory.updates).await?;
    ops.accounts_mark_deleted(&inventory.deletes).await?;
    ops.changes_insert(&inventory.changes).await?;
    ops.events_insert(&drift::sensitive_events(&inventory.changes))
        .await?;
    if let Some((policy, synced)) = drift {
        drift::after_syncs(ops, policy, synced).await?;
    }
    ops.instances_history_start(&inventory.history_start)
        .await?;
    ops.records_complete(&inventory.completes).await?;
    ops.records_end(&records.ended).await?;
    ops.records_requeue(&records.retries, true).await?;
    ops.records_handback(&records.handbacks).await?;
    // Completed records got their request id with their counts; the others get it here.
    let stamped: HashSet<i64> = inventory.completes.iter().map(|c| c.record_id).collect();
    let stamps: Vec<RequestStamp> = valid
        .iter()
        .map(|&i| &reqs[i])
        .filter(|r| !stamped.contains(&r.record_id))
        .map(|r| RequestStamp {
            record_id: r.record_id,
            request_id: r.request_id.clone(),
        })
        .collect();
    ops.records_mark_request(&stamps).await?;
    let releases: Vec<LeaseKey> = valid
        .iter()
        .map(|&i| LeaseKey {
            instance_id: reqs[i].instance_id,
            token: reqs[i].token,
        })
        .collect();
    ops.locks_release(&releases).await?;
    ops.jobs_push(&records.retry_jobs).await?;
    ops.jobs_ack(&records.ack).await?;
    ops.jobs_release(&records.handback_jobs).await?;
    // Before the session rows (the lock order): wake the jobs owed the slots freed here.
    let released: Vec<i64> = releases.iter().map(|l| l.instance_id).collect();
    if !released.is_empty() {
        ops.limits_wake(&released).await?;
    }
    for (session, (s, f, c, last)) in records.bumps.into_iter() {
        out[last].session_finished = session_bump(ops, session, s, f, c).await?;
    }
    Ok(())
}

/// The outcome a committed finish had, read back from the record it wrote.
pub(super) fn replayed(rec: &RecState, result: &SyncResult) -> RecordOutcome {
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
pub(super) fn lease_alive(rec: &RecState, locks: &HashMap<i64, LockState>) -> bool {
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
    let mut ended: Vec<RecordEnd> = vec![];
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
            ended.push(RecordEnd {
                record_id: rid,
                status: RecordStatus::Cancelled,
                error: None,
            });
            bumps.add(rec.session_row, i, 0, 0, 1);
            outcome.cancelled += 1;
        } else if rec.attempts >= p.max_attempts {
            ended.push(RecordEnd {
                record_id: rid,
                status: RecordStatus::Failed,
                error: Some(format!(
                    "sync abandoned: its worker stopped or lost the lease during each of {} attempts",
                    rec.attempts
                )),
            });
            bumps.add(rec.session_row, i, 0, 1, 0);
            outcome.failed += 1;
        } else {
            let payload = JobPayload {
                session_id: rec.session_uuid,
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
                priority: 0,
            });
            requeued.push(Requeue {
                record_id: rid,
                job_id: id,
                error: Some(format!(
                    "attempt {} lost its lease (worker stopped, frozen or cut off); handed to a new attempt",
                    rec.attempts
                )),
            });
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
    let mut ended: Vec<RecordEnd> = vec![];
    let mut ack = vec![];
    for (&rid, rec) in &recs {
        let open = rec.status == RecordStatus::Pending
            || (rec.status == RecordStatus::Running && !lease_alive(rec, &locks));
        if open {
            ended.push(RecordEnd {
                record_id: rid,
                status: RecordStatus::Cancelled,
                error: None,
            });
            // Its queued job would only find a terminal record: retire it now so the
            // queue depth tells the truth.
            ack.extend(rec.job_id.clone());
        }
    }
    ended.sort_by_key(|e| e.record_id);
    ops.records_end(&ended).await?;
    ops.jobs_ack(&ack).await?;
    ops.session_request_cancel(session_row).await?;
    session_bump(ops, session_row, 0, 0, ended.len() as i64).await
}

/// Cancels the session `session_id`: `None` if there is none, `Some(None)` if it had
/// finished already or its running records end it later. A cancel that changes
/// something writes `audit` (the request's row) in the same transaction, and says so
/// with `true`.
pub(crate) async fn cancel_by_id<O: BatchOps + ?Sized>(
    ops: &mut O,
    session_id: uuid::Uuid,
    audit: Option<&crate::model::NewAuditEvent>,
) -> Result<Option<(bool, Option<SessionFinished>)>> {
    match ops.session_find(session_id).await? {
        None => Ok(None),
        Some(found) if found.finished => Ok(Some((false, None))),
        Some(found) => {
            let finished = cancel(ops, found.row).await?;
            if let Some(row) = audit {
                ops.audit_insert(row).await?;
            }
            Ok(Some((audit.is_some(), finished)))
        }
    }
}
