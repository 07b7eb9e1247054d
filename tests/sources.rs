//! Real account sources: PostgreSQL (a private cluster per test, whose pg_hba.conf makes
//! some roles log in with a password; the machine's server is never reconfigured) and
//! the MariaDB on this machine. Each test creates its own uniquely named roles/users,
//! syncs through a real worker process, checks the inventory against the server, changes
//! the server and syncs again.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use syncpool::model::NewInstance;

use crate::common::*;

/// The group whose members must log in with a password over TCP (the private cluster's
/// pg_hba.conf; the rest of it trusts loopback).
pub(crate) const PW_GROUP: &str = "syncpool_password_required";

/// A private cluster that requires passwords of [`PW_GROUP`].
pub(crate) fn private_pg() -> crate::private_pg::PrivatePg {
    let pg = crate::private_pg::PrivatePg::start();
    pg.require_passwords(PW_GROUP);
    pg
}

pub(crate) fn tag() -> String {
    format!("sp{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub(crate) async fn pg(server: &crate::private_pg::PrivatePg, sql: &str) {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&server.url("postgres"))
        .await
        .expect("PostgreSQL is required");
    for stmt in sql.split(";\n").filter(|s| !s.trim().is_empty()) {
        sqlx::query(sqlx::AssertSqlSafe(stmt.to_string()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
}

pub(crate) fn maria(sql: &str) {
    let out = Command::new("mariadb")
        .args(["-h", "127.0.0.1", "-uroot", "-e", sql])
        .output()
        .expect("mariadb client");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn instance(
    name: &str,
    kind: &str,
    port: i64,
    user: &str,
    database: Option<&str>,
    password_env: Option<&str>,
    options: Value,
) -> NewInstance {
    NewInstance {
        name: name.into(),
        kind: kind.parse().unwrap(),
        host: Some("127.0.0.1".into()),
        port: Some(port),
        username: Some(user.into()),
        database: database.map(Into::into),
        password_env: password_env.map(Into::into),
        password_file: None,
        options,
        active: true,
        group: None,
    }
}

/// Syncs one instance through a real worker process that has `env` set; returns the
/// session record and the CLI's view of the accounts.
pub(crate) fn sync_one(db: &TestDb, name: &str, env: &[(&str, &str)]) -> (Value, Value) {
    let log = db.dir.path().join(format!("worker-{name}.log"));
    let mut worker = Command::new(bin())
        .args([
            "worker",
            "--poll-interval",
            "100ms",
            "--retry-backoff",
            "100ms",
        ])
        .envs(env.iter().copied())
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (code, out, err) = cli(&db.url, &["sync", name, "--wait", "--json"]);
    signal(&worker, "TERM");
    worker.wait().unwrap();
    assert_eq!(code, 0, "{err}");
    let session: Value = serde_json::from_str(&out).unwrap();
    let (code, out, err) = cli(&db.url, &["accounts", name, "--json", "--include-deleted"]);
    assert_eq!(code, 0, "{err}");
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    for (_, secret) in env {
        assert!(
            !logs.contains(secret) && !out.contains(secret),
            "a secret leaked into logs or output"
        );
    }
    (
        session["records"][0].clone(),
        serde_json::from_str(&out).unwrap(),
    )
}

fn find<'a>(accounts: &'a Value, user: &str) -> &'a Value {
    accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["username"] == user)
        .unwrap_or_else(|| panic!("{user} not in {accounts}"))
}

fn counts(record: &Value) -> (i64, i64, i64, i64) {
    let n = |k: &str| record[k].as_i64().unwrap_or(-1);
    (
        n("accounts_total"),
        n("accounts_added"),
        n("accounts_removed"),
        n("accounts_changed"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_instance_is_synced_and_its_changes_are_counted() {
    let server = private_pg();
    let t = tag();
    let secret = format!("pw-{t}-secret");
    pg(&server, &format!(
        "CREATE ROLE {t}_reader NOLOGIN;\n\
         CREATE ROLE {t}_app LOGIN CREATEDB PASSWORD '{secret}' CONNECTION LIMIT 5 IN ROLE {PW_GROUP};\n\
         CREATE ROLE {t}_old LOGIN;\n\
         GRANT {t}_reader TO {t}_app;\n\
         GRANT CREATE ON SCHEMA public TO {t}_app"
    ))
    .await;
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let var = format!("SYNCPOOL_SECRET_PW_{}", t.to_uppercase());
    store
        .instance_insert(&instance(
            "pg",
            "postgres",
            server.port as i64,
            &format!("{t}_app"),
            Some("postgres"),
            Some(&var),
            json!({"role_like": format!("{t}_%")}),
        ))
        .await
        .unwrap();
    let (record, accounts) = sync_one(&db, "pg", &[(&var, &secret)]);
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(counts(&record), (3, 3, 0, 0));
    let app = find(&accounts, &format!("{t}_app"));
    assert_eq!(app["attributes"]["can_login"], true);
    assert_eq!(app["attributes"]["create_db"], true);
    assert_eq!(app["attributes"]["superuser"], false);
    assert_eq!(app["attributes"]["connection_limit"], 5);
    assert_eq!(app["attributes"]["member_of"], json!([{"role": PW_GROUP, "admin_option": false}, {"role": format!("{t}_reader"), "admin_option": false}]).as_array().map(|a| {
        let mut a = a.clone();
        a.sort_by_key(|v| v["role"].as_str().unwrap().to_string());
        Value::Array(a)
    }).unwrap());
    let privs = app["privileges"].as_array().unwrap();
    assert!(privs.iter().any(|p| {
        p["level"] == "database"
            && p["database"] == "postgres"
            && p["privileges"]
                .as_array()
                .unwrap()
                .contains(&json!("CONNECT"))
    }));
    assert!(privs.iter().any(|p| p["level"] == "schema"
        && p["schema"] == "public"
        && p["privileges"] == json!(["USAGE", "CREATE"])));
    assert_eq!(
        find(&accounts, &format!("{t}_reader"))["attributes"]["can_login"],
        false
    );

    pg(
        &server,
        &format!("DROP ROLE {t}_old;\nALTER ROLE {t}_reader LOGIN;\nCREATE ROLE {t}_new NOLOGIN"),
    )
    .await;
    let (record, accounts) = sync_one(&db, "pg", &[(&var, &secret)]);
    assert_eq!(counts(&record), (3, 1, 1, 1), "{record}");
    assert!(!find(&accounts, &format!("{t}_old"))["deleted_at"].is_null());
    let (record, _) = sync_one(&db, "pg", &[(&var, &secret)]);
    assert_eq!(
        counts(&record),
        (3, 0, 0, 0),
        "a sync that finds no change writes no account rows"
    );
    pg(&server, &format!("DROP ROLE {t}_new;\nREVOKE CREATE ON SCHEMA public FROM {t}_app;\nDROP ROLE {t}_app;\nDROP ROLE {t}_reader")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_instance_is_synced_with_parsed_grants_and_its_changes_are_counted() {
    let t = tag();
    let secret = format!("pw-{t}-secret");
    maria(&format!(
        "CREATE DATABASE {t}_db; CREATE TABLE {t}_db.orders (id INT, note TEXT);\
         CREATE USER '{t}_admin'@'%' IDENTIFIED BY '{secret}'; GRANT SELECT ON mysql.* TO '{t}_admin'@'%';\
         CREATE USER '{t}_app'@'10.%' IDENTIFIED BY 'x'; GRANT SELECT, INSERT ON {t}_db.* TO '{t}_app'@'10.%';\
         GRANT UPDATE (note) ON {t}_db.orders TO '{t}_app'@'10.%';\
         CREATE USER '{t}_old'@'%';"
    ));
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let var = format!("SYNCPOOL_SECRET_PW_{}", t.to_uppercase());
    store
        .instance_insert(&instance(
            "maria",
            "mysql",
            3306,
            &format!("{t}_admin"),
            None,
            Some(&var),
            json!({"user_like": format!("{t}_%")}),
        ))
        .await
        .unwrap();
    let (record, accounts) = sync_one(&db, "maria", &[(&var, &secret)]);
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(counts(&record), (3, 3, 0, 0));
    let app = find(&accounts, &format!("{t}_app"));
    assert_eq!(app["host"], "10.%");
    assert_eq!(app["attributes"]["locked"], false);
    let privs = app["privileges"].as_array().unwrap();
    assert!(
        privs.iter().any(|p| p["level"] == "database"
            && p["database"] == format!("{t}_db")
            && p["privileges"] == json!(["SELECT", "INSERT"])),
        "{privs:?}"
    );
    assert!(
        privs
            .iter()
            .any(|p| p["level"] == "table" && p["table"] == "orders"),
        "{privs:?}"
    );
    assert!(
        privs
            .iter()
            .any(|p| p["level"] == "global" && p["privileges"] == json!(["USAGE"]))
    );

    maria(&format!(
        "DROP USER '{t}_old'@'%'; ALTER USER '{t}_app'@'10.%' ACCOUNT LOCK; CREATE USER '{t}_new'@'localhost';"
    ));
    let (record, accounts) = sync_one(&db, "maria", &[(&var, &secret)]);
    assert_eq!(counts(&record), (3, 1, 1, 1), "{record}");
    assert_eq!(
        find(&accounts, &format!("{t}_app"))["attributes"]["locked"],
        true
    );
    maria(&format!(
        "DROP USER '{t}_new'@'localhost'; DROP USER '{t}_app'@'10.%'; DROP USER '{t}_admin'@'%'; DROP DATABASE {t}_db;"
    ));
}

/// Grants on objects whose names upper-case to another byte length (Armenian, Turkish
/// dotless i, German sharp s) come back from a real `SHOW GRANTS` parsed right: the parser
/// once panicked on them (and pinned the lease) or cut the names in the wrong place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_on_non_ascii_names_round_trip_through_a_real_mariadb() {
    let t = tag();
    let secret = format!("pw-{t}-secret");
    maria(&format!(
        "CREATE DATABASE `{t}_երևան`; CREATE DATABASE `{t}_kayıtlar`; CREATE DATABASE `{t}_straße`;\
         CREATE TABLE `{t}_straße`.`ıi` (id INT);\
         CREATE USER '{t}_admin'@'%' IDENTIFIED BY '{secret}'; GRANT SELECT ON mysql.* TO '{t}_admin'@'%';\
         CREATE USER '{t}_uni'@'%'; GRANT SELECT ON `{t}_երևան`.* TO '{t}_uni'@'%';\
         GRANT INSERT ON `{t}_kayıtlar`.* TO '{t}_uni'@'%'; GRANT SELECT ON `{t}_straße`.`ıi` TO '{t}_uni'@'%';"
    ));
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let var = format!("SYNCPOOL_SECRET_PW_{}", t.to_uppercase());
    store
        .instance_insert(&instance(
            "maria",
            "mysql",
            3306,
            &format!("{t}_admin"),
            None,
            Some(&var),
            json!({"user_like": format!("{t}_uni")}),
        ))
        .await
        .unwrap();
    let (record, accounts) = sync_one(&db, "maria", &[(&var, &secret)]);
    maria(&format!(
        "DROP USER '{t}_uni'@'%'; DROP USER '{t}_admin'@'%'; DROP DATABASE `{t}_երևան`; \
         DROP DATABASE `{t}_kayıtlar`; DROP DATABASE `{t}_straße`;"
    ));
    assert_eq!(record["status"], "completed", "{record}");
    let privs = find(&accounts, &format!("{t}_uni"))["privileges"].clone();
    let has = |want: Value| {
        assert!(
            privs.as_array().unwrap().contains(&want),
            "{want} not in {privs}"
        )
    };
    has(
        json!({"level": "database", "database": format!("{t}_երևան"), "privileges": ["SELECT"], "grant_option": false}),
    );
    has(
        json!({"level": "database", "database": format!("{t}_kayıtlar"), "privileges": ["INSERT"], "grant_option": false}),
    );
    has(
        json!({"level": "table", "database": format!("{t}_straße"), "table": "ıi", "privileges": ["SELECT"], "grant_option": false}),
    );
}

/// Each failure is classified: fatal ones are not retried, network ones are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified_and_never_show_the_password() {
    let server = private_pg();
    let t = tag();
    let secret = format!("pw-{t}-secret");
    pg(
        &server,
        &format!(
            "CREATE ROLE {t}_pw LOGIN PASSWORD 'right-{secret}' IN ROLE {PW_GROUP};\n\
         CREATE ROLE {t}_nologin NOLOGIN;\n\
         CREATE DATABASE {t}_locked;\n\
         REVOKE CONNECT ON DATABASE {t}_locked FROM PUBLIC;\n\
         CREATE ROLE {t}_plain LOGIN"
        ),
    )
    .await;
    maria(&format!(
        "CREATE USER '{t}_noprivs'@'%' IDENTIFIED BY '{secret}';"
    ));
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let var = format!("SYNCPOOL_SECRET_PW_{}", t.to_uppercase());
    let cases = [
        (
            "wrong-password",
            instance(
                "wrong-password",
                "postgres",
                server.port as i64,
                &format!("{t}_pw"),
                Some("postgres"),
                Some(&var),
                json!({}),
            ),
            "authentication failed",
            1,
        ),
        (
            "no-login",
            instance(
                "no-login",
                "postgres",
                server.port as i64,
                &format!("{t}_nologin"),
                Some("postgres"),
                None,
                json!({}),
            ),
            "authentication failed",
            1,
        ),
        (
            "unreachable",
            instance(
                "unreachable",
                "postgres",
                1,
                "postgres",
                None,
                None,
                json!({}),
            ),
            "connection refused",
            3,
        ),
        (
            "missing-var",
            instance(
                "missing-var",
                "mysql",
                3306,
                "root",
                None,
                Some("SYNCPOOL_SECRET_TEST_UNSET_VARIABLE"),
                json!({}),
            ),
            "is not set",
            1,
        ),
        (
            "no-connect",
            instance(
                "no-connect",
                "postgres",
                server.port as i64,
                &format!("{t}_plain"),
                Some(&format!("{t}_locked")),
                None,
                json!({}),
            ),
            "lacks a privilege",
            1,
        ),
        (
            "no-catalog",
            instance(
                "no-catalog",
                "mysql",
                3306,
                &format!("{t}_noprivs"),
                None,
                Some(&var),
                json!({}),
            ),
            "lacks a privilege",
            1,
        ),
        (
            "mysql-wrong-password",
            instance(
                "mysql-wrong-password",
                "mysql",
                3306,
                &format!("{t}_noprivs"),
                None,
                Some("SYNCPOOL_SECRET_TEST_OTHER_PW"),
                json!({}),
            ),
            "authentication failed",
            1,
        ),
    ];
    for (_, new, _, _) in &cases {
        store.instance_insert(new).await.unwrap();
    }
    let env = [
        (var.as_str(), secret.as_str()),
        ("SYNCPOOL_SECRET_TEST_OTHER_PW", "not-the-password"),
    ];
    let log = db.dir.path().join("worker.log");
    let mut worker = Command::new(bin())
        .args([
            "worker",
            "--poll-interval",
            "100ms",
            "--retry-backoff",
            "100ms",
        ])
        .envs(env)
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (code, out, err) = cli(&db.url, &["sync-all", "--wait", "--json"]);
    signal(&worker, "TERM");
    worker.wait().unwrap();
    assert_eq!(code, 4, "every record failed: {err}");
    assert!(
        !out.contains(&secret) && !std::fs::read_to_string(&log).unwrap().contains(&secret),
        "the password leaked"
    );
    let session: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(session["status"], "failed");
    for (name, _, needle, attempts) in &cases {
        let r = session["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["instance_name"] == *name)
            .unwrap();
        assert_eq!(r["status"], "failed", "{name}: {r}");
        let error = r["error"].as_str().unwrap_or("");
        assert!(
            error.contains(needle),
            "{name}: expected {needle:?} in {error:?}"
        );
        assert_eq!(r["attempts"], *attempts, "{name}: {r}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    pg(&server, &format!(
        "DROP ROLE {t}_pw;\nDROP ROLE {t}_nologin;\nDROP DATABASE {t}_locked;\nDROP ROLE {t}_plain"
    ))
    .await;
    maria(&format!("DROP USER '{t}_noprivs'@'%';"));
}

/// A server that accepts connections and never answers: the connect timeout ends the
/// attempt, and the failure is retried (network trouble may pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_and_is_retried() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = vec![];
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    store
        .instance_insert(&instance(
            "silent",
            "postgres",
            port as i64,
            "postgres",
            None,
            None,
            json!({}),
        ))
        .await
        .unwrap();
    let mut worker = Command::new(bin())
        .args([
            "worker",
            "--poll-interval",
            "100ms",
            "--retry-backoff",
            "100ms",
            "--max-attempts",
            "2",
            "--connect-timeout",
            "300ms",
        ])
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (code, out, err) = cli(&db.url, &["sync", "silent", "--wait", "--json"]);
    signal(&worker, "TERM");
    worker.wait().unwrap();
    assert_eq!(code, 4, "the session failed: {err}");
    let r = &serde_json::from_str::<Value>(&out).unwrap()["records"][0];
    assert_eq!(r["status"], "failed");
    assert_eq!(r["attempts"], 2, "a timeout is retried: {r}");
    assert!(r["error"].as_str().unwrap().contains("timed out"), "{r}");
}

/// An instance as a source reads it, for the tests that run a source in this process.
fn spec(
    name: &str,
    kind: &str,
    port: u16,
    user: &str,
    options: Value,
) -> syncpool_workers::InstanceSpec {
    syncpool_workers::InstanceSpec {
        id: 1,
        name: name.into(),
        kind: kind.parse().unwrap(),
        host: Some("127.0.0.1".into()),
        port: Some(port),
        username: Some(user.into()),
        database: None,
        password_env: None,
        password_file: None,
        options,
    }
}

async fn read_in_process(
    inst: &syncpool_workers::InstanceSpec,
    settings: syncpool_workers::SourceSettings,
) -> Result<Vec<syncpool_workers::Account>, syncpool_workers::SourceError> {
    let source = syncpool_workers::source_for(&inst.kind).unwrap();
    source.fetch_accounts(inst, &settings).await
}

/// A server with more roles than `max_accounts`, or roles larger than `max_account_bytes`,
/// fails the read (fatal: another attempt reads the same) with a text naming the limit and
/// how to raise it, instead of reading everything into the worker's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_instance_with_more_roles_than_max_accounts_fails_fatally_naming_the_limit() {
    let server = private_pg();
    let t = tag();
    pg(
        &server,
        &(1..=5)
            .map(|i| format!("CREATE ROLE {t}_r{i} NOLOGIN"))
            .collect::<Vec<_>>()
            .join(";\n"),
    )
    .await;
    pg(&server, &format!("GRANT {t}_r1 TO {t}_r2")).await;
    let inst = spec(
        "pg-many",
        "postgres",
        server.port,
        "postgres",
        json!({"role_like": format!("{t}_%")}),
    );
    let limits = |max_accounts, max_row_bytes| syncpool_workers::SourceSettings {
        max_accounts,
        max_row_bytes,
        ..Default::default()
    };
    let err = read_in_process(&inst, limits(4, 1 << 20))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(
        err.to_string(),
        "instance 'pg-many' has more than 4 accounts (limit max_accounts; raise it with \
         --max-accounts or SYNCPOOL_MAX_ACCOUNTS)"
    );
    let accounts = read_in_process(&inst, limits(5, 1 << 20)).await.unwrap();
    assert_eq!(accounts.len(), 5, "exactly the limit is allowed");
    assert_eq!(
        accounts[1].attributes["member_of"],
        json!([{"role": format!("{t}_r1"), "admin_option": false}]),
        "memberships are still attached while streaming"
    );
    let err = read_in_process(&inst, limits(5, 40)).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "account '{t}_r1' of instance 'pg-many' is larger than 40 bytes"
        )) && text.contains("max_account_bytes")
            && text.contains("--max-account-bytes"),
        "{text}"
    );
    pg(
        &server,
        &(1..=5)
            .map(|i| format!("DROP ROLE {t}_r{i}"))
            .collect::<Vec<_>>()
            .join(";\n"),
    )
    .await;
}

/// Every `SHOW GRANTS` line counts toward its account: a user with many grants passes
/// `max_account_bytes` and fails the read, naming the account and the limit, while a
/// small account beside it would have fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_user_with_more_grant_text_than_max_account_bytes_fails_fatally_naming_the_limit()
{
    let t = tag();
    let grants: String = (0..40)
        .map(|i| format!("GRANT SELECT, INSERT ON `{t}_db{i}`.* TO '{t}_many'@'%';"))
        .collect();
    maria(&format!(
        "CREATE USER '{t}_few'@'%'; CREATE USER '{t}_many'@'%'; {grants}"
    ));
    let inst = spec(
        "maria-many",
        "mysql",
        3306,
        "root",
        json!({"user_like": format!("{t}_%")}),
    );
    let limits = |max_accounts, max_row_bytes| syncpool_workers::SourceSettings {
        max_accounts,
        max_row_bytes,
        ..Default::default()
    };
    let small = read_in_process(&inst, limits(10, 1000)).await;
    let all = read_in_process(&inst, limits(10, 1 << 20)).await;
    let one = read_in_process(&inst, limits(1, 1 << 20)).await;
    maria(&format!(
        "DROP USER '{t}_few'@'%'; DROP USER '{t}_many'@'%';"
    ));
    let err = small.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "account '{t}_many@%' of instance 'maria-many' is larger than 1000 bytes as read \
             (limit max_account_bytes; raise it with --max-account-bytes or SYNCPOOL_MAX_ACCOUNT_BYTES)"
        )
    );
    let all = all.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[1].privileges.as_array().unwrap().len(),
        41,
        "USAGE and the 40 grants: {}",
        all[1].privileges
    );
    let err = one.unwrap_err().to_string();
    assert!(
        err.contains("instance 'maria-many' has more than 1 accounts (limit max_accounts"),
        "{err}"
    );
}

