//! Prometheus metrics: the names `grafana/` (dashboard and alert rules) depends on,
//! registered at start so that dashboards never show "no data", with buckets suited to
//! each quantity. Labels only ever come from
//! small fixed sets: never ids, names, error texts or secrets.
//!
//! Two kinds: per-process counters and histograms of what this process did (its syncs,
//! lock waits, lost leases), and fleet-wide figures read from the database at scrape time
//! (queue depth, leases, running sessions, and every finished session), so that any one
//! scraped process tells the truth about the whole fleet.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::{
    FleetGauges, Limit, SESSION_DURATION_BUCKETS, SessionFinished, SessionStat, SessionStatus,
    SyncType,
};

/// Counter of cron slots fired but skipped (the last session still ran, or nothing to sync).
pub const SCHEDULE_SKIPPED: &str = "syncpool_schedule_skipped_total";
/// Counter of cron slots that started their job.
pub const SCHEDULE_FIRED: &str = "syncpool_schedule_fired_total";
/// Histogram: time from a job's first try to its lease.
pub const LOCK_WAIT: &str = "syncpool_lock_wait_seconds";
/// Histogram of finished sessions' durations (fleet-wide, from the database).
pub const SESSION_DURATION: &str = "syncpool_session_duration_seconds";
/// Gauge: success ratio of the last finished session per sync type.
pub const SESSION_SUCCESS: &str = "syncpool_session_success_ratio";
/// Counter of finished sessions by type and status (fleet-wide).
pub const SESSIONS_FINISHED: &str = "syncpool_sessions_finished_total";
/// Gauge: age of the oldest running session.
pub const OLDEST_SESSION: &str = "syncpool_session_oldest_running_seconds";
/// Gauge: records running without a live lease.
pub const RECORDS_UNLEASED: &str = "syncpool_records_unleased";
/// Gauge: schedule slots fired and skipped in the last 24 hours.
pub const SCHEDULE_SLOTS: &str = "syncpool_schedule_slots_24h";
/// Counter of instance syncs by result.
pub const INSTANCE_SYNCS: &str = "syncpool_instance_syncs_total";
/// Histogram of instance sync durations by kind and result.
pub const INSTANCE_SYNC_DURATION: &str = "syncpool_instance_sync_duration_seconds";
/// Gauge: queue jobs by state.
pub const JOBS: &str = "syncpool_jobs";
/// Gauge: live leases.
pub const LOCKS_HELD: &str = "syncpool_locks_held";
/// Gauge: sessions pending or running.
pub const SESSIONS_RUNNING: &str = "syncpool_sessions_running";
/// Counter of leases taken over after they expired.
pub const LOCK_TAKEOVERS: &str = "syncpool_lock_takeovers_total";
/// Counter of syncs that lost their lease before finishing.
pub const LOCK_LOST: &str = "syncpool_lock_lost_total";
/// Gauge: this process's database connections by state.
pub const DB_POOL: &str = "syncpool_db_pool_connections";
/// Counter of SQLite busy waits.
pub const DB_BUSY: &str = "syncpool_db_busy_total";
/// Counter of records the rescuer handed on after their lease expired.
pub const RECORDS_RESCUED: &str = "syncpool_records_rescued_total";
/// Counter of account changes recorded in the history, by kind and sensitivity.
pub const ACCOUNT_CHANGES: &str = "syncpool_account_changes_total";
/// Gauge, fleet-wide: syncs running under each concurrency limit (label `limit`: its key).
pub const LIMIT_IN_USE: &str = "syncpool_limit_slots_in_use";
/// Gauge, fleet-wide: each limit's maximum.
pub const LIMIT_MAX: &str = "syncpool_limit_slots_max";
/// Gauge, fleet-wide: jobs waiting for a slot of each limit.
pub const LIMIT_WAITING: &str = "syncpool_limit_waiting";
/// Counter of webhook delivery attempts by outcome (`delivered`, `failed`, `dead`, ...).
pub const WEBHOOK_ATTEMPTS: &str = "syncpool_webhook_attempts_total";
/// Gauge, fleet-wide: webhook deliveries by state (`pending`, `delivered`, `dead`).
pub const WEBHOOK_DELIVERIES: &str = "syncpool_webhook_deliveries";
/// Gauge, fleet-wide: open policy violations by rule (label `rule`).
pub const POLICY_VIOLATIONS: &str = "syncpool_policy_violations";

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
    describe();
    touch();
}

