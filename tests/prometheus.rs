//! Proven against a real Prometheus: it scrapes a live `serve` and a live `worker`, a
//! session runs, and then every PromQL expression of every dashboard panel and alert rule
//! is evaluated through Prometheus' HTTP API. Any invalid expression, or one that returns
//! no series, fails the test. Needs `prometheus` and `promtool` (scripts/test.sh installs
//! Debian's package when they are missing).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

async fn get(addr: &str, path: &str) -> (u16, String) {
    // Prometheus may still be starting: a refused connection is an empty answer.
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

async fn query(prom: &str, expr: &str) -> Result<usize, String> {
    let q = serde_urlencoded::to_string([("query", expr)]).unwrap();
    let (_, body) = get(prom, &format!("/api/v1/query?{q}")).await;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("invalid: {}", v["error"]));
    }
    Ok(v["data"]["result"].as_array().map(Vec::len).unwrap_or(0))
}

/// The value of a PromQL expression that yields one series, if it yields one.
async fn value(prom: &str, expr: &str) -> Option<f64> {
    let q = serde_urlencoded::to_string([("query", expr)]).unwrap();
    let (_, body) = get(prom, &format!("/api/v1/query?{q}")).await;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// A real Prometheus on `listen`, scraping `targets` every second; its files in `dir`.
fn start_prometheus(dir: &std::path::Path, listen: &str, targets: &[&str]) -> std::process::Child {
    let targets = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: syncpool\n    static_configs:\n      - targets: [{targets}]\n"
        ),
    )
    .unwrap();
    Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus is required (scripts/test.sh installs it)")
}

/// (panel title, expression)
type Panels = Vec<(String, String)>;
/// (alert name, rule expression, measured quantity)
type Alerts = Vec<(String, String, String)>;

