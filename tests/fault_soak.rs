//! The randomized fault test: real worker processes on SQLite and on PostgreSQL, and, at
//! random, SIGKILL and restart, SIGSTOP past the lease TTL then SIGCONT, a worker's
//! database connection cut and restored (a TCP proxy per worker), a crash and restart of
//! PostgreSQL (a private cluster, never the machine's server), a panicking and a hanging
//! source, overlapping sessions and cancels.
//!
//! After the faults stop, every session must be terminal within `SETTLE` (stated bound:
//! 120 s; the slowest legitimate path is a hanging instance that uses its 3 attempts of
//! 1 s each, queued behind the other sessions that include it). Then: each session's
//! totals equal its records; no live lease exists without the running record it belongs
//! to; no worker died; and no two reads of one instance overlapped, judged by the
//! simulated source's own trace (see `overlapping_reads`), not by syncpool's tables.
//!
//! Short form (CI): two seeds per database, `SYNCPOOL_FAULT_SECONDS` (default 12) of
//! faults each. Long form: `scripts/fault_soak.sh` sets more seeds and seconds. A failing
//! run prints its seed; `SYNCPOOL_FAULT_SEEDS=N` replays that fault schedule (the
//! timing of the processes themselves cannot be replayed exactly).

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use syncpool::model::SyncType;
use syncpool::store::{self, DbPool, SessionFilter, Store};

use crate::common::*;
use crate::private_pg::PrivatePg;
use crate::proxy::Proxy;

const SETTLE: Duration = Duration::from_secs(120);

const WORKER_FLAGS: &[&str] = &[
    "--lease-ttl",
    "2s",
    "--lease-renew",
    "400ms",
    "--queue-heartbeat",
    "1s",
    "--sync-timeout",
    "1s",
    "--retry-backoff",
    "200ms",
    "--max-attempts",
    "3",
    "--concurrency",
    "4",
    "--shutdown-grace",
    "2s",
];

fn seeds() -> Vec<u64> {
    match std::env::var("SYNCPOOL_FAULT_SEEDS") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .expect("SYNCPOOL_FAULT_SEEDS: comma-separated numbers")
            })
            .collect(),
        _ => (0..2)
            .map(|_| rand::rng().random_range(1..1_000_000))
            .collect(),
    }
}

