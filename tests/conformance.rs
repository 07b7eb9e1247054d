//! The storage conformance suite: every check runs against SQLite and PostgreSQL alike.

use std::time::Duration;

use serde_json::json;
use syncpool::model::{SessionStatus, SyncType};
use syncpool::queue::JobPayload;
use syncpool::store::*;
use syncpool_workers::Account;

use crate::common::*;

on_both_databases!(
    a_session_enqueues_one_record_and_one_job_per_instance,
    an_unknown_instance_rejects_the_session_and_writes_nothing,
    a_granted_and_finished_sync_completes_the_session_with_true_totals,
    a_busy_instance_requeues_the_job_until_the_lease_is_released,
    a_stale_token_is_refused_after_a_takeover,
    cancel_marks_pending_records_and_finishes_the_session,
    a_retryable_failure_schedules_the_next_attempt_then_fails,
    the_inventory_diff_counts_added_removed_and_changed_accounts,
    cleanup_deletes_old_finished_sessions_but_not_running_ones,
    instances_are_inserted_all_or_nothing_listed_found_updated_and_deleted,
    migrate_is_repeatable_ready_says_so_and_analyze_runs,
    session_list_filters_by_status_newest_first_with_a_total,
    a_killed_job_and_handed_back_jobs_change_only_their_own_rows,
);

pub(crate) fn params(ttl: Duration) -> LeaseParams {
    LeaseParams {
        ttl,
        busy_retry: Duration::from_secs(1),
        lock_wait_timeout: Duration::from_secs(600),
        max_attempts: 3,
    }
}

/// Reads the job ids of a session's records, as a worker would receive them.
pub(crate) async fn jobs_of(store: &dyn Store, session: uuid::Uuid) -> Vec<(String, JobPayload)> {
    let d = store.session_get(session).await.unwrap().unwrap();
    let mut out = vec![];
    for r in d.records {
        let job_id = job_id_of(store, r.id).await;
        out.push((
            job_id,
            JobPayload {
                session_id: session,
                record_id: r.id,
                instance_id: r.instance_id,
                attempt: 1,
                waiting_since_ms: None,
            },
        ));
    }
    out
}

pub(crate) async fn job_id_of(store: &dyn Store, record_id: i64) -> String {
    match store.pool() {
        DbPool::Sqlite(p) => {
            sqlx::query_scalar("SELECT job_id FROM sync_instance_records WHERE id = ?1")
                .bind(record_id)
                .fetch_one(&p)
                .await
                .unwrap()
        }
        DbPool::Postgres(p) => {
            sqlx::query_scalar("SELECT job_id FROM sync_instance_records WHERE id = $1")
                .bind(record_id)
                .fetch_one(&p)
                .await
                .unwrap()
        }
    }
}

/// A test query written for SQLite (apalis' `Jobs` and `Workers`, `?N` placeholders) in
/// the form the store's database wants.
pub(crate) fn sql_for(store: &dyn Store, sql: &str) -> String {
    match store.pool() {
        DbPool::Sqlite(_) => sql.to_string(),
        DbPool::Postgres(_) => (1..=9).fold(
            sql.replace("Jobs", "apalis.jobs")
                .replace("Workers", "apalis.workers"),
            |q, n| q.replace(&format!("?{n}"), &format!("${n}")),
        ),
    }
}

pub(crate) async fn count(store: &dyn Store, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql_for(store, sql));
    match store.pool() {
        DbPool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(&p).await.unwrap(),
        DbPool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(&p).await.unwrap(),
    }
}

/// One text value of a query with text binds.
pub(crate) async fn text_of(store: &dyn Store, sql: &str, binds: &[&str]) -> String {
    let sql = sqlx::AssertSqlSafe(sql_for(store, sql));
    match store.pool() {
        DbPool::Sqlite(p) => {
            let q = binds
                .iter()
                .fold(sqlx::query_scalar(sql), |q, b| q.bind(*b));
            q.fetch_one(&p).await.unwrap()
        }
        DbPool::Postgres(p) => {
            let q = binds
                .iter()
                .fold(sqlx::query_scalar(sql), |q, b| q.bind(*b));
            q.fetch_one(&p).await.unwrap()
        }
    }
}

