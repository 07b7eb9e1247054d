//! The worker pipeline's statements on PostgreSQL: lease grants, renewals and finishes,
//! each run inside the one transaction of a group-commit batch (see `worker::writer`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use super::{instance_from_row, now};
use crate::model::*;
use crate::queue::{self, JobPayload};
use crate::store::*;

// ---- statements shared by the pipeline's batch steps (all run inside one transaction) ----

pub(super) async fn job_ack(tx: &mut PgConnection, job_id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Done', done_at = now(), last_result = '{\"Ok\":null}' \
         WHERE id = $1 AND status <> 'Done'",
    )
    .bind(job_id)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn job_push(
    tx: &mut PgConnection,
    job_id: &str,
    payload: &JobPayload,
    delay: Duration,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority) \
         VALUES ($1, $2, $3, 'Pending', 0, $4, now() + make_interval(secs => $5::float8), 0)",
    )
    .bind(payload.to_bytes())
    .bind(job_id)
    .bind(queue::QUEUE)
    .bind(queue::APALIS_MAX_ATTEMPTS as i32)
    .bind(delay.as_secs_f64().ceil())
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn lease_release(
    tx: &mut PgConnection,
    instance_id: i64,
    token: i64,
) -> Result<()> {
    // Expired, not deleted: the row keeps the last token for inspection until cleanup.
    sqlx::query(concat!(
        "UPDATE sync_locks SET expires_at = ",
        now!(),
        " WHERE instance_id = $1 AND token = $2"
    ))
    .bind(instance_id)
    .bind(token)
    .execute(tx)
    .await?;
    Ok(())
}

/// Adds to a session's totals and finishes it when its last record became terminal.
pub(super) async fn session_bump(
    tx: &mut PgConnection,
    session_row: i64,
    ok: i64,
    failed: i64,
    cancelled: i64,
) -> Result<Option<SessionFinished>> {
    let row = sqlx::query(concat!(
        "UPDATE sync_sessions SET successful_instances = successful_instances + $2, ",
        "failed_instances = failed_instances + $3, cancelled_instances = cancelled_instances + $4, ",
        "updated_at = ",
        now!(),
        " WHERE id = $1 RETURNING total_instances, successful_instances, failed_instances, ",
        "cancelled_instances, cancel_requested, status, sync_type"
    ))
    .bind(session_row)
    .bind(ok)
    .bind(failed)
    .bind(cancelled)
    .fetch_one(&mut *tx)
    .await?;
    let (total, s, f, c): (i64, i64, i64, i64) = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    let status: String = row.try_get(5)?;
    if s + f + c < total || FINISHED_SESSION_STATUSES.contains(&status.as_str()) {
        return Ok(None);
    }
    let final_status = final_status(row.try_get(4)?, s, f, c);
    let done = sqlx::query(concat!(
        "UPDATE sync_sessions SET status = $2, completed_at = ",
        now!(),
        ", started_at = COALESCE(started_at, ",
        now!(),
        "), updated_at = ",
        now!(),
        " WHERE id = $1 RETURNING started_at, completed_at"
    ))
    .bind(session_row)
    .bind(final_status)
    .fetch_one(&mut *tx)
    .await?;
    let (start, end): (DateTime<Utc>, DateTime<Utc>) = (done.try_get(0)?, done.try_get(1)?);
    Ok(Some(SessionFinished {
        sync_type: row.try_get(6)?,
        status: final_status.to_string(),
        duration_seconds: (end - start).num_microseconds().unwrap_or(0) as f64 / 1e6,
        success_rate: if total > 0 {
            s as f64 / total as f64
        } else {
            1.0
        },
    }))
}

/// A change to one session's totals: (session row, successful, failed, cancelled).
pub(super) type Bump = Option<(i64, i64, i64, i64)>;

