//! A concurrency limit under faults, with real worker processes (issue #23): a SIGKILLed
//! and a SIGSTOPped slot holder on the way, and an observer that is not syncpool's own
//! tables: the simulated source's read trace. Never more reads at once under the limit
//! than it allows; the session completes; a dead holder's slots are back within about
//! the lease TTL.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use syncpool::model::SyncType;

use crate::common::*;
use crate::processes::{assert_invariants, wait_finished};

on_both_databases!(a_limit_holds_with_its_slot_holders_killed_and_frozen);

const LIMIT: i64 = 3;

/// Lease 2 s, renewal 500 ms. apalis hands on a job fetched by a worker that died after
/// 3 queue heartbeats (6 s): a waiting job that A had fetched but not granted when it was
/// killed comes back then (the lease and the rescuer hand on the running ones).
const TIMINGS: &[&str] = &[
    "--lease-ttl",
    "2s",
    "--lease-renew",
    "500ms",
    "--queue-heartbeat",
    "2s",
    "--concurrency",
    "4",
];

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The most reads that made progress at one time: each read spans its first to its last
/// step start (a frozen or killed read stops stepping, see `overlapping_reads`).
fn most_at_once(reads: &[TracedRead]) -> (usize, u128) {
    let mut events: Vec<(u128, i32)> = reads
        .iter()
        .filter(|r| !r.steps.is_empty())
        .flat_map(|r| [(r.steps[0], 1), (*r.steps.last().unwrap(), -1)])
        .collect();
    // At one instant, an end before a start: touching spans do not overlap.
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut most, mut at) = (0i32, 0i32, 0u128);
    for (t, d) in events {
        now += d;
        if now > most {
            (most, at) = (now, t);
        }
    }
    (most as usize, at)
}

/// Waits until `cond` holds, or fails saying `what`.
async fn until(secs: u64, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < Duration::from_secs(secs), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_limit_holds_with_its_slot_holders_killed_and_frozen(b: Backend) {
    let sqlite = matches!(b, Backend::Sqlite);
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let mut ids = vec![];
    for i in 0..12 {
        let mut new = simulated(&format!("g{i:02}"), json!({"latency_ms": 3000}));
        new.group = Some("batch".into());
        ids.push(store.instance_insert(&new).await.unwrap().id);
    }
    store.limit_set("group:batch", LIMIT).await.unwrap();
    let trace = db.dir.path().join("reads.trace");
    let trace_s = trace.to_str().unwrap().to_string();
    let env = [("SYNCPOOL_SIMULATED_TRACE", trace_s.as_str())];
    let in_use = async || store.limits_list().await.unwrap()[0].in_use;
    // A alone takes every slot.
    let (mut a, _) = worker_at(&db, &db.url, "a", TIMINGS, &env);
    let s = store
        .session_create(SyncType::ManualBatch, Some(&ids))
        .await
        .unwrap();
    until(20, "A holds the limit's slots", async || {
        in_use().await == LIMIT
    })
    .await;
    // B waits for a slot, holding none of its worker slots, until A is killed: A's slots
    // come back when its leases lapse, and the rescuer hands its records on.
    let (mut b_, _) = worker_at(&db, &db.url, "b", TIMINGS, &env);
    // Well within A's 3 s reads: no slot frees before A dies.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let b_pid = b_.id();
    let reads_by = |pid: u32| read_trace(&trace).into_iter().filter(move |r| r.pid == pid);
    assert_eq!(
        reads_by(b_pid).count(),
        0,
        "B waits while A holds every slot"
    );
    let killed = now_ns();
    signal(&a, "KILL");
    let _ = a.wait();
    until(20, "B reads after A's death", async || {
        reads_by(b_pid).next().is_some()
    })
    .await;
    let first_b = reads_by(b_pid)
        .filter_map(|r| r.steps.first().copied())
        .min()
        .unwrap();
    let back_after = Duration::from_nanos((first_b - killed) as u64);
    eprintln!("a killed holder's slots were back after {back_after:?}");
    // The lease TTL (2 s), a rescue sweep and B's next poll of its delayed jobs.
    assert!(
        back_after < Duration::from_secs(6),
        "slots back after {back_after:?}"
    );
    // B holds the slots now; freeze it past its leases, and let C take over.
    until(20, "B holds the slots", async || in_use().await == LIMIT).await;
    let (mut c, _) = worker_at(&db, &db.url, "c", TIMINGS, &env);
    let c_pid = c.id();
    // C running, polling: it finds the key full.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let frozen = now_ns();
    signal(&b_, "STOP");
    let after_freeze = || {
        reads_by(c_pid)
            .filter_map(|r| r.steps.first().copied())
            .filter(|&t| t > frozen)
            .min()
    };
    // Within a few seconds C takes the frozen holder's slots, once its leases lapse;
    // unless B froze inside a SQLite write transaction, which stops every writer until
    // it resumes (docs/ARCHITECTURE.md, invariants): then C goes on after the resume.
    let start = Instant::now();
    while after_freeze().is_none() && start.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during_freeze = after_freeze().is_some();
    if during_freeze {
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    signal(&b_, "CONT");
    until(20, "C reads after B's freeze", async || {
        after_freeze().is_some()
    })
    .await;
    let back_after = Duration::from_nanos((after_freeze().unwrap() - frozen) as u64);
    eprintln!(
        "a frozen holder's slots were back after {back_after:?} (during its freeze: {during_freeze})"
    );
    let write_lock = sqlite && !during_freeze;
    assert!(
        back_after < Duration::from_secs(6) || write_lock,
        "slots back after {back_after:?}"
    );
    let done = wait_finished(&db, &[s.session_id], Duration::from_secs(90)).await;
    assert_invariants(&done);
    assert_eq!(
        done[0].session.status.as_str(),
        "completed",
        "{:?}",
        done[0].session
    );
    let reads = read_trace(&trace);
    let (most, at) = most_at_once(&reads);
    eprintln!("{} reads; at most {most} at once", reads.len());
    assert!(
        most as i64 <= LIMIT,
        "{most} reads at once at {at} ns, over the limit of {LIMIT}"
    );
    assert!(most as i64 == LIMIT, "the limit was used: {most}");
    let l = &store.limits_list().await.unwrap()[0];
    assert_eq!((l.in_use, l.waiting), (0, 0), "{l:?}");
    for w in [&b_, &c] {
        signal(w, "TERM");
    }
    assert!(b_.wait().unwrap().success());
    assert!(c.wait().unwrap().success());
}
