//! The design syncpool replaces, written here only to be measured beside it (docs/BENCHMARKS.md,
//! "Previous design"): each session walks its instances in batches of 10; a batch takes
//! a lock row per instance (5-minute expiry), then runs one transaction around the whole
//! batch, the sync work included, and recomputes the session's totals with COUNT(*)
//! subqueries after each instance; then it deletes its lock rows. Two sessions over the
//! same instances run at once, as a scheduled and a manual sync did.
//!
//! Both designs are watched the same way: a probe takes the write lock (`BEGIN
//! IMMEDIATE; COMMIT`) every 10 ms and records how long it waited, which is how long
//! someone else held it; a reader reads the session's status every 20 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use syncpool::model::SyncType;

use crate::Fig;
use crate::harness::*;

const SCHEMA: &str = "
CREATE TABLE old_sessions (id INTEGER PRIMARY KEY, status TEXT NOT NULL, total_instances INTEGER,
  successful_instances INTEGER DEFAULT 0, failed_instances INTEGER DEFAULT 0,
  started_at TEXT, completed_at TEXT);
CREATE TABLE old_records (id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL, instance_id INTEGER NOT NULL,
  status TEXT NOT NULL, error TEXT, started_at TEXT, completed_at TEXT);
CREATE INDEX old_records_session_status ON old_records (session_id, status);
CREATE TABLE old_locks (instance_id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL,
  locked_at TEXT NOT NULL, expires_at TEXT NOT NULL);";

/// The report's totals: recomputed from the records, three COUNT(*) subqueries.
const TOTALS: &str = "UPDATE old_sessions SET
  total_instances = (SELECT COUNT(*) FROM old_records WHERE session_id = ?1),
  successful_instances = (SELECT COUNT(*) FROM old_records WHERE session_id = ?1 AND status = 'completed'),
  failed_instances = (SELECT COUNT(*) FROM old_records WHERE session_id = ?1 AND status = 'failed')
  WHERE id = ?1";

/// The report's session view: the session joined to counts over its records.
const OLD_READ: &str = "SELECT s.id, s.status, s.successful_instances, COUNT(r.id),
  COUNT(CASE WHEN r.status = 'completed' THEN 1 END), COUNT(CASE WHEN r.status = 'failed' THEN 1 END)
  FROM old_sessions s LEFT JOIN old_records r ON r.session_id = s.id WHERE s.id = ?1 GROUP BY s.id";

async fn pool(path: &std::path::Path) -> anyhow::Result<SqlitePool> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30));
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await?)
}

/// Watches a run: the longest wait for the write lock, and read latencies.
struct Watch {
    stop: Arc<AtomicBool>,
    probe: tokio::task::JoinHandle<Duration>,
    reader: tokio::task::JoinHandle<Vec<Duration>>,
}

impl Watch {
    fn start(pool: SqlitePool, read: String, session: i64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let probe = {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut longest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Ok(tx) = pool.begin_with("BEGIN IMMEDIATE").await {
                        longest = longest.max(t.elapsed());
                        let _ = tx.commit().await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                longest
            })
        };
        let reader = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut lat = vec![];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let q = sqlx::query(sqlx::AssertSqlSafe(read.clone()));
                    if q.bind(session).fetch_all(&pool).await.is_ok() {
                        lat.push(t.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                lat
            })
        };
        Self {
            stop,
            probe,
            reader,
        }
    }

    async fn finish(self) -> (Duration, Vec<Duration>) {
        self.stop.store(true, Ordering::Relaxed);
        (
            self.probe.await.unwrap_or_default(),
            self.reader.await.unwrap_or_default(),
        )
    }
}

/// One session the old way: batches of 10, each in one long transaction. A batch whose
/// statements fail (SQLite's "database is locked" once a waiter has slept 30 s) fails
/// its instances, as it did in the old system; the count of such errors is returned.
async fn old_session(
    pool: SqlitePool,
    session: i64,
    n: i64,
    latency: Duration,
) -> anyhow::Result<u64> {
    let mut errors = 0;
    let _ = sqlx::query(
        "UPDATE old_sessions SET status = 'running', started_at = datetime('now') WHERE id = ?1",
    )
    .bind(session)
    .execute(&pool)
    .await;
    for batch in (1..=n).collect::<Vec<_>>().chunks(10) {
        if let Err(e) = old_batch(&pool, session, batch, latency).await {
            errors += 1;
            eprintln!("  previous design, session {session}: batch failed: {e}");
        }
    }
    let _ = sqlx::query(TOTALS).bind(session).execute(&pool).await;
    let _ = sqlx::query("UPDATE old_sessions SET status = 'completed', completed_at = datetime('now') WHERE id = ?1")
        .bind(session)
        .execute(&pool)
        .await;
    Ok(errors)
}

