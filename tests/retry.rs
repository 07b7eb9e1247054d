//! Retry what failed (issue #23): a new session over the instances whose records in a
//! finished session failed or were cancelled, naming the one it retries; through the
//! store on both databases, the API and the CLI.

use std::time::Duration;

use serde_json::json;
use syncpool::model::{SessionStatus, SyncType};
use syncpool::store::*;

use crate::api::spawn_app;
use crate::common::*;
use crate::conformance::{complete_all, finish, grant, jobs_of, params, setup, token_of};

on_both_databases!(
    a_retry_starts_a_session_over_what_failed_or_was_cancelled_and_names_the_one_it_retries,
    a_retry_is_refused_while_the_session_runs_when_nothing_failed_and_for_no_such_session,
);

/// Three instances: one completes, one fails, one is cancelled before it runs.
async fn a_session_that_ended_three_ways(store: &dyn Store) -> (uuid::Uuid, Vec<i64>) {
    let p = params(Duration::from_secs(30));
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let jobs = jobs_of(store, s.session_id).await;
    let out = store
        .lease_grant_batch(&p, &[grant(&jobs[0], "w"), grant(&jobs[1], "w")])
        .await
        .unwrap();
    store
        .record_finish_batch(&[
            finish(&jobs[0], token_of(&out[0]), SyncResult::Completed(vec![])),
            finish(
                &jobs[1],
                token_of(&out[1]),
                SyncResult::Failed {
                    error: "refused".into(),
                    retry_after: None,
                },
            ),
        ])
        .await
        .unwrap();
    store.session_cancel(s.session_id).await.unwrap();
    let ids = jobs.iter().map(|j| j.1.instance_id).collect();
    (s.session_id, ids)
}

async fn a_retry_starts_a_session_over_what_failed_or_was_cancelled_and_names_the_one_it_retries(
    b: Backend,
) {
    let (_db, store, _) = setup(b, 3).await;
    let (old, ids) = a_session_that_ended_three_ways(store.as_ref()).await;
    let d = store.session_get(old).await.unwrap().unwrap();
    assert_eq!(
        (
            d.session.successful_instances,
            d.session.failed_instances,
            d.session.cancelled_instances
        ),
        (1, 1, 1)
    );

    // Two at once (a double click): one starts, the other is told which one did.
    let (a, b) = tokio::join!(store.session_retry(old), store.session_retry(old));
    let (created, refused) = match (a, b) {
        (Ok(Some(c)), Err(e)) | (Err(e), Ok(Some(c))) => (c, e),
        other => panic!("expected one retry and one refusal: {other:?}"),
    };
    assert!(
        matches!(&refused, StoreError::Conflict(m)
            if m.contains(&format!("already being retried by session {}", created.session_id))),
        "{refused:?}"
    );
    assert_eq!(created.retry_of, Some(old));
    assert_eq!(created.total_instances, 2);
    assert_eq!(created.status, SessionStatus::Pending);
    let new = store
        .session_get(created.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.session.retry_of, Some(old));
    assert_eq!(new.session.sync_type, SyncType::ManualBatch);
    let mut retried: Vec<i64> = new.records.iter().map(|r| r.instance_id).collect();
    retried.sort_unstable();
    assert_eq!(
        retried,
        vec![ids[1], ids[2]],
        "the failed and the cancelled one"
    );
    // Each retried record has its job, like any session's.
    assert_eq!(jobs_of(store.as_ref(), created.session_id).await.len(), 2);
    // The retried session itself is untouched, and a plain session names nothing.
    let again = store.session_get(old).await.unwrap().unwrap();
    assert_eq!(again.session.retry_of, None);
    assert_eq!(again.session.status, d.session.status);

    // An instance deleted since is left out: one left, so a single-instance session.
    store.session_cancel(created.session_id).await.unwrap();
    store.instance_delete(ids[1]).await.unwrap();
    let one = store.session_retry(old).await.unwrap().unwrap();
    assert_eq!(one.total_instances, 1);
    let one = store
        .session_summary(one.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.sync_type, SyncType::ManualSingle);
    assert_eq!(one.retry_of, Some(old));
}