/// Gives every metric its help text (and unit) for `/metrics`.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        LOCK_WAIT,
        metrics::Unit::Seconds,
        "Time a job of this process waited for its instance's lease (outcome: acquired, timeout)"
    );
    describe_counter!(
        INSTANCE_SYNCS,
        "Instance syncs this process ended, by result (completed, failed, cancelled)"
    );
    describe_histogram!(
        INSTANCE_SYNC_DURATION,
        metrics::Unit::Seconds,
        "Time this process spent reading one instance, by kind and result"
    );
    describe_counter!(
        RECORDS_RESCUED,
        "Records whose lease lapsed that this process's rescuer requeued, failed or cancelled"
    );
    describe_gauge!(
        JOBS,
        "Jobs of the sync queue in the database, by state (fleet-wide)"
    );
    describe_gauge!(
        DB_POOL,
        "Connections of this process's database pool, idle or in use"
    );
    describe_gauge!(
        LOCKS_HELD,
        "Live instance leases in sync_locks (fleet-wide)"
    );
    describe_gauge!(SESSIONS_RUNNING, "Sessions running (fleet-wide)");
    describe_counter!(
        SCHEDULE_FIRED,
        "Cron slots this process claimed, by schedule (sync, cleanup)"
    );
    describe_counter!(
        SCHEDULE_SKIPPED,
        "Claimed sync slots this process skipped: the last scheduled session still ran, or no instance was active"
    );
    describe_gauge!(
        OLDEST_SESSION,
        metrics::Unit::Seconds,
        "Age of the oldest pending or running session, 0 when none (fleet-wide)"
    );
    describe_gauge!(
        RECORDS_UNLEASED,
        "Running records without a live lease; the rescuer hands them on within a lease TTL (fleet-wide)"
    );
    describe_gauge!(
        SCHEDULE_SLOTS,
        "Cron slots of the last 24 hours, by outcome: fired (started a session) or skipped (the last one still ran)"
    );
    describe_counter!(
        LOCK_TAKEOVERS,
        "Leases this process took over from a holder whose lease had expired"
    );
    describe_counter!(
        LOCK_LOST,
        "Leases this process lost (renewal refused or deadline passed) while syncing"
    );
    describe_counter!(
        ACCOUNT_CHANGES,
        "Account changes this process recorded in the history, by kind (baseline, added, removed, changed) and sensitive (true: superuser, CREATEROLE, BYPASSRLS, REPLICATION, ALL PRIVILEGES ON *.*, SUPER, grant option or unlock gained)"
    );
    describe_counter!(
        DB_BUSY,
        "Times this process waited on SQLite's write lock (busy handler calls)"
    );
}

/// Creates every series with each of its label values, at zero.
fn touch() {
    for outcome in ["acquired", "timeout"] {
        let _ = histogram!(LOCK_WAIT, "outcome" => outcome);
    }
    for result in ["completed", "failed", "cancelled"] {
        counter!(INSTANCE_SYNCS, "result" => result).absolute(0);
    }
    for outcome in ["requeued", "failed", "cancelled"] {
        counter!(RECORDS_RESCUED, "outcome" => outcome).absolute(0);
    }
    for state in ["pending", "running", "failed"] {
        gauge!(JOBS, "state" => state).set(0.0);
    }
    for state in ["idle", "in_use"] {
        gauge!(DB_POOL, "state" => state).set(0.0);
    }
    gauge!(LOCKS_HELD).set(0.0);
    gauge!(SESSIONS_RUNNING).set(0.0);
    gauge!(OLDEST_SESSION).set(0.0);
    gauge!(RECORDS_UNLEASED).set(0.0);
    for outcome in ["fired", "skipped"] {
        gauge!(SCHEDULE_SLOTS, "outcome" => outcome).set(0.0);
    }
    for kind in crate::model::ChangeKind::ALL {
        for sensitive in ["true", "false"] {
            counter!(ACCOUNT_CHANGES, "kind" => kind.as_str(), "sensitive" => sensitive)
                .absolute(0);
        }
    }
    counter!(LOCK_TAKEOVERS).absolute(0);
    counter!(LOCK_LOST).absolute(0);
    counter!(DB_BUSY).absolute(0);
}

