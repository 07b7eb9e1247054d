//! The batch decisions without a database: rows as the steps would read them under lock,
//! and what the planners make of them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::model::{Account, Instance, RecordStatus};
use crate::queue::JobPayload;
use crate::store::{FinishRequest, GrantOutcome, GrantRequest, LeaseParams, RecordOutcome};

fn params() -> LeaseParams {
    LeaseParams {
        ttl: Duration::from_secs(30),
        busy_retry: Duration::from_secs(2),
        lock_wait_timeout: Duration::from_secs(600),
        max_attempts: 3,
    }
}

fn rec(instance_id: i64, status: RecordStatus, job: &str) -> RecState {
    RecState {
        instance_id,
        status,
        attempts: 0,
        job_id: Some(job.into()),
        lock_token: None,
        session_row: 1,
        session_uuid: uuid::Uuid::nil(),
        cancel_requested: false,
        request_id: None,
        accounts: (None, None, None, None),
        limit_wait_since_ms: None,
    }
}

fn instance(id: i64, history: bool) -> Instance {
    let now = chrono::Utc::now();
    Instance {
        id,
        name: format!("db{id}"),
        kind: crate::model::InstanceKind::Simulated,
        host: None,
        port: None,
        username: None,
        database: None,
        password_env: None,
        password_file: None,
        options: json!({}),
        active: true,
        group: None,
        created_at: now,
        updated_at: now,
        history_since: history.then_some(now),
    }
}

fn grant(record_id: i64, instance_id: i64, job: &str) -> GrantRequest {
    GrantRequest {
        request_id: format!("req-{job}"),
        job_id: job.into(),
        payload: JobPayload {
            session_id: uuid::Uuid::nil(),
            record_id,
            instance_id,
            attempt: 1,
            waiting_since_ms: None,
        },
        owner: "w".into(),
    }
}

struct Rows {
    recs: HashMap<i64, RecState>,
    locks: HashMap<i64, LockState>,
    instances: HashMap<i64, Instance>,
}

impl Rows {
    fn new() -> Self {
        Rows {
            recs: HashMap::new(),
            locks: HashMap::new(),
            instances: (1..=3).map(|i| (i, instance(i, true))).collect(),
        }
    }
    fn plan(&self, reqs: &[GrantRequest], now_ms: i64) -> GrantPlan {
        let st = GrantState {
            recs: &self.recs,
            locks: &self.locks,
            instances: &self.instances,
            limits: &Default::default(),
            now_ms,
        };
        plan_grants(&params(), reqs, &st)
    }
}

fn live_lock(token: i64) -> LockState {
    LockState {
        token,
        live: true,
        holder_running: true,
    }
}

#[test]
fn a_free_instance_is_granted_and_a_leased_one_waits_as_a_delayed_job() {
    let mut rows = Rows::new();
    rows.recs.insert(10, rec(1, RecordStatus::Pending, "j10"));
    rows.recs.insert(20, rec(2, RecordStatus::Pending, "j20"));
    rows.locks.insert(2, live_lock(7));
    let plan = rows.plan(&[grant(10, 1, "j10"), grant(20, 2, "j20")], 1_000);
    assert_eq!(plan.granted, vec![0]);
    assert!(
        plan.out[0].is_none(),
        "a grant is answered once its token is written"
    );
    assert!(matches!(plan.out[1], Some(GrantOutcome::Busy)));
    assert_eq!(plan.ack, vec!["j20".to_string()]);
    assert_eq!(plan.busy_jobs.len(), 1);
    assert_eq!(plan.busy_jobs[0].delay, params().busy_retry);
    let payload = serde_json::from_slice::<JobPayload>(&plan.busy_jobs[0].payload).unwrap();
    assert_eq!(
        payload.waiting_since_ms,
        Some(1_000),
        "the wait is stamped by the database clock"
    );
    assert_eq!(plan.busy_records[0].record_id, 20);
    assert_eq!(plan.busy_records[0].job_id, plan.busy_jobs[0].id);
}

