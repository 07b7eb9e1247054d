//! The conformance suite's fault half: what the store does when a worker dies, freezes,
//! loses its lease, retries a commit whose outcome it never learned, or races a cancel.
//! Every check runs against SQLite and PostgreSQL alike.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use syncpool::model::SyncType;
use syncpool::store::*;

use crate::common::*;
use crate::conformance::{
    accounts, count, finish, grant, job_id_of, jobs_of, params, setup, text_of, token_of,
};

on_both_databases!(
    a_renewal_that_arrives_after_the_finish_does_not_revive_the_released_lease,
    an_expired_lease_is_never_renewed_back_to_life,
    the_rescuer_hands_a_record_whose_lease_lapsed_to_a_new_attempt_and_fails_it_at_the_limit,
    the_rescuer_leaves_records_with_a_live_lease_alone,
    the_rescuer_hands_on_a_record_whose_lease_was_taken_by_another_session,
    cancel_ends_a_running_record_whose_lease_is_gone_and_finishes_the_session,
    a_grant_retried_after_its_commit_replays_the_same_lease_without_a_new_attempt,
    a_finish_retried_after_its_commit_replays_its_outcome_and_counts_once,
    a_completed_sync_of_a_deleted_instance_stores_no_accounts,
    a_hundred_thousand_accounts_going_to_zero_are_all_marked_deleted,
    cancel_racing_grants_and_finishes_at_64_way_concurrency_never_fails_or_deadlocks,
    pipeline_round_commits_finishes_then_renewals_then_grants,
    a_cron_slot_is_claimed_and_its_session_started_in_one_transaction_and_fires_once,
    cleanup_with_zero_retention_days_keeps_just_claimed_cron_slots,
    a_cron_slot_with_no_active_instance_is_recorded_skipped_and_starts_nothing,
);

/// How long a test lease lives, and how long to wait for it to lapse. The expiry is
/// judged by the database clock; the wait is the only way to let it pass.
const SHORT: Duration = Duration::from_millis(300);
const LAPSE: Duration = Duration::from_millis(700);

fn renew_of(job: &(String, syncpool::queue::JobPayload), token: i64) -> RenewRequest {
    RenewRequest {
        instance_id: job.1.instance_id,
        token,
        record_id: job.1.record_id,
    }
}

async fn record(store: &dyn Store, session: uuid::Uuid, record_id: i64) -> syncpool::model::Record {
    store
        .session_get(session)
        .await
        .unwrap()
        .unwrap()
        .records
        .into_iter()
        .find(|r| r.id == record_id)
        .unwrap()
}

async fn job_status(store: &dyn Store, job_id: &str) -> String {
    text_of(store, "SELECT status FROM Jobs WHERE id = ?1", &[job_id]).await
}

async fn a_renewal_that_arrives_after_the_finish_does_not_revive_the_released_lease(b: Backend) {
    let (_db, store, _) = setup(b, 1).await;
    let p = params(Duration::from_secs(30));
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
    store
        .record_finish_batch(&[finish(&job, t, SyncResult::Completed(accounts(&["a"])))])
        .await
        .unwrap();
    let late = store
        .lease_renew_batch(&p, &[renew_of(&job, t)])
        .await
        .unwrap();
    assert!(!late[0].held, "a finished record's lease is not renewed");
    assert_eq!(
        store.fleet_gauges().await.unwrap().locks_held,
        0,
        "the released lease stays released"
    );
}

async fn an_expired_lease_is_never_renewed_back_to_life(b: Backend) {
    let (_db, store, _) = setup(b, 1).await;
    let p = params(SHORT);
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
    tokio::time::sleep(LAPSE).await;
    let late = store
        .lease_renew_batch(&p, &[renew_of(&job, t)])
        .await
        .unwrap();
    assert!(!late[0].held);
    assert_eq!(store.fleet_gauges().await.unwrap().locks_held, 0);
}

