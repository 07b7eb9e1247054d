//! The apalis workers that fetch syncpool's jobs from the queue in the store's database.
//! Beside the store, this is the one module that names the databases: apalis has a
//! backend type per database, so the worker process (`worker/`) asks for "a worker over
//! this pool" and never learns which one it got.

use std::sync::Arc;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use futures::future::BoxFuture;

use crate::queue::{Every, NotifyOrEvery, QUEUE, RawBytes};
use crate::store::DbPool;

/// What a queue worker does with each job it fetched: its id and its bytes as stored.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one job; an error marks the apalis attempt failed (syncpool's own record
    /// says what happened, see `queue::APALIS_MAX_ATTEMPTS`).
    fn run(
        self: Arc<Self>,
        job_id: String,
        bytes: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), BoxDynError>>;
}

/// How a process's queue workers fetch jobs.
#[derive(Debug, Clone, Copy)]
pub struct Fetching {
    /// Jobs run at once.
    pub concurrency: usize,
    /// Jobs fetched per poll.
    pub batch: usize,
    /// How often a worker tells the queue it is alive.
    pub heartbeat: std::time::Duration,
    /// Heartbeats missed before a worker's jobs are orphans.
    pub missed_heartbeats: usize,
    /// How often an idle worker looks for jobs.
    pub poll: std::time::Duration,
}

async fn run_job(
    bytes: Vec<u8>,
    id: TaskId,
    handler: Data<Arc<dyn JobHandler>>,
) -> Result<(), BoxDynError> {
    Arc::clone(&handler).run(id.to_string(), bytes).await
}

/// The same settings for either backend: apalis-sqlite and apalis-postgres each have a
/// `Config` and a storage type of their own, with the same builder methods but no trait
/// that names them, so a function cannot take either; a macro can.
macro_rules! queue_config {
    ($krate:ident, $f:expr) => {
        $krate::Config::default()
            .queue(QUEUE)
            .batch_size($f.batch)
            .heartbeat_interval($f.heartbeat)
            .missed_heartbeats($f.missed_heartbeats)
            .lock_tasks(false)
            .persist_results(false)
    };
}

macro_rules! queue_worker {
    ($name:expr, $backend:expr, $f:expr, $handler:expr) => {
        WorkerBuilder::new($name)
            .backend($backend)
            .data($handler.clone())
            .concurrency($f.concurrency)
            .parallelize(tokio::spawn)
            .build(run_job)
    };
}

/// Registers the apalis worker over the queue in `pool`: each (re)start takes its name
/// from `name(restarts)`, and hands its jobs to `handler`.
pub fn register(
    monitor: Monitor,
    pool: DbPool,
    f: Fetching,
    name: impl Fn(usize) -> String + Send + Sync + 'static,
    handler: Arc<dyn JobHandler>,
) -> Monitor {
    match pool {
        DbPool::Sqlite(pool) => {
            let config = queue_config!(apalis_sqlite, f);
            monitor.register(move |restarts| {
                let backend = SqliteStorage::<Vec<u8>>::new(&pool)
                    .with_config(config.clone())
                    .with_codec(RawBytes)
                    .poll_with_strategy(Every::new(f.poll));
                queue_worker!(name(restarts), backend, f, handler)
            })
        }
        DbPool::Postgres(pool) => {
            let config = queue_config!(apalis_postgres, f);
            monitor.register(move |restarts| {
                // NOTIFY wakes the worker at once for new jobs; the interval catches jobs
                // scheduled for later (NOTIFY does not fire for a future run_at).
                let strategy = NotifyOrEvery::new(
                    apalis_postgres::Pubsub::new(pool.clone(), QUEUE.to_string()),
                    f.poll,
                );
                let backend = PostgresStorage::<Vec<u8>>::new(&pool)
                    .with_config(config.clone())
                    .with_codec(RawBytes)
                    .poll_with_strategy(strategy);
                queue_worker!(name(restarts), backend, f, handler)
            })
        }
    }
}
