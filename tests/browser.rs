//! The console in a real headless Chromium, driven over WebDriver (Debian's `chromium`
//! and `chromedriver`, installed by scripts/test.sh; a missing browser fails the test,
//! it never skips). Each test saves screenshots under `target/tmp/screenshots/` and
//! prints their paths.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::api::{App, spawn_app};
use crate::common::*;

struct Browser {
    client: Client,
    driver: Child,
    name: &'static str,
}

/// Kills a worker process when its test ends, by a panic too: an orphaned worker would
/// keep what its parent shared with it (a lock file's descriptor included) and run on.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.driver.kill().ok();
        self.driver.wait().ok();
    }
}

fn shots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn browser(name: &'static str) -> Browser {
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1366,900", "--hide-scrollbars"],
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
        }
    };
    Browser {
        client,
        driver,
        name,
    }
}

impl Browser {
    async fn goto(&self, app: &App, path: &str) {
        self.client
            .goto(&format!("http://{}{path}", app.addr))
            .await
            .unwrap();
    }

    async fn shot(&self, step: &str) {
        let png = self.client.screenshot().await.unwrap();
        let path = shots_dir().join(format!("{}-{step}.png", self.name));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
    }

    async fn text(&self, css: &str) -> String {
        // The live refresh replaces `data-live` parts every 2 s: an element found just
        // before a refresh is gone when its text is asked for. And while a form's POST
        // redirects, the next page is not there yet. Find it again then.
        use fantoccini::error::{CmdError, ErrorStatus};
        let passing = |e: &CmdError| matches!(e, CmdError::Standard(w) if w.error == ErrorStatus::StaleElementReference || w.error == ErrorStatus::NoSuchElement);
        for _ in 0..20 {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await,
                Err(e) => Err(e),
            };
            match text {
                Ok(text) => return text,
                Err(e) if passing(&e) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{css}: {e}"),
            }
        }
        panic!("{css}: missing or replaced by every refresh for two seconds")
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn wait_for(&self, css: &str, secs: u64) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(secs))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    async fn sign_in(&self, app: &App, token: &str) {
        self.goto(app, "/").await;
        assert_eq!(self.path().await, "/login", "a stranger is sent to sign in");
        self.shot("sign-in").await;
        let field = self.wait_for("input[name=token]", 10).await;
        field.send_keys(token).await.unwrap();
        self.client
            .find(Locator::Css("form button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_for("table, p.empty", 10).await;
        assert_eq!(self.path().await, "/", "back where they were going");
        // HttpOnly: no script on the page can read the sign-in.
        let cookies = self
            .client
            .execute("return document.cookie", vec![])
            .await
            .unwrap();
        assert_eq!(cookies, json!(""), "the session cookie is HttpOnly");
    }

    async fn close(self) {
        let Browser { client, .. } = &self;
        client.clone().close().await.ok();
    }
}

fn instances(
    n: usize,
    prefix: &str,
    options: serde_json::Value,
) -> Vec<syncpool::model::NewInstance> {
    (0..n)
        .map(|i| simulated(&format!("{prefix}-{i:03}"), options.clone()))
        .collect()
}

async fn start_all(app: &App) -> String {
    let (st, created) = app
        .call("POST", "/api/v1/sessions", Some(r#"{"all": true}"#))
        .await;
    assert_eq!(st, 202, "{created}");
    created["session_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_and_sees_a_running_sessions_progress_move() {
    let token = "browser-token-0123456789";
    let app = spawn_app(Backend::Sqlite, Some(token)).await;
    let new = instances(40, "steady", json!({"latency_ms": 400}));
    app.store.instance_insert_many(&new).await.unwrap();
    let sid = start_all(&app).await;
    let b = browser("progress").await;
    b.sign_in(&app, token).await;
    let (worker, _) = worker(app.db(), "progress", &["--concurrency", "4"]);
    let worker = Reaped(worker);
    let row = format!("tr[data-session=\"{sid}\"] .count");
    let first = b.text(&row).await;
    // A marker set on the page survives only if the page is updated in place, not reloaded.
    b.client
        .execute("window.__stayed = true", vec![])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved = loop {
        let now = b.text(&row).await;
        if now != first && !now.starts_with("0 /") {
            break now;
        }
        assert!(Instant::now() < deadline, "progress stayed at {first}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    b.shot("sessions-running").await;
    let stayed = b
        .client
        .execute("return window.__stayed === true", vec![])
        .await
        .unwrap();
    assert_eq!(stayed, json!(true), "refreshed in place, not reloaded");
    assert!(moved.contains("/ 40"), "{moved}");
    assert!(
        b.text(&format!("tr[data-session=\"{sid}\"] .badge"))
            .await
            .contains("running")
    );
    drop(worker);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pages_through_a_sessions_failed_records() {
    let app = spawn_app(Backend::Sqlite, None).await;
    let mut new = instances(110, "broken", json!({"latency_ms": 1, "fail_rate": 1.0}));
    new.extend(instances(15, "fine", json!({"latency_ms": 1})));
    app.store.instance_insert_many(&new).await.unwrap();
    let sid = start_all(&app).await;
    let (worker, _) = worker(
        app.db(),
        "failing",
        &["--max-attempts", "1", "--concurrency", "16"],
    );
    let worker = Reaped(worker);
    let id: uuid::Uuid = sid.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !app
        .store
        .session_summary(id)
        .await
        .unwrap()
        .unwrap()
        .is_finished()
    {
        assert!(Instant::now() < deadline, "the session did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(worker);
    let b = browser("failed-records").await;
    b.goto(&app, &format!("/sessions/{sid}")).await;
    b.shot("session").await;
    b.client
        .find(Locator::LinkText("failed (110)"))
        .await
        .expect("a failed tab with its count")
        .click()
        .await
        .unwrap();
    let mut seen = 0;
    for (page, expect) in [50, 50, 10].into_iter().enumerate() {
        b.wait_for("#records table", 10).await;
        assert_eq!(b.count("#records tbody tr").await, expect, "page {page}");
        let badges = b
            .client
            .find_all(Locator::Css("#records tbody .badge"))
            .await
            .unwrap();
        for badge in &badges {
            assert_eq!(badge.text().await.unwrap(), "failed");
        }
        let errors = b.text("#records tbody td.error").await;
        assert!(errors.contains("simulated failure"), "{errors}");
        seen += expect;
        if page == 0 {
            b.shot("failed-page-1").await;
        }
        match b.client.find(Locator::Css("a[rel=next]")).await {
            Ok(next) => next.click().await.unwrap(),
            Err(_) => {
                assert_eq!(page, 2, "a next link on every full page");
                break;
            }
        }
    }
    assert_eq!(seen, 110);
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .query()
            .unwrap()
            .contains("status=failed")
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_a_session_from_its_page() {
    let app = spawn_app(Backend::Sqlite, None).await;
    let new = instances(5, "idle", json!({}));
    app.store.instance_insert_many(&new).await.unwrap();
    let sid = start_all(&app).await;
    let b = browser("cancel").await;
    b.goto(&app, &format!("/sessions/{sid}")).await;
    assert!(b.text("#summary .badge").await.contains("pending"));
    b.client
        .find(Locator::Css("button.danger"))
        .await
        .expect("a cancel button")
        .click()
        .await
        .unwrap();
    // The page asks first (console.js); the operator agrees.
    b.client.accept_alert().await.expect("a confirmation");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if b.text("#summary .badge").await.contains("cancelled") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the cancel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.shot("cancelled").await;
    assert_eq!(
        b.count("button.danger").await,
        0,
        "no cancel on a finished session"
    );
    let s = app
        .store
        .session_summary(sid.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.status.as_str(), "cancelled");
    assert_eq!(s.cancelled_instances, 5);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_a_lease_appear_while_a_slow_sync_runs() {
    let app = spawn_app(Backend::Sqlite, None).await;
    let slow = app
        .store
        .instance_insert(&simulated("slow-instance", json!({"latency_ms": 60000})))
        .await
        .unwrap();
    let b = browser("lease").await;
    b.goto(&app, "/leases").await;
    assert!(b.text("#leases").await.contains("No instance is leased"));
    let (worker, _) = worker(app.db(), "lease", &[]);
    let worker = Reaped(worker);
    let body = format!(r#"{{"instance_ids": [{}]}}"#, slow.id);
    let (_, first) = app.call("POST", "/api/v1/sessions", Some(&body)).await;
    let (_, second) = app.call("POST", "/api/v1/sessions", Some(&body)).await;
    // No reload: the page's live refresh brings the lease in.
    let row = b.wait_for("tr[data-instance=\"slow-instance\"]", 30).await;
    let text = row.text().await.unwrap();
    assert!(
        text.contains(&first["session_id"].as_str().unwrap()[..8])
            || text.contains(&second["session_id"].as_str().unwrap()[..8]),
        "{text}"
    );
    // The other session's job waits for the instance, and the page says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b
        .text("tr[data-instance=\"slow-instance\"]")
        .await
        .contains("1 waiting")
    {
        assert!(Instant::now() < deadline, "the waiting job never showed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    b.shot("lease-held").await;
    let token = b.text("tr[data-instance=\"slow-instance\"] td.num").await;
    assert!(token.parse::<i64>().unwrap() >= 1, "{token}");
    for s in [&first, &second] {
        let sid = s["session_id"].as_str().unwrap();
        app.call("POST", &format!("/api/v1/sessions/{sid}/cancel"), None)
            .await;
    }
    drop(worker);
    b.close().await;
}