async fn the_rescuer_hands_a_record_whose_lease_lapsed_to_a_new_attempt_and_fails_it_at_the_limit(
    b: Backend,
) {
    let (_db, store, _) = setup(b, 1).await;
    let mut p = params(SHORT);
    p.max_attempts = 2;
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let job = jobs_of(store.as_ref(), s.session_id).await.remove(0);
    let rid = job.1.record_id;
    token_of(
        &store
            .lease_grant_batch(&p, &[grant(&job, "dead")])
            .await
            .unwrap()[0],
    );
    assert_eq!(
        store.records_rescue(&p, 100).await.unwrap(),
        RescueOutcome::default(),
        "the lease is still live"
    );
    tokio::time::sleep(LAPSE).await;

    let o = store.records_rescue(&p, 100).await.unwrap();
    assert_eq!((o.requeued, o.failed, o.cancelled), (1, 0, 0));
    let r = record(store.as_ref(), s.session_id, rid).await;
    assert_eq!(r.status.as_str(), "pending");
    assert!(
        r.error.as_deref().unwrap_or("").contains("lost its lease"),
        "{:?}",
        r.error
    );
    let new_job = job_id_of(store.as_ref(), rid).await;
    assert_ne!(new_job, job.0, "a new job carries the next attempt");
    assert_eq!(
        job_status(store.as_ref(), &job.0).await,
        "Done",
        "the lost attempt's job is retired"
    );
    assert_eq!(job_status(store.as_ref(), &new_job).await, "Pending");
    // A second sweep finds nothing: the rescue is done once.
    assert_eq!(
        store.records_rescue(&p, 100).await.unwrap(),
        RescueOutcome::default()
    );

    let mut next = job.clone();
    next.0 = new_job;
    let GrantOutcome::Granted { attempt, .. } = store
        .lease_grant_batch(&p, &[grant(&next, "dead-too")])
        .await
        .unwrap()[0]
        .clone()
    else {
        panic!("the new job is granted")
    };
    assert_eq!(attempt, 2);
    tokio::time::sleep(LAPSE).await;
    let o = store.records_rescue(&p, 100).await.unwrap();
    assert_eq!(
        (o.requeued, o.failed),
        (0, 1),
        "the last attempt is not retried"
    );
    assert_eq!(o.sessions_finished.len(), 1);
    assert_eq!(o.sessions_finished[0].status.as_str(), "failed");
    let r = record(store.as_ref(), s.session_id, rid).await;
    assert_eq!(r.status.as_str(), "failed");
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("each of 2 attempts"),
        "{:?}",
        r.error
    );
    let stale = store
        .lease_grant_batch(&p, &[grant(&job, "late")])
        .await
        .unwrap();
    assert!(
        matches!(stale[0], GrantOutcome::Stale),
        "the old job finds a terminal record"
    );
}

async fn the_rescuer_leaves_records_with_a_live_lease_alone(b: Backend) {
    let (_db, store, _) = setup(b, 3).await;
    let p = params(Duration::from_secs(30));
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    store
        .lease_grant_batch(&p, &[grant(&jobs[0], "w"), grant(&jobs[1], "w")])
        .await
        .unwrap();
    assert_eq!(
        store.records_rescue(&p, 100).await.unwrap(),
        RescueOutcome::default()
    );
    let d = store.session_get(s.session_id).await.unwrap().unwrap();
    let statuses: Vec<&str> = d.records.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["running", "running", "pending"]);
}