async fn a_retry_is_refused_while_the_session_runs_when_nothing_failed_and_for_no_such_session(
    b: Backend,
) {
    let (_db, store, _) = setup(b, 2).await;
    let running = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let refused = store.session_retry(running.session_id).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::Conflict(m) if m.contains("still pending")),
        "{refused:?}"
    );
    // All of it completed: nothing to retry.
    complete_all(store.as_ref(), running.session_id).await;
    let refused = store.session_retry(running.session_id).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::Conflict(m) if m.contains("no failed or cancelled")),
        "{refused:?}"
    );
    assert!(
        store
            .session_retry(uuid::Uuid::new_v4())
            .await
            .unwrap()
            .is_none()
    );
    let (sessions, total) = store
        .session_list(&SessionFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((sessions.len(), total), (1, 1), "a refusal writes nothing");
}

/// The API: 202 with the new session and `retry_of`; 409, 404 and 400 with a JSON body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_retry_answers_202_with_the_new_session_and_409_404_400_otherwise() {
    let app = spawn_app(Backend::Sqlite, None).await;
    for name in ["a", "b", "c"] {
        app.store
            .instance_insert(&simulated(name, json!({})))
            .await
            .unwrap();
    }
    let (old, _) = a_session_that_ended_three_ways(app.store.as_ref()).await;
    let (st, v) = app
        .call("POST", &format!("/api/v1/sessions/{old}/retry"), None)
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["retry_of"], old.to_string());
    assert_eq!(v["total_instances"], 2);
    let new = v["session_id"].as_str().unwrap().to_string();
    let (st, v) = app
        .call("GET", &format!("/api/v1/sessions/{new}"), None)
        .await;
    assert_eq!((st, &v["retry_of"]), (200, &json!(old.to_string())));

    // The new one is still pending.
    let (st, v) = app
        .call("POST", &format!("/api/v1/sessions/{new}/retry"), None)
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("pending"),
        "{v}"
    );
    let (st, v) = app
        .call(
            "POST",
            &format!("/api/v1/sessions/{}/retry", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = app
        .call("POST", "/api/v1/sessions/not-a-uuid/retry", None)
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["field"], "session_id", "{v}");
}

/// `retry --wait` ends as `sync --wait` does (here: only the broken instance is synced
/// again, and fails: exit 4); nothing to retry and no such session are exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_wait_syncs_only_what_failed_and_exits_as_sync_wait_does() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    for inst in [
        simulated("ok", json!({"latency_ms": 0})),
        simulated("broken", json!({"fail_rate": 1.0, "latency_ms": 0})),
    ] {
        store.instance_insert(&inst).await.unwrap();
    }
    let (mut w, _) = worker(&db, "w", &["--max-attempts", "1"]);
    let (code, out, err) = cli(&db.url, &["sync-all", "--wait", "--json"]);
    assert_eq!(code, 3, "{out}{err}");
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first_id = first["session_id"].as_str().unwrap().to_string();

    // A short id names it, as for `session` and `cancel`.
    let (code, out, err) = cli(&db.url, &["retry", &first_id[..8], "--wait", "--json"]);
    assert_eq!(code, 4, "{out}{err}");
    let retried: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(retried["status"], "failed");
    assert_eq!(retried["retry_of"], first_id.as_str());
    assert_eq!(retried["total_instances"], 1);
    assert_eq!(retried["sync_type"], "manual_single");

    let (code, out, err) = cli(&db.url, &["sync", "ok", "--wait", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let ok: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (code, _, err) = cli(&db.url, &["retry", ok["session_id"].as_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no failed or cancelled records"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let (code, _, err) = cli(&db.url, &["retry", &uuid::Uuid::new_v4().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown session"), "{err}");

    // Without --wait: it says what it started, and which session it retries.
    let (code, out, err) = cli(&db.url, &["retry", &first_id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("(retrying {first_id})")), "{out}");
    signal(&w, "TERM");
    w.wait().unwrap();
}