/// Logs a session this process finished. Its metrics are not recorded here: every
/// finish is counted in the database, in the finishing transaction, and every process
/// renders the fleet's figures from there ([`render_sessions`]).
pub fn session_finished(f: &SessionFinished) {
    tracing::info!(
        sync_type = %f.sync_type,
        status = %f.status,
        duration_s = f.duration_seconds,
        success_rate = f.success_rate,
        "session finished"
    );
}

/// The fleet-wide session metrics in Prometheus' text format: the duration histogram and
/// the finished counter by type and status (every combination, zero until it happens),
/// and the success ratio of each type's last finished, not cancelled, session (absent
/// until there is one: a zero would read as a failed session).
pub fn render_sessions(g: &FleetGauges) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // Every type and status, zero until it happens, so each series exists from the start.
    let zero = |sync_type, status| SessionStat {
        sync_type,
        status,
        finished: 0,
        duration_sum: 0.0,
        buckets: vec![0; SESSION_DURATION_BUCKETS.len()],
    };
    let combos: Vec<(SyncType, SessionStatus, SessionStat)> = SyncType::ALL
        .iter()
        .flat_map(|&t| SessionStatus::FINISHED.iter().map(move |&st| (t, st)))
        .map(|(t, st)| {
            let s = g
                .session_stats
                .iter()
                .find(|s| s.sync_type == t && s.status == st)
                .cloned()
                .unwrap_or_else(|| zero(t, st));
            (t, st, s)
        })
        .collect();
    let _ = writeln!(
        out,
        "# HELP {SESSION_DURATION} Time from start to end of every finished session of the fleet (from the database)\n# TYPE {SESSION_DURATION} histogram"
    );
    for (t, st, s) in &combos {
        let labels = format!("sync_type=\"{t}\",status=\"{st}\"");
        for (le, n) in SESSION_DURATION_BUCKETS.iter().zip(&s.buckets) {
            let _ = writeln!(out, "{SESSION_DURATION}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{SESSION_DURATION}_bucket{{{labels},le=\"+Inf\"}} {}",
            s.finished
        );
        let _ = writeln!(out, "{SESSION_DURATION}_sum{{{labels}}} {}", s.duration_sum);
        let _ = writeln!(out, "{SESSION_DURATION}_count{{{labels}}} {}", s.finished);
    }
    let _ = writeln!(
        out,
        "# HELP {SESSIONS_FINISHED} Sessions of the fleet finished, by type and status (from the database)\n# TYPE {SESSIONS_FINISHED} counter"
    );
    for (t, st, s) in &combos {
        let _ = writeln!(
            out,
            "{SESSIONS_FINISHED}{{sync_type=\"{t}\",status=\"{st}\"}} {}",
            s.finished
        );
    }
    let _ = writeln!(
        out,
        "# HELP {SESSION_SUCCESS} Share of instances synced successfully in the last finished, not cancelled, session of each type (from the database)\n# TYPE {SESSION_SUCCESS} gauge"
    );
    for (t, ratio) in &g.last_success {
        let _ = writeln!(out, "{SESSION_SUCCESS}{{sync_type=\"{t}\"}} {ratio}");
    }
    // One series per configured limit, gone with the limit (rendered here, not kept in
    // the process's registry, which would keep a removed limit's last value). A key is
    // `group:` or `host:` and a name or host of a restricted alphabet
    // (`validate::limit_key`): nothing to escape, and as many series as limits set.
    for (name, help, value) in [
        (
            LIMIT_IN_USE,
            "Syncs running under each concurrency limit (fleet-wide, from the database)",
            (|l: &Limit| l.in_use) as fn(&Limit) -> i64,
        ),
        (
            LIMIT_MAX,
            "Each concurrency limit's maximum",
            |l: &Limit| l.max_concurrent,
        ),
        (
            LIMIT_WAITING,
            "Jobs waiting for a slot of each concurrency limit (fleet-wide, from the database)",
            |l: &Limit| l.waiting,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for l in &g.limits {
            let _ = writeln!(out, "{name}{{limit=\"{}\"}} {}", l.key, value(l));
        }
    }
    render_drift_and_webhooks(g, &mut out);
    out
}

/// The policy's and the webhooks' fleet-wide gauges.
fn render_drift_and_webhooks(g: &FleetGauges, out: &mut String) {
    use std::fmt::Write;
    // Rule names are letters, digits, '-', '_' and '.' (`policy::check`): nothing to
    // escape, and as many series as rules an admin wrote.
    let _ = writeln!(
        out,
        "# HELP {POLICY_VIOLATIONS} Open policy violations by rule (fleet-wide, from the database)\n# TYPE {POLICY_VIOLATIONS} gauge"
    );
    for (rule, n) in &g.violations {
        let _ = writeln!(out, "{POLICY_VIOLATIONS}{{rule=\"{rule}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP {WEBHOOK_DELIVERIES} Webhook deliveries by state (fleet-wide, from the database)\n# TYPE {WEBHOOK_DELIVERIES} gauge"
    );
    for (state, n) in &g.deliveries {
        let _ = writeln!(out, "{WEBHOOK_DELIVERIES}{{state=\"{state}\"}} {n}");
    }
}

/// Counts one finished instance sync and its duration.
pub fn instance_synced(kind: &str, result: &'static str, seconds: f64) {
    counter!(INSTANCE_SYNCS, "result" => result).increment(1);
    // `kind` comes from a fixed set (postgres, mysql, simulated), never from user text.
    histogram!(INSTANCE_SYNC_DURATION, "kind" => kind.to_string(), "result" => result)
        .record(seconds);
}

/// Counts the account changes a committed finish recorded.
pub fn account_changes(tally: &crate::history::ChangeTally) {
    for ((kind, sensitive), n) in &tally.0 {
        let sensitive = if *sensitive { "true" } else { "false" };
        counter!(ACCOUNT_CHANGES, "kind" => kind.as_str(), "sensitive" => sensitive).increment(*n);
    }
}

/// Sets the fleet-wide gauges from one read of the database.
pub fn fleet(g: &FleetGauges) {
    gauge!(JOBS, "state" => "pending").set(g.jobs_pending as f64);
    gauge!(JOBS, "state" => "running").set(g.jobs_running as f64);
    gauge!(JOBS, "state" => "failed").set(g.jobs_failed as f64);
    gauge!(LOCKS_HELD).set(g.locks_held as f64);
    gauge!(SESSIONS_RUNNING).set(g.sessions_running as f64);
    gauge!(OLDEST_SESSION).set(g.oldest_session_seconds);
    gauge!(RECORDS_UNLEASED).set(g.records_unleased as f64);
    gauge!(SCHEDULE_SLOTS, "outcome" => "fired").set(g.slots_fired_24h as f64);
    gauge!(SCHEDULE_SLOTS, "outcome" => "skipped").set(g.slots_skipped_24h as f64);
}

/// Sets the connection-pool gauges of this process.
pub fn pool(size: u32, idle: usize) {
    gauge!(DB_POOL, "state" => "idle").set(idle as f64);
    gauge!(DB_POOL, "state" => "in_use").set(size.saturating_sub(idle as u32) as f64);
}
