//! One sync, step by step (docs/ARCHITECTURE.md): the apalis handler for a job.
//!
//! apalis delivers a job at least once, so nothing here trusts the job: the record and
//! the lease, both judged inside the database, decide whether this delivery does work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::BoxDynError;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use futures::FutureExt;
use std::panic::AssertUnwindSafe;

use super::writer::{WriteError, Writer};
use crate::consumer::JobHandler;
use crate::metrics;
use crate::model::Instance;
use crate::queue::JobPayload;
use crate::settings::Settings;
use crate::store::*;

/// Shared by every handler of one worker process.
pub struct Pipeline {
    /// syncpool's database.
    pub store: Arc<dyn Store>,
    /// Batches this process's lease and record writes.
    pub writer: Writer,
    /// Timings and limits.
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

#[derive(Debug, Clone, Copy)]
enum Stop {
    /// The database says the lease is no longer ours.
    Lost,
    /// The local deadline passed before a renewal succeeded.
    Expired,
    Cancelled,
}

impl Pipeline {
    /// A pipeline whose leases name `owner` as their holder.
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

    /// Stops taking new syncs; running ones get the shutdown grace.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether [`Self::begin_shutdown`] was called.
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
    /// not be lost to a passing database error, so transient errors are retried with the
    /// same request (the same request id: a retry after a commit whose outcome was lost
    /// replays it). Other errors fail the same way every time: the record is left to the
    /// rescuer, which hands it on once its lease has lapsed.
    async fn until_written<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, WriteError>>,
    {
        let mut delay = Duration::from_millis(100);
        for _ in 0..20 {
            match f().await {
                Ok(v) => return Some(v),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "{what} failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, "{what} failed; the record is left to the rescuer");
                    return None;
                }
            }
        }
        tracing::error!("{what} kept failing; the record is left to the rescuer");
        None
    }