/// Runs a statement with text binds.
pub(crate) async fn exec(store: &dyn Store, sql: &str, binds: &[&str]) {
    let sql = sqlx::AssertSqlSafe(sql_for(store, sql));
    match store.pool() {
        DbPool::Sqlite(p) => {
            let q = binds.iter().fold(sqlx::query(sql), |q, b| q.bind(*b));
            q.execute(&p).await.unwrap();
        }
        DbPool::Postgres(p) => {
            let q = binds.iter().fold(sqlx::query(sql), |q, b| q.bind(*b));
            q.execute(&p).await.unwrap();
        }
    }
}

pub(crate) fn grant(job: &(String, JobPayload), owner: &str) -> GrantRequest {
    GrantRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        job_id: job.0.clone(),
        payload: job.1.clone(),
        owner: owner.into(),
    }
}

pub(crate) fn finish(job: &(String, JobPayload), token: i64, result: SyncResult) -> FinishRequest {
    FinishRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        job_id: job.0.clone(),
        record_id: job.1.record_id,
        instance_id: job.1.instance_id,
        session_id: job.1.session_id,
        token,
        result,
    }
}

/// Grants and completes (with no accounts) every job of a session, one by one.
pub(crate) async fn complete_all(store: &dyn Store, session: uuid::Uuid) {
    let p = params(Duration::from_secs(30));
    for job in jobs_of(store, session).await {
        let t = token_of(
            &store
                .lease_grant_batch(&p, &[grant(&job, "w")])
                .await
                .unwrap()[0],
        );
        store
            .record_finish_batch(&[finish(&job, t, SyncResult::Completed(vec![]))])
            .await
            .unwrap();
    }
}

pub(crate) fn token_of(o: &GrantOutcome) -> i64 {
    match o {
        GrantOutcome::Granted { token, .. } => *token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

pub(crate) fn accounts(names: &[&str]) -> Vec<Account> {
    names
        .iter()
        .map(|n| Account {
            username: n.to_string(),
            host: String::new(),
            attributes: json!({"can_login": true}),
            privileges: json!([]),
        })
        .collect()
}

pub(crate) async fn setup(
    backend: Backend,
    n: usize,
) -> (TestDb, std::sync::Arc<dyn Store>, Vec<i64>) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let mut ids = vec![];
    for i in 0..n {
        ids.push(
            store
                .instance_insert(&simulated(&format!("i{i}"), json!({})))
                .await
                .unwrap()
                .id,
        );
    }
    (db, store, ids)
}

async fn a_session_enqueues_one_record_and_one_job_per_instance(b: Backend) {
    let (_db, store, _) = setup(b, 5).await;
    let created = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    assert_eq!(created.total_instances, 5);
    assert_eq!(created.status.as_str(), "pending");
    let d = store
        .session_get(created.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.records.len(), 5);
    assert!(
        d.records
            .iter()
            .all(|r| r.status.as_str() == "pending" && r.attempts == 0)
    );
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM Jobs WHERE status = 'Pending'"
        )
        .await,
        5
    );
    let g = store.fleet_gauges().await.unwrap();
    assert_eq!(g.jobs_pending, 5);
}

async fn an_unknown_instance_rejects_the_session_and_writes_nothing(b: Backend) {
    let (_db, store, ids) = setup(b, 2).await;
    let err = store
        .session_create(SyncType::ManualBatch, Some(&[ids[0], 9999]))
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains("9999"));
    assert_eq!(
        count(store.as_ref(), "SELECT COUNT(*) FROM sync_sessions").await,
        0
    );
    assert_eq!(count(store.as_ref(), "SELECT COUNT(*) FROM Jobs").await, 0);
}

