//! The operator's reads: leases with their waiting jobs, the queue's depth, the
//! console's instance views and the fleet-wide gauges. Read-only; each reads one
//! snapshot where it reads twice.

use std::collections::BTreeMap;

use super::{Backend, SqlStore, count, rows};
use crate::model::{
    FleetGauges, InstanceOverview, InstanceSync, JOB_STATES, Lease, OldestJob, QueueStats,
    SESSION_DURATION_BUCKETS, SessionStat, SyncType, WAITERS_SHOWN, WaitingJob, attach_waiters,
};
use crate::queue;
use crate::store::sql::{Fetch, Q};
use crate::store::{Result, batch, parse_status};

/// The lease rows shown: live ones, and lapsed ones whose record still runs under
/// them (a holder that stopped renewing, not yet taken over). A released lease keeps
/// its row with `expires_at` set to the release time; it is not shown. Both halves are
/// index reads (the expiry index; the partial index of running records), so the page
/// costs the same with 100,000 released rows (one OR over the table took 300 ms on
/// SQLite, 450 ms on PostgreSQL).
fn shown<D: Backend>() -> String {
    format!(
        "l.id IN (SELECT id FROM sync_locks WHERE expires_at > {} \
         UNION SELECT l2.id FROM sync_instance_records h JOIN sync_locks l2 \
         ON l2.instance_id = h.instance_id AND l2.token = h.lock_token WHERE h.status = 'running')",
        D::SQL.now
    )
}

