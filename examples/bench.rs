//! Throughput benchmark: prints figures, asserts nothing (run `scripts/bench.sh`).
//!
//! For each database it measures, in the same run and with the same worker settings:
//! - the enqueue of one N-instance session (session row, records and jobs, one transaction);
//! - no-op syncs (simulated, latency 0, no accounts) by P `syncpool worker` processes of
//!   concurrency C;
//! - raw apalis no-op jobs by P processes of the same concurrency and batch size, with
//!   apalis' own defaults (it locks and acks each job itself).
//!
//! Usage: bench [--backend sqlite|postgres|both] [--instances N] [--processes P] [--concurrency C]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use syncpool::model::{NewInstance, SyncType};
use syncpool::store::{DbPool, Store};

const RAW_QUEUE: &str = "bench::raw";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("raw-worker") {
        return raw_worker(&args[1], args[2].parse()?).await;
    }
    let get = |flag: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.into())
    };
    let backend = get("--backend", "both");
    let n: usize = get("--instances", "10000").parse()?;
    let procs: usize = get("--processes", "2").parse()?;
    let conc: usize = get("--concurrency", "16").parse()?;
    println!(
        "bench: {n} instances, {procs} processes x {conc}, batch {}",
        conc.min(32)
    );
    for b in ["sqlite", "postgres"] {
        if backend == b || backend == "both" {
            run_backend(b, n, procs, conc).await?;
        }
    }
    Ok(())
}