#[test]
fn the_second_job_for_an_instance_granted_in_the_same_batch_waits() {
    let mut rows = Rows::new();
    rows.recs.insert(10, rec(1, RecordStatus::Pending, "j10"));
    rows.recs.insert(11, rec(1, RecordStatus::Pending, "j11"));
    let plan = rows.plan(&[grant(10, 1, "j10"), grant(11, 1, "j11")], 0);
    assert_eq!(plan.granted, vec![0]);
    assert!(matches!(plan.out[1], Some(GrantOutcome::Busy)));
}

#[test]
fn a_job_that_waited_past_the_lock_wait_timeout_fails_its_record() {
    let mut rows = Rows::new();
    rows.recs.insert(10, rec(1, RecordStatus::Pending, "j10"));
    rows.locks.insert(1, live_lock(7));
    let mut req = grant(10, 1, "j10");
    req.payload.waiting_since_ms = Some(0);
    let plan = rows.plan(&[req], 600_000);
    let Some(GrantOutcome::Failed {
        lock_timeout: true,
        error,
        ..
    }) = &plan.out[0]
    else {
        panic!("expected a lock-wait failure, got {:?}", plan.out[0]);
    };
    assert!(error.contains("more than 600 s"), "{error}");
    assert_eq!(plan.ended[0].status, RecordStatus::Failed);
    assert_eq!(plan.ack, vec!["j10".to_string()]);
    assert!(plan.busy_jobs.is_empty());
}

#[test]
fn a_cancel_ends_a_pending_record_and_leaves_a_live_holder_to_its_heartbeat() {
    let mut rows = Rows::new();
    let mut pending = rec(1, RecordStatus::Pending, "j10");
    pending.cancel_requested = true;
    let mut running = rec(2, RecordStatus::Running, "j20");
    running.cancel_requested = true;
    rows.recs.insert(10, pending);
    rows.recs.insert(20, running);
    rows.locks.insert(2, live_lock(7));
    let plan = rows.plan(&[grant(10, 1, "j10"), grant(20, 2, "j20")], 0);
    assert!(matches!(plan.out[0], Some(GrantOutcome::Cancelled { .. })));
    assert!(matches!(plan.out[1], Some(GrantOutcome::Stale)));
    assert_eq!(plan.ended.len(), 1);
    assert_eq!(plan.ended[0].status, RecordStatus::Cancelled);
    assert_eq!(plan.ack, vec!["j10".to_string(), "j20".to_string()]);
    assert!(plan.granted.is_empty());
}

#[test]
fn a_retried_grant_replays_its_answer_and_writes_nothing() {
    let mut rows = Rows::new();
    let mut r = rec(1, RecordStatus::Running, "j10");
    r.request_id = Some("req-j10".into());
    r.lock_token = Some(7);
    r.attempts = 1;
    rows.recs.insert(10, r);
    rows.locks.insert(1, live_lock(7));
    let plan = rows.plan(&[grant(10, 1, "j10")], 0);
    assert!(matches!(
        plan.out[0],
        Some(GrantOutcome::Granted {
            token: 7,
            attempt: 1,
            ..
        })
    ));
    assert!(plan.ack.is_empty() && plan.ended.is_empty() && plan.granted.is_empty());
}

#[test]
fn a_duplicate_delivery_in_one_batch_is_stale_and_its_job_stays() {
    let mut rows = Rows::new();
    rows.recs.insert(10, rec(1, RecordStatus::Pending, "j10"));
    let plan = rows.plan(&[grant(10, 1, "j10"), grant(10, 1, "j10")], 0);
    assert_eq!(plan.granted, vec![0]);
    assert!(matches!(plan.out[1], Some(GrantOutcome::Stale)));
    assert!(plan.ack.is_empty(), "the first delivery still runs the job");
}

