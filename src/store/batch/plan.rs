//! Decide, then write: what a batch of grants or finishes does, as pure functions of the
//! rows read under lock. They return the rows to write and each request's answer; the
//! writers in `mod.rs` only bind them, so every decision is tested without a database
//! (the tests below).

use std::collections::{HashMap, HashSet};

use super::limits::{Admission, LimitWait, Limits};
use super::ops::*;
use super::{lease_alive, replayed};
use crate::history::{AccountDiff, ChangeTally, rows_for_sync};
use crate::model::{Account, Instance, RecordStatus};
use crate::queue::{self, JobPayload};
use crate::store::{
    FinishOutcome, FinishRequest, GrantOutcome, GrantRequest, LeaseParams, RecordOutcome,
    SessionBumps, StoredRow, SyncResult,
};

/// The rows a batch of grants read, under lock.
pub(crate) struct GrantState<'a> {
    pub recs: &'a HashMap<i64, RecState>,
    pub locks: &'a HashMap<i64, LockState>,
    pub instances: &'a HashMap<i64, Instance>,
    /// The concurrency limits on these instances (`limits.rs`).
    pub limits: &'a Limits,
    /// The database's clock, Unix milliseconds.
    pub now_ms: i64,
}

impl GrantState<'_> {
    /// Time `req` has waited so far, from the stamp its first busy grant wrote with this
    /// same clock.
    pub(crate) fn waited(&self, req: &GrantRequest) -> i64 {
        req.payload
            .waiting_since_ms
            .map(|w| (self.now_ms - w).max(0))
            .unwrap_or(0)
    }
}

/// What one grant request comes to.
#[derive(Debug)]
enum GrantDecision {
    /// Answer this (a replayed grant); nothing to write.
    Answer(GrantOutcome),
    /// Nothing to do; `ack` retires the job.
    Stale { ack: bool },
    /// End the record without a sync.
    End {
        status: RecordStatus,
        error: Option<String>,
        lock_timeout: bool,
    },
    /// The instance is leased elsewhere: wait as a delayed copy of the job.
    Busy,
    /// Take the lease.
    Grant,
}

fn decide_grant(
    p: &LeaseParams,
    req: &GrantRequest,
    st: &GrantState<'_>,
    taken: &HashSet<i64>,
    seen: &mut HashSet<i64>,
) -> GrantDecision {
    let (rid, iid) = (req.payload.record_id, req.payload.instance_id);
    if let Some(rec) = st.recs.get(&rid)
        && rec.request_id.as_deref() == Some(req.request_id.as_str())
    {
        // A retry of this very grant after a commit whose outcome the caller never
        // learned: answer what was decided then, while the lease is still ours.
        seen.insert(rid);
        let alive = lease_alive(rec, st.locks);
        return GrantDecision::Answer(match (alive, st.instances.get(&iid), rec.lock_token) {
            (true, Some(instance), Some(token)) => GrantOutcome::Granted {
                token,
                instance: Box::new(instance.clone()),
                attempt: rec.attempts,
                takeover: false,
                lock_wait_ms: st.waited(req),
            },
            _ => GrantOutcome::Stale,
        });
    }
    let Some(rec) = st.recs.get(&rid).filter(|r| {
        (r.status == RecordStatus::Pending || r.status == RecordStatus::Running)
            && r.job_id.as_deref() == Some(req.job_id.as_str())
    }) else {
        return GrantDecision::Stale { ack: true };
    };
    if !seen.insert(rid) {
        // The same job twice in one batch (duplicate delivery): the first one decides.
        return GrantDecision::Stale { ack: false };
    }
    let live = st.locks.get(&iid).is_some_and(|l| l.live) || taken.contains(&iid);
    let end = |status, error| GrantDecision::End {
        status,
        error,
        lock_timeout: false,
    };
    if rec.cancel_requested {
        // A running holder is still syncing and sees the cancel at its next heartbeat.
        return match rec.status == RecordStatus::Running && live {
            true => GrantDecision::Stale { ack: true },
            false => end(RecordStatus::Cancelled, None),
        };
    }
    if live {
        if rec.status == RecordStatus::Pending
            && st.waited(req) >= p.lock_wait_timeout.as_millis() as i64
        {
            return GrantDecision::End {
                status: RecordStatus::Failed,
                error: Some(format!(
                    "gave up waiting for the lease of instance {iid}: another sync held it for more than {} s",
                    p.lock_wait_timeout.as_secs()
                )),
                lock_timeout: true,
            };
        }
        return GrantDecision::Busy;
    }
    if rec.attempts + 1 > p.max_attempts {
        // Only takeovers get here: a sync that keeps losing its worker must end.
        let error = format!(
            "sync abandoned: its worker stopped during each of {} attempts",
            rec.attempts
        );
        return end(RecordStatus::Failed, Some(error));
    }
    if !st.instances.contains_key(&iid) {
        let error = format!("instance {iid} was removed before it could be synced");
        return end(RecordStatus::Failed, Some(error));
    }
    GrantDecision::Grant
}

