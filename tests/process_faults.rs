//! Worker processes meeting the faults of the review: a worker frozen past its lease
//! while another session takes the instance, a panicking source, a SIGKILLed worker with
//! a long queue orphan timeout. Both databases; the built binary.

use std::time::{Duration, Instant};

use serde_json::json;
use syncpool::model::SyncType;

use crate::common::*;
use crate::processes::{assert_invariants, assert_no_lock_errors, wait_finished, wait_running};

on_both_databases!(
    a_session_whose_worker_froze_past_its_lease_finishes_after_another_session_took_the_instance,
    a_panicking_source_fails_its_record_and_frees_the_lease_at_once,
    a_sigkilled_workers_record_is_handed_on_after_the_lease_not_the_queue_orphan_timeout,
);

/// Lease 2 s, renewal 500 ms, and apalis' orphan timeout far away (3 x 60 s), so only the
/// lease and the rescuer can hand work on.
pub(crate) const TIMINGS: &[&str] = &[
    "--lease-ttl",
    "2s",
    "--lease-renew",
    "500ms",
    "--queue-heartbeat",
    "60s",
    "--concurrency",
    "4",
];

async fn a_session_whose_worker_froze_past_its_lease_finishes_after_another_session_took_the_instance(
    b: Backend,
) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("slow", json!({"latency_ms": 4000})))
        .await
        .unwrap();
    let trace = db.dir.path().join("reads.trace");
    let trace_s = trace.to_str().unwrap().to_string();
    let env = [("SYNCPOOL_SIMULATED_TRACE", trace_s.as_str())];
    let (mut a, alog) = worker_at(&db, &db.url, "a", TIMINGS, &env);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s1 = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    wait_running(&db, s1.session_id, 1).await;
    signal(&a, "STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut b_, blog) = worker_at(&db, &db.url, "b", TIMINGS, &env);
    let s2 = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    wait_finished(&db, &[s2.session_id], Duration::from_secs(30)).await;
    signal(&a, "CONT");
    let resumed = Instant::now();
    // TTL + one renewal period + one 4 s sync + slack.
    let done = wait_finished(
        &db,
        &[s1.session_id, s2.session_id],
        Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "the frozen worker's session finished {:?} after it resumed",
        resumed.elapsed()
    );
    assert_invariants(&done);
    assert_eq!(done[0].session.status.as_str(), "completed");
    assert_eq!(done[0].records[0].attempts, 2, "handed to a second attempt");
    assert_eq!(
        store.fleet_gauges().await.unwrap().locks_held,
        0,
        "no lease held by nobody"
    );
    let overlaps = overlapping_reads(&read_trace(&trace));
    assert!(
        overlaps.is_empty(),
        "two reads of one instance overlapped: {overlaps:#?}"
    );
    for c in [&a, &b_] {
        signal(c, "TERM");
    }
    assert!(a.wait().unwrap().success());
    assert!(b_.wait().unwrap().success());
    assert_no_lock_errors(&[alog, blog]);
}

async fn a_panicking_source_fails_its_record_and_frees_the_lease_at_once(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated(
            "buggy",
            json!({"panic_rate": 1.0, "latency_ms": 20}),
        ))
        .await
        .unwrap();
    store
        .instance_insert(&simulated("fine", json!({"latency_ms": 20})))
        .await
        .unwrap();
    let (mut w, log) = worker(&db, "w", TIMINGS);
    for _ in 0..2 {
        let s = store
            .session_create(SyncType::ManualBatch, None)
            .await
            .unwrap();
        let done = wait_finished(&db, &[s.session_id], Duration::from_secs(20)).await;
        assert_invariants(&done);
        let buggy = done[0]
            .records
            .iter()
            .find(|r| r.instance_name == "buggy")
            .unwrap();
        assert_eq!(buggy.status.as_str(), "failed");
        assert_eq!(buggy.attempts, 1, "a panic is fatal: no retry");
        assert!(
            buggy.error.as_deref().unwrap_or("").contains("panicked"),
            "{:?}",
            buggy.error
        );
        assert_eq!(done[0].session.status.as_str(), "completed_with_errors");
        assert_eq!(
            store.fleet_gauges().await.unwrap().locks_held,
            0,
            "the lease was released"
        );
    }
    let stop = Instant::now();
    signal(&w, "TERM");
    assert!(w.wait().unwrap().success());
    assert!(
        stop.elapsed() < Duration::from_secs(10),
        "no leaked heartbeat holds shutdown"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("lease renewal"),
        "no heartbeat outlived its sync: {text}"
    );
}

async fn a_sigkilled_workers_record_is_handed_on_after_the_lease_not_the_queue_orphan_timeout(
    b: Backend,
) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("slow", json!({"latency_ms": 3000})))
        .await
        .unwrap();
    let (mut victim, _) = worker(&db, "victim", TIMINGS);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    wait_running(&db, s.session_id, 1).await;
    signal(&victim, "KILL");
    let _ = victim.wait();
    let killed = Instant::now();
    let (mut other, olog) = worker(&db, "other", TIMINGS);
    // The queue's orphan timeout is 180 s here; the lease is 2 s.
    let done = wait_finished(&db, &[s.session_id], Duration::from_secs(30)).await;
    eprintln!(
        "a SIGKILLed worker's record was finished {:?} after the kill (lease 2 s, orphan timeout 180 s)",
        killed.elapsed()
    );
    assert_invariants(&done);
    assert_eq!(done[0].session.status.as_str(), "completed");
    assert_eq!(done[0].records[0].attempts, 2);
    signal(&other, "TERM");
    assert!(other.wait().unwrap().success());
    assert_no_lock_errors(&[olog]);
}
