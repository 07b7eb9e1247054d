//! Prometheus metrics: the names `grafana/` (dashboard and alert rules) depends on,
//! registered at start so that dashboards never show "no data", with buckets suited to
//! each quantity. Labels only ever come from
//! small fixed sets: never ids, names, error texts or secrets.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::FleetGauges;
use crate::store::SessionFinished;

pub const LOCK_WAIT: &str = "syncpool_lock_wait_seconds";
pub const SESSION_DURATION: &str = "syncpool_session_duration_seconds";
pub const SESSION_SUCCESS: &str = "syncpool_session_success_ratio";
pub const INSTANCE_SYNCS: &str = "syncpool_instance_syncs_total";
pub const INSTANCE_SYNC_DURATION: &str = "syncpool_instance_sync_duration_seconds";
pub const JOBS: &str = "syncpool_jobs";
pub const LOCKS_HELD: &str = "syncpool_locks_held";
pub const SESSIONS_RUNNING: &str = "syncpool_sessions_running";
pub const LOCK_TAKEOVERS: &str = "syncpool_lock_takeovers_total";
pub const LOCK_LOST: &str = "syncpool_lock_lost_total";
pub const DB_POOL: &str = "syncpool_db_pool_connections";
pub const DB_BUSY: &str = "syncpool_db_busy_total";
pub const RECORDS_RESCUED: &str = "syncpool_records_rescued_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(LOCK_WAIT.into()),
                    &[
                        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0,
                        300.0, 600.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(SESSION_DURATION.into()),
                        &[
                            1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                            7200.0, 14400.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(INSTANCE_SYNC_DURATION.into()),
                        &[
                            0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                            300.0,
                        ],
                    )
                })
                .expect("bucket lists are non-empty constants")
                .install_recorder()
                .expect("the metrics recorder is installed once, here");
            register();
            handle
        })
        .clone()
}

/// Touches every series with its label values so it exists (at zero) from the start.
fn register() {
    for outcome in ["acquired", "timeout"] {
        let _ = histogram!(LOCK_WAIT, "outcome" => outcome);
    }
    for result in ["completed", "failed", "cancelled"] {
        counter!(INSTANCE_SYNCS, "result" => result).absolute(0);
    }
    for outcome in ["requeued", "failed", "cancelled"] {
        counter!(RECORDS_RESCUED, "outcome" => outcome).absolute(0);
    }
    // The success-ratio gauge is not pre-set: a zero would read as a failed session.
    for sync_type in ["manual_single", "manual_batch", "scheduled"] {
        for status in crate::model::FINISHED_SESSION_STATUSES {
            let _ = histogram!(SESSION_DURATION, "sync_type" => sync_type, "status" => *status);
        }
    }
    for state in ["pending", "running", "failed"] {
        gauge!(JOBS, "state" => state).set(0.0);
    }
    for state in ["idle", "in_use"] {
        gauge!(DB_POOL, "state" => state).set(0.0);
    }
    gauge!(LOCKS_HELD).set(0.0);
    gauge!(SESSIONS_RUNNING).set(0.0);
    counter!(LOCK_TAKEOVERS).absolute(0);
    counter!(LOCK_LOST).absolute(0);
    counter!(DB_BUSY).absolute(0);
}

pub fn session_finished(f: &SessionFinished) {
    histogram!(SESSION_DURATION, "sync_type" => f.sync_type.clone(), "status" => f.status.as_str())
        .record(f.duration_seconds);
    gauge!(SESSION_SUCCESS, "sync_type" => f.sync_type.clone()).set(f.success_rate);
}

pub fn instance_synced(kind: &str, result: &'static str, seconds: f64) {
    counter!(INSTANCE_SYNCS, "result" => result).increment(1);
    // `kind` comes from a fixed set (postgres, mysql, simulated), never from user text.
    histogram!(INSTANCE_SYNC_DURATION, "kind" => kind.to_string(), "result" => result)
        .record(seconds);
}

pub fn fleet(g: &FleetGauges) {
    gauge!(JOBS, "state" => "pending").set(g.jobs_pending as f64);
    gauge!(JOBS, "state" => "running").set(g.jobs_running as f64);
    gauge!(JOBS, "state" => "failed").set(g.jobs_failed as f64);
    gauge!(LOCKS_HELD).set(g.locks_held as f64);
    gauge!(SESSIONS_RUNNING).set(g.sessions_running as f64);
}

pub fn pool(size: u32, idle: usize) {
    gauge!(DB_POOL, "state" => "idle").set(idle as f64);
    gauge!(DB_POOL, "state" => "in_use").set(size.saturating_sub(idle as u32) as f64);
}