async fn a_granted_and_finished_sync_completes_the_session_with_true_totals(b: Backend) {
    let (_db, store, _) = setup(b, 2).await;
    let p = params(Duration::from_secs(30));
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let out = store
        .lease_grant_batch(&p, &[grant(&jobs[0], "w1"), grant(&jobs[1], "w1")])
        .await
        .unwrap();
    let (t0, t1) = (token_of(&out[0]), token_of(&out[1]));
    assert_ne!(t0, t1, "tokens come from one counter");
    assert_eq!(store.fleet_gauges().await.unwrap().locks_held, 2);
    let renewed = store
        .lease_renew_batch(
            &p,
            &[RenewRequest {
                instance_id: jobs[0].1.instance_id,
                token: t0,
                record_id: jobs[0].1.record_id,
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        renewed[0],
        RenewOutcome {
            held: true,
            cancel_requested: false
        }
    );
    let fin = store
        .record_finish_batch(&[
            finish(&jobs[0], t0, SyncResult::Completed(accounts(&["a", "b"]))),
            finish(
                &jobs[1],
                t1,
                SyncResult::Failed {
                    error: "boom".into(),
                    retry_after: None,
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        fin[0].record,
        RecordOutcome::Completed {
            total: 2,
            added: 2,
            removed: 0,
            changed: 0
        }
    );
    assert_eq!(fin[1].record, RecordOutcome::Failed);
    let finished = fin
        .iter()
        .filter_map(|f| f.session_finished.clone())
        .collect::<Vec<_>>();
    assert_eq!(finished.len(), 1, "the session finishes exactly once");
    assert_eq!(finished[0].status.as_str(), "completed_with_errors");
    let d = store.session_get(s.session_id).await.unwrap().unwrap();
    assert_eq!(
        (d.session.successful_instances, d.session.failed_instances),
        (1, 1)
    );
    assert_eq!(d.session.status.as_str(), "completed_with_errors");
    assert_eq!(d.session.success_rate, Some(0.5));
    // The fleet-wide session metrics counted it once, in the finishing transaction.
    let g = store.fleet_gauges().await.unwrap();
    assert_eq!(g.session_stats.len(), 1, "{:?}", g.session_stats);
    let stat = &g.session_stats[0];
    assert_eq!(
        (stat.sync_type.as_str(), stat.status.as_str(), stat.finished),
        ("manual_batch", "completed_with_errors", 1)
    );
    assert_eq!(
        stat.buckets.last(),
        Some(&1),
        "it took less than a day: {stat:?}"
    );
    assert!(
        stat.duration_sum >= 0.0 && stat.duration_sum < 60.0,
        "{stat:?}"
    );
    assert_eq!(g.last_success, vec![(SyncType::ManualBatch, 0.5)]);
    assert!(
        d.records
            .iter()
            .all(|r| r.started_at.is_some() && r.completed_at >= r.started_at)
    );
    assert_eq!(
        store.fleet_gauges().await.unwrap().locks_held,
        0,
        "finishing releases the lease"
    );
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM Jobs WHERE status = 'Done'"
        )
        .await,
        2,
        "finish acks the job itself"
    );
}

async fn a_busy_instance_requeues_the_job_until_the_lease_is_released(b: Backend) {
    let (_db, store, ids) = setup(b, 1).await;
    let p = params(Duration::from_secs(30));
    let s1 = store
        .session_create(SyncType::ManualSingle, Some(&ids))
        .await
        .unwrap();
    let s2 = store
        .session_create(SyncType::ManualSingle, Some(&ids))
        .await
        .unwrap();
    let j1 = jobs_of(store.as_ref(), s1.session_id).await.remove(0);
    let j2 = jobs_of(store.as_ref(), s2.session_id).await.remove(0);
    let t1 = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&j1, "w1")])
            .await
            .unwrap()[0],
    );
    let busy = store
        .lease_grant_batch(&p, &[grant(&j2, "w2")])
        .await
        .unwrap();
    assert!(matches!(busy[0], GrantOutcome::Busy), "{busy:?}");
    // The old job is acked; the record now points at a delayed copy.
    let j2b = (
        job_id_of(store.as_ref(), j2.1.record_id).await,
        j2.1.clone(),
    );
    assert_ne!(j2b.0, j2.0);
    let stale = store
        .lease_grant_batch(&p, &[grant(&j2, "w2")])
        .await
        .unwrap();
    assert!(
        matches!(stale[0], GrantOutcome::Stale),
        "the superseded job does nothing: {stale:?}"
    );
    store
        .record_finish_batch(&[finish(&j1, t1, SyncResult::Completed(vec![]))])
        .await
        .unwrap();
    let t2 = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&j2b, "w2")])
            .await
            .unwrap()[0],
    );
    assert!(t2 > t1, "tokens increase");
}