#[test]
fn a_job_of_a_finished_or_moved_record_is_retired() {
    let mut rows = Rows::new();
    rows.recs.insert(10, rec(1, RecordStatus::Completed, "j10"));
    rows.recs
        .insert(20, rec(2, RecordStatus::Pending, "a-newer-job"));
    let plan = rows.plan(
        &[
            grant(10, 1, "j10"),
            grant(20, 2, "j20"),
            grant(30, 3, "j30"),
        ],
        0,
    );
    assert!(
        plan.out
            .iter()
            .all(|o| matches!(o, Some(GrantOutcome::Stale)))
    );
    assert_eq!(plan.ack.len(), 3);
}

#[test]
fn a_record_out_of_attempts_or_of_a_removed_instance_fails_instead_of_syncing() {
    let mut rows = Rows::new();
    let mut tired = rec(1, RecordStatus::Running, "j10");
    tired.attempts = 3;
    rows.recs.insert(10, tired);
    rows.recs.insert(20, rec(2, RecordStatus::Pending, "j20"));
    rows.instances.remove(&2);
    let plan = rows.plan(&[grant(10, 1, "j10"), grant(20, 2, "j20")], 0);
    let errors: Vec<&str> = plan
        .ended
        .iter()
        .filter_map(|e| e.error.as_deref())
        .collect();
    assert!(errors[0].contains("each of 3 attempts"), "{errors:?}");
    assert!(errors[1].contains("removed"), "{errors:?}");
    assert!(plan.granted.is_empty());
}

fn account(name: &str, superuser: bool) -> Account {
    Account {
        username: name.into(),
        host: String::new(),
        attributes: json!({ "superuser": superuser }),
        privileges: json!({}),
    }
}

fn stored(name: &str, superuser: bool, deleted: bool) -> StoredRow {
    StoredRow {
        username: name.into(),
        host: String::new(),
        attributes: json!({ "superuser": superuser }),
        privileges: json!({}),
        deleted,
    }
}

fn finish(record_id: i64, instance_id: i64, token: i64, result: SyncResult) -> FinishRequest {
    FinishRequest {
        request_id: format!("fin-{record_id}"),
        job_id: format!("j{record_id}"),
        record_id,
        instance_id,
        session_id: uuid::Uuid::nil(),
        token,
        result,
    }
}

fn running(instance_id: i64, token: i64) -> RecState {
    let mut r = rec(instance_id, RecordStatus::Running, "j");
    r.lock_token = Some(token);
    r.attempts = 1;
    r
}

#[test]
fn only_a_finish_whose_token_the_lease_and_record_still_carry_is_valid() {
    let recs = HashMap::from([(10, running(1, 7)), (20, running(2, 8))]);
    let locks = HashMap::from([(1, live_lock(7)), (2, live_lock(9))]);
    let reqs = [
        finish(10, 1, 7, SyncResult::Cancelled),
        finish(20, 2, 8, SyncResult::Cancelled),
        finish(10, 1, 7, SyncResult::Cancelled),
    ];
    let (out, valid) = fence_finishes(&reqs, &recs, &locks);
    assert_eq!(
        valid,
        vec![0],
        "a taken-over lease fences; a duplicate counts once"
    );
    assert_eq!(out[1].record, RecordOutcome::Fenced);
}

#[test]
fn a_retried_finish_replays_what_the_record_says() {
    let mut done = rec(1, RecordStatus::Completed, "j");
    done.request_id = Some("fin-10".into());
    done.accounts = (Some(4), Some(1), Some(0), Some(2));
    let recs = HashMap::from([(10, done)]);
    let reqs = [finish(10, 1, 7, SyncResult::Completed(vec![]))];
    let (out, valid) = fence_finishes(&reqs, &recs, &HashMap::new());
    assert!(valid.is_empty());
    assert_eq!(
        out[0].record,
        RecordOutcome::Completed {
            total: 4,
            added: 1,
            removed: 0,
            changed: 2
        }
    );
}