async fn the_rescuer_hands_on_a_record_whose_lease_was_taken_by_another_session(b: Backend) {
    let (_db, store, _) = setup(b, 1).await;
    let p = params(SHORT);
    let s1 = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let j1 = jobs_of(store.as_ref(), s1.session_id).await.remove(0);
    let t1 = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&j1, "frozen")])
            .await
            .unwrap()[0],
    );
    tokio::time::sleep(LAPSE).await;
    // Another session's job takes the lapsed lease over while the first holder is frozen.
    let long = params(Duration::from_secs(30));
    let s2 = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let j2 = jobs_of(store.as_ref(), s2.session_id).await.remove(0);
    let GrantOutcome::Granted {
        token: t2,
        takeover,
        ..
    } = store
        .lease_grant_batch(&long, &[grant(&j2, "live")])
        .await
        .unwrap()[0]
        .clone()
    else {
        panic!("the lapsed lease is taken over")
    };
    assert!(takeover);
    let o = store.records_rescue(&long, 100).await.unwrap();
    assert_eq!(
        o.requeued, 1,
        "the frozen holder's record is handed on, not left running"
    );
    let late = store
        .record_finish_batch(&[finish(&j1, t1, SyncResult::Completed(accounts(&["stale"])))])
        .await
        .unwrap();
    assert_eq!(late[0].record, RecordOutcome::Fenced);
    let mut j1b = j1.clone();
    j1b.0 = job_id_of(store.as_ref(), j1.1.record_id).await;
    let busy = store
        .lease_grant_batch(&long, &[grant(&j1b, "w")])
        .await
        .unwrap();
    assert!(
        matches!(busy[0], GrantOutcome::Busy),
        "it waits for the live holder: {busy:?}"
    );
    store
        .record_finish_batch(&[finish(&j2, t2, SyncResult::Completed(accounts(&["a"])))])
        .await
        .unwrap();
    j1b.0 = job_id_of(store.as_ref(), j1.1.record_id).await;
    let t = token_of(
        &store
            .lease_grant_batch(&long, &[grant(&j1b, "w")])
            .await
            .unwrap()[0],
    );
    let fin = store
        .record_finish_batch(&[finish(&j1b, t, SyncResult::Completed(accounts(&["a"])))])
        .await
        .unwrap();
    assert_eq!(
        fin[0].session_finished.as_ref().map(|f| f.status.as_str()),
        Some("completed")
    );
    let r = record(store.as_ref(), s1.session_id, j1.1.record_id).await;
    assert_eq!((r.status.as_str(), r.attempts), ("completed", 2));
}

async fn cancel_ends_a_running_record_whose_lease_is_gone_and_finishes_the_session(b: Backend) {
    let (_db, store, _) = setup(b, 2).await;
    let p = params(SHORT);
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let t = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&jobs[0], "dead")])
            .await
            .unwrap()[0],
    );
    tokio::time::sleep(LAPSE).await;
    let c = store.session_cancel(s.session_id).await.unwrap().unwrap();
    assert_eq!(
        c.session.status.as_str(),
        "cancelled",
        "nothing is left running without a lease"
    );
    assert_eq!(c.session.cancelled_instances, 2);
    assert_eq!(
        c.finished.as_ref().map(|f| f.status.as_str()),
        Some("cancelled")
    );
    let late = store
        .record_finish_batch(&[finish(&jobs[0], t, SyncResult::Completed(accounts(&["x"])))])
        .await
        .unwrap();
    assert_eq!(late[0].record, RecordOutcome::Fenced);
    assert!(
        store
            .accounts_list(jobs[0].1.instance_id, true)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_grant_retried_after_its_commit_replays_the_same_lease_without_a_new_attempt(b: Backend) {
    let (_db, store, _) = setup(b, 1).await;
    let p = params(Duration::from_secs(30));
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let job = jobs_of(store.as_ref(), s.session_id).await.remove(0);
    let req = grant(&job, "w");
    let first = store
        .lease_grant_batch(&p, std::slice::from_ref(&req))
        .await
        .unwrap();
    // The same request again, as the writer sends it when a commit's reply was lost.
    let again = store.lease_grant_batch(&p, &[req]).await.unwrap();
    let (
        GrantOutcome::Granted {
            token: t1,
            attempt: a1,
            ..
        },
        GrantOutcome::Granted {
            token: t2,
            attempt: a2,
            ..
        },
    ) = (&first[0], &again[0])
    else {
        panic!("{first:?} / {again:?}")
    };
    assert_eq!((t1, a1), (t2, a2), "the retry replays the grant");
    let r = record(store.as_ref(), s.session_id, job.1.record_id).await;
    assert_eq!(
        (r.status.as_str(), r.attempts),
        ("running", 1),
        "no attempt was burnt"
    );
    assert_eq!(
        count(store.as_ref(), "SELECT COUNT(*) FROM Jobs").await,
        1,
        "no busy copy was queued"
    );
}

async fn a_finish_retried_after_its_commit_replays_its_outcome_and_counts_once(b: Backend) {
    let (_db, store, _) = setup(b, 2).await;
    let p = params(Duration::from_secs(30));
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let out = store
        .lease_grant_batch(&p, &[grant(&jobs[0], "w"), grant(&jobs[1], "w")])
        .await
        .unwrap();
    let retry = finish(
        &jobs[1],
        token_of(&out[1]),
        SyncResult::Failed {
            error: "timeout".into(),
            retry_after: Some(Duration::from_secs(60)),
        },
    );
    let done = finish(
        &jobs[0],
        token_of(&out[0]),
        SyncResult::Completed(accounts(&["a", "b"])),
    );
    for _ in 0..2 {
        let fin = store
            .record_finish_batch(&[done.clone(), retry.clone()])
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
        assert_eq!(fin[1].record, RecordOutcome::Retrying { next_attempt: 2 });
    }
    let d = store.session_get(s.session_id).await.unwrap().unwrap();
    assert_eq!(d.session.successful_instances, 1, "counted once");
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM Jobs WHERE status = 'Pending'"
        )
        .await,
        1,
        "one next attempt queued, not two"
    );
}

