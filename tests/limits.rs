//! Concurrency limits (issue #23): a limit on `group:NAME` or `host:HOST` caps the live
//! leases under it, in the grant, on both databases; waiting jobs hold no slot, the oldest
//! are served first, a lapsed lease frees its slot, and the API and CLI set them.

use std::time::Duration;

use serde_json::json;
use syncpool::model::{Limit, SyncType};
use syncpool::store::*;

use crate::common::*;
use crate::conformance::{finish, grant, jobs_of, params, token_of};

on_both_databases!(
    a_full_limit_holds_back_grants_until_a_slot_frees,
    records_owed_a_slot_are_served_before_newcomers,
    a_waiter_that_stops_asking_or_waits_on_another_key_holds_no_slot,
    a_takeover_refused_by_a_full_limit_waits_as_a_pending_record,
    a_lapsed_lease_frees_its_slot_and_lowering_a_limit_stops_no_running_sync,
    concurrent_grants_under_one_limit_never_exceed_it,
    limits_are_set_listed_and_removed_by_the_api_and_the_cli,
);

/// `n` simulated instances of group `group` (host `host`, if any).
async fn fleet(
    store: &dyn Store,
    prefix: &str,
    n: usize,
    group: &str,
    host: Option<&str>,
) -> Vec<i64> {
    let mut ids = vec![];
    for i in 0..n {
        let mut new = simulated(&format!("{prefix}{i}"), json!({}));
        new.group = Some(group.into());
        new.host = host.map(Into::into);
        ids.push(store.instance_insert(&new).await.unwrap().id);
    }
    ids
}

/// Whether apalis would hand out job `id` now.
async fn job_due(store: &dyn Store, id: &str) -> bool {
    let n: i64 = match store.pool() {
        DbPool::Sqlite(p) => sqlx::query_scalar(
            "SELECT COUNT(*) FROM Jobs WHERE id = ?1 AND status = 'Pending' AND run_at <= unixepoch()",
        )
        .bind(id)
        .fetch_one(&p)
        .await
        .unwrap(),
        DbPool::Postgres(p) => sqlx::query_scalar(
            "SELECT COUNT(*) FROM apalis.jobs WHERE id = $1 AND status = 'Pending' AND run_at <= now()",
        )
        .bind(id)
        .fetch_one(&p)
        .await
        .unwrap(),
    };
    n == 1
}

fn granted(outs: &[GrantOutcome]) -> usize {
    outs.iter()
        .filter(|o| matches!(o, GrantOutcome::Granted { .. }))
        .count()
}

async fn limit(store: &dyn Store, key: &str) -> Limit {
    store
        .limits_list()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.key == key)
        .unwrap()
}