#[test]
fn a_completed_sync_writes_its_diff_counts_and_history_in_one_plan() {
    let found = vec![account("a", false), account("b", true), account("d", false)];
    let reqs = [finish(10, 1, 7, SyncResult::Completed(found))];
    let stored = HashMap::from([(
        1,
        vec![
            stored("a", false, false),
            stored("b", false, false),
            stored("c", false, false),
            stored("d", false, true),
        ],
    )]);
    let instances = HashMap::from([(1, instance(1, true))]);
    let (mut out, _) = fence_finishes(&reqs, &HashMap::new(), &HashMap::new());
    let plan = plan_inventory(&reqs, &[0], &instances, &stored, &mut out);
    assert!(plan.inserts.is_empty());
    let updated: Vec<&str> = plan
        .updates
        .iter()
        .map(|w| w.account.username.as_str())
        .collect();
    assert_eq!(updated, ["b", "d"], "changed, then revived");
    assert_eq!(plan.deletes[0].username, "c");
    assert_eq!(
        out[0].record,
        RecordOutcome::Completed {
            total: 3,
            added: 1,
            removed: 1,
            changed: 1
        }
    );
    assert_eq!(plan.completes[0].request_id, "fin-10");
    assert!(plan.history_start.is_empty(), "the history began before");
    assert_eq!(plan.changes.len(), 3, "b changed, d added back, c removed");
}

#[test]
fn an_instance_first_synced_writes_a_baseline_of_every_account() {
    let reqs = [finish(
        10,
        1,
        7,
        SyncResult::Completed(vec![account("a", false)]),
    )];
    let instances = HashMap::from([(1, instance(1, false))]);
    let (mut out, _) = fence_finishes(&reqs, &HashMap::new(), &HashMap::new());
    let stored = HashMap::new();
    let plan = plan_inventory(&reqs, &[0], &instances, &stored, &mut out);
    assert_eq!(plan.history_start, vec![1]);
    assert_eq!(plan.inserts.len(), 1);
    assert_eq!(plan.changes.len(), 1);
}

#[test]
fn each_ending_of_a_sync_writes_its_record_job_and_totals() {
    let recs: HashMap<i64, RecState> = (1..=5).map(|i| (i, running(i, 7))).collect();
    let reqs = [
        finish(1, 1, 7, SyncResult::Completed(vec![])),
        finish(2, 2, 7, SyncResult::Completed(vec![])),
        finish(
            3,
            3,
            7,
            SyncResult::Failed {
                error: "refused".into(),
                retry_after: Some(Duration::from_secs(5)),
            },
        ),
        finish(4, 4, 7, SyncResult::Cancelled),
        finish(5, 5, 7, SyncResult::HandedBack),
    ];
    let gone = HashSet::from([1]);
    let (mut out, _) = fence_finishes(&reqs, &HashMap::new(), &HashMap::new());
    let plan = plan_records(&reqs, &recs, &[0, 1, 2, 3, 4], &gone, &mut out);
    assert_eq!(
        out[1].record,
        RecordOutcome::Failed,
        "its instance was deleted meanwhile"
    );
    assert_eq!(out[2].record, RecordOutcome::Retrying { next_attempt: 2 });
    assert_eq!(out[3].record, RecordOutcome::Cancelled);
    assert_eq!(out[4].record, RecordOutcome::HandedBack);
    assert_eq!(plan.retry_jobs[0].delay, Duration::from_secs(5));
    assert_eq!(plan.retries[0].job_id, plan.retry_jobs[0].id);
    let retry = serde_json::from_slice::<JobPayload>(&plan.retry_jobs[0].payload).unwrap();
    assert_eq!(retry.attempt, 2);
    assert_eq!(plan.handback_jobs, vec!["j5".to_string()]);
    assert_eq!(
        plan.ack,
        ["j1", "j2", "j3", "j4"],
        "a handed-back job is released, not acked"
    );
    let totals: Vec<_> = plan.bumps.into_iter().collect();
    assert_eq!(
        totals,
        vec![(1, (1, 1, 1, 3))],
        "ok, failed, cancelled; last request"
    );
}