    /// Runs one job: decode, lease, sync, finish. Errors are for apalis's log only;
    /// the record holds the outcome.
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
        // How long the job has waited is judged in the grant, by the database clock.
        let req = GrantRequest {
            request_id: new_request_id(),
            job_id: job_id.clone(),
            payload: payload.clone(),
            owner: self.owner.clone(),
        };
        // The lease's expiry is set by the database when the grant commits, which is
        // after this instant: a deadline counted from here is never later than the real one.
        let asked = Instant::now();
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
                    // It waited at least the timeout (by the database's clock).
                    ::metrics::histogram!(metrics::LOCK_WAIT, "outcome" => "timeout")
                        .record(self.settings.lock_wait_timeout.as_secs_f64());
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
                let lease = Lease {
                    token,
                    attempt,
                    asked,
                };
                self.sync(job_id, payload, lease, instance).await;
                Ok(())
            }
        }
    }

    /// How long before the database's expiry a sync gives its lease up: the gap covers
    /// the time between our clock's deadline and the moment the sync has really stopped.
    fn deadline_margin(&self) -> Duration {
        (self.settings.lease_ttl / 5).min(Duration::from_secs(5))
    }

    /// Step 4 and 5: sync outside any transaction while a heartbeat renews the lease,
    /// then write the result conditionally on the token.
    async fn sync(
        &self,
        job_id: String,
        payload: JobPayload,
        lease: Lease,
        instance: Box<Instance>,
    ) {
        let started = Instant::now();
        let attempt = lease.attempt;
        let (stop_tx, mut stop_rx) = watch::channel(None::<Stop>);
        let ttl_less_margin = self
            .settings
            .lease_ttl
            .saturating_sub(self.deadline_margin());
        let deadline = Arc::new(Deadline::new(lease.asked + ttl_less_margin));
        // Owned by a guard: the heartbeat stops on every path out of this function,
        // a panic or a cancelled future included, so no lease outlives its sync.
        let _heartbeat = Heartbeat(tokio::spawn(heartbeat(
            self.writer.clone(),
            RenewRequest {
                instance_id: instance.id,
                token: lease.token,
                record_id: payload.record_id,
            },
            self.settings.lease_renew,
            ttl_less_margin,
            deadline.clone(),
            stop_tx,
        )));
        let Some((result, class)) = self
            .run_source(&instance, attempt, &deadline, &mut stop_rx)
            .await
        else {
            return;
        };
        drop(_heartbeat);
        if let SyncResult::Failed { error, retry_after } = &result {
            // One line per failed or retried instance at the default level.
            tracing::warn!(
                instance = instance.name,
                attempt,
                class,
                retry = retry_after.is_some(),
                error = error.as_str(),
                "instance sync failed"
            );
        }
        self.finish(job_id, &payload, &lease, &instance, result, started)
            .await;
    }

    /// Step 4: reads the instance until the source ends, the heartbeat says stop or the
    /// shutdown grace is over. `None` when the lease was lost (nothing may be written on
    /// it); otherwise the result and, for the log line, what kind of failure it was.
    async fn run_source(
        &self,
        instance: &Instance,
        attempt: i64,
        deadline: &Arc<Deadline>,
        stop_rx: &mut watch::Receiver<Option<Stop>>,
    ) -> Option<(SyncResult, &'static str)> {
        let spec = instance.spec();
        // For the log line: what kind of failure, so an operator can tell a flaky network
        // from a wrong password without reading the text.
        let mut class = "lease deadline";
        let result = tokio::select! {
            // Biased: when the process resumes from a pause, a passed deadline wins over
            // a read that also became ready, so nothing goes on under an expired lease.
            biased;
            stop = deadline.passed_or_wait(stop_rx) => match stop {
                Stop::Cancelled => SyncResult::Cancelled,
                Stop::Expired => self.expired(instance, attempt),
                // The lease is someone else's or gone. Nothing may be written on it;
                // the rescuer hands the record on.
                Stop::Lost => {
                    tracing::warn!(
                        instance = instance.name,
                        attempt,
                        "lease lost during sync; its result is dropped and the record left to the rescuer"
                    );
                    ::metrics::counter!(metrics::LOCK_LOST).increment(1);
                    return None;
                }
            },
            _ = self.grace_over.cancelled() => SyncResult::HandedBack,
            r = self.fetch(&spec, deadline) => match r {
                Ok(accounts) => SyncResult::Completed(accounts),
                Err(Fetch::Expired) => self.expired(instance, attempt),
                Err(Fetch::Source(e)) => {
                    class = if e.is_retryable() { "retryable" } else { "fatal" };
                    SyncResult::Failed {
                    // Read again only on this path, to scrub it from the text the record
                    // keeps; the source read it itself, by the same rules.
                    error: crate::redact::shorten(crate::redact::text(
                        &e.to_string(),
                        &[&syncpool_workers::password(&spec).await.ok().flatten().unwrap_or_default()],
                    )),
                    retry_after: self.retry_after(attempt, e.is_retryable()),
                }
                }
            },
        };
        Some((result, class))
    }

    /// Reads the accounts from the instance's source, within the sync timeout and never
    /// past the lease deadline.
    async fn fetch(
        &self,
        spec: &syncpool_workers::InstanceSpec,
        deadline: &Arc<Deadline>,
    ) -> Result<Vec<syncpool_workers::Account>, Fetch> {
        let Some(source) = syncpool_workers::source_for(&spec.kind) else {
            return Err(Fetch::Source(syncpool_workers::SourceError::Fatal(
                format!("no source for kind '{}'", spec.kind),
            )));
        };
        let settings = self.settings.source_settings();
        // A panicking source is a bug in it, not in the instance: the record fails
        // (fatal, no retry) and the lease is released like after any failure. And a
        // source is never polled past the lease deadline, whichever task the runtime
        // happens to run first after a pause.
        let guarded = UntilDeadline {
            inner: AssertUnwindSafe(source.fetch_accounts(spec, &settings)).catch_unwind(),
            deadline: deadline.clone(),
        };
        match tokio::time::timeout(self.settings.sync_timeout, guarded).await {
            Ok(None) => Err(Fetch::Expired),
            Ok(Some(Ok(r))) => r
                .and_then(|a| syncpool_workers::check_storable(&spec.name, a))
                .map_err(Fetch::Source),
            Ok(Some(Err(panic))) => Err(Fetch::Source(syncpool_workers::SourceError::Fatal(
                format!(
                    "the {} source panicked: {}",
                    spec.kind,
                    panic_message(&panic)
                ),
            ))),
            Err(_) => Err(Fetch::Source(syncpool_workers::SourceError::Retryable(
                format!(
                    "sync timed out after {} s",
                    self.settings.sync_timeout.as_secs()
                ),
            ))),
        }
    }

    /// When a failed attempt is tried again: only if it can help and attempts are left.
    fn retry_after(&self, attempt: i64, retryable: bool) -> Option<Duration> {
        (retryable && attempt < self.settings.max_attempts)
            .then(|| self.settings.retry_delay(attempt))
    }

    /// The result of a sync abandoned because its lease deadline passed.
    ///
    /// Both ways of noticing a passed deadline (the heartbeat's stop, or the source's
    /// guard when it is polled first) end the same way.
    fn expired(&self, instance: &Instance, attempt: i64) -> SyncResult {
        tracing::warn!(
            instance = instance.name,
            attempt,
            "lease could not be renewed before its deadline; the sync is abandoned"
        );
        ::metrics::counter!(metrics::LOCK_LOST).increment(1);
        SyncResult::Failed {
            error: format!(
                "attempt {attempt} abandoned: its lease could not be renewed within {} s",
                self.settings.lease_ttl.as_secs_f64()
            ),
            retry_after: self.retry_after(attempt, true),
        }
    }

    /// Step 5: writes the result, fenced by the lease's token, then reports what it did.
    async fn finish(
        &self,
        job_id: String,
        payload: &JobPayload,
        lease: &Lease,
        instance: &Instance,
        result: SyncResult,
        started: Instant,
    ) {
        let req = FinishRequest {
            request_id: new_request_id(),
            job_id,
            record_id: payload.record_id,
            instance_id: instance.id,
            session_id: payload.session_id,
            token: lease.token,
            result,
        };
        let Some(outcome) = self
            .until_written("finish", || self.writer.finish(req.clone()))
            .await
        else {
            return;
        };
        let secs = started.elapsed().as_secs_f64();
        self.report(outcome, instance, lease.attempt, secs);
    }

    /// Counts and logs what a committed finish did.
    fn report(&self, outcome: FinishOutcome, instance: &Instance, attempt: i64, secs: f64) {
        // After the commit, never before: a rolled-back finish recorded nothing.
        metrics::account_changes(&outcome.changes);
        match outcome.record {
            RecordOutcome::Completed { .. } => {
                metrics::instance_synced(instance.kind.as_str(), "completed", secs)
            }
            RecordOutcome::Failed => {
                metrics::instance_synced(instance.kind.as_str(), "failed", secs)
            }
            RecordOutcome::Cancelled => {
                metrics::instance_synced(instance.kind.as_str(), "cancelled", secs)
            }
            RecordOutcome::Fenced => {
                tracing::warn!(
                    instance = instance.name,
                    attempt,
                    "result refused: the lease was taken over or the record handed on"
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

/// Why a read ended without accounts.
enum Fetch {
    Source(syncpool_workers::SourceError),
    /// The lease deadline passed; the source was not polled again.
    Expired,
}

/// A granted lease as the pipeline holds it.
struct Lease {
    token: i64,
    attempt: i64,
    /// When the grant was asked for: the local deadline counts from here.
    asked: Instant,
}

/// The local lease deadline, on the monotonic clock, shared by the heartbeat (which
/// moves it on each renewal) and the sync (which stops reading once it has passed).
struct Deadline {
    base: Instant,
    at_ms: std::sync::atomic::AtomicU64,
}

impl Deadline {
    fn new(at: Instant) -> Self {
        let base = Instant::now();
        let d = Deadline {
            base,
            at_ms: Default::default(),
        };
        d.set(at);
        d
    }
    fn set(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.base).as_millis() as u64;
        self.at_ms.store(ms, Ordering::SeqCst);
    }
    fn at(&self) -> Instant {
        self.base + Duration::from_millis(self.at_ms.load(Ordering::SeqCst))
    }
    fn passed(&self) -> bool {
        Instant::now() >= self.at()
    }
    /// Resolves when the heartbeat says stop (with its reason), or at once with
    /// `Expired` if the deadline has passed.
    async fn passed_or_wait(&self, stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
        if self.passed() {
            return Stop::Expired;
        }
        match stop.wait_for(|s| s.is_some()).await {
            Ok(s) => s.unwrap_or(Stop::Lost),
            // The heartbeat vanished: the lease can no longer be trusted.
            Err(_) => Stop::Lost,
        }
    }
}

/// Polls `inner` only while the lease deadline has not passed; `None` once it has.
struct UntilDeadline<F> {
    inner: F,
    deadline: Arc<Deadline>,
}

impl<F: std::future::Future + Unpin> std::future::Future for UntilDeadline<F> {
    type Output = Option<F::Output>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if self.deadline.passed() {
            return std::task::Poll::Ready(None);
        }
        std::pin::Pin::new(&mut self.inner).poll(cx).map(Some)
    }
}

/// Aborts the heartbeat task when dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);
impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease every `every` and keeps a local deadline: the last successful
/// renewal's send time plus `ttl_less_margin`, on the monotonic clock. When a renewal
/// answers "not held" or "cancelled", or the deadline passes before a renewal succeeds
/// (the database is unreachable or too slow), it tells the sync to stop.
async fn heartbeat(
    writer: Writer,
    req: RenewRequest,
    every: Duration,
    ttl_less_margin: Duration,
    shared: Arc<Deadline>,
    stop: watch::Sender<Option<Stop>>,
) {
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(shared.at().into()) => {
                let _ = stop.send(Some(Stop::Expired));
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        next += every;
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout_at(shared.at().into(), writer.renew(req.clone())).await {
            Err(_) => {
                let _ = stop.send(Some(Stop::Expired));
                return;
            }
            Ok(Ok(RenewOutcome { held: false, .. })) => {
                let _ = stop.send(Some(Stop::Lost));
                return;
            }
            Ok(Ok(RenewOutcome {
                cancel_requested: true,
                ..
            })) => {
                let _ = stop.send(Some(Stop::Cancelled));
                return;
            }
            Ok(Ok(_)) => {
                shared.set((sent + ttl_less_margin).into_std());
            }
            // Retried at the next tick, as long as the deadline allows.
            Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
        }
        if next < tokio::time::Instant::now() {
            next = tokio::time::Instant::now();
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

// The queue hands each job to the pipeline as stored bytes (decoded by us, see
// `queue::RawBytes`).
impl JobHandler for Pipeline {
    fn run(
        self: Arc<Self>,
        job_id: String,
        bytes: Vec<u8>,
    ) -> futures::future::BoxFuture<'static, Result<(), BoxDynError>> {
        Box::pin(async move { Pipeline::handle(&self, job_id, bytes).await })
    }
}
