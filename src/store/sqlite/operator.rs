//! The operator's reads on SQLite: leases with their waiting jobs, the queue's depth,
//! and the console's instance views. Read-only; none of them takes the write lock.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::{instance_from_row, now, record_from_row};
use crate::model::{
    InstanceOverview, InstanceSync, JOB_STATES, Lease, OldestJob, QueueStats, WAITERS_SHOWN,
    WaitingJob, attach_waiters,
};
use crate::queue;
use crate::store::{Result, StoreError, parse_status};

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Other(e.to_string()))
}

/// The lease rows shown: live ones, and lapsed ones whose record still runs under
/// them (a holder that stopped renewing, not yet taken over). A released lease keeps
/// its row with `expires_at` set to the release time; it is not shown. Both halves are
/// index reads (the expiry index; the partial index of running records), so the page
/// costs the same with 100,000 released rows (one OR over the table took 300 ms).
macro_rules! shown {
    () => {
        concat!(
            "l.id IN (SELECT id FROM sync_locks WHERE expires_at > ",
            now!(),
            " UNION SELECT l2.id FROM sync_instance_records h JOIN sync_locks l2 ",
            "ON l2.instance_id = h.instance_id AND l2.token = h.lock_token WHERE h.status = 'running')"
        )
    };
}

pub(super) async fn locks_list(pool: &SqlitePool) -> Result<Vec<Lease>> {
    // One read transaction: the leases and their waiters come from one snapshot.
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(concat!(
        "SELECT l.instance_id, COALESCE((SELECT r.instance_name FROM sync_instance_records r ",
        "WHERE r.id = l.record_id), i.name, '') AS instance_name, l.session_id, l.record_id, ",
        "l.owner, l.token, l.locked_at, l.expires_at, ",
        "(julianday('now') - julianday(l.locked_at)) * 86400.0 AS age, ",
        "(julianday(l.expires_at) - julianday('now')) * 86400.0 AS expires_in, ",
        "l.expires_at <= ",
        now!(),
        " AS expired, ",
        "(SELECT COUNT(*) FROM sync_instance_records r WHERE r.instance_id = l.instance_id ",
        "AND r.status = 'pending' AND r.id <> l.record_id) AS waiting_total ",
        "FROM sync_locks l LEFT JOIN instances i ON i.id = l.instance_id WHERE ",
        shown!(),
        " ORDER BY l.locked_at, l.instance_id"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let mut leases = rows
        .iter()
        .map(|r| {
            Ok(Lease {
                instance_id: r.try_get("instance_id")?,
                instance_name: r.try_get("instance_name")?,
                session_id: uuid(r.try_get("session_id")?)?,
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
        let waiters = sqlx::query(concat!(
            "SELECT * FROM (SELECT r.id, r.instance_id, s.session_id, r.attempts, r.created_at, \
             (julianday('now') - julianday(r.created_at)) * 86400.0 AS waited, \
             ROW_NUMBER() OVER (PARTITION BY r.instance_id ORDER BY r.id) AS n \
             FROM sync_locks l JOIN sync_instance_records r ON r.instance_id = l.instance_id \
             AND r.status = 'pending' AND r.id <> l.record_id \
             JOIN sync_sessions s ON s.id = r.session_id WHERE ",
            shown!(),
            ") WHERE n <= ?1"
        ))
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
                        session_id: uuid(w.try_get("session_id")?)?,
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

pub(super) async fn queue_stats(pool: &SqlitePool, cap: Option<i64>) -> Result<QueueStats> {
    // Each count reads apalis' (job_type, status, run_at) index, at most `cap + 1` entries
    // of it when capped (LIMIT -1: no limit).
    let limit = cap.map(|c| c + 1).unwrap_or(-1);
    let mut tx = pool.begin().await?;
    let mut depth = BTreeMap::new();
    for state in JOB_STATES {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM Jobs WHERE job_type = ?1 AND status = ?2 LIMIT ?3)",
        )
        .bind(queue::QUEUE)
        .bind(state)
        .bind(limit)
        .fetch_one(&mut *tx)
        .await?;
        depth.insert(state.to_string(), n);
    }
    let due = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM Jobs WHERE job_type = ?1 AND status = 'Pending' \
         AND run_at <= unixepoch() LIMIT ?2)), (SELECT COUNT(*) FROM (SELECT 1 FROM Jobs \
         WHERE job_type = ?1 AND status = 'Pending' AND run_at > unixepoch() LIMIT ?2))",
    )
    .bind(queue::QUEUE)
    .bind(limit)
    .fetch_one(&mut *tx)
    .await?;
    // The head of apalis' own fetch order (its partial index): the job due longest.
    let oldest = sqlx::query(
        "SELECT id, run_at, attempts, unixepoch() AS now FROM Jobs WHERE job_type = ?1 \
         AND status = 'Pending' AND lock_by IS NULL ORDER BY priority DESC, run_at, id LIMIT 1",
    )
    .bind(queue::QUEUE)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let oldest_pending = oldest
        .map(|r| -> Result<OldestJob> {
            let run_at: i64 = r.try_get("run_at")?;
            let now: i64 = r.try_get("now")?;
            Ok(OldestJob {
                job_id: r.try_get("id")?,
                run_at: epoch(run_at),
                waited_seconds: (now - run_at).max(0) as f64,
                attempts: r.try_get("attempts")?,
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

fn epoch(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

pub(super) async fn instance_overview(
    pool: &SqlitePool,
    limit: i64,
    after: i64,
) -> Result<Vec<InstanceOverview>> {
    // Per instance, its newest record (the (instance_id, status) index holds the rowid)
    // and its live accounts (the unique (instance_id, username, host) index).
    sqlx::query(
        "SELECT i.*, \
         (SELECT r.status FROM sync_instance_records r WHERE r.instance_id = i.id ORDER BY r.id DESC LIMIT 1) AS last_status, \
         (SELECT COALESCE(r.completed_at, r.started_at, r.created_at) FROM sync_instance_records r \
          WHERE r.instance_id = i.id ORDER BY r.id DESC LIMIT 1) AS last_sync_at, \
         (SELECT COUNT(*) FROM instance_accounts a WHERE a.instance_id = i.id AND a.deleted_at IS NULL) AS account_count \
         FROM instances i WHERE i.id > ?1 ORDER BY i.id LIMIT ?2",
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
    pool: &SqlitePool,
    instance_id: i64,
    limit: i64,
) -> Result<Vec<InstanceSync>> {
    sqlx::query(
        "SELECT r.*, s.session_id AS public_id, s.sync_type FROM sync_instance_records r \
         JOIN sync_sessions s ON s.id = r.session_id WHERE r.instance_id = ?1 \
         ORDER BY r.id DESC LIMIT ?2",
    )
    .bind(instance_id)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(InstanceSync {
            session_id: uuid(r.try_get("public_id")?)?,
            sync_type: r.try_get("sync_type")?,
            record: record_from_row(r)?,
        })
    })
    .collect()
}
