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
    (evil.kind, evil.host, evil.port) = ("postgres".into(), Some("127.0.0.1".into()), Some(1));
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
                kind: "postgres".into(),
                host: Some("127.0.0.1".into()),
                port: Some(pg.port as i64),
                username: Some(format!("{t}_reader")),
                database: Some("postgres".into()),
                password_env: None,
                password_file: Some(file.into()),
                options: json!({}),
                active: true,
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
    let (addr, stop) = spawn(&db, &["old-token-123", "new-token-456"]).await;
    for (header, want) in [
        ("Authorization: Bearer old-token-123\r\n", 200),
        ("Authorization: Bearer new-token-456\r\n", 200),
        ("Authorization: bearer new-token-456\r\n", 200),
        ("Authorization: BEARER old-token-123\r\n", 200),
        ("Authorization: Bearer other-token\r\n", 401),
        ("Authorization: Bearer old-token-12\r\n", 401),
        ("Authorization: Basic old-token-123\r\n", 401),
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