fn fault_seconds() -> u64 {
    std::env::var("SYNCPOOL_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_workers_keep_every_promise_under_random_faults() {
    for seed in seeds() {
        soak(false, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_workers_keep_every_promise_under_random_faults() {
    for seed in seeds() {
        soak(true, seed).await;
    }
}

struct Slot {
    child: Child,
    log: std::path::PathBuf,
    proxy: Option<Proxy>,
    paused_until: Option<Instant>,
    cut_until: Option<Instant>,
    restarts: u32,
}

/// Retries transient errors (the test's own connection meets the restarts too).
async fn retry<T, F, Fut>(f: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, store::StoreError>>,
{
    for _ in 0..100 {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("a permanent store error: {e}"),
        }
    }
    None
}

async fn soak(postgres: bool, seed: u64) {
    let secs = fault_seconds();
    let what = if postgres { "postgres" } else { "sqlite" };
    eprintln!(
        "fault seed {seed} on {what}, {secs} s of faults (replay: SYNCPOOL_FAULT_SEEDS={seed})"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new(Backend::Sqlite).await; // its temp dir; the URL is replaced on PostgreSQL
    let pg = postgres.then(PrivatePg::start);
    let url = match &pg {
        Some(pg) => {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres"))
                .await
                .expect("connect to the private cluster");
            sqlx::query("CREATE DATABASE syncpool")
                .execute(&mut c)
                .await
                .unwrap();
            pg.url("syncpool")
        }
        None => db.url.clone(),
    };
    let store = store::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");

    let mut ids = vec![];
    for i in 0..14 {
        let latency = rng.random_range(50..600);
        let opts = json!({"latency_ms": latency, "jitter_ms": 100, "accounts": 5});
        ids.push(
            store
                .instance_insert(&simulated(&format!("plain{i}"), opts))
                .await
                .unwrap()
                .id,
        );
    }
    for (name, opts) in [
        ("flaky0", json!({"latency_ms": 200, "fail_rate": 0.4})),
        ("flaky1", json!({"latency_ms": 300, "fail_rate": 0.4})),
        ("panicky", json!({"latency_ms": 100, "panic_rate": 0.3})),
        ("hanging", json!({"latency_ms": 30000})),
    ] {
        ids.push(
            store
                .instance_insert(&simulated(name, opts))
                .await
                .unwrap()
                .id,
        );
    }
    let hanging = *ids.last().unwrap();

    let trace = db.dir.path().join(format!("reads-{seed}.trace"));
    let trace_s = trace.display().to_string();
    let env = [("SYNCPOOL_SIMULATED_TRACE", trace_s.as_str())];
    let spawn = |tag: String, proxy: Option<&Proxy>| {
        let wurl = proxy.map(|p| p.url(&url)).unwrap_or_else(|| url.clone());
        worker_at(&db, &wurl, &tag, WORKER_FLAGS, &env)
    };
    let mut slots = vec![];
    for i in 0..3 {
        let proxy = match &pg {
            Some(pg) => Some(Proxy::start(&pg.addr()).await),
            None => None,
        };
        let (child, log) = spawn(format!("{seed}-{i}-0"), proxy.as_ref());
        slots.push(Slot {
            child,
            log,
            proxy,
            paused_until: None,
            cut_until: None,
            restarts: 0,
        });
    }

    let mut counts: HashMap<&str, u32> = HashMap::new();
    let mut sessions = vec![];
    let mut last_restart = Instant::now();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
        // Resumes and restores happen in tasks of their own (below): this loop may wait
        // on the database (a paused SQLite worker holds the write lock) and must not be
        // what keeps the pause going.
        for s in slots.iter_mut() {
            if s.paused_until.is_some_and(|t| t <= Instant::now()) {
                s.paused_until = None;
            }
            if s.cut_until.is_some_and(|t| t <= Instant::now()) {
                s.cut_until = None;
            }
        }
        let w = rng.random_range(0..slots.len());
        let roll = rng.random_range(0..100);
        let action = match roll {
            0..30 => "session",
            30..40 => "cancel",
            40..52 => "kill",
            52..66 => "pause",
            66..80 if postgres => "cut",
            80..86 if postgres && last_restart.elapsed() > Duration::from_secs(5) => "restart",
            _ => "nothing",
        };
        *counts.entry(action).or_default() += 1;
        match action {
            "session" => {
                let mut pick: Vec<i64> = ids
                    .iter()
                    .copied()
                    .filter(|_| rng.random_bool(0.5))
                    .collect();
                if !rng.random_bool(0.3) {
                    pick.retain(|&i| i != hanging);
                }
                if pick.is_empty() {
                    pick.push(ids[0]);
                }
                if let Some(s) =
                    retry(|| store.session_create(SyncType::ManualBatch, Some(&pick))).await
                {
                    sessions.push(s.session_id);
                }
            }
            "cancel" if !sessions.is_empty() => {
                let id = sessions[rng.random_range(0..sessions.len())];
                retry(|| store.session_cancel(id)).await;
            }
            "kill" => {
                let s = &mut slots[w];
                signal(&s.child, "KILL");
                let _ = s.child.wait();
                s.restarts += 1;
                if let Some(p) = &s.proxy {
                    p.restore();
                }
                let (child, log) = spawn(format!("{seed}-{w}-{}", s.restarts), s.proxy.as_ref());
                (s.child, s.log, s.paused_until, s.cut_until) = (child, log, None, None);
            }
            "pause" if slots[w].paused_until.is_none() => {
                let pause = Duration::from_millis(rng.random_range(500..4000));
                signal(&slots[w].child, "STOP");
                slots[w].paused_until = Some(Instant::now() + pause);
                let pid = slots[w].child.id().to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    // The process may have been killed meanwhile: no assertion here.
                    let _ = std::process::Command::new("kill")
                        .args(["-CONT", &pid])
                        .stderr(std::process::Stdio::null())
                        .status();
                });
            }
            "cut" if slots[w].cut_until.is_none() => {
                let cut = Duration::from_millis(rng.random_range(500..4000));
                let proxy = slots[w].proxy.as_ref().unwrap();
                proxy.cut();
                proxy.restore_later(cut);
                slots[w].cut_until = Some(Instant::now() + cut);
            }
            "restart" => {
                pg.as_ref().unwrap().crash_restart();
                last_restart = Instant::now();
            }
            _ => {}
        }
    }
    for s in slots.iter_mut() {
        if s.paused_until.take().is_some() {
            signal(&s.child, "CONT");
        }
        if let (Some(p), Some(_)) = (&s.proxy, s.cut_until.take()) {
            p.restore();
        }
    }
    eprintln!("fault seed {seed} on {what}: injected {counts:?}");

    // Every session terminal within the bound.
    let settled = Instant::now();
    let all = loop {
        let list = retry(|| {
            store.session_list(&SessionFilter {
                status: None,
                limit: 10_000,
                offset: 0,
                sync_type: None,
            })
        })
        .await
        .expect("list sessions");
        if list.0.iter().all(|s| s.is_finished()) {
            break list.0;
        }
        assert!(
            settled.elapsed() < SETTLE,
            "fault seed {seed} on {what}: sessions not terminal {SETTLE:?} after the faults stopped: {:?}",
            list.0
                .iter()
                .filter(|s| !s.is_finished())
                .map(|s| (s.session_id, &s.status))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "fault seed {seed} on {what}: {} sessions terminal {:?} after the faults stopped",
        all.len(),
        settled.elapsed()
    );
    for s in &all {
        let d = retry(|| store.session_get(s.session_id))
            .await
            .unwrap()
            .unwrap();
        let n = |st: &str| d.records.iter().filter(|r| r.status.as_str() == st).count() as i64;
        assert_eq!(
            (n("completed"), n("failed"), n("cancelled")),
            (
                d.session.successful_instances,
                d.session.failed_instances,
                d.session.cancelled_instances
            ),
            "fault seed {seed} on {what}: totals of {} differ from its records",
            s.session_id
        );
        assert_eq!(
            n("completed") + n("failed") + n("cancelled"),
            d.session.total_instances
        );
    }
    assert_eq!(
        orphan_leases(store.as_ref()).await,
        0,
        "fault seed {seed} on {what}: a live lease without its running record"
    );
    let reads = read_trace(&trace);
    let overlaps = overlapping_reads(&reads);
    assert!(
        overlaps.is_empty(),
        "fault seed {seed} on {what}: two reads of one instance overlapped: {overlaps:#?}"
    );
    eprintln!(
        "fault seed {seed} on {what}: {} traced reads, none overlapping",
        reads.len()
    );
    for s in slots.iter_mut() {
        // A worker restarted just now may still be starting; its signal handler is in
        // place once it has said so (a signal before that point takes the default action).
        let started = Instant::now();
        while !std::fs::read_to_string(&s.log)
            .unwrap_or_default()
            .contains("worker started")
            && started.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "fault seed {seed} on {what}: a worker died: {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        signal(&s.child, "TERM");
    }
    for s in slots.iter_mut() {
        let status = s.child.wait().unwrap();
        assert!(
            status.success(),
            "fault seed {seed} on {what}: a worker did not exit cleanly ({status}): {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
    }
}

async fn orphan_leases(store: &dyn Store) -> i64 {
    const COND: &str = "NOT EXISTS (SELECT 1 FROM sync_instance_records r WHERE r.id = l.record_id \
                        AND r.status = 'running' AND r.lock_token = l.token)";
    match store.pool() {
        DbPool::Sqlite(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM sync_locks l WHERE l.expires_at > strftime('%Y-%m-%dT%H:%M:%fZ','now') AND {COND}"
        )))
        .fetch_one(&p)
        .await
        .unwrap(),
        DbPool::Postgres(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM sync_locks l WHERE l.expires_at > clock_timestamp() AND {COND}"
        )))
        .fetch_one(&p)
        .await
        .unwrap(),
    }
}
