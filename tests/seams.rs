//! Conformance cases for the seams of the storage written once (`src/store/sql.rs`,
//! `src/store/common/`): each value the two databases store differently, the batched
//! delete loop, and the operator's reads, run against SQLite and PostgreSQL alike. A seam
//! that mapped one database's values wrongly would pass the other's run and fail here.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use syncpool::model::{ChangeKind, RecordStatus, SyncType};
use syncpool::store::*;
use syncpool_workers::Account;

use crate::common::*;
use crate::conformance::{count, exec, finish, grant, jobs_of, params, setup, token_of};

on_both_databases!(
    a_session_over_more_ids_than_one_statement_binds_reads_back_every_record_and_its_uuid,
    times_and_json_values_read_back_as_they_were_written,
    cleanup_deletes_old_history_in_more_than_one_batch_and_keeps_the_recent,
    the_operators_reads_show_a_held_lease_the_queue_and_each_instances_last_sync,
);

/// SQLite binds at most 32,766 values per statement and PostgreSQL 65,535: an id list
/// bound one placeholder per id would fail somewhere; ours is one value (`json_each` on
/// SQLite, an array for `ANY` on PostgreSQL).
async fn a_session_over_more_ids_than_one_statement_binds_reads_back_every_record_and_its_uuid(
    b: Backend,
) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let new: Vec<_> = (0..1_500)
        .map(|i| simulated(&format!("n{i}"), json!({})))
        .collect();
    assert_eq!(store.instance_insert_many(&new).await.unwrap(), 1_500);
    let ids: Vec<i64> = store
        .instance_list()
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    // 44 times over (66,000 ids): longer than either database's limit on binds.
    let doubled: Vec<i64> = (0..44).flat_map(|_| ids.iter().copied()).collect();
    assert!(doubled.len() > 65_535);
    let created = store
        .session_create(SyncType::ManualBatch, Some(&doubled))
        .await
        .unwrap();
    assert_eq!(created.total_instances, 1_500, "each instance once");
    let got = store
        .session_get(created.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.session.session_id, created.session_id);
    assert_eq!(got.session.sync_type, SyncType::ManualBatch);
    let synced: BTreeSet<i64> = got.records.iter().map(|r| r.instance_id).collect();
    assert_eq!(synced, ids.iter().copied().collect::<BTreeSet<_>>());
    // The same uuid finds it in a list, and cancelling it reaches every record.
    let listed = store
        .session_list(&SessionFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.0[0].session_id, created.session_id);
    store.session_cancel(created.session_id).await.unwrap();
    let got = store
        .session_get(created.session_id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        got.records
            .iter()
            .all(|r| r.status == RecordStatus::Cancelled)
    );
    let c = store.cleanup(0, 365, 365).await.unwrap();
    assert_eq!((c.sessions_deleted, c.records_deleted), (1, 1_500));
}

/// Times are ISO text on SQLite and `timestamptz` on PostgreSQL, JSON is text on one and
/// `jsonb` on the other: both come back as what was written, at the right instant.
async fn times_and_json_values_read_back_as_they_were_written(b: Backend) {
    let (_db, store, ids) = setup(b, 1).await;
    let before = Utc::now() - chrono::Duration::seconds(2);
    let attributes = json!({
        "comment": "Zoë ✓ \"quoted\" \\ back\nslash",
        "nested": {"list": [1, 2.5, null, true, "x"], "empty": {}},
        "big": 9_007_199_254_740_993_i64,
        "negative": -42,
    });
    let privileges = json!([{"database": "naïve", "privilege": "SELECT"}, "USAGE"]);
    let account = Account {
        username: "émilie".into(),
        host: String::new(),
        attributes: attributes.clone(),
        privileges: privileges.clone(),
    };
    let created = store
        .session_create(SyncType::ManualSingle, Some(&ids))
        .await
        .unwrap();
    let job = jobs_of(store.as_ref(), created.session_id).await.remove(0);
    let p = params(Duration::from_secs(30));
    let token = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&job, "w")])
            .await
            .unwrap()[0],
    );
    store
        .record_finish_batch(&[finish(&job, token, SyncResult::Completed(vec![account]))])
        .await
        .unwrap();
    let after = Utc::now() + chrono::Duration::seconds(2);
    let within = |t: chrono::DateTime<Utc>, what: &str| {
        assert!(
            before <= t && t <= after,
            "{what} {t} not in {before}..{after}"
        );
    };

    let stored = store.accounts_list(ids[0], false).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].username, "émilie");
    assert_eq!(stored[0].attributes, attributes);
    assert_eq!(stored[0].privileges, privileges);
    within(stored[0].first_seen_at, "first_seen_at");
    within(stored[0].last_seen_at, "last_seen_at");
    assert_eq!(stored[0].deleted_at, None);

    let s = store
        .session_get(created.session_id)
        .await
        .unwrap()
        .unwrap();
    within(s.session.created_at, "created_at");
    within(s.session.started_at.unwrap(), "started_at");
    within(s.session.completed_at.unwrap(), "completed_at");
    assert!(s.session.started_at <= s.session.completed_at);
    let r = &s.records[0];
    within(r.started_at.unwrap(), "record started_at");
    assert!(r.started_at <= r.completed_at);

    let changes = store
        .changes_list(&ChangeFilter {
            kind: Some(ChangeKind::Baseline),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].session_id, created.session_id);
    assert_eq!(changes[0].kind, ChangeKind::Baseline);
    assert_eq!(changes[0].detail["attributes"], attributes);
    within(changes[0].changed_at, "changed_at");
    // A `since` filter compares instants, not text: an hour ago finds it, a minute
    // from now does not.
    for (since, found) in [(Utc::now() - chrono::Duration::hours(1), 1), (after, 0)] {
        let n = store
            .changes_list(&ChangeFilter {
                since: Some(since),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .len();
        assert_eq!(n, found, "since {since}");
    }
}

/// Cleanup deletes in batches of 1,000, each its own transaction, until a batch comes
/// back short: a count just past two batches must all go, and nothing newer.
async fn cleanup_deletes_old_history_in_more_than_one_batch_and_keeps_the_recent(b: Backend) {
    let (_db, store, _) = setup(b, 0).await;
    // Literals, not binds: a bound text is not a time to PostgreSQL, and SQLite compares
    // times as text in exactly this form.
    let insert = |n: u32, at: chrono::DateTime<Utc>| {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO account_changes (instance_id, instance_name, session_id, record_id, \
             username, host, kind, detail, flags, sensitive, changed_at) \
             SELECT 1, 'old', 'no-session', i, 'u', '', 'added', '{{}}', '[]', FALSE, '{}' FROM n",
            at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        )
    };
    let long_ago = "2020-01-01T00:00:00Z".parse().unwrap();
    exec(store.as_ref(), &insert(2_345, long_ago), &[]).await;
    exec(
        store.as_ref(),
        &insert(3, Utc::now() - chrono::Duration::days(1)),
        &[],
    )
    .await;
    assert_eq!(
        count(store.as_ref(), "SELECT COUNT(*) FROM account_changes").await,
        2_348
    );
    let c = store.cleanup(7, 30, 365).await.unwrap();
    assert_eq!(c.changes_deleted, 2_345);
    assert_eq!(
        count(store.as_ref(), "SELECT COUNT(*) FROM account_changes").await,
        3
    );
    assert_eq!(store.cleanup(7, 30, 365).await.unwrap().changes_deleted, 0);
}

