//! Several worker processes, started from the built binary, on one database: overlapping
//! sessions, a SIGKILLed worker, a SIGSTOPped worker whose lease is taken over.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use syncpool::model::{SessionDetail, SyncType};

use crate::common::*;

on_both_databases!(
    three_workers_finish_two_overlapping_sessions_without_overlapping_syncs,
    a_sigkilled_workers_instances_are_finished_by_the_others,
    a_paused_workers_late_result_is_refused_by_the_fencing_token,
    sigterm_hands_running_syncs_back_and_exits_0,
    cancel_stops_a_running_session_at_the_next_heartbeat,
    an_undecodable_job_is_killed_without_stopping_the_worker,
    an_idle_worker_picks_up_new_and_delayed_jobs_by_polling_not_at_its_heartbeat,
    two_serve_replicas_fire_each_cron_slot_once_and_skip_while_a_sync_runs,
);

pub(crate) async fn wait_finished(
    db: &TestDb,
    ids: &[uuid::Uuid],
    limit: Duration,
) -> Vec<SessionDetail> {
    let store = db.store().await;
    let start = Instant::now();
    loop {
        let mut all = vec![];
        for id in ids {
            all.push(store.session_get(*id).await.unwrap().unwrap());
        }
        if all.iter().all(|d| d.session.is_finished()) {
            return all;
        }
        assert!(
            start.elapsed() < limit,
            "sessions not finished within {limit:?}: {:?}",
            all.iter()
                .map(|d| (&d.session.status, d.session.successful_instances))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Invariants 2 and 3, and one live sync per instance: every record is terminal, the
/// totals are the counts, and per instance the [started_at, completed_at] intervals
/// of its records never overlap.
pub(crate) fn assert_invariants(sessions: &[SessionDetail]) {
    type Span = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);
    let mut by_instance: HashMap<i64, Vec<Span>> = HashMap::new();
    for d in sessions {
        let s = &d.session;
        let count = |st: &str| d.records.iter().filter(|r| r.status.as_str() == st).count() as i64;
        assert_eq!(count("completed"), s.successful_instances);
        assert_eq!(count("failed"), s.failed_instances);
        assert_eq!(count("cancelled"), s.cancelled_instances);
        assert_eq!(
            s.successful_instances + s.failed_instances + s.cancelled_instances,
            s.total_instances,
            "every record terminal"
        );
        for r in &d.records {
            if let (Some(a), Some(b)) = (r.started_at, r.completed_at) {
                assert!(a <= b);
                by_instance.entry(r.instance_id).or_default().push((a, b));
            }
        }
    }
    for (instance, mut spans) in by_instance {
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "instance {instance}: syncs overlap: {:?} and {:?}",
                w[0],
                w[1]
            );
        }
    }
}

pub(crate) fn assert_no_lock_errors(logs: &[std::path::PathBuf]) {
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            !text.to_lowercase().contains("database is locked"),
            "{}: {text}",
            log.display()
        );
        assert!(!text.contains("panicked"), "{}: {text}", log.display());
    }
}