async fn a_stale_token_is_refused_after_a_takeover(b: Backend) {
    let (_db, store, _) = setup(b, 1).await;
    let short = params(Duration::from_millis(300));
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let job = jobs_of(store.as_ref(), s.session_id).await.remove(0);
    let old = token_of(
        &store
            .lease_grant_batch(&short, &[grant(&job, "slow")])
            .await
            .unwrap()[0],
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The same job re-delivered (orphan recovery) takes the expired lease over.
    let out = store
        .lease_grant_batch(&short, &[grant(&job, "fast")])
        .await
        .unwrap();
    let GrantOutcome::Granted {
        token: new,
        takeover,
        attempt,
        ..
    } = out[0].clone()
    else {
        panic!("{out:?}")
    };
    assert!(new > old && takeover);
    assert_eq!(attempt, 2, "a takeover is a new attempt");
    let renew = store
        .lease_renew_batch(
            &short,
            &[RenewRequest {
                instance_id: job.1.instance_id,
                token: old,
                record_id: job.1.record_id,
            }],
        )
        .await
        .unwrap();
    assert!(!renew[0].held);
    let late = store
        .record_finish_batch(&[finish(&job, old, SyncResult::Completed(accounts(&["x"])))])
        .await
        .unwrap();
    assert_eq!(late[0].record, RecordOutcome::Fenced);
    let ok = store
        .record_finish_batch(&[finish(&job, new, SyncResult::Completed(accounts(&["y"])))])
        .await
        .unwrap();
    assert!(matches!(ok[0].record, RecordOutcome::Completed { .. }));
    let acc = store.accounts_list(job.1.instance_id, true).await.unwrap();
    assert_eq!(
        acc.iter().map(|a| a.username.as_str()).collect::<Vec<_>>(),
        vec!["y"],
        "the fenced result wrote nothing"
    );
}

async fn cancel_marks_pending_records_and_finishes_the_session(b: Backend) {
    let (_db, store, _) = setup(b, 3).await;
    let p = params(Duration::from_secs(30));
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let t = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&jobs[0], "w")])
            .await
            .unwrap()[0],
    );
    let after = store
        .session_cancel(s.session_id)
        .await
        .unwrap()
        .unwrap()
        .session;
    assert_eq!(after.cancelled_instances, 2);
    assert!(
        !after.is_finished(),
        "a running record keeps the session open"
    );
    let hb = store
        .lease_renew_batch(
            &p,
            &[RenewRequest {
                instance_id: jobs[0].1.instance_id,
                token: t,
                record_id: jobs[0].1.record_id,
            }],
        )
        .await
        .unwrap();
    assert!(hb[0].cancel_requested);
    let fin = store
        .record_finish_batch(&[finish(&jobs[0], t, SyncResult::Cancelled)])
        .await
        .unwrap();
    assert_eq!(
        fin[0].session_finished.as_ref().map(|f| f.status.as_str()),
        Some("cancelled")
    );
    let d = store.session_get(s.session_id).await.unwrap().unwrap();
    assert_eq!(
        (d.session.status.as_str(), d.session.cancelled_instances),
        ("cancelled", 3)
    );
    let g = store.fleet_gauges().await.unwrap();
    assert_eq!(
        g.session_stats
            .iter()
            .map(|s| (s.status.as_str(), s.finished))
            .collect::<Vec<_>>(),
        vec![("cancelled", 1)]
    );
    assert!(
        g.last_success.is_empty(),
        "a cancelled session sets no success ratio"
    );
    let stale = store
        .lease_grant_batch(&p, &[grant(&jobs[1], "w")])
        .await
        .unwrap();
    assert!(matches!(stale[0], GrantOutcome::Stale));
}

