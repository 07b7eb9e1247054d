//! The replica-safe scheduler of `serve --schedule CRON`: scheduled sessions over all
//! active instances, and a daily cleanup. Every replica computes the same cron slots; the
//! one that inserts the slot's row in `schedule_slots` first fires it, the others see the
//! row and do nothing. No leader is elected or guessed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use tokio_util::sync::CancellationToken;

use crate::metrics::{SCHEDULE_FIRED as FIRED, SCHEDULE_SKIPPED as SKIPPED};
use crate::store::{AdminStore, SlotFired, Store};

/// What a schedule does when its slot comes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Job {
    /// A `scheduled` session over all active instances, unless the last one still runs.
    Sync,
    /// `cleanup --days N`.
    Cleanup {
        /// Days of finished sessions to keep.
        days: i64,
        /// Days of account change history to keep.
        history_days: i64,
        /// Days of audit trail to keep.
        audit_days: i64,
    },
}

/// A named cron schedule and its job.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Its name in `schedule_slots` and the logs (`sync`, `cleanup`).
    pub name: &'static str,
    /// When its slots come.
    pub cron: Cron,
    /// What each slot does.
    pub job: Job,
}

/// Reads a cron expression, with a message naming it when it is wrong.
pub fn parse(expr: &str) -> Result<Cron, String> {
    expr.parse::<Cron>()
        .map_err(|e| format!("'{expr}' is not a cron expression: {e}"))
}

/// What happened to one slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    /// Another replica had fired this slot already.
    Taken,
    /// Claimed, but the job had nothing to do or its last run still went on.
    Skipped,
    /// Claimed, and this session started.
    Started(uuid::Uuid),
    /// Claimed, and the cleanup ran.
    CleanedUp,
}

/// Fires `schedule` for `slot` if no replica has yet.
pub async fn fire(
    store: &dyn AdminStore,
    schedule: &Schedule,
    slot: DateTime<Utc>,
) -> anyhow::Result<Fired> {
    match schedule.job {
        Job::Sync => match store.schedule_sync_fire(schedule.name, slot).await? {
            SlotFired::Taken => Ok(Fired::Taken),
            SlotFired::Skipped => {
                metrics::counter!(FIRED, "schedule" => schedule.name).increment(1);
                metrics::counter!(SKIPPED, "schedule" => schedule.name).increment(1);
                tracing::warn!(%slot, "scheduled sync skipped: the previous scheduled session is still running");
                Ok(Fired::Skipped)
            }
            SlotFired::NothingToSync => {
                metrics::counter!(FIRED, "schedule" => schedule.name).increment(1);
                metrics::counter!(SKIPPED, "schedule" => schedule.name).increment(1);
                tracing::warn!(%slot, "scheduled sync skipped: there is no active instance");
                Ok(Fired::Skipped)
            }
            SlotFired::Started(created) => {
                metrics::counter!(FIRED, "schedule" => schedule.name).increment(1);
                tracing::info!(%slot, session_id = %created.session_id, "scheduled sync started");
                Ok(Fired::Started(created.session_id))
            }
        },
        Job::Cleanup {
            days,
            history_days,
            audit_days,
        } => {
            if !store.schedule_slot_claim(schedule.name, slot).await? {
                return Ok(Fired::Taken);
            }
            metrics::counter!(FIRED, "schedule" => schedule.name).increment(1);
            // Audited like an operator's cleanup: it deletes audit rows too.
            let event = crate::model::NewAuditEvent {
                actor: "scheduler".into(),
                client: crate::audit::local_client(),
                action: "cleanup".into(),
                targets: vec![],
                fields: serde_json::json!({"schedule": schedule.name}),
                outcome: crate::model::AuditOutcome::Failed,
                detail: None,
            };
            let run = store.cleanup(days, history_days, audit_days);
            let (c, _) = crate::audit::run(event, run).await;
            let c = c?;
            tracing::info!(%slot, sessions = c.sessions_deleted, "scheduled cleanup done");
            Ok(Fired::CleanedUp)
        }
    }
}

/// Runs the schedules until `stop` is cancelled.
pub async fn run(store: Arc<dyn Store>, schedules: Vec<Schedule>, stop: CancellationToken) {
    for s in &schedules {
        metrics::counter!(SKIPPED, "schedule" => s.name).absolute(0);
        metrics::counter!(FIRED, "schedule" => s.name).absolute(0);
    }
    loop {
        let now = Utc::now();
        let next = schedules
            .iter()
            .filter_map(|s| {
                s.cron
                    .find_next_occurrence(&now, false)
                    .ok()
                    .map(|t| (t, s))
            })
            .min_by_key(|(t, _)| *t);
        let Some((slot, schedule)) = next else { return };
        let wait = (slot - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        for s in schedules
            .iter()
            .filter(|s| s.cron.is_time_matching(&slot).unwrap_or(false) || s.name == schedule.name)
        {
            if let Err(e) = fire(store.as_ref(), s, slot).await {
                tracing::error!(
                    schedule = s.name,
                    error = format!("{e:#}"),
                    "schedule failed to fire"
                );
            }
        }
        // Never fire the same slot twice from this replica, even if the clock is coarse.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
