//! Webhooks (issue #24, part 3), through real worker processes on both databases: every
//! event reaches a receiver that checks each signature with the Standard Webhooks
//! reference library (tests/webhook_receiver.py) exactly once by id, though it is down
//! for the first attempts; a worker killed mid-delivery loses nothing; a host outside
//! the allow-list is refused when added and never contacted; retries run out into
//! `dead`, and `redeliver` sends a dead one again.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

on_both_databases!(
    a_receiver_down_for_the_first_attempts_gets_every_event_exactly_once_with_valid_signatures,
    a_worker_killed_while_it_delivers_loses_no_event,
    a_host_outside_the_allow_list_is_refused_when_added_and_never_contacted,
    a_delivery_whose_retries_run_out_is_dead_until_redelivered,
    the_api_refuses_a_host_outside_its_list_and_the_console_shows_and_resends_deliveries,
);

const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const SECRET_VAR: &str = "SYNCPOOL_SECRET_TEST_HOOK";

struct Receiver {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(db: &TestDb, tag: &str, fail_first: u32, hang_first: u32) -> Receiver {
        let dir = db.dir.path();
        let (port_file, log) = (
            dir.join(format!("{tag}.port")),
            dir.join(format!("{tag}.log")),
        );
        let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_receiver.py");
        let child = Command::new(&py)
            .arg(&script)
            .args([
                "--secret",
                SECRET,
                "--port-file",
                port_file.to_str().unwrap(),
            ])
            .args(["--log", log.to_str().unwrap()])
            .args([
                "--fail-first",
                &fail_first.to_string(),
                "--hang-first",
                &hang_first.to_string(),
            ])
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} is required (scripts/test.sh installs it): {e}",
                    py.display()
                )
            });
        let start = Instant::now();
        while !port_file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = std::fs::read_to_string(&port_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Receiver { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Every request it got, in order.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// How many times it accepted each event id (answered 200 to a verified request).
    fn accepted(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.requests() {
            assert_eq!(r["verified"], true, "a signature did not verify: {r}");
            if r["status"] == 200 {
                *out.entry(r["id"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        out
    }
}

fn deliveries(db: &TestDb) -> Vec<Value> {
    let (code, out, err) = cli(
        &db.url,
        &["webhooks", "deliveries", "--json", "--limit", "1000"],
    );
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    page["items"].as_array().unwrap().clone()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A database with `n` simulated instances (each with a superuser account) under a
/// policy that flags it, and a webhook to `url` for violations and finished sessions.
async fn fleet(db: &TestDb, n: usize, url: &str) {
    let store = db.store().await;
    for i in 0..n {
        store
            .instance_insert(&simulated(
                &format!("s{i}"),
                json!({"accounts": 2, "latency_ms": 0}),
            ))
            .await
            .unwrap();
    }
    let file = db.dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "rules:\n  - name: no-superusers\n    deny: [superuser]\n",
    )
    .unwrap();
    assert_eq!(
        cli(&db.url, &["policy", "set", file.to_str().unwrap()]).0,
        0
    );
    let add = Command::new(bin())
        .args([
            "webhooks",
            "add",
            "siem",
            "--url",
            url,
            "--secret-env",
            SECRET_VAR,
        ])
        .args(["--events", "violation_opened,session_finished"])
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .env("SYNCPOOL_WEBHOOK_ALLOW", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
}

fn delivering_worker(db: &TestDb, tag: &str, extra: &[&str]) -> Child {
    let mut args = vec!["--webhook-backoff", "200ms"];
    if !extra.contains(&"--webhook-timeout") {
        args.extend(["--webhook-timeout", "2s"]);
    }
    args.extend_from_slice(extra);
    worker_at(
        db,
        &db.url,
        tag,
        &args,
        &[
            ("SYNCPOOL_WEBHOOK_ALLOW", "127.0.0.1"),
            (SECRET_VAR, SECRET),
        ],
    )
    .0
}

fn event_ids(db: &TestDb) -> Vec<String> {
    deliveries(db)
        .iter()
        .map(|d| d["event_id"].as_str().unwrap().to_string())
        .collect()
}

async fn a_receiver_down_for_the_first_attempts_gets_every_event_exactly_once_with_valid_signatures(
    b: Backend,
) {
    let db = TestDb::new(b).await;
    let receiver = Receiver::start(&db, "r", 4, 0);
    fleet(&db, 3, &receiver.url()).await;
    let mut worker = delivering_worker(&db, "w", &[]);
    let (code, _, err) = cli(&db.url, &["sync-all", "--wait", "--timeout", "60s"]);
    assert_eq!(code, 0, "{err}");
    wait_until("every delivery delivered", 60, || {
        let d = deliveries(&db);
        d.len() == 4 && d.iter().all(|d| d["state"] == "delivered")
    });
    signal(&worker, "TERM");
    worker.wait().unwrap();
    // 3 violations and 1 finished session, each accepted once, by the id the outbox gave it.
    let accepted = receiver.accepted();
    let mut want = event_ids(&db);
    want.sort();
    assert_eq!(accepted.keys().cloned().collect::<Vec<_>>(), want);
    assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");
    assert!(
        receiver.requests().len() >= 4 + 4,
        "the first four were refused and retried"
    );
    let types: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|r| r["type"].clone())
        .collect();
    assert!(
        types.contains(&json!("violation_opened")) && types.contains(&json!("session_finished"))
    );
    assert!(
        deliveries(&db)
            .iter()
            .any(|d| d["attempts"].as_i64().unwrap() > 1)
    );
}

async fn a_worker_killed_while_it_delivers_loses_no_event(b: Backend) {
    let db = TestDb::new(b).await;
    // The first request is held: its worker is killed while it waits for the answer.
    let receiver = Receiver::start(&db, "r", 0, 1);
    fleet(&db, 2, &receiver.url()).await;
    let mut first = delivering_worker(&db, "first", &["--webhook-timeout", "5s"]);
    let (code, _, err) = cli(&db.url, &["sync-all", "--wait", "--timeout", "60s"]);
    assert_eq!(code, 0, "{err}");
    wait_until("a delivery in flight", 30, || {
        receiver.requests().iter().any(|r| r["status"] == "hang")
    });
    signal(&first, "KILL");
    first.wait().unwrap();
    assert!(
        deliveries(&db).iter().any(|d| d["state"] == "pending"),
        "the held one is committed, not delivered"
    );
    // Another worker takes the dead one's claims once their lease (timeout + 5 s) passes.
    let mut second = delivering_worker(&db, "second", &["--webhook-timeout", "1s"]);
    wait_until("every delivery delivered", 60, || {
        deliveries(&db).iter().all(|d| d["state"] == "delivered")
    });
    signal(&second, "TERM");
    second.wait().unwrap();
    let accepted = receiver.accepted();
    assert_eq!(
        accepted.len(),
        3,
        "2 violations and a session: {accepted:?}"
    );
}

async fn a_host_outside_the_allow_list_is_refused_when_added_and_never_contacted(b: Backend) {
    let db = TestDb::new(b).await;
    let receiver = Receiver::start(&db, "r", 0, 0);
    db.store().await;
    let add = |allow: &str| {
        Command::new(bin())
            .args(["webhooks", "add", "inner", "--url", &receiver.url()])
            .args(["--secret-env", SECRET_VAR, "--events", "session_finished"])
            .env("SYNCPOOL_DATABASE_URL", &db.url)
            .env("SYNCPOOL_WEBHOOK_ALLOW", allow)
            .output()
            .unwrap()
    };
    for allow in ["", "hooks.example.com", "10.0.0.0/8"] {
        let out = add(allow);
        assert_eq!(out.status.code(), Some(2), "allow '{allow}'");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--webhook-allow"), "{err}");
    }
    assert_eq!(
        cli(&db.url, &["webhooks", "list", "--json"]).1.trim(),
        "{\n  \"items\": []\n}"
    );
    // A row put there anyway (by a server with a wider list, or by hand): a worker whose
    // list does not take the host never contacts it.
    let store = db.store().await;
    store
        .instance_insert(&simulated("s0", json!({"accounts": 1, "latency_ms": 0})))
        .await
        .unwrap();
    crate::conformance::exec(
        store.as_ref(),
        &format!(
            "INSERT INTO webhooks (name, url, secret_env, events) VALUES ('inner', '{}', '{SECRET_VAR}', ',session_finished,')",
            receiver.url()
        ),
        &[],
    )
    .await;
    let (mut worker, log) = worker_at(
        &db,
        &db.url,
        "w",
        &["--webhook-backoff", "100ms", "--webhook-retry-for", "1s"],
        &[
            ("SYNCPOOL_WEBHOOK_ALLOW", "hooks.example.com"),
            (SECRET_VAR, SECRET),
        ],
    );
    assert_eq!(
        cli(&db.url, &["sync-all", "--wait", "--timeout", "60s"]).0,
        0
    );
    wait_until("the delivery to die", 30, || {
        deliveries(&db).iter().any(|d| d["state"] == "dead")
    });
    signal(&worker, "TERM");
    worker.wait().unwrap();
    let d = &deliveries(&db)[0];
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("not sent: host '127.0.0.1' is not in --webhook-allow"),
        "{d}"
    );
    assert!(receiver.requests().is_empty(), "the receiver was contacted");
    let logs = std::fs::read_to_string(log).unwrap();
    assert!(!logs.contains(SECRET), "the secret leaked into the log");
}

async fn a_delivery_whose_retries_run_out_is_dead_until_redelivered(b: Backend) {
    let db = TestDb::new(b).await;
    let receiver = Receiver::start(&db, "r", 1_000, 0);
    fleet(&db, 1, &receiver.url()).await;
    let mut worker = delivering_worker(&db, "w", &["--webhook-retry-for", "1s"]);
    assert_eq!(
        cli(&db.url, &["sync-all", "--wait", "--timeout", "60s"]).0,
        0
    );
    wait_until("both deliveries dead", 30, || {
        let d = deliveries(&db);
        d.len() == 2 && d.iter().all(|d| d["state"] == "dead")
    });
    let (code, out, _) = cli(&db.url, &["webhooks", "deliveries", "--state", "dead"]);
    assert_eq!(code, 0);
    assert!(out.contains("dead") && out.contains("HTTP 503"), "{out}");
    signal(&worker, "TERM");
    worker.wait().unwrap();
    // The receiver recovers; the dead deliveries are sent again on request only.
    drop(receiver);
    let receiver = Receiver::start(&db, "r2", 0, 0);
    crate::conformance::exec(
        db.store().await.as_ref(),
        &format!("UPDATE webhooks SET url = '{}'", receiver.url()),
        &[],
    )
    .await;
    let mut worker = delivering_worker(&db, "w2", &[]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        receiver.requests().is_empty(),
        "a dead delivery is not retried by itself"
    );
    for d in deliveries(&db) {
        let id = d["id"].to_string();
        let (code, out, err) = cli(&db.url, &["webhooks", "redeliver", &id]);
        assert_eq!(code, 0, "{out}{err}");
    }
    wait_until("both delivered", 30, || {
        deliveries(&db).iter().all(|d| d["state"] == "delivered")
    });
    signal(&worker, "TERM");
    worker.wait().unwrap();
    assert_eq!(receiver.accepted().len(), 2);
    let (code, _, err) = cli(&db.url, &["webhooks", "redeliver", "999999"]);
    assert_eq!(code, 2, "{err}");
    // Settled deliveries and the events they carried are history: cleanup takes them.
    let (code, out, err) = cli(&db.url, &["cleanup", "--days", "0", "--history-days", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(deliveries(&db).is_empty());
    let store = db.store().await;
    assert_eq!(
        crate::conformance::count(store.as_ref(), "SELECT COUNT(*) FROM events").await,
        0
    );
}

async fn the_api_refuses_a_host_outside_its_list_and_the_console_shows_and_resends_deliveries(
    b: Backend,
) {
    let token = "t0ken-t0ken-t0ken-t0ken";
    let app = crate::api::spawn_app_allowing(
        b,
        Some(token),
        crate::api::harness_site(),
        "hooks.example.com",
    )
    .await;
    for url in [
        "https://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:8080/x",
        "https://hooks.example.com.evil.net/",
        "https://user:pw@hooks.example.com/",
    ] {
        let body = json!({"name": "h", "url": url, "secret_env": SECRET_VAR, "events": ["session_finished"]});
        let (status, v) = app
            .call("POST", "/api/v1/webhooks", Some(&body.to_string()))
            .await;
        assert_eq!(status, 400, "{url}: {v}");
        assert_eq!(v["error"]["field"], "url", "{v}");
    }
    let bad_secret = json!({"name": "h", "url": "https://hooks.example.com/", "secret_env": "SYNCPOOL_DATABASE_URL", "events": ["session_finished"]});
    let (status, v) = app
        .call("POST", "/api/v1/webhooks", Some(&bad_secret.to_string()))
        .await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (400, Some("secret_env")),
        "{v}"
    );
    let good = json!({"name": "siem", "url": "https://hooks.example.com/in?token=abc", "secret_env": SECRET_VAR, "events": ["session_finished"]});
    let (status, v) = app
        .call("POST", "/api/v1/webhooks", Some(&good.to_string()))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        app.call("POST", "/api/v1/webhooks", Some(&good.to_string()))
            .await
            .0,
        409
    );
    // A dead delivery, as the console shows it, and its "send again" form.
    app.store
        .instance_insert(&simulated("s0", json!({"accounts": 1})))
        .await
        .unwrap();
    crate::policy::sync_all_finding(app.store.as_ref(), vec![]).await;
    crate::conformance::exec(
        app.store.as_ref(),
        "UPDATE webhook_deliveries SET state = 'dead', last_error = 'HTTP 503'",
        &[],
    )
    .await;
    let cookie = crate::console::sign_in(&app, token).await;
    let (status, _, html) = crate::console::page(&app, "/webhooks?state=dead", &cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("hooks.example.com/in") && html.contains("HTTP 503"),
        "{html}"
    );
    assert!(!html.contains("whsec_"), "no secret on the page");
    let id = deliveries_of(&app).await[0]["id"].as_i64().unwrap();
    let form = format!("{cookie}Content-Type: application/x-www-form-urlencoded\r\n");
    let (status, head, _) = app
        .request(
            "POST",
            &format!("/webhooks/deliveries/{id}/redeliver"),
            &form,
            &format!("csrf={}", crate::console::csrf_of(&html)),
        )
        .await;
    assert_eq!(status, 303, "{head}");
    assert_eq!(deliveries_of(&app).await[0]["state"], "pending");
    let (_, audit) = app.call("GET", "/api/v1/audit?limit=1", None).await;
    assert_eq!(audit["items"][0]["action"], "webhook.redeliver");
}

async fn deliveries_of(app: &crate::api::App) -> Vec<Value> {
    let (status, page) = app.call("GET", "/api/v1/webhook-deliveries", None).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}
