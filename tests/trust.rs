//! What a holder of an API token, a hostile input or a skewed clock must not be able to
//! do (docs/SECURITY.md names these tests): move an instance's password to another host,
//! store a NUL byte, or make a worker misjudge how long a job waited.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncpool::model::{NewInstance, SyncType};

use crate::api::spawn_app;
use crate::common::*;

on_both_databases!(
    moving_an_instance_elsewhere_keeps_its_password_only_when_the_request_names_it_again,
    the_console_asks_for_the_password_again_before_moving_an_instance,
    a_nul_character_in_an_option_is_a_400_naming_options,
);

fn postgres_instance(name: &str, host: &str, port: i64) -> NewInstance {
    NewInstance {
        name: name.into(),
        kind: syncpool::model::InstanceKind::Postgres,
        host: Some(host.into()),
        port: Some(port),
        username: Some("app".into()),
        database: Some("app".into()),
        password_env: Some("SYNCPOOL_SECRET_PROD_DB".into()),
        password_file: None,
        options: json!({"ssl_mode": "verify-full"}),
        active: true,
        group: None,
    }
}

async fn moving_an_instance_elsewhere_keeps_its_password_only_when_the_request_names_it_again(
    b: Backend,
) {
    let app = spawn_app(b, None).await;
    let inst = app
        .store
        .instance_insert(&postgres_instance("prod-db", "db.internal", 5432))
        .await
        .unwrap();
    let path = format!("/api/v1/instances/{}", inst.id);
    for (patch, why) in [
        (
            json!({"host": "attacker.example", "port": 6543}),
            "a new host",
        ),
        (json!({"port": 6543}), "a new port"),
        (json!({"username": "other"}), "another login"),
        (json!({"database": "other"}), "another database"),
        (json!({"kind": "mysql", "options": {}}), "another kind"),
        (
            json!({"options": {"ssl_mode": "disable"}}),
            "a weaker ssl_mode",
        ),
        (
            json!({"options": {"ssl_mode": "verify-full", "ssl_root_cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}}),
            "another trusted root",
        ),
    ] {
        let (st, body) = app.call("PATCH", &path, Some(&patch.to_string())).await;
        assert_eq!(st, 409, "{why}: {body}");
        assert_eq!(body["error"]["field"], "password_env", "{why}: {body}");
        let now = app.store.instance_get(inst.id).await.unwrap().unwrap();
        assert_eq!(now.host.as_deref(), Some("db.internal"), "{why}: unchanged");
        assert_eq!(now.port, Some(5432), "{why}: unchanged");
        assert_eq!(now.options, json!({"ssl_mode": "verify-full"}), "{why}");
    }
    // A null for the field that holds nothing names nothing.
    let (st, body) = app
        .call(
            "PATCH",
            &path,
            Some(r#"{"host": "attacker.example", "password_file": null}"#),
        )
        .await;
    assert_eq!(st, 409, "{body}");
    // What does not move the password needs nothing more.
    for patch in [
        json!({"active": false}),
        json!({"name": "prod-db-renamed"}),
        json!({"options": {"ssl_mode": "verify-full", "role_like": "app%"}}),
    ] {
        let (st, body) = app.call("PATCH", &path, Some(&patch.to_string())).await;
        assert_eq!(st, 200, "{patch}: {body}");
    }
    // Naming the reference again is a deliberate move, and allowed.
    let (st, body) = app
        .call(
            "PATCH",
            &path,
            Some(r#"{"host": "db2.internal", "password_env": "SYNCPOOL_SECRET_PROD_DB"}"#),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["host"], "db2.internal");
    // So is moving it with another reference, or with none.
    let (st, body) = app
        .call(
            "PATCH",
            &path,
            Some(r#"{"host": "db3.internal", "password_env": "SYNCPOOL_SECRET_DB3"}"#),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = app
        .call(
            "PATCH",
            &path,
            Some(r#"{"host": "db4.internal", "password_env": null}"#),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["password_env"], Value::Null);
}

/// The CSRF token of the first form on a console page.
fn csrf_in(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token");
    html[at + 19..].split('"').next().unwrap().to_string()
}

async fn the_console_asks_for_the_password_again_before_moving_an_instance(b: Backend) {
    let app = spawn_app(b, None).await;
    let inst = app
        .store
        .instance_insert(&postgres_instance("prod-db", "db.internal", 5432))
        .await
        .unwrap();
    let (st, _, page) = app
        .request("GET", &format!("/instances/{}/edit", inst.id), "", "")
        .await;
    assert_eq!(st, 200);
    let html = page.as_str().unwrap_or_default().to_string();
    assert!(
        !html.contains(r#"value="SYNCPOOL_SECRET_PROD_DB""#),
        "the form does not carry the reference along by itself: {html}"
    );
    assert!(
        html.contains("SYNCPOOL_SECRET_PROD_DB"),
        "it says where it is now"
    );
    let csrf = csrf_in(&html);
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let fields = "name=prod-db&kind=postgres&port=5432&username=app&database=app\
                  &options=%7B%22ssl_mode%22%3A%22verify-full%22%7D&active=true";
    let (st, _, body) = app
        .request(
            "POST",
            &format!("/instances/{}", inst.id),
            form,
            &format!("csrf={csrf}&{fields}&host=attacker.example"),
        )
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body.as_str()
            .unwrap_or_default()
            .contains("<strong>password_env</strong>"),
        "{body}"
    );
    let now = app.store.instance_get(inst.id).await.unwrap().unwrap();
    assert_eq!(now.host.as_deref(), Some("db.internal"), "unchanged");
    // Same endpoint, empty password fields: the reference is kept.
    let (st, _, body) = app
        .request(
            "POST",
            &format!("/instances/{}", inst.id),
            form,
            &format!("csrf={csrf}&{fields}&host=db.internal"),
        )
        .await;
    assert_eq!(st, 303, "{body}");
    let now = app.store.instance_get(inst.id).await.unwrap().unwrap();
    assert_eq!(now.password_env.as_deref(), Some("SYNCPOOL_SECRET_PROD_DB"));
    // Typed again, the move is made.
    let (st, _, body) = app
        .request(
            "POST",
            &format!("/instances/{}", inst.id),
            form,
            &format!("csrf={csrf}&{fields}&host=db2.internal&password_env=SYNCPOOL_SECRET_PROD_DB"),
        )
        .await;
    assert_eq!(st, 303, "{body}");
    let now = app.store.instance_get(inst.id).await.unwrap().unwrap();
    assert_eq!(now.host.as_deref(), Some("db2.internal"));
}

async fn a_nul_character_in_an_option_is_a_400_naming_options(b: Backend) {
    let app = spawn_app(b, None).await;
    let mut pg = postgres_instance("pg", "db.internal", 5432);
    pg.options = json!({"role_like": "a\u{0}b"});
    let mut my = postgres_instance("my", "db.internal", 3306);
    my.kind = syncpool::model::InstanceKind::Mysql;
    my.options = json!({"user_like": "\u{0}"});
    let mut pem = postgres_instance("pem", "db.internal", 5432);
    pem.options = json!({"ssl_mode": "verify-full",
        "ssl_root_cert": "-----BEGIN CERTIFICATE-----\n\u{0}\n-----END CERTIFICATE-----\n"});
    for new in [&pg, &my, &pem] {
        let body = serde_json::to_string(new).unwrap();
        let (st, err) = app.call("POST", "/api/v1/instances", Some(&body)).await;
        assert_eq!(st, 400, "{}: {err}", new.name);
        assert_eq!(err["error"]["field"], "options", "{err}");
    }
    let ok = app
        .store
        .instance_insert(&postgres_instance("ok", "db.internal", 5432))
        .await
        .unwrap();
    let (st, err) = app
        .call(
            "PATCH",
            &format!("/api/v1/instances/{}", ok.id),
            Some(r#"{"options": {"ssl_mode": "verify-full", "role_like": "x\u0000"}}"#),
        )
        .await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(err["error"]["field"], "options", "{err}");
    assert!(
        app.store.instance_list().await.unwrap().len() == 1,
        "nothing written"
    );
}

/// Syncs every active instance once with a worker of these flags and environment (one
/// attempt each); returns the first record.
async fn sync_once(
    app: &crate::api::App,
    flags: &[&str],
    env: &[(&str, &str)],
) -> syncpool::model::Record {
    let s = app
        .store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap();
    let mut args = vec!["--max-attempts", "1"];
    args.extend_from_slice(flags);
    let (mut w, _) = worker_at(app.db(), &app.db().url, "once", &args, env);
    let done =
        crate::processes::wait_finished(app.db(), &[s.session_id], Duration::from_secs(60)).await;
    signal(&w, "TERM");
    let _ = w.wait();
    done[0].records[0].clone()
}

/// A PostgreSQL server of the attacker's: it asks for the password in clear text and
/// keeps whatever it is sent.
struct FakePostgres {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakePostgres {
    fn start() -> FakePostgres {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(vec![]));
        let keep = received.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { return };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let read_message = |c: &mut std::net::TcpStream| -> Option<Vec<u8>> {
                        let mut len = [0u8; 4];
                        c.read_exact(&mut len).ok()?;
                        let mut body =
                            vec![0u8; (u32::from_be_bytes(len) as usize).checked_sub(4)?];
                        c.read_exact(&mut body).ok()?;
                        Some(body)
                    };
                    // SSLRequest first (refused), then the startup message.
                    let Some(first) = read_message(&mut c) else {
                        return;
                    };
                    if first.starts_with(&80877103u32.to_be_bytes()) {
                        let _ = c.write_all(b"N");
                        if read_message(&mut c).is_none() {
                            return;
                        }
                    }
                    // AuthenticationCleartextPassword.
                    let _ = c.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
                    let mut tag = [0u8; 1];
                    if c.read_exact(&mut tag).is_ok()
                        && let Some(body) = read_message(&mut c)
                    {
                        keep.lock().unwrap().extend_from_slice(&body);
                    }
                });
            }
        });
        FakePostgres {
            port,
            received,
            connections,
        }
    }
}

/// The attack of issue #19, item 1, end to end: register `prod-db` with its password in
/// the workers' environment, PATCH its host to a server of one's own (lowering TLS), and
/// let a worker sync it. The worker must never send the password there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holder_cannot_point_an_instance_at_their_own_host_and_receive_its_password() {
    let app = spawn_app(Backend::Sqlite, None).await;
    let fake = FakePostgres::start();
    // The real server is not reachable here (port 1 refuses): its syncs just fail.
    let inst = app
        .store
        .instance_insert(&postgres_instance("prod-db", "127.0.0.1", 1))
        .await
        .unwrap();
    let (st, body) = app
        .call(
            "PATCH",
            &format!("/api/v1/instances/{}", inst.id),
            Some(&format!(
                r#"{{"host": "127.0.0.1", "port": {}, "options": {{"ssl_mode": "disable"}}}}"#,
                fake.port
            )),
        )
        .await;
    assert_eq!(st, 409, "{body}");
    sync_once(
        &app,
        &[],
        &[("SYNCPOOL_SECRET_PROD_DB", "hunter2-prod-password")],
    )
    .await;
    let got = fake.received.lock().unwrap().clone();
    assert!(
        !String::from_utf8_lossy(&got).contains("hunter2"),
        "the attacker's server received the password"
    );
}

/// The libfaketime preload library, installed by scripts/test.sh (Debian's `faketime`).
fn libfaketime() -> String {
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ] {
        let lib = format!("{dir}/faketime/libfaketime.so.1");
        if std::path::Path::new(&lib).exists() {
            return lib;
        }
    }
    panic!("libfaketime is needed (apt-get install faketime; scripts/test.sh installs it)")
}

/// Issue #19, item 8: "waiting since" was stamped with one worker's clock and judged by
/// another's, so a worker 15 minutes fast failed a job that had waited seconds ("another
/// sync held it for more than 600 s"). Both are the database's clock now. PostgreSQL
/// only: every SQLite process shares one host's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_clock_runs_fast_does_not_fail_a_job_that_waited_seconds() {
    let lib = libfaketime();
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let shared = store
        .instance_insert(&simulated("shared", json!({"latency_ms": 3000})))
        .await
        .unwrap();
    let timings = [
        "--lease-ttl",
        "3s",
        "--lease-renew",
        "1s",
        "--queue-heartbeat",
        "1s",
        "--concurrency",
        "2",
    ];
    let (mut honest, _) = worker(&db, "honest", &timings);
    let first = store
        .session_create(SyncType::ManualSingle, Some(&[shared.id]))
        .await
        .unwrap();
    crate::processes::wait_running(&db, first.session_id, 1).await;
    let second = store
        .session_create(SyncType::ManualSingle, Some(&[shared.id]))
        .await
        .unwrap();
    let record = store
        .session_get(second.session_id)
        .await
        .unwrap()
        .unwrap()
        .records[0]
        .id;
    let job = crate::conformance::job_id_of(store.as_ref(), record).await;
    // The honest worker finds the instance busy and stamps the job's wait.
    let start = Instant::now();
    while crate::conformance::job_id_of(store.as_ref(), record).await == job {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never found busy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&honest, "KILL");
    let _ = honest.wait();
    // Only a worker 15 minutes fast is left to judge the wait.
    let (mut fast, log) = worker_at(
        &db,
        &db.url,
        "fast",
        &timings,
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", "+15m"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let done = crate::processes::wait_finished(
        &db,
        &[first.session_id, second.session_id],
        Duration::from_secs(60),
    )
    .await;
    signal(&fast, "TERM");
    let _ = fast.wait();
    let r = &done[1].records[0];
    assert_eq!(
        r.status.as_str(),
        "completed",
        "the waiting job was failed: {:?}; worker log: {}",
        r.error,
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The inventory says who may do what on every instance: a local user of the host must not
/// read it. Review finding: SQLite made the file (and its -wal, -shm) world-readable.
#[test]
fn a_new_sqlite_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fresh.db");
    let (code, _, err) = cli(&format!("sqlite://{}", file.display()), &["migrate"]);
    assert_eq!(code, 0, "{err}");
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", file.display());
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(
                meta.permissions().mode() & 0o077,
                0,
                "{path} is open to others: {:o}",
                meta.permissions().mode()
            );
        }
    }
}

/// Review finding beyond issue #19's list: a token holder need not edit an instance; a
/// *new* one may name an existing secret and a host of theirs. Only the workers' operator
/// can close that: with `--instance-hosts`, a worker never connects elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sends_no_password_to_a_host_outside_its_allowed_instance_hosts() {
    let app = spawn_app(Backend::Sqlite, None).await;
    let fake = FakePostgres::start();
    let mut new = postgres_instance("exfil", "127.0.0.1", fake.port as i64);
    new.options = json!({"ssl_mode": "disable"});
    let body = serde_json::to_string(&new).unwrap();
    let (st, created) = app.call("POST", "/api/v1/instances", Some(&body)).await;
    assert_eq!(st, 201, "{created}");
    let secret = [("SYNCPOOL_SECRET_PROD_DB", "hunter2-prod-password")];
    let refused = sync_once(
        &app,
        &[
            "--instance-hosts",
            "db.internal, *.prod.internal, 10.0.0.0/8",
        ],
        &secret,
    )
    .await;
    assert_eq!(refused.status.as_str(), "failed");
    let error = refused.error.unwrap_or_default();
    assert!(error.contains("allowed instance hosts"), "{error}");
    assert_eq!(
        fake.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the worker never connected"
    );
    // The control: where the list allows the host, the fake server does get the password,
    // so the refusal above is the list's doing, not the fake's.
    sync_once(&app, &["--instance-hosts", "127.0.0.1"], &secret).await;
    assert!(
        String::from_utf8_lossy(&fake.received.lock().unwrap()).contains("hunter2"),
        "the fake server works"
    );
}

/// Review finding: sqlx's `PgConnectOptions::new()` reads `PGPASSWORD` and `~/.pgpass`
/// from the worker's environment (there for syncpool's own database). An instance that
/// names no password, pointed at a server of the attacker's, was sent that password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_never_sends_its_own_pgpassword_or_pgpass_to_an_instance() {
    let app = spawn_app(Backend::Sqlite, None).await;
    let fake = FakePostgres::start();
    let mut new = postgres_instance("no-password", "127.0.0.1", fake.port as i64);
    new.password_env = None;
    new.options = json!({"ssl_mode": "disable"});
    app.store.instance_insert(&new).await.unwrap();
    let pgpass = app.db().dir.path().join("pgpass");
    std::fs::write(&pgpass, "*:*:*:*:hunter2-from-pgpass\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let pgpass = pgpass.display().to_string();
    for env in [
        vec![("PGPASSWORD", "hunter2-from-pgpassword")],
        vec![("PGPASSFILE", pgpass.as_str())],
    ] {
        sync_once(&app, &[], &env).await;
    }
    assert!(
        fake.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the worker did reach the server"
    );
    let got = String::from_utf8_lossy(&fake.received.lock().unwrap()).to_string();
    assert!(
        !got.contains("hunter2"),
        "the instance's server got the worker's own password: {got:?}"
    );
}

/// Review finding: a PostgreSQL "host" starting with '/' is a Unix socket folder on the
/// worker's machine, where peer authentication would log the worker in as its OS user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_a_socket_folder_is_refused_at_the_door() {
    let app = spawn_app(Backend::Sqlite, None).await;
    let mut new = postgres_instance("local-socket", "/var/run/postgresql", 5432);
    new.password_env = None;
    let (st, err) = app
        .call(
            "POST",
            "/api/v1/instances",
            Some(&serde_json::to_string(&new).unwrap()),
        )
        .await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(err["error"]["field"], "host", "{err}");
    let ok = app
        .store
        .instance_insert(&postgres_instance("ok", "db.internal", 5432))
        .await
        .unwrap();
    let (st, err) = app
        .call(
            "PATCH",
            &format!("/api/v1/instances/{}", ok.id),
            Some(r#"{"host": "/tmp", "password_env": "SYNCPOOL_SECRET_PROD_DB"}"#),
        )
        .await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(err["error"]["field"], "host", "{err}");
}

/// A worker whose `--instance-hosts` cannot be read must not start allowing every host.
#[test]
fn a_worker_with_an_unreadable_instance_hosts_list_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let (code, _, err) = cli(
        &url,
        &["worker", "--instance-hosts", "db.internal, http://evil"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--instance-hosts") && err.contains("http://evil"),
        "{err}"
    );
}