async fn three_workers_finish_two_overlapping_sessions_without_overlapping_syncs(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    for i in 0..40 {
        store.instance_insert(&simulated(&format!("i{i:02}"), json!({"latency_ms": 30, "jitter_ms": 30, "fail_rate": if i % 10 == 0 { 1.0 } else { 0.0 }}))).await.unwrap();
    }
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut workers = vec![
        worker(
            &db,
            "a",
            &[
                "--concurrency",
                "8",
                "--retry-backoff",
                "100ms",
                "--metrics-bind",
                &metrics,
            ],
        ),
        worker(
            &db,
            "b",
            &["--concurrency", "8", "--retry-backoff", "100ms"],
        ),
        worker(
            &db,
            "c",
            &["--concurrency", "8", "--retry-backoff", "100ms"],
        ),
    ];
    let s1 = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let s2 = store
        .session_create(SyncType::Scheduled, None)
        .await
        .unwrap();
    let done = wait_finished(
        &db,
        &[s1.session_id, s2.session_id],
        Duration::from_secs(90),
    )
    .await;
    assert_invariants(&done);
    for d in &done {
        assert_eq!(d.session.status.as_str(), "completed_with_errors");
        assert_eq!(d.session.failed_instances, 4);
        assert!(
            d.records
                .iter()
                .filter(|r| r.status.as_str() == "failed")
                .all(|r| {
                    r.attempts == 3
                        && r.error
                            .as_deref()
                            .unwrap_or("")
                            .contains("simulated failure")
                })
        );
    }
    let text = scrape(&metrics);
    eprintln!(
        "busy retries seen by worker a: {}",
        metric_value(&text, "syncpool_db_busy_total")
    );
    assert!(text.contains("syncpool_instance_syncs_total"));
    for (child, _) in &workers {
        signal(child, "TERM");
    }
    for (child, _) in workers.iter_mut() {
        assert!(
            child.wait().unwrap().success(),
            "a worker exits 0 on SIGTERM"
        );
    }
    assert_no_lock_errors(&workers.iter().map(|w| w.1.clone()).collect::<Vec<_>>());
    assert_eq!(store.fleet_gauges().await.unwrap().locks_held, 0);
}

const FAST_RECOVERY: &[&str] = &[
    "--lease-ttl",
    "3s",
    "--lease-renew",
    "1s",
    "--queue-heartbeat",
    "1s",
    "--concurrency",
    "4",
];

async fn a_sigkilled_workers_instances_are_finished_by_the_others(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    for i in 0..12 {
        store
            .instance_insert(&simulated(&format!("slow{i}"), json!({"latency_ms": 2000})))
            .await
            .unwrap();
    }
    let (mut victim, vlog) = worker(&db, "victim", FAST_RECOVERY);
    // Let the victim alone claim work and start syncing, then kill it mid-sync.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let d = store.session_get(s.session_id).await.unwrap().unwrap();
        if d.records.iter().any(|r| r.status.as_str() == "running") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "victim never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&victim, "KILL");
    let _ = victim.wait();
    let killed_at = Instant::now();
    let mut others = vec![
        worker(&db, "x", FAST_RECOVERY),
        worker(&db, "y", FAST_RECOVERY),
    ];
    let done = wait_finished(&db, &[s.session_id], Duration::from_secs(60)).await;
    let recovery = killed_at.elapsed();
    eprintln!(
        "recovered a SIGKILLed worker's instances in {recovery:?} (lease TTL 3 s, orphan timeout 3 s)"
    );
    assert_invariants(&done);
    assert_eq!(done[0].session.successful_instances, 12, "nothing lost");
    assert!(
        done[0].records.iter().any(|r| r.attempts >= 2),
        "some instance was taken over from the victim"
    );
    for (c, _) in &others {
        signal(c, "TERM");
    }
    for (c, _) in others.iter_mut() {
        assert!(c.wait().unwrap().success());
    }
    let mut logs: Vec<_> = others.iter().map(|w| w.1.clone()).collect();
    logs.push(vlog);
    assert_no_lock_errors(&logs);
}