/// What a batch of grants writes, and the answers decided so far (`None` for the
/// requests in `granted`, which get their token when it is written).
#[derive(Default)]
pub(crate) struct GrantPlan {
    pub out: Vec<Option<GrantOutcome>>,
    pub ack: Vec<String>,
    pub ended: Vec<RecordEnd>,
    pub bumps: SessionBumps,
    pub busy_jobs: Vec<NewJob>,
    pub busy_records: Vec<Requeue>,
    /// Records that found a limit of their instance full.
    pub limit_waits: Vec<LimitWait>,
    /// Of those, the running ones (takeovers of a lapsed lease): requeued as pending.
    pub takeover_waits: Vec<Requeue>,
    /// Indexes of the requests that take their instance's lease.
    pub granted: Vec<usize>,
}

impl GrantPlan {
    /// Waits without holding a worker slot: a copy of the job, delayed, takes over.
    /// `lock_wait_since` starts the lock-wait clock (a busy instance) if not started;
    /// without it, the wait is for a limit's slot: the clock stops (the lease is free,
    /// the wait so far was for it).
    fn wait(
        &mut self,
        p: &LeaseParams,
        req: &GrantRequest,
        i: usize,
        lock_wait_since: Option<i64>,
    ) {
        let mut payload = req.payload.clone();
        match lock_wait_since {
            Some(now) => {
                payload.waiting_since_ms.get_or_insert(now);
            }
            None => payload.waiting_since_ms = None,
        }
        let job_id = queue::new_job_id();
        self.busy_jobs.push(NewJob {
            id: job_id.clone(),
            payload: payload.to_bytes(),
            delay: p.busy_retry,
            // A slot's waiter comes back ahead of due jobs that never waited: with
            // the ordinary priority, a binding limit on PostgreSQL fell from 251 to 24
            // syncs/s (the workers cycled through refusals of jobs that never waited).
            priority: if lock_wait_since.is_some() { 0 } else { 1 },
        });
        self.busy_records.push(Requeue {
            record_id: req.payload.record_id,
            job_id,
            error: None,
        });
        self.ack.push(req.job_id.clone());
        self.out[i] = Some(GrantOutcome::Busy);
    }
}