async fn old_batch(
    pool: &SqlitePool,
    session: i64,
    batch: &[i64],
    latency: Duration,
) -> anyhow::Result<()> {
    let mut locked = vec![];
    for &instance in batch {
        // A lock row per instance, 5-minute expiry; a live one of another session fails the instance.
        let took = sqlx::query(
            "INSERT INTO old_locks (instance_id, session_id, locked_at, expires_at) \
             VALUES (?1, ?2, datetime('now'), datetime('now', '+5 minutes')) \
             ON CONFLICT (instance_id) DO UPDATE SET session_id = excluded.session_id, \
             locked_at = excluded.locked_at, expires_at = excluded.expires_at \
             WHERE old_locks.expires_at < datetime('now')",
        )
        .bind(instance)
        .bind(session)
        .execute(pool)
        .await?
        .rows_affected()
            == 1;
        if took {
            locked.push(instance);
        } else {
            sqlx::query("INSERT INTO old_records (session_id, instance_id, status, error) VALUES (?1, ?2, 'failed', 'instance is being synced by another session')")
                .bind(session)
                .bind(instance)
                .execute(pool)
                .await?;
        }
    }
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for &instance in &locked {
        sqlx::query("INSERT INTO old_records (session_id, instance_id, status, started_at) VALUES (?1, ?2, 'running', datetime('now'))")
            .bind(session)
            .bind(instance)
            .execute(&mut *tx)
            .await?;
        tokio::time::sleep(latency).await; // the sync, inside the transaction
        sqlx::query("UPDATE old_records SET status = 'completed', completed_at = datetime('now') WHERE session_id = ?1 AND instance_id = ?2")
            .bind(session)
            .bind(instance)
            .execute(&mut *tx)
            .await?;
        sqlx::query(TOTALS).bind(session).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    for &instance in &locked {
        sqlx::query("DELETE FROM old_locks WHERE instance_id = ?1 AND session_id = ?2")
            .bind(instance)
            .bind(session)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The figures of one design, in the order the table prints them.
struct Run {
    lock_errors: u64,
    longest_lock_ms: f64,
    read_p99_ms: f64,
    success: f64,
    secs: f64,
}

async fn run_old(n: usize, latency: Duration) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let pool = pool(&dir.path().join("old.db")).await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    for s in [1, 2] {
        sqlx::query(
            "INSERT INTO old_sessions (id, status, total_instances) VALUES (?1, 'pending', ?2)",
        )
        .bind(s)
        .bind(n as i64)
        .execute(&pool)
        .await?;
    }
    let watch = Watch::start(pool.clone(), OLD_READ.into(), 1);
    let t = Instant::now();
    let a = tokio::spawn(old_session(pool.clone(), 1, n as i64, latency));
    let b = tokio::spawn(old_session(pool.clone(), 2, n as i64, latency));
    let lock_errors = a.await?? + b.await??;
    let secs = t.elapsed().as_secs_f64();
    let (longest, reads) = watch.finish().await;
    let ok: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM old_records WHERE status = 'completed'")
        .fetch_one(&pool)
        .await?;
    Ok(Run {
        lock_errors,
        longest_lock_ms: longest.as_secs_f64() * 1e3,
        read_p99_ms: percentile_ms(&reads, 99.0),
        success: ok as f64 / (2 * n) as f64,
        secs,
    })
}

async fn run_new(n: usize, latency: Duration) -> anyhow::Result<Run> {
    let ms = latency.as_millis() as u64;
    let db = Db::with_instances("sqlite", n, json!({"latency_ms": ms, "accounts": 0})).await?;
    let path = db.url.trim_start_matches("sqlite://").to_string();
    let probe_pool = pool(std::path::Path::new(&path)).await?;
    let workers = spawn_workers(&db.url, 2, 64)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let a = db.store.session_create(SyncType::Scheduled, None).await?;
    let b = db.store.session_create(SyncType::ManualBatch, None).await?;
    let row: i64 = sqlx::query_scalar("SELECT id FROM sync_sessions WHERE session_id = ?1")
        .bind(a.session_id.to_string())
        .fetch_one(&probe_pool)
        .await?;
    let watch = Watch::start(
        probe_pool,
        "SELECT * FROM sync_sessions WHERE id = ?1".into(),
        row,
    );
    let limit = Duration::from_secs(1800);
    let ok = db.wait_finished(a.session_id, limit).await?
        + db.wait_finished(b.session_id, limit).await?;
    let secs = t.elapsed().as_secs_f64();
    let (longest, reads) = watch.finish().await;
    stop(workers);
    db.close().await?;
    Ok(Run {
        lock_errors: 0,
        longest_lock_ms: longest.as_secs_f64() * 1e3,
        read_p99_ms: percentile_ms(&reads, 99.0),
        success: ok as f64 / (2 * n) as f64,
        secs,
    })
}

/// Old and new on the same workload: two overlapping sessions over `n` instances.
pub async fn previous(n: usize, latency_ms: u64) -> anyhow::Result<Vec<Fig>> {
    let latency = Duration::from_millis(latency_ms);
    let old = run_old(n, latency).await?;
    let new = run_new(n, latency).await?;
    let s = "previous";
    let b = "sqlite";
    Ok(vec![
        Fig::one(s, b, "longest_write_lock_wait", new.longest_lock_ms, "ms")
            .vs(old.longest_lock_ms),
        Fig::one(s, b, "status_read_p99", new.read_p99_ms, "ms").vs(old.read_p99_ms),
        Fig::one(s, b, "success_rate_two_sessions", new.success, "x").vs(old.success),
        Fig::one(s, b, "completion_time_two_sessions", new.secs, "s").vs(old.secs),
        Fig::one(
            s,
            b,
            "database_is_locked_batches",
            new.lock_errors as f64,
            "",
        )
        .vs(old.lock_errors as f64),
    ])
}