async fn a_paused_workers_late_result_is_refused_by_the_fencing_token(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("only", json!({"latency_ms": 2500})))
        .await
        .unwrap();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let timings = [
        "--lease-ttl",
        "2s",
        "--lease-renew",
        "500ms",
        "--queue-heartbeat",
        "1s",
        "--concurrency",
        "2",
    ];
    let mut args = timings.to_vec();
    args.extend(["--metrics-bind", metrics.as_str()]);
    let (mut paused, plog) = worker(&db, "paused", &args);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let start = Instant::now();
    while !store
        .session_get(s.session_id)
        .await
        .unwrap()
        .unwrap()
        .records
        .iter()
        .any(|r| r.status.as_str() == "running")
    {
        assert!(start.elapsed() < Duration::from_secs(20), "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&paused, "STOP");
    let (mut other, olog) = worker(&db, "other", &timings);
    // The other worker takes the expired lease over (after the queue's orphan timeout
    // re-delivers the job) and finishes the sync.
    let done = wait_finished(&db, &[s.session_id], Duration::from_secs(60)).await;
    assert_eq!(done[0].session.successful_instances, 1);
    let winner = done[0].records[0].worker_id.clone();
    signal(&paused, "CONT");
    // Once resumed, the paused worker's renewal or finish meets a newer token.
    let start = Instant::now();
    loop {
        let lost = metric_value(&scrape(&metrics), "syncpool_lock_lost_total");
        if lost >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the paused worker never noticed its lost lease"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = store.session_get(s.session_id).await.unwrap().unwrap();
    assert_eq!(
        after.records[0].worker_id, winner,
        "the new holder's result stands"
    );
    assert_eq!(after.records[0].status.as_str(), "completed");
    assert_invariants(&[after]);
    for c in [&paused, &other] {
        signal(c, "TERM");
    }
    assert!(paused.wait().unwrap().success());
    assert!(other.wait().unwrap().success());
    assert_no_lock_errors(&[plog, olog]);
}

pub(crate) async fn wait_running(db: &TestDb, id: uuid::Uuid, n: usize) {
    let store = db.store().await;
    let start = Instant::now();
    while store
        .session_get(id)
        .await
        .unwrap()
        .unwrap()
        .records
        .iter()
        .filter(|r| r.status.as_str() == "running")
        .count()
        < n
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "syncs never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sigterm_hands_running_syncs_back_and_exits_0(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    for i in 0..3 {
        store
            .instance_insert(&simulated(
                &format!("long{i}"),
                json!({"latency_ms": 30000}),
            ))
            .await
            .unwrap();
    }
    let (mut w, log) = worker(
        &db,
        "leaving",
        &["--shutdown-grace", "1s", "--concurrency", "4"],
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    wait_running(&db, s.session_id, 3).await;
    let t = Instant::now();
    signal(&w, "TERM");
    assert!(w.wait().unwrap().success(), "exit code 0");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "left within the grace period: {:?}",
        t.elapsed()
    );
    let d = store.session_get(s.session_id).await.unwrap().unwrap();
    assert!(
        d.records
            .iter()
            .all(|r| r.status.as_str() == "pending" && r.attempts == 0),
        "records handed back: {:?}",
        d.records
    );
    let g = store.fleet_gauges().await.unwrap();
    assert_eq!(
        (g.locks_held, g.jobs_pending),
        (0, 3),
        "leases released, jobs back in the queue"
    );
    assert_no_lock_errors(&[log]);
}

async fn cancel_stops_a_running_session_at_the_next_heartbeat(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    for i in 0..6 {
        store
            .instance_insert(&simulated(&format!("c{i}"), json!({"latency_ms": 30000})))
            .await
            .unwrap();
    }
    let (mut w, log) = worker(
        &db,
        "c",
        &[
            "--concurrency",
            "2",
            "--lease-ttl",
            "3s",
            "--lease-renew",
            "500ms",
        ],
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    wait_running(&db, s.session_id, 2).await;
    let (code, out, err) = cli(&db.url, &["cancel", &s.session_id.to_string()]);
    assert_eq!(code, 0, "{out} {err}");
    let done = wait_finished(&db, &[s.session_id], Duration::from_secs(15)).await;
    assert_eq!(done[0].session.status.as_str(), "cancelled");
    assert_eq!(done[0].session.cancelled_instances, 6);
    assert_invariants(&done);
    signal(&w, "TERM");
    assert!(w.wait().unwrap().success());
    assert_eq!(store.fleet_gauges().await.unwrap().locks_held, 0);
    assert_no_lock_errors(&[log]);
}

async fn an_undecodable_job_is_killed_without_stopping_the_worker(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let id = syncpool::queue::new_job_id();
    match store.pool() {
        syncpool::store::DbPool::Sqlite(p) => {
            sqlx::query("INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority) VALUES (X'7b6e6f74', ?1, ?2, 'Pending', 0, 1, unixepoch(), 0)")
                .bind(&id).bind(syncpool::queue::QUEUE).execute(&p).await.unwrap();
        }
        syncpool::store::DbPool::Postgres(p) => {
            sqlx::query("INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority) VALUES ('\\x7b6e6f74', $1, $2, 'Pending', 0, 1, now() - interval '1 second', 0)")
                .bind(&id).bind(syncpool::queue::QUEUE).execute(&p).await.unwrap();
        }
    }
    store
        .instance_insert(&simulated("fine", json!({"latency_ms": 10})))
        .await
        .unwrap();
    let (mut w, log) = worker(&db, "poison", &["--concurrency", "2"]);
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let done = wait_finished(&db, &[s.session_id], Duration::from_secs(20)).await;
    assert_eq!(done[0].session.status.as_str(), "completed");
    assert_eq!(
        store.fleet_gauges().await.unwrap().jobs_failed,
        1,
        "the bad job is retired as killed"
    );
    signal(&w, "TERM");
    assert!(w.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("undecodable job payload"), "{text}");
}

async fn an_idle_worker_picks_up_new_and_delayed_jobs_by_polling_not_at_its_heartbeat(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated(
            "flaky",
            json!({"latency_ms": 0, "fail_rate": 1.0}),
        ))
        .await
        .unwrap();
    // A 30 s queue heartbeat: if pickup waited for it, this test could not finish in time.
    let (mut w, log) = worker(
        &db,
        "idle",
        &[
            "--queue-heartbeat",
            "30s",
            "--max-attempts",
            "2",
            "--retry-backoff",
            "100ms",
        ],
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    // The first attempt is new work; the second is a job scheduled 1 s ahead, which
    // PostgreSQL's NOTIFY does not announce.
    let done = wait_finished(&db, &[s.session_id], Duration::from_secs(12)).await;
    assert_eq!(done[0].records[0].attempts, 2);
    signal(&w, "TERM");
    assert!(w.wait().unwrap().success());
    assert_no_lock_errors(&[log]);
}

async fn two_serve_replicas_fire_each_cron_slot_once_and_skip_while_a_sync_runs(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    // Each scheduled session takes ~3 s, the schedule fires every 2 s: slots must be skipped.
    store
        .instance_insert(&simulated("slow", json!({"latency_ms": 3000})))
        .await
        .unwrap();
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            Command::new(bin())
                .args([
                    "serve",
                    "--bind",
                    "127.0.0.1:0",
                    "--schedule",
                    "*/2 * * * * *",
                ])
                .env("SYNCPOOL_DATABASE_URL", &db.url)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut w, log) = worker(&db, "sched", &["--concurrency", "2"]);
    tokio::time::sleep(Duration::from_secs(9)).await;
    for r in &replicas {
        signal(r, "TERM");
    }
    for mut r in replicas {
        assert!(r.wait().unwrap().success());
    }
    let (slots, skipped, with_session): (i64, i64, i64) = match store.pool() {
        syncpool::store::DbPool::Sqlite(p) => sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(skipped), 0), COUNT(session_id) FROM schedule_slots WHERE name = 'sync'",
        )
        .fetch_one(&p)
        .await
        .unwrap(),
        syncpool::store::DbPool::Postgres(p) => sqlx::query_as(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE skipped), COUNT(session_id) FROM schedule_slots WHERE name = 'sync'",
        )
        .fetch_one(&p)
        .await
        .unwrap(),
    };
    let (sessions, n) = store
        .session_list(&syncpool::store::SessionFilter {
            status: None,
            limit: 100,
            offset: 0,
            sync_type: None,
        })
        .await
        .unwrap();
    assert!(
        slots >= 3,
        "about 4 slots in 9 s, each recorded once: {slots}"
    );
    assert_eq!(
        slots,
        skipped + with_session,
        "every claimed slot either started a session or was skipped"
    );
    assert_eq!(
        n, with_session,
        "one session per fired slot, however many replicas"
    );
    assert!(
        skipped >= 1,
        "a slot that comes while the last scheduled session runs is skipped"
    );
    assert!(sessions.iter().all(|s| s.sync_type.as_str() == "scheduled"));
    // Scheduled sessions never overlap: each starts after the previous one finished.
    let mut spans: Vec<_> = sessions
        .iter()
        .map(|s| (s.created_at, s.completed_at))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1.is_some_and(|end| end <= w[1].0),
            "scheduled sessions overlap: {spans:?}"
        );
    }
    signal(&w, "TERM");
    assert!(w.wait().unwrap().success());
    assert_no_lock_errors(&[log]);
}