async fn a_full_limit_holds_back_grants_until_a_slot_frees(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let ids = fleet(store.as_ref(), "g", 3, "g", None).await;
    let other = fleet(store.as_ref(), "o", 1, "other", None).await;
    store.limit_set("group:g", 2).await.unwrap();
    let all: Vec<i64> = ids.iter().chain(&other).copied().collect();
    let s = store
        .session_create(SyncType::ManualBatch, Some(&all))
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let p = params(Duration::from_secs(30));
    let reqs: Vec<_> = jobs.iter().map(|j| grant(j, "w")).collect();
    let out = store.lease_grant_batch(&p, &reqs).await.unwrap();
    assert_eq!(granted(&out[..3]), 2, "two of group g: {out:?}");
    assert!(
        matches!(out[2], GrantOutcome::Busy),
        "the third waits: {out:?}"
    );
    assert!(
        matches!(out[3], GrantOutcome::Granted { .. }),
        "another group is not held back"
    );
    let l = limit(store.as_ref(), "group:g").await;
    assert_eq!((l.in_use, l.max_concurrent, l.waiting), (2, 2, 1), "{l:?}");
    // Its delayed copy is still refused while both slots are held.
    let waiting = jobs_of(store.as_ref(), s.session_id).await;
    let again = store
        .lease_grant_batch(&p, &[grant(&waiting[2], "w")])
        .await
        .unwrap();
    assert!(matches!(again[0], GrantOutcome::Busy), "{again:?}");
    // A finish frees a slot for it, and makes its delayed job due at once (the slot
    // does not idle for the retry delay).
    let waiting_job = crate::conformance::job_id_of(store.as_ref(), jobs[2].1.record_id).await;
    assert!(
        !job_due(store.as_ref(), &waiting_job).await,
        "delayed while the key is full"
    );
    let t = token_of(&out[0]);
    store
        .record_finish_batch(&[finish(&jobs[0], t, SyncResult::Completed(vec![]))])
        .await
        .unwrap();
    assert!(
        job_due(store.as_ref(), &waiting_job).await,
        "woken by the finish"
    );
    let waiting = jobs_of(store.as_ref(), s.session_id).await;
    let now = store
        .lease_grant_batch(&p, &[grant(&waiting[2], "w")])
        .await
        .unwrap();
    assert!(matches!(now[0], GrantOutcome::Granted { .. }), "{now:?}");
    let l = limit(store.as_ref(), "group:g").await;
    assert_eq!((l.in_use, l.waiting), (2, 0), "{l:?}");
    // A host limit applies on top of the group's, to the host however it is written;
    // a finish wakes the host's waiter too.
    let h = fleet(store.as_ref(), "h", 2, "roomy", Some("DB.Example")).await;
    store.limit_set("host:db.EXAMPLE", 1).await.unwrap();
    let s = store
        .session_create(SyncType::ManualBatch, Some(&h))
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let reqs: Vec<_> = jobs.iter().map(|j| grant(j, "w")).collect();
    let out = store.lease_grant_batch(&p, &reqs).await.unwrap();
    assert_eq!(granted(&out), 1, "{out:?}");
    assert_eq!(limit(store.as_ref(), "host:db.example").await.in_use, 1);
    let (done, waiter) = match out[0] {
        GrantOutcome::Granted { .. } => (0, 1),
        _ => (1, 0),
    };
    let waiting_job = crate::conformance::job_id_of(store.as_ref(), jobs[waiter].1.record_id).await;
    assert!(!job_due(store.as_ref(), &waiting_job).await);
    store
        .record_finish_batch(&[finish(
            &jobs[done],
            token_of(&out[done]),
            SyncResult::Completed(vec![]),
        )])
        .await
        .unwrap();
    assert!(
        job_due(store.as_ref(), &waiting_job).await,
        "woken under its host's key"
    );
}

async fn records_owed_a_slot_are_served_before_newcomers(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let ids = fleet(store.as_ref(), "g", 3, "g", None).await;
    store.limit_set("group:g", 1).await.unwrap();
    // No retry delay: a record that found the key full is owed a slot at once.
    let p = LeaseParams {
        busy_retry: Duration::ZERO,
        ..params(Duration::from_secs(30))
    };
    let s1 = store
        .session_create(SyncType::ManualBatch, Some(&ids[..2]))
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s1.session_id).await;
    let holder = store
        .lease_grant_batch(&p, &[grant(&jobs[0], "w")])
        .await
        .unwrap();
    let waits = store
        .lease_grant_batch(&p, &[grant(&jobs[1], "w")])
        .await
        .unwrap();
    assert!(matches!(waits[0], GrantOutcome::Busy));
    // The holder finishes; a newcomer's job comes first in the batch, but the slot is
    // the older waiter's.
    store
        .record_finish_batch(&[finish(
            &jobs[0],
            token_of(&holder[0]),
            SyncResult::Completed(vec![]),
        )])
        .await
        .unwrap();
    let s2 = store
        .session_create(SyncType::ManualSingle, Some(&ids[2..]))
        .await
        .unwrap();
    let newcomer = jobs_of(store.as_ref(), s2.session_id).await.remove(0);
    let waiter = jobs_of(store.as_ref(), s1.session_id).await.remove(1);
    let out = store
        .lease_grant_batch(&p, &[grant(&newcomer, "w"), grant(&waiter, "w")])
        .await
        .unwrap();
    assert!(
        matches!(out[0], GrantOutcome::Busy),
        "the newcomer waits: {out:?}"
    );
    assert!(
        matches!(out[1], GrantOutcome::Granted { .. }),
        "the owed one runs: {out:?}"
    );
}