async fn a_completed_sync_of_a_deleted_instance_stores_no_accounts(b: Backend) {
    let (_db, store, ids) = setup(b, 1).await;
    let p = params(Duration::from_secs(30));
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
    assert!(store.instance_delete(ids[0]).await.unwrap());
    let fin = store
        .record_finish_batch(&[finish(&job, t, SyncResult::Completed(accounts(&["x"])))])
        .await
        .unwrap();
    assert_eq!(fin[0].record, RecordOutcome::Failed);
    assert!(
        store.accounts_list(ids[0], true).await.unwrap().is_empty(),
        "no account of a missing instance"
    );
    let r = record(store.as_ref(), s.session_id, job.1.record_id).await;
    assert!(
        r.error.as_deref().unwrap_or("").contains("deleted"),
        "{:?}",
        r.error
    );
    assert_eq!(
        store
            .session_get(s.session_id)
            .await
            .unwrap()
            .unwrap()
            .session
            .status
            .as_str(),
        "failed"
    );
}

async fn a_hundred_thousand_accounts_going_to_zero_are_all_marked_deleted(b: Backend) {
    const N: usize = 100_000;
    let (_db, store, ids) = setup(b, 1).await;
    let p = params(Duration::from_secs(60));
    let many: Vec<_> = (0..N)
        .map(|i| syncpool_workers::Account {
            username: format!("user{i:06}"),
            host: String::new(),
            attributes: json!({"can_login": true}),
            privileges: json!([]),
        })
        .collect();
    for (found, expect) in [
        (
            many,
            RecordOutcome::Completed {
                total: N as i64,
                added: N as i64,
                removed: 0,
                changed: 0,
            },
        ),
        (
            vec![],
            RecordOutcome::Completed {
                total: 0,
                added: 0,
                removed: N as i64,
                changed: 0,
            },
        ),
    ] {
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
        let started = std::time::Instant::now();
        let fin = store
            .record_finish_batch(&[finish(&job, t, SyncResult::Completed(found))])
            .await
            .unwrap();
        eprintln!("finish of a {N}-account diff: {:?}", started.elapsed());
        assert_eq!(fin[0].record, expect);
    }
    assert!(store.accounts_list(ids[0], false).await.unwrap().is_empty());
    assert_eq!(store.accounts_list(ids[0], true).await.unwrap().len(), N);
}

async fn cancel_racing_grants_and_finishes_at_64_way_concurrency_never_fails_or_deadlocks(
    b: Backend,
) {
    let (_db, store, _) = setup(b, 24).await;
    let p = params(Duration::from_secs(30));
    for round in 0..4 {
        let s = store
            .session_create(SyncType::ManualBatch, None)
            .await
            .unwrap();
        let jobs = jobs_of(store.as_ref(), s.session_id).await;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, job) in jobs.into_iter().enumerate() {
            let (store, p) = (store.clone(), p.clone());
            tasks.spawn(async move {
                let g = store
                    .lease_grant_batch(&p, &[grant(&job, &format!("w{i}"))])
                    .await?;
                if let GrantOutcome::Granted { token, .. } = g[0] {
                    store
                        .record_finish_batch(&[finish(
                            &job,
                            token,
                            SyncResult::Completed(accounts(&["a"])),
                        )])
                        .await?;
                }
                Ok::<_, StoreError>(())
            });
        }
        for _ in 0..40 {
            let store: Arc<dyn Store> = store.clone();
            let id = s.session_id;
            tasks.spawn(async move { store.session_cancel(id).await.map(|_| ()) });
        }
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r.unwrap() {
                panic!("round {round}: a store call failed under the race: {e}");
            }
        }
        let d = store.session_get(s.session_id).await.unwrap().unwrap();
        let n = |st: &str| d.records.iter().filter(|r| r.status.as_str() == st).count() as i64;
        assert!(
            d.session.is_finished(),
            "round {round}: {:?}",
            d.session.status
        );
        assert_eq!(
            (n("completed"), n("cancelled")),
            (
                d.session.successful_instances,
                d.session.cancelled_instances
            )
        );
        assert_eq!(n("completed") + n("cancelled"), 24);
    }
}