/// Makes a record terminal without a sync (cancelled, or failed before it could start).
pub(super) async fn record_end_unsynced(
    tx: &mut PgConnection,
    record_id: i64,
    session_row: i64,
    job_id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<Bump> {
    record_terminal(tx, record_id, status, error).await?;
    job_ack(tx, job_id).await?;
    let (f, c) = if status == "cancelled" {
        (0, 1)
    } else {
        (1, 0)
    };
    Ok(Some((session_row, 0, f, c)))
}

pub(super) async fn record_terminal(
    tx: &mut PgConnection,
    record_id: i64,
    status: &str,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query(concat!(
        "UPDATE sync_instance_records SET status = $2, error = COALESCE($3, error), completed_at = ",
        now!(),
        ", updated_at = ",
        now!(),
        " WHERE id = $1"
    ))
    .bind(record_id)
    .bind(status)
    .bind(error)
    .execute(tx)
    .await?;
    Ok(())
}

/// Stores the accounts found by a sync and returns (added, removed, changed).
pub(super) async fn accounts_store(
    tx: &mut PgConnection,
    instance_id: i64,
    found: &[Account],
) -> Result<(i64, i64, i64)> {
    let stored: Vec<(String, String, serde_json::Value, serde_json::Value, bool)> = sqlx::query(
        "SELECT username, host, attributes, privileges, deleted_at IS NOT NULL FROM instance_accounts WHERE instance_id = $1",
    )
    .bind(instance_id)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
        ))
    })
    .collect::<Result<_>>()?;
    let diff = AccountDiff::compute(found, &stored);
    if diff.is_empty() {
        return Ok((0, 0, 0));
    }
    if !diff.added.is_empty() {
        let users: Vec<&str> = diff.added.iter().map(|a| a.username.as_str()).collect();
        let hosts: Vec<&str> = diff.added.iter().map(|a| a.host.as_str()).collect();
        let attrs: Vec<&serde_json::Value> = diff.added.iter().map(|a| &a.attributes).collect();
        let privs: Vec<&serde_json::Value> = diff.added.iter().map(|a| &a.privileges).collect();
        sqlx::query(concat!(
            "INSERT INTO instance_accounts (instance_id, username, host, attributes, privileges, first_seen_at, last_seen_at) ",
            "SELECT $1, u, h, a, p, ",
            now!(),
            ", ",
            now!(),
            " FROM UNNEST($2::text[], $3::text[], $4::jsonb[], $5::jsonb[]) AS t(u, h, a, p)"
        ))
        .bind(instance_id)
        .bind(&users)
        .bind(&hosts)
        .bind(&attrs)
        .bind(&privs)
        .execute(&mut *tx)
        .await?;
    }
    for a in diff.changed.iter().chain(diff.revived.iter()) {
        sqlx::query(concat!(
            "UPDATE instance_accounts SET attributes = $4, privileges = $5, deleted_at = NULL, last_seen_at = ",
            now!(),
            " WHERE instance_id = $1 AND username = $2 AND host = $3"
        ))
        .bind(instance_id)
        .bind(&a.username)
        .bind(&a.host)
        .bind(&a.attributes)
        .bind(&a.privileges)
        .execute(&mut *tx)
        .await?;
    }
    for (u, h) in &diff.removed {
        sqlx::query(concat!(
            "UPDATE instance_accounts SET deleted_at = ",
            now!(),
            " WHERE instance_id = $1 AND username = $2 AND host = $3"
        ))
        .bind(instance_id)
        .bind(u)
        .bind(h)
        .execute(&mut *tx)
        .await?;
    }
    Ok((
        (diff.added.len() + diff.revived.len()) as i64,
        diff.removed.len() as i64,
        diff.changed.len() as i64,
    ))
}