async fn a_retryable_failure_schedules_the_next_attempt_then_fails(b: Backend) {
    let (_db, store, _) = setup(b, 1).await;
    let mut p = params(Duration::from_secs(30));
    p.max_attempts = 2;
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let job = jobs_of(store.as_ref(), s.session_id).await.remove(0);
    let t = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&job, "w")])
            .await
            .unwrap()[0],
    );
    let out = store
        .record_finish_batch(&[finish(
            &job,
            t,
            SyncResult::Failed {
                error: "timeout".into(),
                retry_after: Some(Duration::from_secs(1)),
            },
        )])
        .await
        .unwrap();
    assert_eq!(out[0].record, RecordOutcome::Retrying { next_attempt: 2 });
    let job2 = (
        job_id_of(store.as_ref(), job.1.record_id).await,
        JobPayload {
            attempt: 2,
            ..job.1.clone()
        },
    );
    assert_ne!(job2.0, job.0);
    let GrantOutcome::Granted { token, attempt, .. } = store
        .lease_grant_batch(&p, &[grant(&job2, "w")])
        .await
        .unwrap()[0]
        .clone()
    else {
        panic!()
    };
    assert_eq!(attempt, 2);
    let out = store
        .record_finish_batch(&[finish(
            &job2,
            token,
            SyncResult::Failed {
                error: "timeout again".into(),
                retry_after: None,
            },
        )])
        .await
        .unwrap();
    assert_eq!(
        out[0].session_finished.as_ref().unwrap().status.as_str(),
        "failed"
    );
    let d = store.session_get(s.session_id).await.unwrap().unwrap();
    assert_eq!(d.records[0].error.as_deref(), Some("timeout again"));
    assert_eq!(d.records[0].attempts, 2);
}

async fn the_inventory_diff_counts_added_removed_and_changed_accounts(b: Backend) {
    let (_db, store, ids) = setup(b, 1).await;
    let p = params(Duration::from_secs(30));
    let run = |found: Vec<Account>| {
        let store = store.clone();
        let ids = ids.clone();
        let p = p.clone();
        async move {
            let s = store
                .session_create(SyncType::ManualSingle, Some(&ids))
                .await
                .unwrap();
            let job = jobs_of(store.as_ref(), s.session_id).await.remove(0);
            let t = token_of(
                &store
                    .lease_grant_batch(&p, &[grant(&job, "w")])
                    .await
                    .unwrap()[0],
            );
            store
                .record_finish_batch(&[finish(&job, t, SyncResult::Completed(found))])
                .await
                .unwrap()
                .remove(0)
                .record
        }
    };
    assert_eq!(
        run(accounts(&["a", "b", "c"])).await,
        RecordOutcome::Completed {
            total: 3,
            added: 3,
            removed: 0,
            changed: 0
        }
    );
    assert_eq!(
        run(accounts(&["a", "b", "c"])).await,
        RecordOutcome::Completed {
            total: 3,
            added: 0,
            removed: 0,
            changed: 0
        }
    );
    let mut next = accounts(&["a", "b", "d"]);
    next[0].attributes = json!({"can_login": false});
    assert_eq!(
        run(next).await,
        RecordOutcome::Completed {
            total: 3,
            added: 1,
            removed: 1,
            changed: 1
        }
    );
    let all = store.accounts_list(ids[0], true).await.unwrap();
    assert_eq!(all.len(), 4);
    let live = store.accounts_list(ids[0], false).await.unwrap();
    assert_eq!(
        live.iter().map(|a| a.username.as_str()).collect::<Vec<_>>(),
        vec!["a", "b", "d"]
    );
}