/// `--max-accounts` and `SYNCPOOL_MAX_ACCOUNT_BYTES` reach the sources of a real worker:
/// the simulated kind counts its generated accounts against the same limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_fails_a_record_past_its_read_limits_from_flags_or_environment() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    for (name, accounts) in [("many", 50), ("ten", 10)] {
        store
            .instance_insert(&simulated(
                name,
                json!({"accounts": accounts, "latency_ms": 0}),
            ))
            .await
            .unwrap();
    }
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let (mut w, _) = worker_at(&db, &db.url, "limits", extra, env);
        let (_, out, err) = cli(&db.url, &["sync", "many", "ten", "--wait", "--json"]);
        signal(&w, "TERM");
        w.wait().unwrap();
        let session: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
        let rec = |n: &str| {
            session["records"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["instance_name"] == n)
                .unwrap()
                .clone()
        };
        (rec("many"), rec("ten"))
    };
    let (many, ten) = run(&["--max-accounts", "10"], &[]);
    assert_eq!(ten["status"], "completed", "{ten}");
    assert_eq!(ten["accounts_total"], 10);
    assert_eq!(many["status"], "failed", "{many}");
    assert_eq!(many["attempts"], 1, "a limit is fatal: {many}");
    assert!(
        many["error"]
            .as_str()
            .unwrap()
            .contains("instance 'many' has more than 10 accounts (limit max_accounts; raise it with --max-accounts"),
        "{many}"
    );
    let (_, ten) = run(&[], &[("SYNCPOOL_MAX_ACCOUNT_BYTES", "20")]);
    assert_eq!(ten["status"], "failed", "{ten}");
    assert!(
        ten["error"].as_str().unwrap().contains("max_account_bytes"),
        "{ten}"
    );
}