/// Decides a batch of grants.
pub(crate) fn plan_grants(
    p: &LeaseParams,
    reqs: &[GrantRequest],
    st: &GrantState<'_>,
) -> GrantPlan {
    let mut plan = GrantPlan {
        out: vec![None; reqs.len()],
        ..Default::default()
    };
    let (mut taken, mut seen) = (HashSet::new(), HashSet::new());
    let mut slots = Admission::default();
    for (i, req) in reqs.iter().enumerate() {
        let rid = req.payload.record_id;
        match decide_grant(p, req, st, &taken, &mut seen) {
            GrantDecision::Answer(o) => plan.out[i] = Some(o),
            GrantDecision::Stale { ack } => {
                if ack {
                    plan.ack.push(req.job_id.clone());
                }
                plan.out[i] = Some(GrantOutcome::Stale);
            }
            GrantDecision::End {
                status,
                error,
                lock_timeout,
            } => {
                plan.ack.push(req.job_id.clone());
                let cancelled = status == RecordStatus::Cancelled;
                let (failed, cancelled) = if cancelled { (0, 1) } else { (1, 0) };
                plan.bumps
                    .add(st.recs[&rid].session_row, i, 0, failed, cancelled);
                plan.ended.push(RecordEnd {
                    record_id: rid,
                    status,
                    error: error.clone(),
                });
                plan.out[i] = Some(match error {
                    None => GrantOutcome::Cancelled {
                        session_finished: None,
                    },
                    Some(error) => GrantOutcome::Failed {
                        lock_timeout,
                        error,
                        session_finished: None,
                    },
                });
            }
            GrantDecision::Busy => plan.wait(p, req, i, Some(st.now_ms)),
            GrantDecision::Grant => {
                let iid = req.payload.instance_id;
                match slots.admit(st.limits, rid, &st.recs[&rid], &st.instances[&iid]) {
                    Ok(()) => {
                        taken.insert(iid);
                        plan.granted.push(i);
                    }
                    Err(key) => {
                        // A wait for a slot is not a wait for the lease: it does not count
                        // toward the lock-wait timeout (a small limit over a large session
                        // keeps jobs waiting for long, by design).
                        plan.wait(p, req, i, None);
                        if st.recs[&rid].status == RecordStatus::Running {
                            // A takeover of a lapsed lease, refused: back to pending, so
                            // that it is owed, woken and counted like any waiter (and the
                            // rescuer does not take it for a lost sync).
                            if let Some(r) = plan.busy_records.pop() {
                                plan.takeover_waits.push(r);
                            }
                        }
                        plan.limit_waits.push(LimitWait {
                            record_id: rid,
                            key,
                            now_ms: st.now_ms,
                        });
                    }
                }
            }
        }
    }
    plan
}

/// The fencing check of a batch of finishes: each answer so far (`Fenced` unless the
/// request replays a committed finish) and the indexes of the requests whose token still
/// holds. The lease need not be live: a token is only replaced by a grant, so an expired
/// lease nobody took over still fences correctly (the rescuer moves such a record on
/// first if it gets there first).
pub(crate) fn fence_finishes(
    reqs: &[FinishRequest],
    recs: &HashMap<i64, RecState>,
    locks: &HashMap<i64, LockState>,
) -> (Vec<FinishOutcome>, Vec<usize>) {
    let mut out: Vec<FinishOutcome> = reqs
        .iter()
        .map(|_| FinishOutcome {
            record: RecordOutcome::Fenced,
            session_finished: None,
            changes: Default::default(),
        })
        .collect();
    let mut seen = HashSet::new();
    let mut valid = vec![];
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
        if current && seen.insert(r.record_id) {
            valid.push(i);
        }
    }
    (out, valid)
}

/// What the completed syncs of a batch write to the inventory and its history.
#[derive(Default)]
pub(crate) struct InventoryPlan<'a> {
    pub inserts: Vec<AccountWrite<'a>>,
    pub updates: Vec<AccountWrite<'a>>,
    pub deletes: Vec<AccountKey>,
    pub changes: Vec<NewChange>,
    pub history_start: Vec<i64>,
    pub completes: Vec<RecordCompletion>,
}

/// Diffs each completed sync (`completed`: indexes into `reqs` whose instance still
/// exists) against its stored accounts, and sets its answer.
pub(crate) fn plan_inventory<'a>(
    reqs: &'a [FinishRequest],
    completed: &[usize],
    instances: &HashMap<i64, Instance>,
    stored: &'a HashMap<i64, Vec<StoredRow>>,
    out: &mut [FinishOutcome],
) -> InventoryPlan<'a> {
    let mut plan = InventoryPlan::default();
    for &i in completed {
        let (r, iid) = (&reqs[i], reqs[i].instance_id);
        let SyncResult::Completed(found) = &r.result else {
            continue;
        };
        let diff = AccountDiff::compute(found, stored.get(&iid).map_or(&[], Vec::as_slice));
        // History in the inventory's own transaction, so it is fenced by the same token
        // and a replayed finish (same request id) cannot record it twice.
        let instance = &instances[&iid];
        let baseline = instance.history_since.is_none();
        if baseline {
            plan.history_start.push(iid);
        }
        let rows = rows_for_sync(found, &diff, baseline);
        out[i].changes = ChangeTally::of(&rows);
        plan.changes
            .extend(rows.into_iter().map(|change| NewChange {
                instance_id: iid,
                instance_name: instance.name.clone(),
                session_id: r.session_id,
                record_id: r.record_id,
                change,
            }));
        let write = |account: &'a Account| AccountWrite {
            instance_id: iid,
            account,
        };
        plan.inserts.extend(diff.added.iter().map(|a| write(a)));
        let changed = diff.changed.iter().map(|(a, _)| *a);
        plan.updates
            .extend(changed.chain(diff.revived.iter().copied()).map(write));
        plan.deletes
            .extend(diff.removed.iter().map(|row| AccountKey {
                instance_id: iid,
                username: row.username.clone(),
                host: row.host.clone(),
            }));
        let done = RecordCompletion {
            record_id: r.record_id,
            total: found.len() as i64,
            added: (diff.added.len() + diff.revived.len()) as i64,
            removed: diff.removed.len() as i64,
            changed: diff.changed.len() as i64,
            request_id: r.request_id.clone(),
        };
        out[i].record = RecordOutcome::Completed {
            total: done.total,
            added: done.added,
            removed: done.removed,
            changed: done.changed,
        };
        plan.completes.push(done);
    }
    plan
}