async fn cleanup_deletes_old_finished_sessions_but_not_running_ones(b: Backend) {
    let (_db, store, _) = setup(b, 2).await;
    let p = params(Duration::from_secs(30));
    let done = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    complete_all(store.as_ref(), done.session_id).await;
    let running = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let job = jobs_of(store.as_ref(), running.session_id).await.remove(0);
    store
        .lease_grant_batch(&p, &[grant(&job, "w")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let kept = store.cleanup(7, 365, 365).await.unwrap();
    assert_eq!(kept.sessions_deleted, 0, "nothing is older than 7 days");
    assert_eq!(
        kept.locks_deleted, 1,
        "expired locks go whatever their age; the live lease stays"
    );
    let c = store.cleanup(0, 365, 365).await.unwrap();
    assert_eq!((c.sessions_deleted, c.records_deleted), (1, 2));
    assert_eq!(c.jobs_deleted, 2);
    assert_eq!(c.locks_deleted, 0);
    assert_eq!(store.fleet_gauges().await.unwrap().locks_held, 1);
    assert!(store.session_get(done.session_id).await.unwrap().is_none());
    assert!(
        store
            .session_get(running.session_id)
            .await
            .unwrap()
            .is_some()
    );
}

async fn instances_are_inserted_all_or_nothing_listed_found_updated_and_deleted(b: Backend) {
    let (_db, store, ids) = setup(b, 2).await;
    let dup = store
        .instance_insert_many(&[simulated("new", json!({})), simulated("i0", json!({}))])
        .await
        .unwrap_err();
    assert!(dup.is_bad_input(), "{dup}");
    assert_eq!(
        store.instance_list().await.unwrap().len(),
        2,
        "nothing of the rejected list"
    );
    assert_eq!(
        store
            .instance_insert_many(&[simulated("new", json!({}))])
            .await
            .unwrap(),
        1
    );
    let names: Vec<String> = store
        .instance_list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["i0", "i1", "new"]);
    assert_eq!(
        store.instance_get(ids[1]).await.unwrap().unwrap().name,
        "i1"
    );
    assert!(store.instance_get(999_999).await.unwrap().is_none());
    let mut changed = simulated("renamed", json!({"latency_ms": 5}));
    changed.active = false;
    let i = store.instance_update(ids[0], &changed).await.unwrap();
    assert_eq!(
        (i.name.as_str(), i.active, &i.options),
        ("renamed", false, &json!({"latency_ms": 5}))
    );
    assert!(store.instance_get_by_name("i0").await.unwrap().is_none());
    assert_eq!(
        store
            .instance_get_by_name("renamed")
            .await
            .unwrap()
            .unwrap()
            .id,
        ids[0]
    );
    assert!(
        store
            .instance_update(ids[0], &simulated("i1", json!({})))
            .await
            .unwrap_err()
            .is_bad_input()
    );
    assert!(
        store
            .instance_update(999_999, &changed)
            .await
            .unwrap_err()
            .is_bad_input()
    );
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    assert_eq!(
        s.total_instances, 2,
        "an inactive instance is left out of a fleet-wide sync"
    );
    assert!(store.instance_delete(ids[1]).await.unwrap());
    assert!(!store.instance_delete(ids[1]).await.unwrap());
}

async fn migrate_is_repeatable_ready_says_so_and_analyze_runs(b: Backend) {
    let kind = match b {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let db = TestDb::new(b).await;
    let store = syncpool::store::connect(&db.url).await.unwrap();
    assert!(!store.ready().await.unwrap(), "not ready before migrating");
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert!(store.ready().await.unwrap());
    store.analyze().await.unwrap();
    assert_eq!(store.kind(), kind);
}

async fn session_list_filters_by_status_newest_first_with_a_total(b: Backend) {
    let (_db, store, _) = setup(b, 1).await;
    let p = params(Duration::from_secs(30));
    let first = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let job = jobs_of(store.as_ref(), first.session_id).await.remove(0);
    let t = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&job, "w")])
            .await
            .unwrap()[0],
    );
    store
        .record_finish_batch(&[finish(&job, t, SyncResult::Completed(accounts(&["a"])))])
        .await
        .unwrap();
    let second = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let all = SessionFilter {
        status: None,
        limit: 10,
        offset: 0,
        sync_type: None,
    };
    let (items, total) = store.session_list(&all).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(
        items.iter().map(|s| s.session_id).collect::<Vec<_>>(),
        [second.session_id, first.session_id],
        "newest first"
    );
    let done = SessionFilter {
        status: Some(SessionStatus::Completed),
        limit: 10,
        offset: 0,
        sync_type: None,
    };
    let (items, total) = store.session_list(&done).await.unwrap();
    assert_eq!((items.len(), total), (1, 1));
    assert_eq!(items[0].session_id, first.session_id);
    let page = SessionFilter {
        status: None,
        limit: 1,
        offset: 1,
        sync_type: None,
    };
    let (items, total) = store.session_list(&page).await.unwrap();
    assert_eq!((items.len(), total), (1, 2));
    assert_eq!(items[0].session_id, first.session_id);
}