/// The quantities the rules and panels measure, as Prometheus will evaluate them.
fn expressions() -> (Panels, Alerts) {
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string("grafana/dashboards/syncpool.json").unwrap())
            .unwrap();
    let mut panels = vec![];
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            p["description"].as_str().is_some_and(|d| d.len() > 20),
            "panel '{}' needs a description",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            panels.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    let rules = std::fs::read_to_string("grafana/alerts.yml").unwrap();
    let mut alerts = vec![];
    let (mut name, mut expr) = (String::new(), String::new());
    for line in rules.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert: ") {
            name = n.to_string();
        } else if let Some(e) = line.strip_prefix("expr: ") {
            expr = e.to_string();
        } else if let Some(q) = line.strip_prefix("query: ") {
            alerts.push((name.clone(), expr.clone(), q.to_string()));
        }
    }
    (panels, alerts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_and_alert_rule_evaluates_to_series_in_a_real_prometheus() {
    let out = Command::new("promtool")
        .args(["check", "rules", "grafana/alerts.yml"])
        .output()
        .expect("promtool is required (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    for i in 0..20 {
        store
            .instance_insert(&simulated(
                &format!("p{i}"),
                json!({"latency_ms": 20, "fail_rate": if i == 0 { 1.0 } else { 0.0 }}),
            ))
            .await
            .unwrap();
    }
    // A limit, so that the limits panel has series (one per configured limit), and a
    // policy that every simulated instance breaks (its first account is a superuser).
    store.limit_set("group:p", 16).await.unwrap();
    let policy = "rules:\n  - name: no-superusers\n    deny: [superuser]\n";
    store
        .policy_set(&syncpool::policy::parse(policy).unwrap(), policy)
        .await
        .unwrap();
    let (api_port, worker_port, prom_port) = (free_port(), free_port(), free_port());
    let api = format!("127.0.0.1:{api_port}");
    let worker_metrics = format!("127.0.0.1:{worker_port}");
    let prom = format!("127.0.0.1:{prom_port}");
    let mut serve = Command::new(bin())
        .args(["serve", "--bind", &api])
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut worker, _) = worker(
        &db,
        "prom",
        &[
            "--metrics-bind",
            &worker_metrics,
            "--retry-backoff",
            "100ms",
            "--max-attempts",
            "2",
        ],
    );
    let mut prometheus = start_prometheus(db.dir.path(), &prom, &[&api, &worker_metrics]);

    let (code, out, err) = cli(&db.url, &["sync-all", "--wait", "--json"]);
    assert_eq!(
        code, 3,
        "p0 always fails: completed_with_errors; {out}{err}"
    );
    // Let Prometheus see both targets up, after the session, for several scrapes.
    let start = Instant::now();
    while query(&prom, "up{job=\"syncpool\"} == 1").await.ok() != Some(2) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Prometheus never scraped both targets"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;

    let (panels, alerts) = expressions();
    let mut failures = vec![];
    // Checked with the rest, after the processes are stopped: a failed assert here
    // left them running.
    if panels.len() < 18 || alerts.len() != 10 {
        failures.push(format!(
            "{} panels and {} alerts",
            panels.len(),
            alerts.len()
        ));
    }
    for (title, expr) in &panels {
        match query(&prom, expr).await {
            Ok(0) => failures.push(format!("panel '{title}': no series for {expr}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("panel '{title}': {e} in {expr}")),
        }
    }
    for (name, expr, measured) in &alerts {
        if let Err(e) = query(&prom, expr).await {
            failures.push(format!("alert {name}: {e} in {expr}"));
        }
        match query(&prom, measured).await {
            Ok(0) => failures.push(format!("alert {name}: no series for {measured}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("alert {name}: {e} in {measured}")),
        }
    }
    // 19 instances synced (p0 always fails), each with one superuser: the alert's query
    // counts them, so the alert fires.
    let open = value(&prom, "max by (rule) (syncpool_policy_violations)").await;
    if open != Some(19.0) {
        failures.push(format!("policy violations: {open:?}, not 19"));
    }
    let (_, sample) = get(&worker_metrics, "/metrics").await;
    eprintln!(
        "{}",
        sample
            .lines()
            .filter(|l| l.starts_with("syncpool_") && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for c in [&serve, &worker, &prometheus] {
        signal(c, "TERM");
    }
    for c in [&mut serve, &mut worker, &mut prometheus] {
        let _ = c.wait();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Waits until `expr` evaluates to `want` in Prometheus (it scrapes every second).
async fn eventually(prom: &str, expr: &str, want: f64) {
    let start = Instant::now();
    loop {
        let got = value(prom, expr).await;
        if got == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{expr}: {got:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sessions are finished by whichever worker ends their last record. A worker that never
/// finished one, and is the only process Prometheus scrapes, still shows every finished
/// session of the fleet, and the last success ratio follows the newest session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_metrics_are_true_for_the_whole_fleet_whichever_process_is_scraped() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("ok", json!({})))
        .await
        .unwrap();
    store
        .instance_insert(&simulated("bad", json!({"fail_rate": 1.0})))
        .await
        .unwrap();
    // The unscraped worker does every sync of the first five sessions.
    let (mut unscraped, _) = worker(&db, "unscraped", &["--max-attempts", "1"]);
    for (names, code) in [
        (&["ok"][..], 0),
        (&["bad"][..], 4),
        (&["ok", "bad"][..], 3),
        (&["ok", "bad"][..], 3),
        (&["bad"][..], 4),
    ] {
        let mut args = vec!["sync"];
        args.extend(names);
        args.push("--wait");
        let (got, out, err) = cli(&db.url, &args);
        assert_eq!(got, code, "{out}{err}");
    }
    let (port, prom_port) = (free_port(), free_port());
    let scraped_addr = format!("127.0.0.1:{port}");
    let prom = format!("127.0.0.1:{prom_port}");
    let (mut scraped, _) = worker(
        &db,
        "scraped",
        &["--metrics-bind", &scraped_addr, "--max-attempts", "1"],
    );
    let mut prometheus = start_prometheus(db.dir.path(), &prom, &[&scraped_addr]);
    eventually(&prom, "sum(syncpool_sessions_finished_total)", 5.0).await;
    let checks = [
        (
            "syncpool_sessions_finished_total{sync_type=\"manual_single\",status=\"failed\"}",
            2.0,
        ),
        (
            "syncpool_sessions_finished_total{sync_type=\"manual_single\",status=\"completed\"}",
            1.0,
        ),
        (
            "syncpool_sessions_finished_total{sync_type=\"manual_batch\",status=\"completed_with_errors\"}",
            2.0,
        ),
        ("sum(syncpool_session_duration_seconds_count)", 5.0),
        (
            "sum(syncpool_session_duration_seconds_bucket{le=\"+Inf\"})",
            5.0,
        ),
        (
            "syncpool_session_success_ratio{sync_type=\"manual_single\"}",
            0.0,
        ),
        (
            "syncpool_session_success_ratio{sync_type=\"manual_batch\"}",
            0.5,
        ),
        (
            "count(syncpool_session_success_ratio{sync_type=\"scheduled\"})",
            f64::NAN,
        ),
    ];
    for (expr, want) in checks {
        if want.is_nan() {
            assert_eq!(
                value(&prom, expr).await,
                None,
                "{expr}: no scheduled session yet"
            );
        } else {
            assert_eq!(value(&prom, expr).await, Some(want), "{expr}");
        }
    }
    // A newer session replaces the old ratio, whoever finishes it.
    let (code, out, err) = cli(&db.url, &["sync", "ok", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    eventually(
        &prom,
        "syncpool_session_success_ratio{sync_type=\"manual_single\"}",
        1.0,
    )
    .await;
    eventually(&prom, "sum(syncpool_sessions_finished_total)", 6.0).await;
    // Every metric the process exposes has help text.
    let (_, text) = get(&scraped_addr, "/metrics").await;
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no # HELP"
        );
    }
    for c in [&unscraped, &scraped, &prometheus] {
        signal(c, "TERM");
    }
    for c in [&mut unscraped, &mut scraped, &mut prometheus] {
        let _ = c.wait();
    }
}