/// The reads behind `locks`, `queue` and the console's instance pages, on a fleet with a
/// lease held, a job waiting behind it and a sync finished.
async fn the_operators_reads_show_a_held_lease_the_queue_and_each_instances_last_sync(b: Backend) {
    let (_db, store, ids) = setup(b, 2).await;
    let p = params(Duration::from_secs(30));
    let first = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let jobs = jobs_of(store.as_ref(), first.session_id).await;
    let (held, done) = if jobs[0].1.instance_id == ids[0] {
        (&jobs[0], &jobs[1])
    } else {
        (&jobs[1], &jobs[0])
    };
    let out = store
        .lease_grant_batch(&p, &[grant(held, "w-held"), grant(done, "w-done")])
        .await
        .unwrap();
    let (held_token, done_token) = (token_of(&out[0]), token_of(&out[1]));
    store
        .record_finish_batch(&[finish(
            done,
            done_token,
            SyncResult::Completed(crate::conformance::accounts(&["a", "b", "c"])),
        )])
        .await
        .unwrap();
    let second = store
        .session_create(SyncType::ManualSingle, Some(&ids[..1]))
        .await
        .unwrap();

    let leases = store.locks_list().await.unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    let l = &leases[0];
    assert_eq!(
        (l.instance_id, l.instance_name.as_str(), l.holder.as_str()),
        (ids[0], "i0", "w-held")
    );
    assert_eq!((l.session_id, l.token), (first.session_id, held_token));
    assert!(!l.expired && l.expires_at > l.locked_at, "{l:?}");
    assert!(
        l.expires_in_seconds > 20.0 && l.expires_in_seconds <= 31.0,
        "{l:?}"
    );

    let q = store.queue_stats(None).await.unwrap();
    assert_eq!(q.depth.values().sum::<i64>(), 3, "{q:?}");
    assert_eq!(q.depth.get("Done"), Some(&1), "{q:?}");
    // No apalis worker fetched anything here: the granted job is still Pending to apalis,
    // beside the second session's.
    assert_eq!(q.ready, 2, "{q:?}");
    assert!(q.oldest_pending.is_some(), "{q:?}");
    assert_eq!(store.records_finished_since(3600).await.unwrap(), 1);

    let overview = store.instance_overview(10, 0).await.unwrap();
    let by_name = |n: &str| overview.iter().find(|o| o.instance.name == n).unwrap();
    assert_eq!(overview.len(), 2);
    assert_eq!(by_name("i1").last_status, Some(RecordStatus::Completed));
    assert_eq!(by_name("i1").account_count, 3);
    assert_eq!(by_name("i0").last_status, Some(RecordStatus::Pending));
    assert_eq!(by_name("i0").account_count, 0);
    // Pages by id: after the first instance, only the second.
    let rest = store.instance_overview(10, ids[0]).await.unwrap();
    assert_eq!(
        rest.iter().map(|o| o.instance.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );

    let syncs = store.instance_syncs(ids[0], 10).await.unwrap();
    assert_eq!(
        syncs
            .iter()
            .map(|s| (s.session_id, s.sync_type, s.record.status))
            .collect::<Vec<_>>(),
        vec![
            (
                second.session_id,
                SyncType::ManualSingle,
                RecordStatus::Pending
            ),
            (
                first.session_id,
                SyncType::ManualBatch,
                RecordStatus::Running
            ),
        ],
        "newest first"
    );
}
