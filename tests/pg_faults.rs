//! Faults only a networked database has: a commit whose answer is lost, a frozen process
//! holding row locks, a worker cut off from the database while it syncs.

use std::time::{Duration, Instant};

use serde_json::json;
use syncpool::model::SyncType;
use syncpool::store::{self, *};

use crate::common::*;
use crate::conformance::{accounts, finish, grant, jobs_of, params, token_of};
use crate::processes::{assert_invariants, assert_no_lock_errors, wait_finished, wait_running};
use crate::proxy::Proxy;

/// Retries a store call the way the writer does: transient errors only, same request.
async fn until_ok<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    for _ in 0..50 {
        match f().await {
            Ok(v) => return v,
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("a permanent error: {e}"),
        }
    }
    panic!("still failing after 50 tries")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_and_a_finish_whose_commit_answer_is_lost_are_replayed_by_their_retry() {
    let db = TestDb::new(Backend::Postgres).await;
    db.store().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let store = store::connect(&proxy.url(&db.url)).await.unwrap();
    store
        .instance_insert(&simulated("only", json!({})))
        .await
        .unwrap();
    let p = params(Duration::from_secs(30));
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let job = jobs_of(store.as_ref(), s.session_id).await.remove(0);

    let req = grant(&job, "w");
    proxy.cut_after_next_commit();
    let lost = store
        .lease_grant_batch(&p, std::slice::from_ref(&req))
        .await;
    assert_eq!(
        proxy.commits_cut.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let err = lost.expect_err("the commit's answer was cut off");
    assert!(
        err.is_transient(),
        "a cut connection is worth a retry: {err}"
    );
    let reqs = [req.clone()];
    let replay = until_ok(|| store.lease_grant_batch(&p, &reqs)).await;
    let GrantOutcome::Granted { token, attempt, .. } = replay[0].clone() else {
        panic!("the retry replays the committed grant: {replay:?}")
    };
    assert_eq!(attempt, 1, "no attempt was burnt");

    let fin = finish(&job, token, SyncResult::Completed(accounts(&["a"])));
    proxy.cut_after_next_commit();
    assert!(
        store
            .record_finish_batch(std::slice::from_ref(&fin))
            .await
            .is_err()
    );
    let fins = [fin.clone()];
    let replay = until_ok(|| store.record_finish_batch(&fins)).await;
    assert!(
        matches!(replay[0].record, RecordOutcome::Completed { total: 1, .. }),
        "the retry is not reported as fenced: {:?}",
        replay[0].record
    );
    let d = store.session_get(s.session_id).await.unwrap().unwrap();
    assert_eq!(
        (d.session.status.as_str(), d.session.successful_instances),
        ("completed", 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_transaction_holding_the_session_row_stalls_others_only_until_the_server_ends_it()
{
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    for i in 0..2 {
        store
            .instance_insert(&simulated(&format!("i{i}"), json!({})))
            .await
            .unwrap();
    }
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
    // A process frozen in the middle of its group commit: its transaction has updated the
    // session's totals (row locked) and then nothing more happens on its connection.
    let DbPool::Postgres(pool) = store.pool() else {
        unreachable!()
    };
    let mut frozen = pool.begin().await.unwrap();
    sqlx::query("UPDATE sync_sessions SET updated_at = clock_timestamp()")
        .execute(&mut *frozen)
        .await
        .unwrap();
    let started = Instant::now();
    let fins = [finish(
        &jobs[0],
        token_of(&out[0]),
        SyncResult::Completed(accounts(&["a"])),
    )];
    let fin = until_ok(|| store.record_finish_batch(&fins)).await;
    let stalled = started.elapsed();
    eprintln!(
        "another worker's finish waited {stalled:?} behind a frozen transaction (idle_in_transaction_session_timeout {})",
        syncpool::store::postgres::IDLE_IN_TRANSACTION_TIMEOUT
    );
    assert!(matches!(fin[0].record, RecordOutcome::Completed { .. }));
    assert!(
        stalled < Duration::from_secs(15),
        "stalled {stalled:?}: longer than a lease lives"
    );
    assert!(
        frozen.commit().await.is_err(),
        "the server ended the frozen transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_postgres_abandons_its_sync_before_another_takes_the_instance_over() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("slow", json!({"latency_ms": 8000})))
        .await
        .unwrap();
    let trace = db.dir.path().join("reads.trace");
    let trace_s = trace.to_str().unwrap().to_string();
    let env = [("SYNCPOOL_SIMULATED_TRACE", trace_s.as_str())];
    let timings = [
        "--lease-ttl",
        "3s",
        "--lease-renew",
        "500ms",
        "--queue-heartbeat",
        "1s",
        "--concurrency",
        "2",
    ];
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let (mut cut_off, clog) = worker_at(&db, &proxy.url(&db.url), "cut-off", &timings, &env);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    wait_running(&db, s.session_id, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.cut();
    let cut_at = Instant::now();
    let (mut other, olog) = worker_at(&db, &db.url, "other", &timings, &env);
    let done = wait_finished(&db, &[s.session_id], Duration::from_secs(60)).await;
    eprintln!(
        "the cut-off worker's instance was synced by another worker {:?} after the cut",
        cut_at.elapsed()
    );
    assert_invariants(&done);
    assert_eq!(done[0].session.successful_instances, 1);
    assert_eq!(
        done[0].records[0].attempts, 2,
        "the second attempt is the other worker's"
    );
    proxy.restore();
    let reads = read_trace(&trace);
    assert!(reads.len() >= 2, "{reads:?}");
    let overlaps = overlapping_reads(&reads);
    assert!(
        overlaps.is_empty(),
        "two reads of one instance overlapped: {overlaps:#?}"
    );
    let log = std::fs::read_to_string(&clog).unwrap_or_default();
    assert!(
        log.contains("could not be renewed before its deadline"),
        "{log}"
    );
    // Once the network is back the cut-off worker goes on working and exits cleanly.
    for c in [&cut_off, &other] {
        signal(c, "TERM");
    }
    assert!(cut_off.wait().unwrap().success());
    assert!(other.wait().unwrap().success());
    assert_no_lock_errors(&[clog, olog]);
}

/// A renewal locks leases in the one documented order (ascending instance id), the order
/// grants lock them in. In arrival order a renewal of [high, low] took `high` and waited
/// for `low`, while a grant holding `low` waited for `high`: PostgreSQL aborted one of the
/// two after `deadlock_timeout`, delaying a renewal (and a lease could lapse meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_locks_leases_in_the_grants_order_and_never_deadlocks_with_one() {
    let (_db, store, _) = crate::conformance::setup(Backend::Postgres, 2).await;
    let p = params(Duration::from_secs(30));
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let mut jobs = jobs_of(store.as_ref(), s.session_id).await;
    jobs.sort_by_key(|j| j.1.instance_id);
    let granted = store
        .lease_grant_batch(&p, &[grant(&jobs[0], "w"), grant(&jobs[1], "w")])
        .await
        .unwrap();
    let renew = |j: &(String, syncpool::queue::JobPayload), o: &GrantOutcome| RenewRequest {
        instance_id: j.1.instance_id,
        token: token_of(o),
        record_id: j.1.record_id,
    };
    // Highest instance first, as a writer's renewals may arrive.
    let reqs = vec![renew(&jobs[1], &granted[1]), renew(&jobs[0], &granted[0])];
    let (low, high) = (jobs[0].1.instance_id, jobs[1].1.instance_id);

    let DbPool::Postgres(pool) = store.pool() else {
        unreachable!("a PostgreSQL test")
    };
    // Another transaction takes the two lease rows as a grant does: the lower one first.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM sync_locks WHERE instance_id = $1 FOR UPDATE")
        .bind(low)
        .execute(&mut *tx)
        .await
        .unwrap();
    let renewer = store.clone();
    let renewal = tokio::spawn(async move { renewer.lease_renew_batch(&p, &reqs).await });
    // Long enough for the renewal to lock whatever it locks before waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query("SELECT 1 FROM sync_locks WHERE instance_id = $1 FOR UPDATE")
            .bind(high)
            .execute(&mut *tx),
    )
    .await
    .expect("the second lock is granted or refused, never hangs");
    assert!(
        second.is_ok(),
        "the transaction taking leases in ascending order was aborted: {second:?}"
    );
    tx.commit().await.unwrap();
    let renewed = renewal.await.unwrap().expect("the renewal went through");
    assert!(
        renewed.iter().all(|r| r.held),
        "both leases renewed: {renewed:?}"
    );
}