async fn a_waiter_that_stops_asking_or_waits_on_another_key_holds_no_slot(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let p = LeaseParams {
        busy_retry: Duration::ZERO,
        ..params(Duration::from_secs(30))
    };
    // Group g allows 2; host h.example allows 1. B (on h) waits for the host, not the
    // group: it is owed nothing under g, so C (in g, elsewhere) takes g's free slot.
    let a = fleet(store.as_ref(), "a", 1, "g", Some("h.example")).await;
    let bb = fleet(store.as_ref(), "b", 1, "g", Some("H.example")).await;
    let c = fleet(store.as_ref(), "c", 1, "g", None).await;
    store.limit_set("group:g", 2).await.unwrap();
    store.limit_set("host:h.example", 1).await.unwrap();
    let s = store
        .session_create(SyncType::ManualBatch, Some(&[a[0], bb[0], c[0]]))
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let out = store
        .lease_grant_batch(&p, &[grant(&jobs[0], "w"), grant(&jobs[1], "w")])
        .await
        .unwrap();
    assert!(matches!(out[0], GrantOutcome::Granted { .. }));
    assert!(
        matches!(out[1], GrantOutcome::Busy),
        "the host is full (names compare as DNS does)"
    );
    assert_eq!(limit(store.as_ref(), "host:h.example").await.waiting, 1);
    assert_eq!(limit(store.as_ref(), "group:g").await.waiting, 0);
    let out = store
        .lease_grant_batch(&p, &[grant(&jobs[2], "w")])
        .await
        .unwrap();
    assert!(matches!(out[0], GrantOutcome::Granted { .. }), "{out:?}");
    // One slot, a waiter owed it: after it stops asking (its job held by a worker that
    // died), a newcomer is no longer held back by it.
    let ids = fleet(store.as_ref(), "s", 3, "solo", None).await;
    store.limit_set("group:solo", 1).await.unwrap();
    let s = store
        .session_create(SyncType::ManualBatch, Some(&ids))
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let held = store
        .lease_grant_batch(&p, &[grant(&jobs[0], "w")])
        .await
        .unwrap();
    let waits = store
        .lease_grant_batch(&p, &[grant(&jobs[1], "w")])
        .await
        .unwrap();
    assert!(matches!(waits[0], GrantOutcome::Busy));
    store
        .record_finish_batch(&[finish(
            &jobs[0],
            token_of(&held[0]),
            SyncResult::Completed(vec![]),
        )])
        .await
        .unwrap();
    let newcomer = jobs_of(store.as_ref(), s.session_id).await.remove(2);
    let out = store
        .lease_grant_batch(&p, &[grant(&newcomer, "w")])
        .await
        .unwrap();
    assert!(
        matches!(out[0], GrantOutcome::Busy),
        "owed to the waiter while it asks"
    );
    // The window is four retry delays, at least 2 s.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let newcomer = jobs_of(store.as_ref(), s.session_id).await.remove(2);
    let out = store
        .lease_grant_batch(&p, &[grant(&newcomer, "w")])
        .await
        .unwrap();
    assert!(matches!(out[0], GrantOutcome::Granted { .. }), "{out:?}");
}