async fn pipeline_round_commits_finishes_then_renewals_then_grants(b: Backend) {
    let (_db, store, _) = setup(b, 2).await;
    let p = params(Duration::from_secs(30));
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let (_, _, g) = store
        .pipeline_round(&p, &[], &[], &[grant(&jobs[0], "w")])
        .await
        .unwrap();
    let t = token_of(&g[0]);
    let (f, r, g) = store
        .pipeline_round(
            &p,
            &[finish(&jobs[0], t, SyncResult::Completed(accounts(&["a"])))],
            &[renew_of(&jobs[0], t)],
            &[grant(&jobs[1], "w")],
        )
        .await
        .unwrap();
    assert!(matches!(f[0].record, RecordOutcome::Completed { .. }));
    assert!(
        !r[0].held,
        "the renewal comes after the finish in the round and must not revive it"
    );
    token_of(&g[0]);
    assert_eq!(store.fleet_gauges().await.unwrap().locks_held, 1);
}

async fn a_cron_slot_is_claimed_and_its_session_started_in_one_transaction_and_fires_once(
    b: Backend,
) {
    let (_db, store, _) = setup(b, 2).await;
    let slot = chrono::Utc::now();
    let SlotFired::Started(created) = store.schedule_sync_fire("sync", slot).await.unwrap() else {
        panic!("the first replica starts the session")
    };
    assert_eq!(created.total_instances, 2);
    assert!(matches!(
        store.schedule_sync_fire("sync", slot).await.unwrap(),
        SlotFired::Taken
    ));
    let later = slot + chrono::Duration::minutes(1);
    assert!(
        matches!(
            store.schedule_sync_fire("sync", later).await.unwrap(),
            SlotFired::Skipped
        ),
        "skipped while the scheduled session runs"
    );
    let row = count(
        store.as_ref(),
        "SELECT COUNT(*) FROM schedule_slots WHERE session_id IS NOT NULL",
    )
    .await;
    assert_eq!(row, 1, "the slot names the session it started");
    let d = store
        .session_get(created.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.session.sync_type.as_str(), "scheduled");
}

async fn cleanup_with_zero_retention_days_keeps_just_claimed_cron_slots(b: Backend) {
    let (_db, store, _) = setup(b, 1).await;
    let slot = chrono::Utc::now();
    assert!(store.schedule_slot_claim("cleanup", slot).await.unwrap());
    store.cleanup(0, 365, 365).await.unwrap();
    assert!(
        !store.schedule_slot_claim("cleanup", slot).await.unwrap(),
        "the slot survived cleanup, so no replica fires it again"
    );
}

async fn a_cron_slot_with_no_active_instance_is_recorded_skipped_and_starts_nothing(b: Backend) {
    let (_db, store, _) = setup(b, 0).await;
    let slot = chrono::Utc::now();
    assert!(matches!(
        store.schedule_sync_fire("sync", slot).await.unwrap(),
        SlotFired::NothingToSync
    ));
    assert!(
        matches!(
            store.schedule_sync_fire("sync", slot).await.unwrap(),
            SlotFired::Taken
        ),
        "the slot was claimed: no other replica fires it"
    );
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM schedule_slots WHERE skipped"
        )
        .await,
        1
    );
    assert_eq!(
        count(store.as_ref(), "SELECT COUNT(*) FROM sync_sessions").await,
        0
    );
    assert_eq!(store.fleet_gauges().await.unwrap().slots_skipped_24h, 1);
}