/// What the finishes of a batch write to their records and jobs.
#[derive(Default)]
pub(crate) struct RecordsPlan {
    pub ended: Vec<RecordEnd>,
    pub retries: Vec<Requeue>,
    pub retry_jobs: Vec<NewJob>,
    pub handbacks: Vec<i64>,
    pub handback_jobs: Vec<String>,
    pub ack: Vec<String>,
    pub bumps: SessionBumps,
}

/// Decides each fenced finish's record (`valid`; `gone`: completed syncs of instances
/// deleted meanwhile), and sets its answer.
pub(crate) fn plan_records(
    reqs: &[FinishRequest],
    recs: &HashMap<i64, RecState>,
    valid: &[usize],
    gone: &HashSet<usize>,
    out: &mut [FinishOutcome],
) -> RecordsPlan {
    let mut plan = RecordsPlan::default();
    for &i in valid {
        let (r, rec) = (&reqs[i], &recs[&reqs[i].record_id]);
        let mut end = |status, error: Option<String>, outcome| {
            plan.ended.push(RecordEnd {
                record_id: r.record_id,
                status,
                error,
            });
            out[i].record = outcome;
        };
        let (ok, failed, cancelled) = match &r.result {
            SyncResult::Completed(_) if gone.contains(&i) => {
                let error = "the instance was deleted during its sync; nothing was stored";
                end(
                    RecordStatus::Failed,
                    Some(error.into()),
                    RecordOutcome::Failed,
                );
                (0, 1, 0)
            }
            SyncResult::Completed(_) => (1, 0, 0),
            SyncResult::Failed {
                error,
                retry_after: None,
            } => {
                end(
                    RecordStatus::Failed,
                    Some(error.clone()),
                    RecordOutcome::Failed,
                );
                (0, 1, 0)
            }
            SyncResult::Cancelled => {
                end(RecordStatus::Cancelled, None, RecordOutcome::Cancelled);
                (0, 0, 1)
            }
            SyncResult::Failed {
                error,
                retry_after: Some(delay),
            } => {
                let payload = JobPayload {
                    session_id: r.session_id,
                    record_id: r.record_id,
                    instance_id: r.instance_id,
                    attempt: rec.attempts + 1,
                    waiting_since_ms: None,
                };
                let job_id = queue::new_job_id();
                plan.retry_jobs.push(NewJob {
                    id: job_id.clone(),
                    payload: payload.to_bytes(),
                    delay: *delay,
                    priority: 0,
                });
                plan.retries.push(Requeue {
                    record_id: r.record_id,
                    job_id,
                    error: Some(error.clone()),
                });
                out[i].record = RecordOutcome::Retrying {
                    next_attempt: rec.attempts + 1,
                };
                (0, 0, 0)
            }
            SyncResult::HandedBack => {
                plan.handbacks.push(r.record_id);
                plan.handback_jobs.push(r.job_id.clone());
                out[i].record = RecordOutcome::HandedBack;
                continue;
            }
        };
        plan.ack.push(r.job_id.clone());
        if ok + failed + cancelled > 0 {
            plan.bumps.add(rec.session_row, i, ok, failed, cancelled);
        }
    }
    plan
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