async fn a_takeover_refused_by_a_full_limit_waits_as_a_pending_record(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let ids = fleet(store.as_ref(), "t", 2, "t", None).await;
    store.limit_set("group:t", 1).await.unwrap();
    let s = store
        .session_create(SyncType::ManualBatch, Some(&ids))
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    // X runs under a short lease, and its holder dies: X stays running, its lease lapses.
    let short = params(Duration::from_secs(1));
    let x = store
        .lease_grant_batch(&short, &[grant(&jobs[0], "dies")])
        .await
        .unwrap();
    assert!(matches!(x[0], GrantOutcome::Granted { .. }));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Y takes the group's one slot; then X's job comes back to take its lease over.
    let p = params(Duration::from_secs(30));
    let y = store
        .lease_grant_batch(&p, &[grant(&jobs[1], "w")])
        .await
        .unwrap();
    assert!(matches!(y[0], GrantOutcome::Granted { .. }), "{y:?}");
    let again = store
        .lease_grant_batch(&p, &[grant(&jobs[0], "w")])
        .await
        .unwrap();
    assert!(matches!(again[0], GrantOutcome::Busy), "{again:?}");
    let d = store.session_get(s.session_id).await.unwrap().unwrap();
    let rec = d.records.iter().find(|r| r.instance_id == ids[0]).unwrap();
    assert_eq!(
        rec.status.as_str(),
        "pending",
        "waits like any waiter: {rec:?}"
    );
    assert_eq!(limit(store.as_ref(), "group:t").await.waiting, 1);
}

