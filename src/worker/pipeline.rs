//! One sync, step by step (DESIGN.md §3): the apalis handler for a job.
//!
//! apalis delivers a job at least once, so nothing here trusts the job: the record and
//! the lease, both judged inside the database, decide whether this delivery does work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data, TaskId};
use chrono::Utc;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::writer::Writer;
use crate::metrics;
use crate::model::Instance;
use crate::queue::JobPayload;
use crate::settings::Settings;
use crate::store::*;

/// Shared by every handler of one worker process.
pub struct Pipeline {
    pub store: Arc<dyn Store>,
    pub writer: Writer,
    pub settings: Settings,
    /// This process's id: the lease owner and the records' `worker_id`.
    pub owner: String,
    /// Set once shutdown began: handlers start no new sync.
    stopping: AtomicBool,
    /// Cancelled when the shutdown grace period is over: running syncs hand back.
    pub grace_over: CancellationToken,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Counts a handler as in flight for as long as it lives, on every path out.
struct InFlight<'a>(&'a Pipeline);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

enum Stop {
    Lost,
    Cancelled,
}

impl Pipeline {
    pub fn new(store: Arc<dyn Store>, writer: Writer, settings: Settings, owner: String) -> Self {
        Self {
            store,
            writer,
            settings,
            owner,
            stopping: AtomicBool::new(false),
            grace_over: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Waits until no handler is running.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Sends a request through the writer until it is written. The result of a sync must
    /// not be lost to a passing database error; a stale lease is caught by the token.
    async fn until_written<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut delay = Duration::from_millis(100);
        for _ in 0..20 {
            match f().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::warn!(error = %e, "{what} failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!("{what} kept failing; the job is left for recovery");
        None
    }

    pub async fn handle(&self, job_id: String, bytes: Vec<u8>) -> Result<(), BoxDynError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(self);
        let payload: JobPayload = match serde_json::from_slice(&bytes) {
            Ok(p) => p,
            Err(e) => {
                // A payload nobody can read: retire it instead of letting it stop workers.
                tracing::error!(job_id, error = %e, "undecodable job payload; the job is killed");
                self.store
                    .job_kill(&job_id, &format!("undecodable payload: {e}"))
                    .await?;
                return Ok(());
            }
        };
        if self.stopping.load(Ordering::SeqCst) {
            // Shutdown began after apalis fetched this job: it is handed back at exit.
            return Ok(());
        }
        let now_ms = Utc::now().timestamp_millis();
        let lock_wait_ms = payload
            .waiting_since_ms
            .map(|w| (now_ms - w).max(0))
            .unwrap_or(0);
        let req = GrantRequest {
            job_id: job_id.clone(),
            payload: payload.clone(),
            owner: self.owner.clone(),
            lock_wait_ms,
        };
        let Some(grant) = self
            .until_written("lease grant", || self.writer.grant(req.clone()))
            .await
        else {
            return Ok(());
        };
        match grant {
            GrantOutcome::Busy | GrantOutcome::Stale => Ok(()),
            GrantOutcome::Cancelled { session_finished } => {
                metrics::instance_synced("none", "cancelled", 0.0);
                session_finished.iter().for_each(metrics::session_finished);
                Ok(())
            }
            GrantOutcome::Failed {
                error,
                lock_timeout,
                session_finished,
            } => {
                if lock_timeout {
                    ::metrics::histogram!(metrics::LOCK_WAIT, "outcome" => "timeout")
                        .record(lock_wait_ms as f64 / 1e3);
                }
                tracing::warn!(record_id = payload.record_id, %error, "record failed before its sync");
                metrics::instance_synced("none", "failed", 0.0);
                session_finished.iter().for_each(metrics::session_finished);
                Ok(())
            }
            GrantOutcome::Granted {
                token,
                instance,
                attempt,
                takeover,
                lock_wait_ms,
            } => {
                ::metrics::histogram!(metrics::LOCK_WAIT, "outcome" => "acquired")
                    .record(lock_wait_ms as f64 / 1e3);
                if takeover {
                    ::metrics::counter!(metrics::LOCK_TAKEOVERS).increment(1);
                }
                self.sync(job_id, payload, token, instance, attempt).await;
                Ok(())
            }
        }
    }

    /// Step 4 and 5: sync outside any transaction while a heartbeat renews the lease,
    /// then write the result conditionally on the token.
    async fn sync(
        &self,
        job_id: String,
        payload: JobPayload,
        token: i64,
        instance: Instance,
        attempt: i64,
    ) {
        let started = Instant::now();
        let (stop_tx, mut stop_rx) = watch::channel(None::<Stop>);
        let heartbeat = {
            let writer = self.writer.clone();
            let req = RenewRequest {
                instance_id: instance.id,
                token,
                record_id: payload.record_id,
            };
            let every = self.settings.lease_renew;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    match writer.renew(req.clone()).await {
                        Ok(RenewOutcome { held: false, .. }) => {
                            let _ = stop_tx.send(Some(Stop::Lost));
                            return;
                        }
                        Ok(RenewOutcome {
                            cancel_requested: true,
                            ..
                        }) => {
                            let _ = stop_tx.send(Some(Stop::Cancelled));
                            return;
                        }
                        Ok(_) => {}
                        // A failed renewal is retried at the next tick; if the lease lapses
                        // meanwhile and someone takes it over, the token refuses our result.
                        Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                    }
                }
            })
        };
        let spec = instance.spec();
        let secret = spec
            .password_env
            .as_deref()
            .and_then(|v| std::env::var(v).ok())
            .unwrap_or_default();
        let result = {
            let fetch = async {
                let Some(source) = syncpool_workers::source_for(&spec.kind) else {
                    return Err(syncpool_workers::SourceError::Fatal(format!(
                        "no source for kind '{}'",
                        spec.kind
                    )));
                };
                let settings = self.settings.source_settings();
                match tokio::time::timeout(
                    self.settings.sync_timeout,
                    source.fetch_accounts(&spec, &settings),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(syncpool_workers::SourceError::Retryable(format!(
                        "sync timed out after {} s",
                        self.settings.sync_timeout.as_secs()
                    ))),
                }
            };
            tokio::select! {
                r = fetch => Some(match r {
                    Ok(accounts) => SyncResult::Completed(accounts),
                    Err(e) => {
                        let retry_after = (e.is_retryable() && attempt < self.settings.max_attempts)
                            .then(|| self.settings.retry_delay(attempt));
                        SyncResult::Failed { error: crate::redact::text(&e.to_string(), &[&secret]), retry_after }
                    }
                }),
                stop = stop_rx.wait_for(|s| s.is_some()) => match stop.map(|s| matches!(*s, Some(Stop::Cancelled))) {
                    Ok(true) => Some(SyncResult::Cancelled),
                    // Lost (or the heartbeat vanished): the lease can no longer be trusted.
                    _ => None,
                },
                _ = self.grace_over.cancelled() => Some(SyncResult::HandedBack),
            }
        };
        heartbeat.abort();
        let Some(result) = result else {
            tracing::warn!(
                instance = instance.name,
                "lease lost during sync; its result is dropped"
            );
            ::metrics::counter!(metrics::LOCK_LOST).increment(1);
            return;
        };
        let req = FinishRequest {
            job_id,
            record_id: payload.record_id,
            instance_id: instance.id,
            session_id: payload.session_id.clone(),
            token,
            result,
        };
        let Some(outcome) = self
            .until_written("finish", || self.writer.finish(req.clone()))
            .await
        else {
            return;
        };
        let secs = started.elapsed().as_secs_f64();
        match outcome.record {
            RecordOutcome::Completed { .. } => {
                metrics::instance_synced(&instance.kind, "completed", secs)
            }
            RecordOutcome::Failed => metrics::instance_synced(&instance.kind, "failed", secs),
            RecordOutcome::Cancelled => metrics::instance_synced(&instance.kind, "cancelled", secs),
            RecordOutcome::Fenced => {
                tracing::warn!(
                    instance = instance.name,
                    "result refused: the lease was taken over"
                );
                ::metrics::counter!(metrics::LOCK_LOST).increment(1);
            }
            RecordOutcome::Retrying { .. } | RecordOutcome::HandedBack => {}
        }
        if let Some(fin) = &outcome.session_finished {
            metrics::session_finished(fin);
        }
    }
}

/// The apalis handler: payload bytes in, decoded by us (see `queue::RawBytes`).
pub async fn handle_job(
    bytes: Vec<u8>,
    id: TaskId,
    pipeline: Data<Arc<Pipeline>>,
) -> Result<(), BoxDynError> {
    pipeline.handle(id.to_string(), bytes).await
}
