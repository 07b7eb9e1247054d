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
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
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

/// The quantities the rules and panels measure, as Prometheus will evaluate them.
fn expressions() -> (Vec<(String, String)>, Vec<(String, String, String)>) {
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string("grafana/dashboards/syncpool.json").unwrap())
            .unwrap();
    let mut panels = vec![];
    for p in dash["panels"].as_array().unwrap() {
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
    let dir = db.dir.path();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: syncpool\n    static_configs:\n      - targets: ['{api}', '{worker_metrics}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus is required (scripts/test.sh installs it)");

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
    assert!(panels.len() >= 12 && alerts.len() == 5);
    let mut failures = vec![];
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
