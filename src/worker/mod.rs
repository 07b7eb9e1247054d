//! A worker process: apalis claims jobs from the database queue and hands each to the
//! [`pipeline::Pipeline`], whose database writes go through one [`writer::Writer`].
//!
//! apalis is configured against the behaviours in docs/APALIS.md: it polls (sub-second
//! pickup), its orphan timeout is explicit, handlers run in parallel, payloads are decoded
//! by us, apalis writes nothing per job (we ack inside our own finishing transaction), and
//! a worker stopped by a backend error is restarted under a new name.

pub mod pipeline;
pub mod writer;

use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use apalis::prelude::*;

use crate::consumer::{Fetching, JobHandler};
use crate::settings::Settings;
use crate::store::Store;
use pipeline::Pipeline;
use writer::Writer;

/// A process-unique worker id: host, pid and a random suffix, so that two processes
/// (or a restarted one) never share an owner name.
pub fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "host".to_string()
    } else {
        host
    };
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// Runs `concurrency` parallel syncs until `shutdown` resolves, then stops claiming, lets
/// running syncs finish within the grace period, hands the rest back and returns.
pub async fn run(
    store: Arc<dyn Store>,
    settings: Settings,
    concurrency: usize,
    worker_id: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let concurrency = concurrency.max(1);
    let (writer, writer_task) = Writer::spawn(store.clone(), settings.lease_params());
    let pipeline = Arc::new(Pipeline::new(
        store.clone(),
        writer,
        settings.clone(),
        worker_id.clone(),
    ));
    let names: Arc<Mutex<Vec<String>>> = Arc::default();

    let signal = shutdown_signal(pipeline.clone(), settings.shutdown_grace, shutdown);
    let monitor = new_monitor(pipeline.clone());
    let monitor = register_workers(
        monitor,
        store.as_ref(),
        &settings,
        concurrency,
        &worker_id,
        &pipeline,
        &names,
    );
    let stats = spawn_statistics(store.clone(), pipeline.clone());
    let rescuer = tokio::spawn(rescue_loop(
        store.clone(),
        pipeline.clone(),
        settings.lease_params(),
        settings.lease_renew,
    ));
    // Webhooks are delivered by the workers started with an allow-list (src/webhooks.rs).
    let deliverer = (!settings.webhooks.allow.is_empty()).then(|| {
        let p = pipeline.clone();
        tokio::spawn(crate::webhooks::run(
            store.clone(),
            settings.webhooks.clone(),
            worker_id.clone(),
            move || p.is_stopping(),
        ))
    });
    let result = monitor.run_with_signal(signal).await;
    stats.abort();
    rescuer.abort();
    if let Some(d) = deliverer {
        d.abort();
    }
    hand_back(&store, &pipeline, &names).await?;
    drop(pipeline);
    let _ = writer_task.await;
    result.context("queue monitor")?;
    Ok(())
}

/// The monitor's stop signal: waits for `shutdown`, stops new syncs and starts the
/// grace period, after which running syncs hand back.
async fn shutdown_signal(
    pipeline: Arc<Pipeline>,
    grace: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    shutdown.await;
    tracing::info!("shutting down: no new syncs; running ones have {grace:?} to finish");
    pipeline.begin_shutdown();
    // Holds the token only: holding the pipeline would keep the writer alive
    // (and the process running) for the whole grace period.
    let grace_over = pipeline.grace_over.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        grace_over.cancel();
    });
    Ok(())
}

/// A monitor that restarts its stopped workers, with backoff, unless we are stopping.
fn new_monitor(pipeline: Arc<Pipeline>) -> Monitor {
    // A backend error ends an apalis worker; restart it (under a new name, which SQLite
    // requires and PostgreSQL needs to recover the old name's jobs) unless we are stopping.
    let restart = {
        let recent: Mutex<(u32, std::time::Instant)> = Mutex::new((0, std::time::Instant::now()));
        move |ctx: &WorkerContext, err: &WorkerError| {
            if pipeline.is_stopping() {
                return false;
            }
            // apalis restarts at once; during an outage that is thousands of restarts a
            // second. Back off (50 ms doubling to 1 s) while failures keep coming. The
            // callback is synchronous, so this briefly blocks one runtime thread, and only
            // while the database is failing anyway.
            let delay = {
                let mut r = recent.lock().expect("restart state");
                r.0 = if r.1.elapsed() > std::time::Duration::from_secs(10) {
                    0
                } else {
                    r.0.saturating_add(1)
                };
                r.1 = std::time::Instant::now();
                std::time::Duration::from_millis((50u64 << r.0.min(5)).min(1000))
            };
            tracing::warn!(worker = ctx.name(), error = %err, ?delay, "queue worker stopped; restarting");
            std::thread::sleep(delay);
            true
        }
    };
    Monitor::new().should_restart(restart)
}