async fn a_killed_job_and_handed_back_jobs_change_only_their_own_rows(b: Backend) {
    let (_db, store, _) = setup(b, 3).await;
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    store
        .job_kill(&jobs[0].0, "undecodable payload")
        .await
        .unwrap();
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM Jobs WHERE status = 'Killed'"
        )
        .await,
        1
    );
    // Two jobs fetched by a worker that is stopping: apalis marks them with its name.
    exec(
        store.as_ref(),
        "INSERT INTO Workers (id, worker_type, storage_name, layers) VALUES ('w-gone', 'syncpool', 'x', '')",
        &[],
    )
    .await;
    exec(
        store.as_ref(),
        "UPDATE Jobs SET status = 'Running', lock_by = 'w-gone' WHERE id IN (?1, ?2)",
        &[&jobs[1].0, &jobs[2].0],
    )
    .await;
    assert_eq!(
        store.jobs_handback(&["someone-else".into()]).await.unwrap(),
        0
    );
    assert_eq!(store.jobs_handback(&["w-gone".into()]).await.unwrap(), 2);
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM Jobs WHERE status = 'Pending' AND lock_by IS NULL"
        )
        .await,
        2
    );
}

/// The console's secrets and signed-out nonces (issue #19).
mod console_secrets {
    use std::sync::Arc;

    use chrono::{Duration, Utc};
    use syncpool::store::Store;

    use crate::common::*;

    on_both_databases!(
        the_first_stored_secret_is_everyones_even_when_processes_race,
        a_revoked_nonce_is_revoked_for_every_reader_until_cleanup_drops_it_after_expiry,
    );

    async fn the_first_stored_secret_is_everyones_even_when_processes_race(b: Backend) {
        let db = TestDb::new(b).await;
        let stores: Vec<Arc<dyn Store>> =
            vec![db.store().await, db.store().await, db.store().await];
        let got = futures::future::join_all(stores.iter().enumerate().map(|(i, s)| {
            let candidate = [i as u8 + 1; 32];
            async move { s.secret_get_or_insert("console", &candidate).await.unwrap() }
        }))
        .await;
        assert!(
            got.iter().all(|s| *s == got[0]),
            "one secret for all: {got:?}"
        );
        assert!(
            [1u8, 2, 3].iter().any(|i| got[0] == vec![*i; 32]),
            "one of the candidates"
        );
        // Later callers read it; another name is another secret.
        let again = stores[0]
            .secret_get_or_insert("console", &[9; 32])
            .await
            .unwrap();
        assert_eq!(again, got[0]);
        let other = stores[1]
            .secret_get_or_insert("other", &[9; 32])
            .await
            .unwrap();
        assert_eq!(other, vec![9; 32]);
    }

    async fn a_revoked_nonce_is_revoked_for_every_reader_until_cleanup_drops_it_after_expiry(
        b: Backend,
    ) {
        let db = TestDb::new(b).await;
        let (one, two) = (db.store().await, db.store().await);
        assert!(!one.console_nonce_revoked("n-live").await.unwrap());
        one.console_nonce_revoke("n-live", Utc::now() + Duration::hours(12))
            .await
            .unwrap();
        // Twice is fine (a double click on "Sign out").
        one.console_nonce_revoke("n-live", Utc::now() + Duration::hours(12))
            .await
            .unwrap();
        two.console_nonce_revoke("n-old", Utc::now() - Duration::hours(1))
            .await
            .unwrap();
        assert!(two.console_nonce_revoked("n-live").await.unwrap());
        assert!(one.console_nonce_revoked("n-old").await.unwrap());
        assert!(!two.console_nonce_revoked("n-other").await.unwrap());
        one.cleanup(7, 365, 365).await.unwrap();
        assert!(
            two.console_nonce_revoked("n-live").await.unwrap(),
            "kept until it expires"
        );
        assert!(
            !two.console_nonce_revoked("n-old").await.unwrap(),
            "dropped once its cookie expired"
        );
    }
}
