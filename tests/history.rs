//! Account change history: each change of a real PostgreSQL role or MariaDB account,
//! synced after every step, is recorded once, with its exact difference and flags; a
//! fenced finish records nothing and a replayed one nothing twice.

use std::process::{Child, Command};

use serde_json::{Value, json};
use syncpool::model::{AccountChange, NewInstance};
use syncpool::store::{ChangeFilter, Store, SyncResult};

use crate::common::*;
use crate::conformance::{accounts, finish, grant, jobs_of, params, token_of};
use crate::sources::maria;

on_both_databases!(
    postgres_role_changes_are_recorded_once_each_with_their_difference_and_flags,
    mariadb_account_changes_are_recorded_once_each_with_their_difference_and_flags,
    a_fenced_finish_records_no_history_and_a_replayed_one_records_it_once,
);

fn tag() -> String {
    format!("sp{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// The changes recorded since the last call, oldest first, as
/// `(kind, username, detail, flags)`.
async fn new_changes(
    store: &dyn Store,
    seen: &mut i64,
) -> Vec<(String, String, Value, Vec<String>)> {
    let mut rows: Vec<AccountChange> = store
        .changes_list(&ChangeFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.id > *seen)
        .collect();
    rows.reverse();
    if let Some(last) = rows.last() {
        *seen = last.id;
    }
    rows.into_iter()
        .map(|c| (c.kind.as_str().to_string(), c.username, c.detail, c.flags))
        .collect()
}

/// A worker process that is killed if the test panics, so none outlives it.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Worker {
    fn stop(mut self) {
        signal(&self.0, "TERM");
        self.0.wait().unwrap();
    }
}

/// One worker process for the whole test, its metrics on `port`.
fn start_worker(db: &TestDb, port: u16) -> Worker {
    Worker(
        Command::new(bin())
            .args(["worker", "--poll-interval", "50ms"])
            .args(["--metrics-bind", &format!("127.0.0.1:{port}")])
            .env("SYNCPOOL_DATABASE_URL", &db.url)
            .stderr(std::fs::File::create(db.dir.path().join("worker.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn sync(db: &TestDb, name: &str) {
    let (code, out, err) = cli(&db.url, &["sync", name, "--wait", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
}

fn db_instance(name: &str, kind: &str, port: u16, user: &str, options: Value) -> NewInstance {
    NewInstance {
        name: name.into(),
        kind: kind.parse().unwrap(),
        host: Some("127.0.0.1".into()),
        port: Some(port.into()),
        username: Some(user.into()),
        database: None,
        password_env: None,
        password_file: None,
        options,
        active: true,
        group: None,
    }
}

async fn pg_exec(url: &str, sql: &str) {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    for stmt in sql.split(";\n").filter(|s| !s.trim().is_empty()) {
        sqlx::query(sqlx::AssertSqlSafe(stmt.to_string()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
}

/// One expected change: kind, user, detail (null: not compared), flags.
type Expected<'a> = (&'a str, &'a str, Value, Vec<&'a str>);
/// A statement, and the changes the sync after it must record.
type Step<'a> = (String, Vec<Expected<'a>>);

fn assert_step(sql: &str, got: &[(String, String, Value, Vec<String>)], expected: &[Expected]) {
    assert_eq!(got.len(), expected.len(), "after `{sql}`: {got:#?}");
    for (g, (kind, user, detail, flags)) in got.iter().zip(expected) {
        assert_eq!(
            (g.0.as_str(), g.1.as_str()),
            (*kind, *user),
            "after `{sql}`"
        );
        if !detail.is_null() {
            assert_eq!(&g.2, detail, "after `{sql}`");
        }
        assert_eq!(g.3, *flags, "after `{sql}`: {:#}", g.2);
    }
}

fn changed(attributes: Value, granted: Value, revoked: Value) -> Value {
    json!({"attributes": attributes, "privileges": {"granted": granted, "revoked": revoked}})
}

async fn postgres_role_changes_are_recorded_once_each_with_their_difference_and_flags(b: Backend) {
    let server = crate::private_pg::PrivatePg::start();
    let url = server.url("postgres");
    let t = tag();
    let (app, new) = (format!("{t}_app"), format!("{t}_new"));
    pg_exec(&url, &format!("CREATE ROLE {app} NOLOGIN")).await;
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let opts = json!({"role_like": format!("{t}_%"), "ssl_mode": "disable"});
    store
        .instance_insert(&db_instance(
            "pg",
            "postgres",
            server.port,
            "postgres",
            opts,
        ))
        .await
        .unwrap();
    let port = free_port();
    let worker = start_worker(&db, port);
    let mut seen = 0;

    sync(&db, "pg");
    let first = new_changes(store.as_ref(), &mut seen).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        (first[0].0.as_str(), first[0].1.as_str()),
        ("baseline", app.as_str())
    );
    assert_eq!(first[0].2["attributes"]["can_login"], false, "{first:?}");

    let steps: Vec<Step> = vec![
        (
            format!("CREATE ROLE {new} NOLOGIN"),
            vec![("added", &new, Value::Null, vec![])],
        ),
        (
            format!("GRANT CREATE ON DATABASE postgres TO {new}"),
            vec![(
                "changed",
                &new,
                changed(
                    json!({}),
                    json!([{"level": "database", "database": "postgres", "privilege": "CREATE"}]),
                    json!([]),
                ),
                vec![],
            )],
        ),
        (
            format!("REVOKE CREATE ON DATABASE postgres FROM {new}"),
            vec![(
                "changed",
                &new,
                changed(
                    json!({}),
                    json!([]),
                    json!([{"level": "database", "database": "postgres", "privilege": "CREATE"}]),
                ),
                vec![],
            )],
        ),
        (
            format!("ALTER ROLE {new} LOGIN CREATEROLE"),
            vec![(
                "changed",
                &new,
                changed(
                    json!({"can_login": {"from": false, "to": true}, "create_role": {"from": false, "to": true}}),
                    json!([]),
                    json!([]),
                ),
                vec!["create_role"],
            )],
        ),
        (
            format!("ALTER ROLE {new} SUPERUSER"),
            vec![("changed", &new, Value::Null, vec!["superuser"])],
        ),
        (
            format!("DROP ROLE {new}"),
            vec![("removed", &new, Value::Null, vec![])],
        ),
        // Nothing changed: nothing is recorded.
        (String::new(), vec![]),
    ];
    for (sql, expected) in steps {
        if !sql.is_empty() {
            pg_exec(&url, &sql).await;
        }
        sync(&db, "pg");
        let got = new_changes(store.as_ref(), &mut seen).await;
        assert_step(&sql, &got, &expected);
    }
    // The superuser step changed the attribute exactly (its privileges may widen too:
    // a superuser passes every privilege check the source makes).
    let all = store
        .changes_list(&ChangeFilter {
            sensitive_only: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "the CREATEROLE and SUPERUSER steps");
    assert_eq!(
        all[0].detail["attributes"]["superuser"],
        json!({"from": false, "to": true})
    );
    let metrics = scrape(&format!("127.0.0.1:{port}"));
    assert_eq!(
        metric_value(
            &metrics,
            "syncpool_account_changes_total{kind=\"changed\",sensitive=\"true\"}"
        ),
        2.0,
        "{metrics}"
    );
    worker.stop();
    // The CLI and the API read the same history.
    let (code, out, err) = cli(&db.url, &["changes", "pg", "--sensitive"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("superuser: false -> true") && out.contains("[SENSITIVE: superuser]"),
        "{out}"
    );
    let (code, out, _) = cli(
        &db.url,
        &[
            "changes", "pg", "--since", "1h", "--kind", "removed", "--json",
        ],
    );
    assert_eq!(code, 0);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["items"][0]["username"], json!(new));
    let (code, out, _) = cli(&db.url, &["changes", "--limit", "2"]);
    assert_eq!(code, 0);
    assert!(out.contains("more: --after"), "{out}");
    let (code, _, err) = cli(&db.url, &["changes", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("since"), "{err}");
    pg_exec(&url, &format!("DROP ROLE {app}")).await;
}

async fn mariadb_account_changes_are_recorded_once_each_with_their_difference_and_flags(
    b: Backend,
) {
    let t = tag();
    let (u, v) = (format!("{t}_u"), format!("{t}_v"));
    maria(&format!("CREATE USER '{u}'@'%'"));
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let opts = json!({"user_like": format!("{t}_%"), "ssl_mode": "disable"});
    store
        .instance_insert(&db_instance("maria", "mysql", 3306, "root", opts))
        .await
        .unwrap();
    let port = free_port();
    let worker = start_worker(&db, port);
    let mut seen = 0;
    sync(&db, "maria");
    let first = new_changes(store.as_ref(), &mut seen).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        (first[0].0.as_str(), first[0].1.as_str()),
        ("baseline", u.as_str())
    );

    let on_test = |p: &str, go: bool| json!({"level": "database", "database": "test", "privilege": p, "grant_option": go});
    let global = |p: &str, go: bool| json!({"level": "global", "privilege": p, "grant_option": go});
    let steps: Vec<Step> = vec![
        (
            format!("CREATE USER '{v}'@'localhost'"),
            vec![("added", &v, Value::Null, vec![])],
        ),
        (
            format!("GRANT SELECT ON test.* TO '{v}'@'localhost'"),
            vec![(
                "changed",
                &v,
                changed(json!({}), json!([on_test("SELECT", false)]), json!([])),
                vec![],
            )],
        ),
        (
            format!("GRANT INSERT ON test.* TO '{v}'@'localhost'"),
            vec![(
                "changed",
                &v,
                changed(json!({}), json!([on_test("INSERT", false)]), json!([])),
                vec![],
            )],
        ),
        (
            format!("ALTER USER '{v}'@'localhost' ACCOUNT LOCK"),
            vec![(
                "changed",
                &v,
                changed(
                    json!({"locked": {"from": false, "to": true}}),
                    json!([]),
                    json!([]),
                ),
                vec![],
            )],
        ),
        (
            format!("ALTER USER '{v}'@'localhost' ACCOUNT UNLOCK"),
            vec![(
                "changed",
                &v,
                changed(
                    json!({"locked": {"from": true, "to": false}}),
                    json!([]),
                    json!([]),
                ),
                vec!["unlocked"],
            )],
        ),
        (
            format!("GRANT ALL PRIVILEGES ON *.* TO '{v}'@'localhost' WITH GRANT OPTION"),
            vec![(
                "changed",
                &v,
                changed(
                    json!({}),
                    json!([global("ALL PRIVILEGES", true)]),
                    json!([global("USAGE", false)]),
                ),
                vec!["all_privileges", "grant_option"],
            )],
        ),
        (
            format!("REVOKE ALL PRIVILEGES, GRANT OPTION FROM '{v}'@'localhost'"),
            vec![(
                "changed",
                &v,
                changed(
                    json!({}),
                    json!([global("USAGE", false)]),
                    // Single grants in the order of their JSON text.
                    json!([
                        on_test("INSERT", false),
                        on_test("SELECT", false),
                        global("ALL PRIVILEGES", true)
                    ]),
                ),
                vec![],
            )],
        ),
        (
            format!("DROP USER '{v}'@'localhost'"),
            vec![("removed", &v, Value::Null, vec![])],
        ),
        (String::new(), vec![]),
    ];
    for (sql, expected) in steps {
        if !sql.is_empty() {
            maria(&sql);
        }
        sync(&db, "maria");
        let got = new_changes(store.as_ref(), &mut seen).await;
        assert_step(&sql, &got, &expected);
    }
    worker.stop();
    maria(&format!("DROP USER '{u}'@'%'"));
}

async fn a_fenced_finish_records_no_history_and_a_replayed_one_records_it_once(b: Backend) {
    let (_db, store, ids) = crate::conformance::setup(b, 1).await;
    let p = params(std::time::Duration::from_secs(30));
    let mut seen = 0;
    let session = |accounts: Vec<syncpool::model::Account>| {
        let store = store.clone();
        let ids = ids.clone();
        let p = p.clone();
        async move {
            let created = store
                .session_create(syncpool::model::SyncType::ManualSingle, Some(&ids))
                .await
                .unwrap();
            let job = jobs_of(store.as_ref(), created.session_id).await.remove(0);
            let token = token_of(
                &store
                    .lease_grant_batch(&p, &[grant(&job, "w")])
                    .await
                    .unwrap()[0],
            );
            (job, token, SyncResult::Completed(accounts))
        }
    };
    // The first sync is the baseline.
    let (job, token, result) = session(accounts(&["a"])).await;
    store
        .record_finish_batch(&[finish(&job, token, result)])
        .await
        .unwrap();
    let got = new_changes(store.as_ref(), &mut seen).await;
    assert_eq!(
        got.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["baseline"]
    );

    // A finish sent twice with one request id (a retry after an unknown commit) is
    // replayed: one "added", not two.
    let (job, token, result) = session(accounts(&["a", "b"])).await;
    let req = finish(&job, token, result);
    store
        .record_finish_batch(std::slice::from_ref(&req))
        .await
        .unwrap();
    store.record_finish_batch(&[req]).await.unwrap();
    let got = new_changes(store.as_ref(), &mut seen).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0.as_str(), got[0].1.as_str()), ("added", "b"));

    // A finish with a token that is no longer current is fenced: nothing is written.
    let (job, token, _) = session(accounts(&[])).await;
    let out = store
        .record_finish_batch(&[finish(
            &job,
            token - 1,
            SyncResult::Completed(accounts(&["c"])),
        )])
        .await
        .unwrap();
    assert_eq!(out[0].record, syncpool::store::RecordOutcome::Fenced);
    assert!(new_changes(store.as_ref(), &mut seen).await.is_empty());
    assert!(out[0].changes.0.is_empty());

    // Retention: history is kept for its own period, not the sessions'. The baseline is
    // dated 2025-01-01 (over a year ago); a cleanup keeping 0 days of sessions and 365 of history deletes
    // the finished sessions and only that history row.
    crate::conformance::exec(
        store.as_ref(),
        "UPDATE account_changes SET changed_at = '2025-01-01T00:00:00.000Z' WHERE kind = 'baseline'",
        &[],
    )
    .await;
    let counts = store.cleanup(0, 365, 365).await.unwrap();
    assert_eq!(
        (counts.sessions_deleted, counts.changes_deleted),
        (2, 1),
        "{counts:?}"
    );
    let left = store
        .changes_list(&ChangeFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].kind.as_str(), left[0].username.as_str()),
        ("added", "b")
    );
}