async fn run_backend(backend: &str, n: usize, procs: usize, conc: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (url, pg_name) = match backend {
        "sqlite" => (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        ),
        _ => {
            let admin = std::env::var("SYNCPOOL_TEST_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let name = format!("syncpool_bench_{}", std::process::id());
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name}"
            )))
            .execute(&mut c)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut c)
                .await?;
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(admin.clone());
            (format!("{base}/{name}"), Some((admin, name)))
        }
    };
    let store = syncpool::store::connect(&url).await?;
    store.migrate().await?;
    let instances: Vec<NewInstance> = (0..n)
        .map(|i| NewInstance {
            name: format!("bench-{i:06}"),
            kind: "simulated".into(),
            host: None,
            port: None,
            username: None,
            database: None,
            password_env: None,
            password_file: None,
            options: serde_json::json!({"latency_ms": 0, "accounts": 0}),
            active: true,
        })
        .collect();
    store.instance_insert_many(&instances).await?;
    store.analyze().await?;

    // Ours: workers first (warm), then the timed enqueue, then the drain.
    let exe = std::env::current_exe()?;
    let syncpool_bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("syncpool"))
        .expect("target dir");
    let workers: Vec<Child> = (0..procs)
        .map(|_| {
            Command::new(&syncpool_bin)
                .args([
                    "worker",
                    "--concurrency",
                    &conc.to_string(),
                    "--poll-interval",
                    "50ms",
                ])
                .env("SYNCPOOL_DATABASE_URL", &url)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn syncpool worker")
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let created = store.session_create(SyncType::ManualBatch, None).await?;
    let enqueue = t.elapsed();
    // Statistics that see the queued jobs, for both contenders alike (docs/APALIS.md, "Planner statistics").
    store.analyze().await?;
    let t = Instant::now();
    loop {
        let d = store
            .session_get(created.session_id)
            .await?
            .expect("session");
        if d.session.is_finished() {
            anyhow::ensure!(
                d.session.successful_instances as usize == n,
                "not all completed: {:?}",
                d.session.status
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ours = t.elapsed();
    stop(workers);

    // Raw apalis on the same database, same settings.
    let raw_workers: Vec<Child> = (0..procs)
        .map(|_| {
            Command::new(&exe)
                .args(["raw-worker", &url, &conc.to_string()])
                .env("RUST_LOG", "warn")
                .spawn()
                .expect("spawn raw worker")
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    raw_enqueue(&store, n).await?;
    let raw_enqueue_time = t.elapsed();
    store.analyze().await?;
    let t = Instant::now();
    while raw_done(&store).await? < n as i64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raw = t.elapsed();
    stop(raw_workers);
    if let DbPool::Sqlite(pool) = store.pool() {
        // apalis' ack can pick a plan that scans every job its worker ever locked
        // (docs/APALIS.md, "Planner statistics"); show which plan raw apalis ran with.
        let plan: Vec<String> = sqlx::query_scalar(
            "SELECT detail FROM (EXPLAIN QUERY PLAN WITH j AS (SELECT value ->> 'task_id' AS task_id FROM json_each('[]')) \
             UPDATE Jobs SET status = 'Done' FROM j WHERE Jobs.id = j.task_id AND Jobs.lock_by = 'x')",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        println!("sqlite   raw apalis ack plan: {}", plan.join(" | "));
    }

    let ours_rate = n as f64 / ours.as_secs_f64();
    let raw_rate = n as f64 / raw.as_secs_f64();
    println!(
        "{backend:<8} enqueue {n} instances: {:>6.1} ms | syncpool no-op syncs: {:>7.0}/s ({:.2} s) | raw apalis no-op jobs: {:>7.0}/s ({:.2} s, enqueue {:.0} ms) | ratio {:.2}",
        enqueue.as_secs_f64() * 1e3,
        ours_rate,
        ours.as_secs_f64(),
        raw_rate,
        raw.as_secs_f64(),
        raw_enqueue_time.as_secs_f64() * 1e3,
        ours_rate / raw_rate
    );
    drop(store);
    if let Some((admin, name)) = pg_name {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut c)
        .await?;
    }
    Ok(())
}

fn stop(children: Vec<Child>) {
    for c in &children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for mut c in children {
        let _ = c.wait();
    }
}

async fn raw_enqueue(store: &Arc<dyn Store>, n: usize) -> anyhow::Result<()> {
    let tasks = |range: std::ops::Range<usize>| -> Vec<Task<Vec<u8>>> {
        range
            .map(|i| TaskBuilder::new(serde_json::to_vec(&(i as u64)).expect("u64")).build())
            .collect()
    };
    match store.pool() {
        DbPool::Sqlite(pool) => {
            for chunk in (0..n).step_by(1000) {
                let mut tx = pool.begin().await?;
                apalis_sqlite::queries::push_tasks(
                    &mut *tx,
                    RAW_QUEUE,
                    &tasks(chunk..(chunk + 1000).min(n)),
                )
                .await?;
                tx.commit().await?;
            }
        }
        DbPool::Postgres(pool) => {
            for chunk in (0..n).step_by(1000) {
                let mut tx = pool.begin().await?;
                apalis_postgres::queries::push_tasks(
                    &mut *tx,
                    RAW_QUEUE,
                    tasks(chunk..(chunk + 1000).min(n)),
                )
                .await?;
                tx.commit().await?;
            }
        }
    }
    Ok(())
}

async fn raw_done(store: &Arc<dyn Store>) -> anyhow::Result<i64> {
    Ok(match store.pool() {
        DbPool::Sqlite(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE job_type = ?1 AND status = 'Done'")
                .bind(RAW_QUEUE)
                .fetch_one(&p)
                .await?
        }
        DbPool::Postgres(p) => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'",
            )
            .bind(RAW_QUEUE)
            .fetch_one(&p)
            .await?
        }
    })
}

async fn noop(_job: u64) -> Result<(), BoxDynError> {
    Ok(())
}

/// A plain apalis worker process on no-op jobs: apalis' defaults but for the settings
/// syncpool also uses (queue, batch, concurrency, parallel execution, polling).
async fn raw_worker(url: &str, conc: usize) -> anyhow::Result<()> {
    let store = syncpool::store::connect(url).await?;
    let name = format!("raw-{}", std::process::id());
    let stop = syncpool::cli::shutdown_signal()?;
    let signal = async {
        stop.await;
        Ok(())
    };
    let batch = conc.min(32);
    let monitor = Monitor::new();
    let monitor = match store.pool() {
        DbPool::Sqlite(pool) => monitor.register(move |r| {
            let config = apalis_sqlite::Config::default()
                .queue(RAW_QUEUE)
                .batch_size(batch);
            let backend = apalis_sqlite::SqliteStorage::<u64>::new(&pool)
                .with_config(config)
                .poll_with_strategy(syncpool::queue::Every::new(Duration::from_millis(50)));
            WorkerBuilder::new(format!("{name}-{r}"))
                .backend(backend)
                .concurrency(conc)
                .parallelize(tokio::spawn)
                .build(noop)
        }),
        DbPool::Postgres(pool) => monitor.register(move |r| {
            let config = apalis_postgres::Config::default()
                .queue(RAW_QUEUE)
                .batch_size(batch);
            let strategy = Strategy::new()
                .stream(futures::StreamExt::map(
                    apalis_postgres::Pubsub::new(pool.clone(), RAW_QUEUE.into()),
                    |_| (),
                ))
                .apply(syncpool::queue::Every::new(Duration::from_millis(50)));
            let backend = apalis_postgres::PostgresStorage::<u64>::new(&pool)
                .with_config(config)
                .poll_with_strategy(strategy);
            WorkerBuilder::new(format!("{name}-{r}"))
                .backend(backend)
                .concurrency(conc)
                .parallelize(tokio::spawn)
                .build(noop)
        }),
    };
    monitor.run_with_signal(signal).await?;
    Ok(())
}