pub(super) async fn grant_one(
    tx: &mut PgConnection,
    p: &LeaseParams,
    req: &GrantRequest,
) -> Result<(GrantOutcome, Bump)> {
    let Some(rec) = sqlx::query(
        "SELECT r.status, r.attempts, r.job_id, r.session_id, s.cancel_requested, s.session_id AS uuid \
         FROM sync_instance_records r JOIN sync_sessions s ON s.id = r.session_id WHERE r.id = $1 FOR UPDATE OF r",
    )
    .bind(req.payload.record_id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        job_ack(tx, &req.job_id).await?;
        return Ok((GrantOutcome::Stale, None));
    };
    let status: String = rec.try_get("status")?;
    let job_id: Option<String> = rec.try_get("job_id")?;
    let session_row: i64 = rec.try_get("session_id")?;
    let session_uuid: uuid::Uuid = rec.try_get("uuid")?;
    let attempts: i64 = rec.try_get("attempts")?;
    if !(status == "pending" || status == "running")
        || job_id.as_deref() != Some(req.job_id.as_str())
    {
        job_ack(tx, &req.job_id).await?;
        return Ok((GrantOutcome::Stale, None));
    }
    let instance_id = req.payload.instance_id;
    let lock = sqlx::query(concat!(
        "SELECT l.expires_at > ",
        now!(),
        " AS live, r.status AS holder_status FROM sync_locks l ",
        "LEFT JOIN sync_instance_records r ON r.id = l.record_id WHERE l.instance_id = $1 FOR UPDATE OF l"
    ))
    .bind(instance_id)
    .fetch_optional(&mut *tx)
    .await?;
    let live = lock
        .as_ref()
        .map(|l| l.try_get::<bool, _>("live"))
        .transpose()?
        .unwrap_or(false);
    if rec.try_get::<bool, _>("cancel_requested")? {
        if status == "running" && live {
            // Its holder is still syncing and will see the cancel at its next heartbeat.
            job_ack(tx, &req.job_id).await?;
            return Ok((GrantOutcome::Stale, None));
        }
        let fin = record_end_unsynced(
            tx,
            req.payload.record_id,
            session_row,
            &req.job_id,
            "cancelled",
            None,
        )
        .await?;
        return Ok((
            GrantOutcome::Cancelled {
                session_finished: None,
            },
            fin,
        ));
    }
    if live {
        if status == "pending" && req.lock_wait_ms >= p.lock_wait_timeout.as_millis() as i64 {
            let error = format!(
                "gave up waiting for the lease of instance {instance_id}: another sync held it for more than {} s",
                p.lock_wait_timeout.as_secs()
            );
            let fin = record_end_unsynced(
                tx,
                req.payload.record_id,
                session_row,
                &req.job_id,
                "failed",
                Some(&error),
            )
            .await?;
            return Ok((
                GrantOutcome::Failed {
                    error,
                    lock_timeout: true,
                    session_finished: None,
                },
                fin,
            ));
        }
        // Wait without holding a worker slot: a delayed copy of this job takes over the record.
        let next_id = queue::new_job_id();
        let mut payload = req.payload.clone();
        let now_ms = Utc::now().timestamp_millis();
        payload
            .waiting_since_ms
            .get_or_insert(now_ms - req.lock_wait_ms);
        job_push(tx, &next_id, &payload, p.busy_retry).await?;
        sqlx::query("UPDATE sync_instance_records SET job_id = $2 WHERE id = $1")
            .bind(req.payload.record_id)
            .bind(&next_id)
            .execute(&mut *tx)
            .await?;
        job_ack(tx, &req.job_id).await?;
        return Ok((GrantOutcome::Busy, None));
    }
    let takeover = lock
        .as_ref()
        .map(|l| l.try_get::<Option<String>, _>("holder_status"))
        .transpose()?
        .flatten()
        .is_some_and(|s| s == "running");
    if attempts + 1 > p.max_attempts {
        // Only reachable by takeovers: a sync that keeps killing its worker must end.
        let error =
            format!("sync abandoned: its worker stopped during each of {attempts} attempts");
        let fin = record_end_unsynced(
            tx,
            req.payload.record_id,
            session_row,
            &req.job_id,
            "failed",
            Some(&error),
        )
        .await?;
        return Ok((
            GrantOutcome::Failed {
                error,
                lock_timeout: false,
                session_finished: None,
            },
            fin,
        ));
    }
    let Some(instance) = sqlx::query("SELECT * FROM instances WHERE id = $1")
        .bind(instance_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| instance_from_row(&r))
        .transpose()?
    else {
        let error = format!("instance {instance_id} was removed before it could be synced");
        let fin = record_end_unsynced(
            tx,
            req.payload.record_id,
            session_row,
            &req.job_id,
            "failed",
            Some(&error),
        )
        .await?;
        return Ok((
            GrantOutcome::Failed {
                error,
                lock_timeout: false,
                session_finished: None,
            },
            fin,
        ));
    };
    let token: i64 = sqlx::query_scalar("SELECT nextval('sync_lock_token_seq')")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(concat!(
        "INSERT INTO sync_locks (instance_id, session_id, record_id, owner, token, locked_at, expires_at) VALUES ",
        "($1, $2, $3, $4, $5, ",
        now!(),
        ", clock_timestamp() + make_interval(secs => $6)) ",
        "ON CONFLICT (instance_id) DO UPDATE SET session_id = excluded.session_id, record_id = excluded.record_id, ",
        "owner = excluded.owner, token = excluded.token, locked_at = excluded.locked_at, expires_at = excluded.expires_at ",
        "WHERE sync_locks.expires_at <= clock_timestamp() RETURNING token"
    ))
    .bind(instance_id)
    .bind(&session_uuid)
    .bind(req.payload.record_id)
    .bind(&req.owner)
    .bind(token)
    .bind(p.ttl.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?
    .is_some()
    .then_some(())
    // Two grants raced to create the instance's first lock row; the loser's batch is
    // rolled back and retried by the writer, and then finds the lease busy.
    .ok_or_else(|| StoreError::Other(format!("lease of instance {instance_id} was taken concurrently")))?;
    let attempt: i64 = sqlx::query_scalar(concat!(
        "UPDATE sync_instance_records SET status = 'running', attempts = attempts + 1, worker_id = $2, ",
        "lock_wait_ms = $3, lock_token = $4, started_at = ",
        now!(),
        ", completed_at = NULL, updated_at = ",
        now!(),
        " WHERE id = $1 RETURNING attempts"
    ))
    .bind(req.payload.record_id)
    .bind(&req.owner)
    .bind(req.lock_wait_ms)
    .bind(token)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(concat!(
        "UPDATE sync_sessions SET status = 'running', started_at = COALESCE(started_at, ",
        now!(),
        "), updated_at = ",
        now!(),
        " WHERE id = $1 AND status = 'pending'"
    ))
    .bind(session_row)
    .execute(&mut *tx)
    .await?;
    Ok((
        GrantOutcome::Granted {
            token,
            instance,
            attempt,
            takeover,
            lock_wait_ms: req.lock_wait_ms,
        },
        None,
    ))
}

pub(super) async fn finish_one(
    tx: &mut PgConnection,
    req: &FinishRequest,
) -> Result<(FinishOutcome, Bump)> {
    let fenced = FinishOutcome {
        record: RecordOutcome::Fenced,
        session_finished: None,
    };
    // Record first, then lease: the same order as a grant, so they cannot deadlock.
    let Some(rec) = sqlx::query(
        "SELECT session_id, attempts FROM sync_instance_records WHERE id = $1 AND lock_token = $2 AND status = 'running' FOR UPDATE",
    )
    .bind(req.record_id)
    .bind(req.token)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok((fenced, None));
    };
    let current: Option<i64> =
        sqlx::query_scalar("SELECT token FROM sync_locks WHERE instance_id = $1 FOR UPDATE")
            .bind(req.instance_id)
            .fetch_optional(&mut *tx)
            .await?;
    if current != Some(req.token) {
        return Ok((fenced, None));
    }
    let session_row: i64 = rec.try_get(0)?;
    let attempts: i64 = rec.try_get(1)?;
    let (record, bump) = match &req.result {
        SyncResult::Completed(accounts) => {
            let (added, removed, changed) = accounts_store(tx, req.instance_id, accounts).await?;
            let total = accounts.len() as i64;
            sqlx::query(concat!(
                "UPDATE sync_instance_records SET status = 'completed', accounts_total = $2, accounts_added = $3, ",
                "accounts_removed = $4, accounts_changed = $5, error = NULL, completed_at = ",
                now!(),
                ", updated_at = ",
                now!(),
                " WHERE id = $1"
            ))
            .bind(req.record_id)
            .bind(total)
            .bind(added)
            .bind(removed)
            .bind(changed)
            .execute(&mut *tx)
            .await?;
            job_ack(tx, &req.job_id).await?;
            (
                RecordOutcome::Completed {
                    total,
                    added,
                    removed,
                    changed,
                },
                Some((1, 0, 0)),
            )
        }
        SyncResult::Failed {
            error,
            retry_after: None,
        } => {
            record_terminal(tx, req.record_id, "failed", Some(error)).await?;
            job_ack(tx, &req.job_id).await?;
            (RecordOutcome::Failed, Some((0, 1, 0)))
        }
        SyncResult::Cancelled => {
            record_terminal(tx, req.record_id, "cancelled", None).await?;
            job_ack(tx, &req.job_id).await?;
            (RecordOutcome::Cancelled, Some((0, 0, 1)))
        }
        SyncResult::Failed {
            error,
            retry_after: Some(delay),
        } => {
            let next_id = queue::new_job_id();
            let payload = JobPayload {
                session_id: req.session_id.clone(),
                record_id: req.record_id,
                instance_id: req.instance_id,
                attempt: attempts + 1,
                waiting_since_ms: None,
            };
            job_push(tx, &next_id, &payload, *delay).await?;
            sqlx::query(concat!(
                "UPDATE sync_instance_records SET status = 'pending', job_id = $2, error = $3, updated_at = ",
                now!(),
                " WHERE id = $1"
            ))
            .bind(req.record_id)
            .bind(&next_id)
            .bind(error)
            .execute(&mut *tx)
            .await?;
            job_ack(tx, &req.job_id).await?;
            (
                RecordOutcome::Retrying {
                    next_attempt: attempts + 1,
                },
                None,
            )
        }
        SyncResult::HandedBack => {
            // The attempt did not happen as far as the record is concerned; the same job
            // goes back to the queue for another worker.
            sqlx::query(concat!(
                "UPDATE sync_instance_records SET status = 'pending', attempts = GREATEST(attempts - 1, 0), ",
                "worker_id = NULL, started_at = NULL, updated_at = ",
                now!(),
                " WHERE id = $1"
            ))
            .bind(req.record_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL WHERE id = $1",
            )
            .bind(&req.job_id)
            .execute(&mut *tx)
            .await?;
            (RecordOutcome::HandedBack, None)
        }
    };
    lease_release(tx, req.instance_id, req.token).await?;
    Ok((
        FinishOutcome {
            record,
            session_finished: None,
        },
        bump.map(|(s, f, c)| (session_row, s, f, c)),
    ))
}
