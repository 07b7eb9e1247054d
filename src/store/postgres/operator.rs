//! The operator's reads on PostgreSQL: leases with their waiting jobs, the queue's depth,
//! and the console's instance views. Read-only, each in one REPEATABLE READ snapshot
//! where it reads twice.

use std::collections::BTreeMap;

use sqlx::{PgPool, Row};

use super::{instance_from_row, record_from_row};
use crate::model::{
    InstanceOverview, InstanceSync, JOB_STATES, Lease, OldestJob, QueueStats, WAITERS_SHOWN,
    WaitingJob, attach_waiters,
};
use crate::queue;
use crate::store::{Result, parse_status};

async fn snapshot(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The lease rows shown: live ones, and lapsed ones whose record still runs under
/// them (a holder that stopped renewing, not yet taken over). A released lease keeps
/// its row with `expires_at` set to the release time; it is not shown. Both halves are
/// index reads (the expiry index; the partial index of running records), so the page
/// costs the same with 100,000 released rows (one OR over the table took 450 ms).
const SHOWN: &str = "l.id IN (SELECT id FROM sync_locks WHERE expires_at > now() \
     UNION SELECT l2.id FROM sync_instance_records h JOIN sync_locks l2 \
     ON l2.instance_id = h.instance_id AND l2.token = h.lock_token WHERE h.status = 'running')";

pub(super) async fn locks_list(pool: &PgPool) -> Result<Vec<Lease>> {
    let mut tx = snapshot(pool).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT l.instance_id, COALESCE((SELECT r.instance_name FROM sync_instance_records r \
         WHERE r.id = l.record_id), i.name, '') AS instance_name, l.session_id, l.record_id, \
         l.owner, l.token, l.locked_at, l.expires_at, \
         EXTRACT(EPOCH FROM clock_timestamp() - l.locked_at)::float8 AS age, \
         EXTRACT(EPOCH FROM l.expires_at - clock_timestamp())::float8 AS expires_in, \
         l.expires_at <= clock_timestamp() AS expired, \
         (SELECT COUNT(*) FROM sync_instance_records r WHERE r.instance_id = l.instance_id \
          AND r.status = 'pending' AND r.id <> l.record_id) AS waiting_total \
         FROM sync_locks l LEFT JOIN instances i ON i.id = l.instance_id \
         WHERE {SHOWN} ORDER BY l.locked_at, l.instance_id"
    )))
    .fetch_all(&mut *tx)
    .await?;
    let mut leases = rows
        .iter()
        .map(|r| {
            Ok(Lease {
                instance_id: r.try_get("instance_id")?,
                instance_name: r.try_get("instance_name")?,
                session_id: r.try_get("session_id")?,
                record_id: r.try_get("record_id")?,
                holder: r.try_get("owner")?,
                token: r.try_get("token")?,
                locked_at: r.try_get("locked_at")?,
                expires_at: r.try_get("expires_at")?,
                age_seconds: r.try_get("age")?,
                expires_in_seconds: r.try_get("expires_in")?,
                expired: r.try_get("expired")?,
                waiting: Vec::new(),
                waiting_total: r.try_get("waiting_total")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if leases.iter().any(|l| l.waiting_total > 0) {
        // The oldest few waiters of every leased instance, in one statement.
        let waiters = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM (SELECT r.id, r.instance_id, s.session_id, r.attempts, r.created_at, \
             EXTRACT(EPOCH FROM clock_timestamp() - r.created_at)::float8 AS waited, \
             ROW_NUMBER() OVER (PARTITION BY r.instance_id ORDER BY r.id) AS n \
             FROM sync_locks l JOIN sync_instance_records r ON r.instance_id = l.instance_id \
             AND r.status = 'pending' AND r.id <> l.record_id \
             JOIN sync_sessions s ON s.id = r.session_id WHERE {SHOWN}) w WHERE n <= $1"
        )))
        .bind(WAITERS_SHOWN as i64)
        .fetch_all(&mut *tx)
        .await?;
        let waiters = waiters
            .iter()
            .map(|w| {
                Ok((
                    w.try_get("instance_id")?,
                    WaitingJob {
                        record_id: w.try_get("id")?,
                        session_id: w.try_get("session_id")?,
                        attempts: w.try_get("attempts")?,
                        waiting_since: w.try_get("created_at")?,
                        waited_seconds: w.try_get("waited")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        attach_waiters(&mut leases, waiters);
    }
    tx.commit().await?;
    Ok(leases)
}

pub(super) async fn queue_stats(pool: &PgPool, cap: Option<i64>) -> Result<QueueStats> {
    // Each count reads the (job_type, status, run_at) index (migration 0007), at most
    // `cap + 1` entries of it when capped (LIMIT NULL: no limit).
    let limit = cap.map(|c| c + 1);
    let mut tx = snapshot(pool).await?;
    // One count per state, each naming its state in the statement (constants, not input):
    // with the state a parameter, one plan served all six and read the whole table. The
    // ORDER BY is the index's own order: without it a common state (done jobs, whose
    // newest versions sit at the table's end) was counted by a sequential scan, 20 ms.
    let counts = JOB_STATES
        .iter()
        .map(|st| {
            format!(
                "(SELECT COUNT(*) FROM (SELECT 1 FROM apalis.jobs WHERE job_type = $1 \
                 AND status = '{st}' ORDER BY run_at LIMIT $2) x)"
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {counts}")))
        .bind(queue::QUEUE)
        .bind(limit)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
    let mut depth = BTreeMap::new();
    for (i, st) in JOB_STATES.iter().enumerate() {
        depth.insert(st.to_string(), row.try_get::<i64, _>(i)?);
    }
    let due = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending' \
         AND run_at <= now() ORDER BY run_at LIMIT $2) x), (SELECT COUNT(*) FROM (SELECT 1 \
         FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending' AND run_at > now() \
         ORDER BY run_at LIMIT $2) y)",
    )
    .bind(queue::QUEUE)
    .bind(limit)
    .persistent(false)
    .fetch_one(&mut *tx)
    .await?;
    // The job due longest: the head of apalis' fetch order (its partial index on
    // job_type, priority, run_at).
    let oldest = sqlx::query(
        "SELECT id, run_at, attempts, GREATEST(EXTRACT(EPOCH FROM now() - run_at), 0)::float8 AS waited \
         FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending' AND lock_by IS NULL \
         ORDER BY priority DESC, run_at LIMIT 1",
    )
    .bind(queue::QUEUE)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let oldest_pending = oldest
        .map(|r| -> Result<OldestJob> {
            Ok(OldestJob {
                job_id: r.try_get("id")?,
                run_at: r.try_get("run_at")?,
                waited_seconds: r.try_get("waited")?,
                attempts: r.try_get::<i32, _>("attempts")? as i64,
            })
        })
        .transpose()?;
    Ok(QueueStats {
        depth,
        ready: due.try_get(0)?,
        delayed: due.try_get(1)?,
        oldest_pending,
        counted_up_to: cap,
    })
}

pub(super) async fn instance_overview(
    pool: &PgPool,
    limit: i64,
    after: i64,
) -> Result<Vec<InstanceOverview>> {
    sqlx::query(
        "SELECT i.*, last.status AS last_status, last.at AS last_sync_at, \
         (SELECT COUNT(*) FROM instance_accounts a WHERE a.instance_id = i.id AND a.deleted_at IS NULL) AS account_count \
         FROM instances i LEFT JOIN LATERAL (SELECT r.status, COALESCE(r.completed_at, r.started_at, r.created_at) AS at \
         FROM sync_instance_records r WHERE r.instance_id = i.id ORDER BY r.id DESC LIMIT 1) last ON true \
         WHERE i.id > $1 ORDER BY i.id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        let last: Option<String> = r.try_get("last_status")?;
        Ok(InstanceOverview {
            instance: instance_from_row(r)?,
            last_status: last.map(parse_status).transpose()?,
            last_sync_at: r.try_get("last_sync_at")?,
            account_count: r.try_get("account_count")?,
        })
    })
    .collect()
}

pub(super) async fn instance_syncs(
    pool: &PgPool,
    instance_id: i64,
    limit: i64,
) -> Result<Vec<InstanceSync>> {
    sqlx::query(
        "SELECT r.*, s.session_id AS public_id, s.sync_type FROM sync_instance_records r \
         JOIN sync_sessions s ON s.id = r.session_id WHERE r.instance_id = $1 \
         ORDER BY r.id DESC LIMIT $2",
    )
    .bind(instance_id)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(InstanceSync {
            session_id: r.try_get("public_id")?,
            sync_type: r.try_get("sync_type")?,
            record: record_from_row(r)?,
        })
    })
    .collect()
}
