//! The console's pages with a large session: one session of `n` records synced (a
//! tenth of them failing), a second one of `n` pending, then every page read over
//! HTTP, one request at a time, 60 times each. The figure is the client's round trip
//! on loopback, an upper bound of the server's time. Issue #11's target: p99 <= 50 ms
//! at 100,000 records.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use syncpool::model::SyncType;
use syncpool::store::RecordFilter;

use crate::Fig;
use crate::harness::*;

const READS: usize = 60;

pub async fn console(backend: &'static str, n: usize) -> anyhow::Result<Vec<Fig>> {
    let db = Db::with_instances(
        backend,
        n,
        json!({"latency_ms": 0, "accounts": 3, "fail_rate": 0.1}),
    )
    .await?;
    // One attempt each, so a tenth of the records end failed (the page to read).
    let mut workers = vec![];
    for _ in 0..2 {
        workers.push(
            Command::new(syncpool_bin()?)
                .args(["worker", "--concurrency", "32", "--max-attempts", "1"])
                .env("SYNCPOOL_DATABASE_URL", &db.url)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    let first = db.store.session_create(SyncType::ManualBatch, None).await;
    let finished = match &first {
        Ok(c) => {
            db.wait_finished(c.session_id, Duration::from_secs(3600))
                .await
        }
        Err(_) => Ok(0),
    };
    stop(workers);
    let first = first?;
    finished?;
    let second = db.store.session_create(SyncType::ManualBatch, None).await?;
    db.store.analyze().await?;
    // A deep page of failed records: after the failed record halfway through.
    let failed = db
        .store
        .session_records(
            first.session_id,
            &RecordFilter {
                status: Some(syncpool::model::RecordStatus::Failed),
                limit: 1000,
                after: 0,
            },
        )
        .await?
        .map(|(_, records)| records)
        .unwrap_or_default();
    let mid_failed = failed.get(failed.len() / 2).map(|r| r.id).unwrap_or(0);
    let last_instance = n as i64 - 60;
    let addr = free_addr()?;
    let serve = Command::new(syncpool_bin()?)
        .args(["serve", "--bind", &addr])
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (a, b) = (first.session_id, second.session_id);
    let pages: Vec<(&str, String)> = vec![
        ("sessions", "/".into()),
        (
            "sessions_filtered",
            "/?status=completed_with_errors&sync_type=manual_batch".into(),
        ),
        ("session", format!("/sessions/{a}")),
        ("session_failed", format!("/sessions/{a}?status=failed")),
        (
            "session_failed_deep",
            format!("/sessions/{a}?status=failed&after={mid_failed}"),
        ),
        ("session_pending", format!("/sessions/{b}?status=pending")),
        ("instances", "/instances".into()),
        (
            "instances_last",
            format!("/instances?after={last_instance}"),
        ),
        ("instance", "/instances/1".into()),
        ("leases", "/leases".into()),
    ];
    let mut figs = vec![];
    let mut worst: f64 = 0.0;
    let mut result = Ok(());
    for (name, path) in &pages {
        let mut lat = Vec::with_capacity(READS);
        for _ in 0..READS {
            let t = Instant::now();
            match http_get(&addr, path).await {
                Ok((200, _)) => lat.push(t.elapsed()),
                Ok((code, _)) => {
                    result = Err(anyhow::anyhow!("{path}: HTTP {code}"));
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if lat.is_empty() {
            break;
        }
        let p99 = percentile_ms(&lat, 99.0);
        worst = worst.max(p99);
        figs.push(Fig::one(
            "console",
            backend,
            &format!("{name}_p50"),
            percentile_ms(&lat, 50.0),
            "ms",
        ));
        figs.push(Fig::one(
            "console",
            backend,
            &format!("{name}_p99"),
            p99,
            "ms",
        ));
    }
    figs.push(Fig::one("console", backend, "worst_page_p99", worst, "ms").vs(50.0));
    figs.push(Fig::one(
        "console",
        backend,
        "records",
        2.0 * n as f64,
        "rows",
    ));
    stop(vec![serve]);
    db.close().await?;
    result.map(|_| figs)
}