async fn a_lapsed_lease_frees_its_slot_and_lowering_a_limit_stops_no_running_sync(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let ids = fleet(store.as_ref(), "g", 4, "g", None).await;
    store.limit_set("group:g", 3).await.unwrap();
    let s = store
        .session_create(SyncType::ManualBatch, Some(&ids))
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    let short = params(Duration::from_secs(2));
    let out = store
        .lease_grant_batch(
            &short,
            &jobs[..3]
                .iter()
                .map(|j| grant(j, "dies"))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert_eq!(granted(&out), 3);
    // Lowered below what runs: nothing is stopped (the leases still renew), new ones wait.
    store.limit_set("group:g", 1).await.unwrap();
    let renew: Vec<RenewRequest> = out
        .iter()
        .zip(&jobs)
        .map(|(o, j)| RenewRequest {
            instance_id: j.1.instance_id,
            token: token_of(o),
            record_id: j.1.record_id,
        })
        .collect();
    let renewed = store.lease_renew_batch(&short, &renew).await.unwrap();
    assert!(renewed.iter().all(|r| r.held), "{renewed:?}");
    assert_eq!(
        limit(store.as_ref(), "group:g").await.in_use,
        3,
        "over the new maximum"
    );
    let p = params(Duration::from_secs(30));
    let w = store
        .lease_grant_batch(&p, &[grant(&jobs[3], "w")])
        .await
        .unwrap();
    assert!(matches!(w[0], GrantOutcome::Busy));
    // The holders die (no more renewals): their slots come back when their leases
    // lapse, within the TTL, without anyone releasing them.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(limit(store.as_ref(), "group:g").await.in_use, 0);
    let waiting = jobs_of(store.as_ref(), s.session_id).await;
    let now = store
        .lease_grant_batch(&p, &[grant(&waiting[3], "w")])
        .await
        .unwrap();
    assert!(matches!(now[0], GrantOutcome::Granted { .. }), "{now:?}");
}

async fn concurrent_grants_under_one_limit_never_exceed_it(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let ids = fleet(store.as_ref(), "g", 24, "g", None).await;
    store.limit_set("group:g", 3).await.unwrap();
    let s = store
        .session_create(SyncType::ManualBatch, Some(&ids))
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), s.session_id).await;
    // Eight "workers" grant three jobs each at once, each in its own transaction.
    let p = params(Duration::from_secs(30));
    let tasks: Vec<_> = jobs
        .chunks(3)
        .enumerate()
        .map(|(w, chunk)| {
            let (store, p) = (store.clone(), p.clone());
            let reqs: Vec<_> = chunk.iter().map(|j| grant(j, &format!("w{w}"))).collect();
            tokio::spawn(async move { store.lease_grant_batch(&p, &reqs).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += granted(&t.await.unwrap());
    }
    assert_eq!(total, 3, "exactly the limit, whatever the interleaving");
    assert_eq!(limit(store.as_ref(), "group:g").await.in_use, 3);
}

async fn limits_are_set_listed_and_removed_by_the_api_and_the_cli(b: Backend) {
    let app = crate::api::spawn_app(b, Some(crate::roles::ADMIN)).await;
    let (st, v) = app
        .call(
            "PUT",
            "/api/v1/limits/group:etl",
            Some(r#"{"max_concurrent": 16}"#),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"key": "group:etl", "max_concurrent": 16, "in_use": 0, "waiting": 0})
    );
    let (_, v) = app.call("GET", "/api/v1/limits", None).await;
    assert_eq!(v["items"][0]["key"], "group:etl");
    for (path, body, field) in [
        ("/api/v1/limits/etl", r#"{"max_concurrent": 1}"#, "key"),
        (
            "/api/v1/limits/host:a%2Fb",
            r#"{"max_concurrent": 1}"#,
            "key",
        ),
        (
            "/api/v1/limits/group:etl",
            r#"{"max_concurrent": 0}"#,
            "max_concurrent",
        ),
        ("/api/v1/limits/group:etl", r#"{"max": 3}"#, "max"),
    ] {
        let (st, v) = app.call("PUT", path, Some(body)).await;
        assert_eq!(st, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    assert_eq!(
        app.call("DELETE", "/api/v1/limits/group:etl", None).await.0,
        204
    );
    assert_eq!(
        app.call("DELETE", "/api/v1/limits/group:etl", None).await.0,
        404
    );
    // An instance's group, through the API (and PATCH).
    let (st, v) = app
        .call(
            "POST",
            "/api/v1/instances",
            Some(r#"{"name": "a", "kind": "simulated", "group": "etl"}"#),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["group"], "etl");
    let id = v["id"].as_i64().unwrap();
    let (st, v) = app
        .call(
            "PATCH",
            &format!("/api/v1/instances/{id}"),
            Some(r#"{"group": "bad group"}"#),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("group")),
        "{v}"
    );
    // The CLI, over the same database.
    let url = &app.db().url;
    let (code, out, err) = cli(
        url,
        &["limits", "set", "host:db1.example", "--max-concurrent", "2"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("at most 2"), "{out}");
    let (code, out, _) = cli(url, &["limits", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("host:db1.example") && out.contains("0 of 2"),
        "{out}"
    );
    let (_, out, _) = cli(url, &["locks"]);
    assert!(
        out.contains("host:db1.example"),
        "locks shows the limits: {out}"
    );
    let (code, _, _) = cli(
        url,
        &[
            "instances",
            "add",
            "--name",
            "b",
            "--kind",
            "simulated",
            "--group",
            "etl",
        ],
    );
    assert_eq!(code, 0);
    // And in an import file.
    let file = app.db().dir.path().join("import.json");
    std::fs::write(
        &file,
        r#"[{"name": "imp", "kind": "simulated", "group": "etl"}]"#,
    )
    .unwrap();
    let (code, _, err) = cli(url, &["instances", "import", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let imported = app
        .store
        .instance_get_by_name("imp")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(imported.group.as_deref(), Some("etl"));
    let (_, out, _) = cli(url, &["instances", "list", "--json"]);
    assert!(out.contains(r#""group": "etl""#), "{out}");
    for bad in [
        &["limits", "set", "db1", "--max-concurrent", "2"][..],
        &["limits", "set", "group:x", "--max-concurrent", "0"],
        &["limits", "remove", "group:none"],
        &[
            "instances",
            "add",
            "--name",
            "c",
            "--kind",
            "simulated",
            "--group",
            "a/b",
        ],
    ] {
        let (code, _, err) = cli(url, bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let (code, _, _) = cli(url, &["limits", "remove", "host:db1.example"]);
    assert_eq!(code, 0);
}