/// A backend error ends an apalis worker (docs/APALIS.md, "Backend errors end a worker"); ours restarts under a new name,
/// backing off while the error lasts, and keeps working. Provoked on PostgreSQL by hiding
/// apalis' jobs table for two seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_queue_fails_restarts_under_a_new_name_and_keeps_syncing() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("after", json!({"latency_ms": 10})))
        .await
        .unwrap();
    let (mut w, log) = worker(&db, "phoenix", &["--concurrency", "2"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let syncpool::store::DbPool::Postgres(pool) = store.pool() else {
        unreachable!()
    };
    sqlx::query("ALTER TABLE apalis.jobs RENAME TO jobs_away")
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query("ALTER TABLE apalis.jobs_away RENAME TO jobs")
        .execute(&pool)
        .await
        .unwrap();
    let s = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let done = wait_finished(&db, &[s.session_id], Duration::from_secs(30)).await;
    assert_eq!(done[0].session.status.as_str(), "completed");
    signal(&w, "TERM");
    assert!(w.wait().unwrap().success(), "still exits 0");
    let text = std::fs::read_to_string(&log).unwrap();
    let restarts = text.matches("restarting").count();
    assert!(restarts >= 1, "the worker restarted: {text}");
    assert!(
        restarts < 100,
        "restarts back off instead of spinning: {restarts}"
    );
    assert!(text.contains("-w1"), "the restarted worker has a new name");
}

/// What an operator of a worker sees: one log line per failed attempt at the default
/// level, naming the instance, the attempt and the kind of failure; and health checks
/// on the metrics port for the orchestrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_logs_each_failed_attempt_once_and_its_metrics_port_answers_health_checks() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("flaky-db", json!({"fail_rate": 1.0})))
        .await
        .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let (mut w, log) = worker(
        &db,
        "ops",
        &[
            "--metrics-bind",
            &addr,
            "--max-attempts",
            "2",
            "--retry-backoff",
            "100ms",
        ],
    );
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no metrics port"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = http_get(&addr, "/healthz");
    assert!(
        health.starts_with("HTTP/1.0 200") && health.contains("\"ok\""),
        "{health}"
    );
    let ready = http_get(&addr, "/readyz");
    assert!(
        ready.starts_with("HTTP/1.0 200") && ready.contains("sqlite"),
        "{ready}"
    );

    let (code, out, err) = cli(&db.url, &["sync", "flaky-db", "--wait"]);
    assert_eq!(code, 4, "{out}{err}");
    signal(&w, "TERM");
    w.wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("instance sync failed"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per attempt: {text}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("flaky-db"), "{line}");
        assert!(line.contains(&format!("attempt={}", i + 1)), "{line}");
        assert!(
            line.contains("class=\"retryable\"") || line.contains("class=retryable"),
            "{line}"
        );
    }
}
