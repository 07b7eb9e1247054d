//! Secrets that cannot be stolen, and an API closed by default: what an instance may name
//! as its password, where a worker reads it, what help and errors print, who `serve`
//! lets in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncpool::http::AppState;
use syncpool::model::NewInstance;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::common::*;
use crate::private_pg::PrivatePg;

/// One HTTP/1.1 request with the given extra header lines; (status, headers+body text).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    (
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        text,
    )
}

async fn spawn(db: &TestDb, tokens: &[&str]) -> (std::net::SocketAddr, CancellationToken) {
    let stop = CancellationToken::new();
    let state = AppState {
        store: db.store().await,
        tokens: tokens.iter().map(|t| Arc::from(*t)).collect(),
        webhook_allow: Default::default(),
        site: crate::api::harness_site(),
    };
    let (addr, _) = syncpool::http::serve(state, "127.0.0.1:0", stop.clone().cancelled_owned())
        .await
        .unwrap();
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cannot_name_a_variable_or_file_outside_the_secret_rules() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (addr, stop) = spawn(&db, &[]).await;
    for (field, value) in [
        ("password_env", "SYNCPOOL_DATABASE_URL"),
        ("password_env", "SYNCPOOL_API_TOKEN"),
        ("password_env", "HOME"),
        ("password_env", "SYNCPOOL_SECRET_"),
        ("password_file", "../../etc/shadow"),
        ("password_file", "/etc/shadow"),
        ("password_file", ".hidden"),
    ] {
        let body =
            json!({"name": "evil", "kind": "postgres", "host": "attacker.example", field: value});
        let (st, text) = http(addr, "POST", "/api/v1/instances", "", &body.to_string()).await;
        assert_eq!(st, 400, "{field}={value}: {text}");
        assert!(text.contains(&format!("\"field\":\"{field}\"")), "{text}");
    }
    let both = json!({"name": "x", "kind": "postgres", "host": "h", "password_env": "SYNCPOOL_SECRET_A", "password_file": "a"});
    assert_eq!(
        http(addr, "POST", "/api/v1/instances", "", &both.to_string())
            .await
            .0,
        400
    );
    stop.cancel();
    let (code, _, err) = cli(
        &db.url,
        &[
            "instances",
            "add",
            "--name",
            "e",
            "--kind",
            "postgres",
            "--host",
            "h",
            "--password-env",
            "SYNCPOOL_DATABASE_URL",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("SYNCPOOL_SECRET_"),
        "the message names the rule: {err}"
    );
    assert!(
        db.store().await.instance_list().await.unwrap().is_empty(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_a_forbidden_variable_even_in_a_row_written_around_the_api() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let mut evil = simulated("evil", json!({}));
    (evil.kind, evil.host, evil.port) = (
        syncpool::model::InstanceKind::Postgres,
        Some("127.0.0.1".into()),
        Some(1),
    );
    evil.password_env = Some("SYNCPOOL_DATABASE_URL".into());
    store.instance_insert(&evil).await.unwrap();
    let (mut w, log) = worker(&db, "w", &["--connect-timeout", "2s"]);
    let (code, out, err) = cli(&db.url, &["sync", "evil", "--wait", "--json"]);
    signal(&w, "TERM");
    w.wait().unwrap();
    assert_eq!(code, 4, "the session failed: {err}");
    let session: Value = serde_json::from_str(&out).unwrap();
    let record = &session["records"][0];
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["attempts"], 1, "fatal: not retried");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("SYNCPOOL_SECRET_"),
        "{record}"
    );
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        !text.contains(&db.url),
        "the variable's value never shows: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_in_the_secrets_folder_logs_in_and_a_wrong_one_is_a_fatal_auth_failure() {
    let pg = PrivatePg::start();
    pg.require_passwords("pw_required");
    let t = format!("sp{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres"))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {t}_reader LOGIN PASSWORD 'right-{t}' IN ROLE pw_required"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let secrets = db.dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("good"), format!("right-{t}\n")).unwrap();
    std::fs::write(secrets.join("bad"), "wrong").unwrap();
    let store = db.store().await;
    for (name, file) in [("good", "good"), ("bad", "bad")] {
        store
            .instance_insert(&NewInstance {
                name: name.into(),
                kind: syncpool::model::InstanceKind::Postgres,
                host: Some("127.0.0.1".into()),
                port: Some(pg.port as i64),
                username: Some(format!("{t}_reader")),
                database: Some("postgres".into()),
                password_env: None,
                password_file: Some(file.into()),
                options: json!({}),
                active: true,
                group: None,
            })
            .await
            .unwrap();
    }
    let dir = secrets.display().to_string();
    let (mut w, log) = worker_at(
        &db,
        &db.url,
        "w",
        &[],
        &[("SYNCPOOL_SECRETS_DIR", dir.as_str())],
    );
    let (_, out, err) = cli(&db.url, &["sync", "good", "bad", "--wait", "--json"]);
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
    assert_eq!(rec("good")["status"], "completed", "{}", rec("good"));
    assert_eq!(rec("bad")["status"], "failed");
    assert_eq!(
        rec("bad")["attempts"],
        1,
        "an authentication failure is fatal"
    );
    let text = std::fs::read_to_string(log).unwrap_or_default() + &out + &err;
    assert!(
        !text.contains(&format!("right-{t}")),
        "the password never shows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_help_error_or_json_output_shows_a_secret_from_the_environment() {
    let url_secret = "pw-in-the-url-7f3a";
    let token = "api-token-secret-91c2";
    let url = format!("postgres://syncpool:{url_secret}@127.0.0.1:1/syncpool");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .env("SYNCPOOL_DATABASE_URL", &url)
            .env("SYNCPOOL_API_TOKEN", token)
            .env("SYNCPOOL_SECRET_DB7", "instance-secret-55aa")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        for secret in [url_secret, token, "instance-secret-55aa"] {
            assert!(
                !text.contains(secret),
                "`syncpool {}` printed a secret: {text}",
                args.join(" ")
            );
        }
        (out.status.code().unwrap_or(-1), text)
    };
    let mut subcommands = vec![vec!["--help"]];
    for cmd in [
        "migrate",
        "worker",
        "serve",
        "sync",
        "sync-all",
        "sessions",
        "session",
        "cancel",
        "accounts",
        "cleanup",
        "demo",
        "instances",
    ] {
        subcommands.push(vec![cmd, "--help"]);
    }
    for sub in ["add", "import", "list", "remove"] {
        subcommands.push(vec!["instances", sub, "--help"]);
    }
    for args in &subcommands {
        run(args);
    }
    // Failing commands against a server that is not there: the error names the cause,
    // quickly, and never the password.
    for args in [
        vec!["sessions"],
        vec!["sessions", "--json"],
        vec!["migrate"],
        vec!["sync-all", "--wait"],
    ] {
        let started = Instant::now();
        let (code, text) = run(&args);
        assert_ne!(code, 0, "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "`{}` hung: {text}",
            args.join(" ")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_public_address_without_a_token_unless_told_it_is_insecure() {
    let db = TestDb::new(Backend::Sqlite).await;
    let out = std::process::Command::new(bin())
        .args(["serve", "--bind", "0.0.0.0:0"])
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .env_remove("SYNCPOOL_API_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("SYNCPOOL_API_TOKEN") && err.contains("--insecure-no-auth"),
        "{err}"
    );
    for (args, env) in [
        (
            vec!["serve", "--bind", "0.0.0.0:0", "--insecure-no-auth"],
            None,
        ),
        (
            vec!["serve", "--bind", "0.0.0.0:0"],
            Some("a-long-enough-token"),
        ),
        (vec!["serve", "--bind", "127.0.0.1:0"], None),
    ] {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(&args)
            .env("SYNCPOOL_DATABASE_URL", &db.url)
            .env("RUST_LOG", "info")
            .env_remove("SYNCPOOL_API_TOKEN")
            .stderr(std::process::Stdio::piped());
        if let Some(t) = env {
            cmd.env("SYNCPOOL_API_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} with token {env:?} started"
        );
        signal(&child, "TERM");
        assert!(child.wait().unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tokens_are_accepted_for_rotation_and_the_scheme_is_case_insensitive() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (addr, stop) = spawn(&db, &["old-rotation-token-123", "new-rotation-token-456"]).await;
    for (header, want) in [
        ("Authorization: Bearer old-rotation-token-123\r\n", 200),
        ("Authorization: Bearer new-rotation-token-456\r\n", 200),
        ("Authorization: bearer new-rotation-token-456\r\n", 200),
        ("Authorization: BEARER old-rotation-token-123\r\n", 200),
        ("Authorization: Bearer other-token\r\n", 401),
        ("Authorization: Bearer old-rotation-token-12\r\n", 401),
        ("Authorization: Basic old-rotation-token-123\r\n", 401),
        ("", 401),
    ] {
        let (st, text) = http(addr, "GET", "/api/v1/instances", header, "").await;
        assert_eq!(st, want, "{header:?}: {text}");
        assert!(
            !text.contains("token-123") && !text.contains("token-456"),
            "no token is echoed"
        );
    }
    for open in ["/metrics", "/healthz", "/readyz", "/api/v1/openapi.json"] {
        assert_eq!(
            http(addr, "GET", open, "", "").await.0,
            200,
            "{open} stays open"
        );
    }
    let (_, text) = http(addr, "GET", "/api/v1/openapi.json", "", "").await;
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let doc: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{text}"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "{doc}"
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        json!([{}]),
        "health needs no token"
    );
    stop.cancel();
}

/// `serve` with these arguments and environment, its stderr piped.
fn serve_process(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(bin())
        .arg("serve")
        .args(args)
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .env_remove("SYNCPOOL_API_TOKEN")
        .env_remove("SYNCPOOL_ALLOWED_HOSTS")
        .env_remove("SYNCPOOL_PUBLIC_URL")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A GET naming `host`; the status.
async fn get_as(addr: &str, host: &str, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn wait_for_port(addr: &str) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_token_shorter_than_16_characters() {
    let db = TestDb::new(Backend::Sqlite).await;
    for tokens in [
        "short-token",
        "a-long-enough-token,fifteen-chars",
        "  fifteen-chars ",
    ] {
        let child = serve_process(
            &db,
            &["--bind", "127.0.0.1:0"],
            &[("SYNCPOOL_API_TOKEN", tokens)],
        );
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tokens}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("SYNCPOOL_API_TOKEN") && err.contains("16"),
            "{err}"
        );
        for t in tokens.split(',') {
            assert!(!err.contains(t.trim()), "the token is never printed: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_only_its_own_host_names_and_those_given_with_allowed_host() {
    let db = TestDb::new(Backend::Sqlite).await;
    for (args, env) in [
        (
            vec![
                "--allowed-host",
                "syncpool.internal",
                "--allowed-host",
                "other.internal",
            ],
            vec![],
        ),
        (
            vec![],
            vec![("SYNCPOOL_ALLOWED_HOSTS", "other.internal,syncpool.internal")],
        ),
    ] {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut all = vec!["--bind", addr.as_str()];
        all.extend(&args);
        let child = serve_process(&db, &all, &env);
        wait_for_port(&addr).await;
        for (host, want) in [
            (addr.as_str(), 200),
            ("localhost", 200),
            ("syncpool.internal", 200),
            ("other.internal:8080", 200),
            ("rebind.evil.example", 421),
            ("syncpool.internal.evil.example", 421),
        ] {
            for path in ["/", "/api/v1/sessions", "/metrics"] {
                assert_eq!(
                    get_as(&addr, host, path).await,
                    want,
                    "{args:?} {env:?}: {host}{path}"
                );
            }
        }
        signal(&child, "TERM");
        assert!(child.wait_with_output().unwrap().status.success());
    }
    // Wrong values are refused at start, naming the flag.
    for (args, flag) in [
        (vec!["--allowed-host", "a/b"], "--allowed-host"),
        (
            vec!["--public-url", "https://public.example/console"],
            "--public-url",
        ),
        (vec!["--public-url", "public.example"], "--public-url"),
    ] {
        let mut all = vec!["--bind", "127.0.0.1:0"];
        all.extend(&args);
        let out = serve_process(&db, &all, &[]).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{err}");
    }
}

/// `sync NAMES --wait --json` with a deadline: a worker blocked for good (what a FIFO did
/// to it) fails the test instead of hanging it. Returns the records in the order named.
fn sync_within(db: &TestDb, names: &[&str], limit: Duration) -> Result<Vec<Value>, String> {
    let mut child = std::process::Command::new(bin())
        .args(["sync"])
        .args(names)
        .args(["--wait", "--json"])
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the sync of {names:?} did not end within {limit:?}: a worker is blocked"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let session: Value = serde_json::from_str(&out).map_err(|_| out.clone())?;
    Ok(names
        .iter()
        .map(|n| {
            session["records"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["instance_name"] == *n)
                .unwrap()
                .clone()
        })
        .collect())
}

/// Ends a worker that may be blocked for good, then fails with why.
fn or_kill<T>(result: Result<T, String>, worker: &mut std::process::Child) -> T {
    result.unwrap_or_else(|e| {
        let _ = worker.kill();
        let _ = worker.wait();
        panic!("{e}")
    })
}

fn mkfifo(path: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// An unreachable postgres instance (the file rules fail it before any connection).
fn unreachable_pg(name: &str, password_file: Option<&str>, options: Value) -> NewInstance {
    NewInstance {
        name: name.into(),
        kind: syncpool::model::InstanceKind::Postgres,
        host: Some("127.0.0.1".into()),
        port: Some(1),
        username: Some("reader".into()),
        database: Some("postgres".into()),
        password_env: None,
        password_file: password_file.map(Into::into),
        options,
        active: true,
        group: None,
    }
}

/// A password file must be a regular file inside the secrets folder, of at most 4 KiB:
/// a symlink out of it (here to a file holding the password), a FIFO (which blocked the
/// worker's runtime for good) and a 5 KiB file each fail their record at once, fatal,
/// naming the rule and never the content; the worker goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_that_leads_out_of_the_folder_is_a_fifo_or_too_large_fails_at_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let secrets = db.dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(db.dir.path().join("outside"), "outside-secret-7d1f").unwrap();
    std::os::unix::fs::symlink(db.dir.path().join("outside"), secrets.join("link")).unwrap();
    mkfifo(&secrets.join("fifo"));
    std::fs::write(secrets.join("big"), "big-secret-9e2a".repeat(342)).unwrap(); // 5,130 bytes
    let store = db.store().await;
    for file in ["link", "fifo", "big"] {
        store
            .instance_insert(&unreachable_pg(file, Some(file), json!({})))
            .await
            .unwrap();
    }
    store
        .instance_insert(&simulated("after", json!({"latency_ms": 0})))
        .await
        .unwrap();
    let dir = secrets.display().to_string();
    let (mut w, log) = worker_at(
        &db,
        &db.url,
        "w",
        &["--retry-backoff", "100ms"],
        &[("SYNCPOOL_SECRETS_DIR", dir.as_str())],
    );
    let records = or_kill(
        sync_within(&db, &["link", "fifo", "big"], Duration::from_secs(60)),
        &mut w,
    );
    let after = or_kill(
        sync_within(&db, &["after"], Duration::from_secs(30)),
        &mut w,
    );
    signal(&w, "TERM");
    w.wait().unwrap();
    for (record, rule) in records.iter().zip([
        "is not a regular file in the secrets folder",
        "is not a regular file in the secrets folder",
        "is larger than 4096 bytes",
    ]) {
        let name = record["instance_name"].as_str().unwrap();
        assert_eq!(record["status"], "failed", "{record}");
        assert_eq!(record["attempts"], 1, "fatal, not retried: {record}");
        let error = record["error"].as_str().unwrap();
        assert!(
            error.contains(&format!(
                "the password file {name} of instance '{name}' {rule}"
            )),
            "{record}"
        );
    }
    assert_eq!(after[0]["status"], "completed", "the worker still serves");
    let text = std::fs::read_to_string(log).unwrap_or_default() + &records[0].to_string();
    assert!(
        !text.contains("outside-secret") && !text.contains("big-secret"),
        "no file's content shows"
    );
}

/// `ssl_root_cert` names a file of the workers' certificates folder; a FIFO there fails
/// its record at once (it once blocked a runtime thread for good), and a path written
/// around the API (here the same FIFO's) is not opened at all. Neither text tells
/// whether some file exists on the worker host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssl_root_cert_that_is_a_fifo_fails_the_record_at_once_and_never_blocks_the_worker() {
    let db = TestDb::new(Backend::Sqlite).await;
    let certs = db.dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    mkfifo(&certs.join("ca.pem"));
    let fifo_path = certs.join("ca.pem").display().to_string();
    let store = db.store().await;
    for (name, cert) in [
        ("by-name", "ca.pem"),
        ("by-path", fifo_path.as_str()),
        ("absent", "absent.pem"),
    ] {
        store
            .instance_insert(&unreachable_pg(
                name,
                None,
                json!({"ssl_mode": "verify-full", "ssl_root_cert": cert}),
            ))
            .await
            .unwrap();
    }
    store
        .instance_insert(&simulated("after", json!({"latency_ms": 0})))
        .await
        .unwrap();
    let dir = certs.display().to_string();
    let (mut w, _) = worker_at(
        &db,
        &db.url,
        "w",
        &["--retry-backoff", "100ms"],
        &[("SYNCPOOL_CERTS_DIR", dir.as_str())],
    );
    let records = or_kill(
        sync_within(
            &db,
            &["by-name", "by-path", "absent"],
            Duration::from_secs(60),
        ),
        &mut w,
    );
    let after = or_kill(
        sync_within(&db, &["after"], Duration::from_secs(30)),
        &mut w,
    );
    signal(&w, "TERM");
    w.wait().unwrap();
    for r in &records {
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["attempts"], 1, "fatal, not retried: {r}");
    }
    let error = |i: usize| records[i]["error"].as_str().unwrap().to_string();
    let same = "is missing, unreadable or not a regular file in the certificates folder";
    assert!(
        error(0).contains(&format!(
            "the ssl_root_cert file ca.pem of instance 'by-name' {same}"
        )),
        "{}",
        error(0)
    );
    assert!(
        error(2).contains(&format!(
            "the ssl_root_cert file absent.pem of instance 'absent' {same}"
        )),
        "a FIFO and a missing file read the same: {}",
        error(2)
    );
    assert!(
        error(1).contains("is neither PEM text nor a file name in the certificates folder")
            && !error(1).contains(&fifo_path),
        "{}",
        error(1)
    );
    assert_eq!(after[0]["status"], "completed", "the worker still serves");
}

/// An absolute `ssl_root_cert` is refused when the instance is added, by the validator
/// the API and the CLI share, with a text that names the rule and the folder, and is the
/// same whether the path exists or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssl_root_cert_path_is_refused_at_the_door_whether_or_not_it_exists() {
    let refusal = |cert: &str| {
        let mut new = unreachable_pg(
            "x",
            None,
            json!({"ssl_mode": "verify-ca", "ssl_root_cert": cert}),
        );
        new.host = Some("db.example".into());
        match syncpool::validate::new_instance(new) {
            Err(syncpool::store::StoreError::Invalid { field, message }) => (field, message),
            other => panic!("{cert}: {other:?}"),
        }
    };
    let (field, message) = refusal("/etc/passwd");
    assert_eq!(field, "options");
    assert!(
        message.contains("ssl_root_cert must be PEM text")
            && message.contains("certificates folder SYNCPOOL_CERTS_DIR"),
        "{message}"
    );
    assert_eq!(refusal("/nonexistent/ca.pem"), (field, message.clone()));
    assert_eq!(refusal("../ca.pem").1, message);
    let mut ok = unreachable_pg(
        "x",
        None,
        json!({"ssl_mode": "verify-ca", "ssl_root_cert": "ca.pem"}),
    );
    ok.host = Some("db.example".into());
    assert!(syncpool::validate::new_instance(ok).is_ok());

    let db = TestDb::new(Backend::Sqlite).await;
    let (addr, stop) = spawn(&db, &[]).await;
    let body = json!({"name": "abs", "kind": "postgres", "host": "db.example",
        "options": {"ssl_mode": "verify-ca", "ssl_root_cert": "/etc/ssl/certs/ca.pem"}});
    let (st, text) = http(addr, "POST", "/api/v1/instances", "", &body.to_string()).await;
    stop.cancel();
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("SYNCPOOL_CERTS_DIR"), "{text}");
}