/// Registers the apalis worker over the store's queue: each (re)start gets a new name,
/// kept in `names` for the hand-back, and runs its jobs through the pipeline.
fn register_workers(
    monitor: Monitor,
    store: &dyn Store,
    settings: &Settings,
    concurrency: usize,
    worker_id: &str,
    pipeline: &Arc<Pipeline>,
    names: &Arc<Mutex<Vec<String>>>,
) -> Monitor {
    let fetching = Fetching {
        concurrency,
        // apalis fetches at most as many jobs as it can start at once: fetched jobs that
        // wait in a buffer send no heartbeat and get re-delivered to others
        // (docs/APALIS.md, "The same job can run twice at once").
        batch: concurrency.min(32),
        heartbeat: settings.queue_heartbeat,
        missed_heartbeats: settings.missed_heartbeats,
        poll: settings.poll_interval,
    };
    let (names, worker_id) = (names.clone(), worker_id.to_string());
    let name = move |restarts: usize| {
        let name = format!("{worker_id}-w{restarts}");
        // A poisoned lock only means another restart panicked mid-push; the list is
        // still usable for the hand-back.
        names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name.clone());
        name
    };
    let handler: Arc<dyn JobHandler> = pipeline.clone();
    crate::consumer::register(monitor, store.pool(), fetching, name, handler)
}

/// Spawns the task that refreshes the planner statistics until shutdown begins.
fn spawn_statistics(store: Arc<dyn Store>, pipeline: Arc<Pipeline>) -> tokio::task::JoinHandle<()> {
    // Statistics go stale as the queue grows and drains; refresh them now and then so the
    // planner keeps choosing indexes (docs/APALIS.md, "Planner statistics").
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
        tick.tick().await;
        loop {
            tick.tick().await;
            if pipeline.is_stopping() {
                return;
            }
            if let Err(e) = store.analyze().await {
                tracing::warn!(error = %e, "refreshing planner statistics failed");
            }
        }
    })
}

/// After the monitor stopped: waits for the running handlers, then gives the jobs the
/// process's workers still hold back to the queue.
async fn hand_back(
    store: &Arc<dyn Store>,
    pipeline: &Pipeline,
    names: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    // Handlers are spawned tasks: they outlive the monitor. Wait for them (the grace
    // timer makes running syncs hand back), then return whatever apalis still holds.
    pipeline.drained().await;
    let names = names.lock().expect("names lock").clone();
    let handed = store
        .jobs_handback(&names)
        .await
        .context("handing back unfinished jobs")?;
    if handed > 0 {
        tracing::info!(jobs = handed, "handed unfinished jobs back to the queue");
    }
    Ok(())
}

/// The rescuer: every worker sweeps for running records whose lease has lapsed, about
/// once per renewal period (jittered, so that workers do not sweep in step). A record
/// whose worker died, froze, panicked or lost its lease is handed on within about the
/// lease TTL plus one period, judged by the database clock, without waiting for apalis'
/// orphan timeout, which only notices dead workers, and only after several heartbeats.
async fn rescue_loop(
    store: Arc<dyn Store>,
    pipeline: Arc<Pipeline>,
    params: crate::store::LeaseParams,
    every: std::time::Duration,
) {
    use rand::Rng;
    loop {
        let jitter = rand::rng().random_range(0.5..=1.0);
        tokio::time::sleep(every.mul_f64(jitter)).await;
        if pipeline.is_stopping() {
            return;
        }
        match store.records_rescue(&params, 256).await {
            Ok(o) => {
                if o.requeued + o.failed + o.cancelled > 0 {
                    tracing::warn!(
                        requeued = o.requeued,
                        failed = o.failed,
                        cancelled = o.cancelled,
                        "rescued running records whose lease had lapsed"
                    );
                }
                for (outcome, n) in [
                    ("requeued", o.requeued),
                    ("failed", o.failed),
                    ("cancelled", o.cancelled),
                ] {
                    metrics::counter!(crate::metrics::RECORDS_RESCUED, "outcome" => outcome)
                        .increment(n);
                }
                o.sessions_finished
                    .iter()
                    .for_each(crate::metrics::session_finished);
            }
            Err(e) => tracing::warn!(error = %e, "the rescuer's sweep failed; it runs again"),
        }
    }
}