pub(super) async fn locks<D: Backend>(s: &SqlStore<D>) -> Result<Vec<Lease>> {
    let mut tx = s.snapshot().await?;
    let q = Q::new(format!(
        "SELECT l.instance_id, COALESCE((SELECT r.instance_name FROM sync_instance_records r \
         WHERE r.id = l.record_id), i.name, '') AS instance_name, l.session_id, l.record_id, \
         l.owner, l.token, l.locked_at, l.expires_at, {age} AS age, {left} AS expires_in, \
         l.expires_at <= {now} AS expired, \
         (SELECT COUNT(*) FROM sync_instance_records r WHERE r.instance_id = l.instance_id \
          AND r.status = 'pending' AND r.id <> l.record_id) AS waiting_total \
         FROM sync_locks l LEFT JOIN instances i ON i.id = l.instance_id \
         WHERE {shown} ORDER BY l.locked_at, l.instance_id",
        age = D::seconds_since("l.locked_at"),
        left = D::seconds_until("l.expires_at"),
        now = D::SQL.now,
        shown = shown::<D>(),
    ));
    let mut leases = D::all(&mut tx, q)
        .await?
        .iter()
        .map(|r| {
            Ok(Lease {
                instance_id: D::get(r, "instance_id")?,
                instance_name: D::get(r, "instance_name")?,
                session_id: D::get(r, "session_id")?,
                record_id: D::get(r, "record_id")?,
                holder: D::get(r, "owner")?,
                token: D::get(r, "token")?,
                locked_at: D::get(r, "locked_at")?,
                expires_at: D::get(r, "expires_at")?,
                age_seconds: D::get(r, "age")?,
                expires_in_seconds: D::get(r, "expires_in")?,
                expired: D::get(r, "expired")?,
                waiting: Vec::new(),
                waiting_total: D::get(r, "waiting_total")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if leases.iter().any(|l| l.waiting_total > 0) {
        // The oldest few waiters of every leased instance, in one statement.
        let q = Q::new(format!(
            "SELECT * FROM (SELECT r.id, r.instance_id, s.session_id, r.attempts, r.created_at, \
             {waited} AS waited, \
             ROW_NUMBER() OVER (PARTITION BY r.instance_id ORDER BY r.id) AS n \
             FROM sync_locks l JOIN sync_instance_records r ON r.instance_id = l.instance_id \
             AND r.status = 'pending' AND r.id <> l.record_id \
             JOIN sync_sessions s ON s.id = r.session_id WHERE {shown}) w WHERE n <= $1",
            waited = D::seconds_since("r.created_at"),
            shown = shown::<D>(),
        ))
        .bind(WAITERS_SHOWN as i64);
        let waiters = D::all(&mut tx, q)
            .await?
            .iter()
            .map(|w| {
                Ok((
                    D::get(w, "instance_id")?,
                    WaitingJob {
                        record_id: D::get(w, "id")?,
                        session_id: D::get(w, "session_id")?,
                        attempts: D::get(w, "attempts")?,
                        waiting_since: D::get(w, "created_at")?,
                        waited_seconds: D::get(w, "waited")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        attach_waiters(&mut leases, waiters);
    }
    tx.commit().await?;
    Ok(leases)
}

pub(super) async fn queue_stats<D: Backend>(
    s: &SqlStore<D>,
    cap: Option<i64>,
) -> Result<QueueStats> {
    // Each count reads apalis' (job_type, status, run_at) index, at most `cap + 1`
    // entries of it when capped.
    let limit = cap.map(|c| c + 1).or(D::SQL.no_limit);
    let mut tx = s.snapshot().await?;
    // One count per state, each naming its state in the statement (constants, not input):
    // with the state a parameter, one PostgreSQL plan served all six and read the whole
    // table. The ORDER BY is the index's own order: without it a common state (done jobs,
    // whose newest versions sit at the table's end) was counted by a sequential scan.
    let counts = JOB_STATES
        .iter()
        .enumerate()
        .map(|(i, st)| {
            format!(
                "(SELECT COUNT(*) FROM (SELECT 1 FROM {} WHERE job_type = $1 \
                 AND status = '{st}' ORDER BY run_at LIMIT $2) x) AS s{i}",
                D::SQL.jobs
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let q = Q::new(format!("SELECT {counts}"))
        .bind(queue::QUEUE)
        .bind(limit)
        .unprepared();
    let row = D::one(&mut tx, q).await?;
    let mut depth = BTreeMap::new();
    for (i, st) in JOB_STATES.iter().enumerate() {
        depth.insert(st.to_string(), D::get::<i64>(&row, &format!("s{i}"))?);
    }
    let q = Q::new(D::SQL.queue_due)
        .bind(queue::QUEUE)
        .bind(limit)
        .unprepared();
    let due = D::one(&mut tx, q).await?;
    let q = Q::new(D::SQL.queue_oldest).bind(queue::QUEUE);
    let oldest = D::opt(&mut tx, q).await?;
    tx.commit().await?;
    let oldest_pending = oldest
        .map(|r| -> Result<OldestJob> {
            Ok(OldestJob {
                job_id: D::get(&r, "id")?,
                run_at: D::queue_time_at(&r, "run_at")?,
                waited_seconds: D::get(&r, "waited")?,
                attempts: D::get(&r, "attempts")?,
            })
        })
        .transpose()?;
    Ok(QueueStats {
        depth,
        ready: D::get(&due, "ready")?,
        delayed: D::get(&due, "delayed")?,
        oldest_pending,
        counted_up_to: cap,
    })
}

pub(super) async fn overview<D: Backend>(
    s: &SqlStore<D>,
    limit: i64,
    after: i64,
) -> Result<Vec<InstanceOverview>> {
    let q = Q::new(D::SQL.instance_overview).bind(after).bind(limit);
    D::all(&s.pool, q)
        .await?
        .iter()
        .map(|r| {
            let last: Option<String> = D::get(r, "last_status")?;
            Ok(InstanceOverview {
                instance: rows::instance::<D>(r)?,
                last_status: last.map(parse_status).transpose()?,
                last_sync_at: D::get(r, "last_sync_at")?,
                account_count: D::get(r, "account_count")?,
            })
        })
        .collect()
}

pub(super) async fn syncs<D: Backend>(
    s: &SqlStore<D>,
    instance_id: i64,
    limit: i64,
) -> Result<Vec<InstanceSync>> {
    let q = Q::new(
        "SELECT r.*, s.session_id AS public_id, s.sync_type FROM sync_instance_records r \
         JOIN sync_sessions s ON s.id = r.session_id WHERE r.instance_id = $1 \
         ORDER BY r.id DESC LIMIT $2",
    )
    .bind(instance_id)
    .bind(limit);
    D::all(&s.pool, q)
        .await?
        .iter()
        .map(|r| {
            Ok(InstanceSync {
                session_id: D::get(r, "public_id")?,
                sync_type: parse_status(D::get(r, "sync_type")?)?,
                record: rows::record::<D>(r)?,
            })
        })
        .collect()
}

/// The fleet-wide session metrics (migration 0005): per type and status, and each
/// type's last success rate.
pub(crate) async fn session_stats<D: Fetch>(
    pool: &sqlx::Pool<D>,
) -> Result<(Vec<SessionStat>, Vec<(SyncType, f64)>)> {
    let rows = D::all(pool, Q::new(batch::session_stats_select())).await?;
    let mut stats = Vec::with_capacity(rows.len());
    for r in &rows {
        stats.push(SessionStat {
            sync_type: parse_status(D::get(r, "sync_type")?)?,
            status: parse_status(D::get(r, "status")?)?,
            finished: D::get(r, "finished")?,
            duration_sum: D::get(r, "duration_sum")?,
            buckets: SESSION_DURATION_BUCKETS
                .iter()
                .map(|b| D::get::<i64>(r, &format!("le_{b}")))
                .collect::<Result<_>>()?,
        });
    }
    let q = Q::new("SELECT sync_type, success_rate FROM session_last_finished ORDER BY sync_type");
    let last = D::all(pool, q)
        .await?
        .iter()
        .map(|r| {
            let sync_type = parse_status(D::get(r, "sync_type")?)?;
            Ok((sync_type, D::get(r, "success_rate")?))
        })
        .collect::<Result<_>>()?;
    Ok((stats, last))
}

pub(super) async fn gauges<D: Backend>(s: &SqlStore<D>) -> Result<FleetGauges> {
    let q = Q::new(format!(
        "SELECT COUNT(*) FILTER (WHERE status = 'Pending') AS pending, \
         COUNT(*) FILTER (WHERE status IN ('Queued', 'Running')) AS running, \
         COUNT(*) FILTER (WHERE status IN ('Failed', 'Killed')) AS failed \
         FROM {} WHERE job_type = $1",
        D::SQL.jobs
    ))
    .bind(queue::QUEUE);
    let jobs = D::one(&s.pool, q).await?;
    let q = Q::new(format!(
        "SELECT COUNT(*) AS n FROM sync_locks WHERE expires_at > {}",
        D::SQL.now
    ));
    let locks = count(&s.pool, q).await?;
    let q = Q::new("SELECT COUNT(*) AS n FROM sync_sessions WHERE status = 'running'");
    let sessions = count(&s.pool, q).await?;
    let (session_stats, last_success) = session_stats(&s.pool).await?;
    // Oldest unfinished session's age, running records without a live lease (the
    // rescuer should leave none for long), and the scheduler's slots of the last day.
    let age = D::one(&s.pool, Q::new(D::SQL.oldest_session_age)).await?;
    let q = Q::new(format!(
        "SELECT COUNT(*) AS n FROM sync_instance_records r WHERE {}",
        D::SQL.unleased_running
    ));
    let unleased = count(&s.pool, q).await?;
    let q = Q::new(format!(
        "SELECT COUNT(*) FILTER (WHERE NOT skipped) AS fired, \
         COUNT(*) FILTER (WHERE skipped) AS skipped FROM schedule_slots WHERE created_at > {}",
        D::SQL.day_ago
    ));
    let slots = D::one(&s.pool, q).await?;
    let limits = super::limits::list(s).await?;
    let violations = crate::store::PolicyStore::violations_by_rule(s).await?;
    let deliveries = crate::store::WebhookStore::deliveries_by_state(s).await?;
    Ok(FleetGauges {
        limits,
        violations,
        deliveries,
        jobs_pending: D::get(&jobs, "pending")?,
        jobs_running: D::get(&jobs, "running")?,
        jobs_failed: D::get(&jobs, "failed")?,
        locks_held: locks,
        sessions_running: sessions,
        session_stats,
        last_success,
        oldest_session_seconds: D::get(&age, "age")?,
        records_unleased: unleased,
        slots_fired_24h: D::get(&slots, "fired")?,
        slots_skipped_24h: D::get(&slots, "skipped")?,
    })
}
