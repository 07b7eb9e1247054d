//! [`BatchOps`] on PostgreSQL: each method is one statement over all rows of a batch (rows
//! travel as arrays and are `UNNEST`ed), so a batch costs a dozen round trips whatever its
//! size. `records_load` and `locks_load` lock their rows (`FOR UPDATE`) in that order.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::{instance_from_row, now};
use crate::model::*;
use crate::queue;
use crate::store::batch::*;
use crate::store::*;

pub(crate) struct PgOps<'a>(pub &'a mut PgConnection);

#[async_trait]
impl BatchOps for PgOps<'_> {
    async fn records_load(&mut self, ids: &[i64]) -> Result<HashMap<i64, RecState>> {
        let rows = sqlx::query(
            "SELECT r.id, r.instance_id, r.status, r.attempts, r.job_id, r.lock_token, r.session_id, s.cancel_requested, \
             s.session_id AS uuid, r.request_id, r.accounts_total, r.accounts_added, r.accounts_removed, r.accounts_changed, \
             r.limit_wait_since_ms \
             FROM sync_instance_records r JOIN sync_sessions s ON s.id = r.session_id \
             WHERE r.id = ANY($1) ORDER BY r.id FOR UPDATE OF r",
        )
        .bind(ids)
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter()
            .map(|r| {
                let uuid: Uuid = r.try_get("uuid")?;
                Ok((
                    r.try_get("id")?,
                    RecState {
                        instance_id: r.try_get("instance_id")?,
                        status: parse_status(r.try_get("status")?)?,
                        attempts: r.try_get("attempts")?,
                        job_id: r.try_get("job_id")?,
                        lock_token: r.try_get("lock_token")?,
                        session_row: r.try_get("session_id")?,
                        session_uuid: uuid,
                        cancel_requested: r.try_get("cancel_requested")?,
                        request_id: r.try_get("request_id")?,
                        accounts: (
                            r.try_get("accounts_total")?,
                            r.try_get("accounts_added")?,
                            r.try_get("accounts_removed")?,
                            r.try_get("accounts_changed")?,
                        ),
                        limit_wait_since_ms: r.try_get("limit_wait_since_ms")?,
                    },
                ))
            })
            .collect()
    }

    async fn locks_load(&mut self, instance_ids: &[i64]) -> Result<HashMap<i64, LockState>> {
        let rows = sqlx::query(concat!(
            "SELECT l.instance_id, l.token, l.expires_at > ",
            now!(),
            // A subquery per lock row, not a join: with a join the planner may merge
            // along the records' primary key from its start, a walk over every record of
            // the fleet for late ids (seen: 137 ms per call at 100,000 records).
            " AS live, COALESCE((SELECT r.status = 'running' FROM sync_instance_records r ",
            "WHERE r.id = l.record_id), FALSE) AS holder_running FROM sync_locks l ",
            "WHERE l.instance_id = ANY($1) ORDER BY l.instance_id FOR UPDATE OF l"
        ))
        .bind(instance_ids)
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    LockState {
                        token: r.try_get(1)?,
                        live: r.try_get(2)?,
                        holder_running: r.try_get(3)?,
                    },
                ))
            })
            .collect()
    }

    async fn instances_load(&mut self, ids: &[i64]) -> Result<HashMap<i64, Instance>> {
        let rows = sqlx::query("SELECT * FROM instances WHERE id = ANY($1) ORDER BY id FOR SHARE")
            .bind(ids)
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter()
            .map(|r| instance_from_row(r).map(|i| (i.id, i)))
            .collect()
    }

    async fn records_orphaned(&mut self, limit: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(concat!(
            "SELECT r.id FROM sync_instance_records r WHERE ",
            unleased_running!(now!()),
            " ORDER BY r.id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn session_open_records(&mut self, session_row: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sync_instance_records WHERE session_id = $1 AND status IN ('pending', 'running') ORDER BY id",
        )
        .bind(session_row)
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn records_mark_request(&mut self, rows: &[RequestStamp]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.record_id).collect();
        let reqs: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        sqlx::query(
            "UPDATE sync_instance_records r SET request_id = v.q FROM UNNEST($1::bigint[], $2::text[]) AS v(id, q) \
             WHERE r.id = v.id",
        )
        .bind(&ids)
        .bind(&reqs)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn session_request_cancel(&mut self, session_row: i64) -> Result<()> {
        sqlx::query(concat!(
            "UPDATE sync_sessions SET cancel_requested = TRUE, updated_at = ",
            now!(),
            " WHERE id = $1"
        ))
        .bind(session_row)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn db_now_ms(&mut self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
                .fetch_one(&mut *self.0)
                .await?,
        )
    }

    async fn tokens_next(&mut self, n: usize) -> Result<Vec<i64>> {
        if n == 0 {
            return Ok(vec![]);
        }
        Ok(
            sqlx::query_scalar("SELECT nextval('sync_lock_token_seq') FROM generate_series(1, $1)")
                .bind(n as i64)
                .fetch_all(&mut *self.0)
                .await?,
        )
    }

    async fn locks_take(&mut self, owner: &str, ttl: Duration, leases: &[NewLease]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let instance: Vec<i64> = leases.iter().map(|l| l.instance_id).collect();
        let session: Vec<Uuid> = leases.iter().map(|l| l.session_uuid).collect();
        let record: Vec<i64> = leases.iter().map(|l| l.record_id).collect();
        let token: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let taken = sqlx::query(concat!(
            "INSERT INTO sync_locks (instance_id, session_id, record_id, owner, token, locked_at, expires_at) ",
            "SELECT i, s, r, $5, t, ",
            now!(),
            ", clock_timestamp() + make_interval(secs => $6) ",
            "FROM UNNEST($1::bigint[], $2::uuid[], $3::bigint[], $4::bigint[]) AS v(i, s, r, t) ORDER BY i ",
            "ON CONFLICT (instance_id) DO UPDATE SET session_id = excluded.session_id, record_id = excluded.record_id, ",
            "owner = excluded.owner, token = excluded.token, locked_at = excluded.locked_at, expires_at = excluded.expires_at ",
            "WHERE sync_locks.expires_at <= clock_timestamp()"
        ))
        .bind(&instance)
        .bind(&session)
        .bind(&record)
        .bind(&token)
        .bind(owner)
        .bind(ttl.as_secs_f64())
        .execute(&mut *self.0)
        .await?
        .rows_affected();
        if taken as usize != leases.len() {
            // Two batches raced to create an instance's first lock row (locks_load could
            // not lock a row that did not exist yet). Roll back; the writer retries the
            // batch, which then finds the lease busy.
            return Err(StoreError::Other(
                "a lease was taken concurrently; retrying the batch".into(),
            ));
        }
        Ok(())
    }

    async fn locks_release(&mut self, leases: &[LeaseKey]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let (i, t): (Vec<i64>, Vec<i64>) = leases.iter().map(|l| (l.instance_id, l.token)).unzip();
        sqlx::query(concat!(
            "UPDATE sync_locks l SET expires_at = ",
            now!(),
            " FROM UNNEST($1::bigint[], $2::bigint[]) AS v(i, t) WHERE l.instance_id = v.i AND l.token = v.t"
        ))
        .bind(&i)
        .bind(&t)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn records_start(
        &mut self,
        owner: &str,
        rows: &[RecordStart],
    ) -> Result<HashMap<i64, i64>> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let id: Vec<i64> = rows.iter().map(|r| r.record_id).collect();
        let wait: Vec<i64> = rows.iter().map(|r| r.lock_wait_ms).collect();
        let token: Vec<i64> = rows.iter().map(|r| r.token).collect();
        let request: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        let out = sqlx::query(concat!(
            "UPDATE sync_instance_records r SET status = 'running', attempts = r.attempts + 1, worker_id = $4, ",
            "lock_wait_ms = v.w, lock_token = v.t, request_id = v.q, started_at = ",
            now!(),
            ", completed_at = NULL, limit_wait_key = NULL, limit_wait_since_ms = NULL, limit_seen_ms = NULL, updated_at = ",
            now!(),
            " FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $5::text[]) AS v(i, w, t, q) ",
            "WHERE r.id = v.i RETURNING r.id, r.attempts"
        ))
        .bind(&id)
        .bind(&wait)
        .bind(&token)
        .bind(owner)
        .bind(&request)
        .fetch_all(&mut *self.0)
        .await?;
        out.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn records_end(&mut self, rows: &[RecordEnd]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let id: Vec<i64> = rows.iter().map(|r| r.record_id).collect();
        let status: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
        let error: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
        sqlx::query(concat!(
            "UPDATE sync_instance_records r SET status = v.s, error = COALESCE(v.e, r.error), completed_at = ",
            now!(),
            ", updated_at = ",
            now!(),
            " FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS v(i, s, e) WHERE r.id = v.i"
        ))
        .bind(&id)
        .bind(&status)
        .bind(&error)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn records_complete(&mut self, rows: &[RecordCompletion]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&RecordCompletion) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let request: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        sqlx::query(concat!(
            "UPDATE sync_instance_records r SET status = 'completed', accounts_total = v.t, accounts_added = v.a, ",
            "accounts_removed = v.d, accounts_changed = v.c, request_id = v.q, error = NULL, completed_at = ",
            now!(),
            ", updated_at = ",
            now!(),
            " FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[]) ",
            "AS v(i, t, a, d, c, q) WHERE r.id = v.i"
        ))
        .bind(col(|r| r.record_id))
        .bind(col(|r| r.total))
        .bind(col(|r| r.added))
        .bind(col(|r| r.removed))
        .bind(col(|r| r.changed))
        .bind(&request)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn records_requeue(&mut self, rows: &[Requeue], to_pending: bool) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let id: Vec<i64> = rows.iter().map(|r| r.record_id).collect();
        let job: Vec<&str> = rows.iter().map(|r| r.job_id.as_str()).collect();
        let error: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
        sqlx::query(concat!(
            "UPDATE sync_instance_records r SET job_id = v.j, error = COALESCE(v.e, r.error), ",
            "status = CASE WHEN $4 THEN 'pending' ELSE r.status END, limit_wait_key = NULL, updated_at = ",
            now!(),
            " FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS v(i, j, e) WHERE r.id = v.i"
        ))
        .bind(&id)
        .bind(&job)
        .bind(&error)
        .bind(to_pending)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn records_handback(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(concat!(
            "UPDATE sync_instance_records SET status = 'pending', attempts = GREATEST(attempts - 1, 0), ",
            "worker_id = NULL, started_at = NULL, updated_at = ",
            now!(),
            " WHERE id = ANY($1)"
        ))
        .bind(ids)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn jobs_push(&mut self, jobs: &[NewJob]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let id: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let payload: Vec<&[u8]> = jobs.iter().map(|j| j.payload.as_slice()).collect();
        let delay: Vec<f64> = jobs.iter().map(|j| j.delay.as_secs_f64()).collect();
        let priority: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
        sqlx::query(
            "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority) \
             SELECT p, i, $4, 'Pending', 0, $5, now() + make_interval(secs => d), r \
             FROM UNNEST($1::text[], $2::bytea[], $3::float8[], $6::int4[]) AS v(i, p, d, r)",
        )
        .bind(&id)
        .bind(&payload)
        .bind(&delay)
        .bind(queue::QUEUE)
        .bind(queue::APALIS_MAX_ATTEMPTS as i32)
        .bind(&priority)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn jobs_ack(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE apalis.jobs SET status = 'Done', done_at = now(), last_result = '{\"Ok\":null}' \
             WHERE id = ANY($1) AND status <> 'Done'",
        )
        .bind(ids)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn jobs_release(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn sessions_start(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(concat!(
            "UPDATE sync_sessions SET status = 'running', started_at = COALESCE(started_at, ",
            now!(),
            "), updated_at = ",
            now!(),
            " WHERE id = ANY($1) AND status = 'pending'"
        ))
        .bind(ids)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn session_add(
        &mut self,
        session_row: i64,
        ok: i64,
        failed: i64,
        cancelled: i64,
    ) -> Result<SessionTotals> {
        let row = sqlx::query(concat!(
            "UPDATE sync_sessions SET successful_instances = successful_instances + $2, ",
            "failed_instances = failed_instances + $3, cancelled_instances = cancelled_instances + $4, ",
            "updated_at = ",
            now!(),
            " WHERE id = $1 RETURNING total_instances, successful_instances, failed_instances, ",
            "cancelled_instances, cancel_requested, status, sync_type, session_id"
        ))
        .bind(session_row)
        .bind(ok)
        .bind(failed)
        .bind(cancelled)
        .fetch_one(&mut *self.0)
        .await?;
        Ok(SessionTotals {
            total: row.try_get(0)?,
            successful: row.try_get(1)?,
            failed: row.try_get(2)?,
            cancelled: row.try_get(3)?,
            cancel_requested: row.try_get(4)?,
            status: parse_status(row.try_get(5)?)?,
            sync_type: parse_status(row.try_get(6)?)?,
            session_id: row.try_get(7)?,
        })
    }

    async fn session_stats_add(
        &mut self,
        fin: &SessionFinished,
        completed_at: DateTime<Utc>,
    ) -> Result<()> {
        static SQL: std::sync::LazyLock<[String; 2]> =
            std::sync::LazyLock::new(|| session_stats_sql(|n| format!("${n}")));
        sqlx::query(sqlx::AssertSqlSafe(SQL[0].as_str()))
            .bind(fin.sync_type.as_str())
            .bind(fin.status.as_str())
            .bind(fin.duration_seconds)
            .execute(&mut *self.0)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(SQL[1].as_str()))
            .bind(fin.sync_type.as_str())
            .bind(fin.success_rate)
            .bind(completed_at)
            .bind(fin.status.as_str())
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn session_close(
        &mut self,
        session_row: i64,
        status: SessionStatus,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
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
        .bind(status.as_str())
        .fetch_one(&mut *self.0)
        .await?;
        Ok((done.try_get(0)?, done.try_get(1)?))
    }

    async fn accounts_load(
        &mut self,
        instance_ids: &[i64],
    ) -> Result<HashMap<i64, Vec<StoredRow>>> {
        let mut out: HashMap<i64, Vec<StoredRow>> = HashMap::new();
        if instance_ids.is_empty() {
            return Ok(out);
        }
        let rows = sqlx::query(
            "SELECT instance_id, username, host, attributes, privileges, deleted_at IS NOT NULL FROM instance_accounts \
             WHERE instance_id = ANY($1)",
        )
        .bind(instance_ids)
        .fetch_all(&mut *self.0)
        .await?;
        for r in rows {
            out.entry(r.try_get(0)?).or_default().push(StoredRow {
                username: r.try_get(1)?,
                host: r.try_get(2)?,
                attributes: r.try_get(3)?,
                privileges: r.try_get(4)?,
                deleted: r.try_get(5)?,
            });
        }
        Ok(out)
    }

    async fn accounts_insert(&mut self, rows: &[AccountWrite<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let inst: Vec<i64> = rows.iter().map(|r| r.instance_id).collect();
        let user: Vec<&str> = rows.iter().map(|r| r.account.username.as_str()).collect();
        let host: Vec<&str> = rows.iter().map(|r| r.account.host.as_str()).collect();
        let attrs: Vec<&serde_json::Value> = rows.iter().map(|r| &r.account.attributes).collect();
        let privs: Vec<&serde_json::Value> = rows.iter().map(|r| &r.account.privileges).collect();
        sqlx::query(concat!(
            "INSERT INTO instance_accounts (instance_id, username, host, attributes, privileges, first_seen_at, last_seen_at) ",
            "SELECT i, u, h, a, p, ",
            now!(),
            ", ",
            now!(),
            " FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[]) AS v(i, u, h, a, p)"
        ))
        .bind(&inst)
        .bind(&user)
        .bind(&host)
        .bind(&attrs)
        .bind(&privs)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn accounts_update(&mut self, rows: &[AccountWrite<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let inst: Vec<i64> = rows.iter().map(|r| r.instance_id).collect();
        let user: Vec<&str> = rows.iter().map(|r| r.account.username.as_str()).collect();
        let host: Vec<&str> = rows.iter().map(|r| r.account.host.as_str()).collect();
        let attrs: Vec<&serde_json::Value> = rows.iter().map(|r| &r.account.attributes).collect();
        let privs: Vec<&serde_json::Value> = rows.iter().map(|r| &r.account.privileges).collect();
        sqlx::query(concat!(
            "UPDATE instance_accounts t SET attributes = v.a, privileges = v.p, deleted_at = NULL, last_seen_at = ",
            now!(),
            " FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[]) AS v(i, u, h, a, p) ",
            "WHERE t.instance_id = v.i AND t.username = v.u AND t.host = v.h"
        ))
        .bind(&inst)
        .bind(&user)
        .bind(&host)
        .bind(&attrs)
        .bind(&privs)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn accounts_mark_deleted(&mut self, rows: &[AccountKey]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let inst: Vec<i64> = rows.iter().map(|r| r.instance_id).collect();
        let user: Vec<&str> = rows.iter().map(|r| r.username.as_str()).collect();
        let host: Vec<&str> = rows.iter().map(|r| r.host.as_str()).collect();
        sqlx::query(concat!(
            "UPDATE instance_accounts t SET deleted_at = ",
            now!(),
            " FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS v(i, u, h) ",
            "WHERE t.instance_id = v.i AND t.username = v.u AND t.host = v.h"
        ))
        .bind(&inst)
        .bind(&user)
        .bind(&host)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn changes_insert(&mut self, rows: &[NewChange]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let inst: Vec<i64> = rows.iter().map(|r| r.instance_id).collect();
        let name: Vec<&str> = rows.iter().map(|r| r.instance_name.as_str()).collect();
        let session: Vec<String> = rows.iter().map(|r| r.session_id.to_string()).collect();
        let record: Vec<i64> = rows.iter().map(|r| r.record_id).collect();
        let user: Vec<&str> = rows.iter().map(|r| r.change.username.as_str()).collect();
        let host: Vec<&str> = rows.iter().map(|r| r.change.host.as_str()).collect();
        let kind: Vec<&str> = rows.iter().map(|r| r.change.kind.as_str()).collect();
        let detail: Vec<&serde_json::Value> = rows.iter().map(|r| &r.change.detail).collect();
        let flags: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!(r.change.flags))
            .collect();
        sqlx::query(concat!(
            "INSERT INTO account_changes (instance_id, instance_name, session_id, record_id, ",
            "username, host, kind, detail, flags, sensitive, changed_at) ",
            "SELECT i, n, s, r, u, h, k, d, f, jsonb_array_length(f) > 0, ",
            now!(),
            " FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], ",
            "$6::text[], $7::text[], $8::jsonb[], $9::jsonb[]) AS v(i, n, s, r, u, h, k, d, f)"
        ))
        .bind(&inst)
        .bind(&name)
        .bind(&session)
        .bind(&record)
        .bind(&user)
        .bind(&host)
        .bind(&kind)
        .bind(&detail)
        .bind(&flags)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn instances_history_start(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(concat!(
            "UPDATE instances SET history_since = ",
            now!(),
            " WHERE id = ANY($1) AND history_since IS NULL"
        ))
        .bind(ids)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn leases_renew(
        &mut self,
        ttl: Duration,
        reqs: &[RenewRequest],
    ) -> Result<Vec<RenewOutcome>> {
        let mut out = vec![
            RenewOutcome {
                held: false,
                cancel_requested: false,
            };
            reqs.len()
        ];
        // Leases are locked in ascending instance id, as grants lock them: in arrival
        // order, a renewal holding instance 5 and waiting for 3 deadlocks with a grant
        // holding 3 and waiting for 5 (docs/ARCHITECTURE.md, the one row order).
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        order.sort_by_key(|&i| (reqs[i].instance_id, i));
        for i in order {
            let r = &reqs[i];
            // Only a live lease of a still-running record is extended (see the SQLite
            // twin for why).
            let held = sqlx::query(
                "UPDATE sync_locks SET expires_at = clock_timestamp() + make_interval(secs => $3) \
                 WHERE instance_id = $1 AND token = $2 AND expires_at > clock_timestamp() \
                 AND EXISTS (SELECT 1 FROM sync_instance_records r WHERE r.id = sync_locks.record_id \
                 AND r.status = 'running' AND r.lock_token = $2)",
            )
            .bind(r.instance_id)
            .bind(r.token)
            .bind(ttl.as_secs_f64())
            .execute(&mut *self.0)
            .await?
            .rows_affected()
                == 1;
            let cancel_requested: bool = sqlx::query_scalar(
                "SELECT s.cancel_requested FROM sync_instance_records r JOIN sync_sessions s ON s.id = r.session_id WHERE r.id = $1",
            )
            .bind(r.record_id)
            .fetch_optional(&mut *self.0)
            .await?
            .unwrap_or(false);
            out[i] = RenewOutcome {
                held,
                cancel_requested,
            };
        }
        Ok(out)
    }

    async fn session_find(&mut self, session_id: Uuid) -> Result<Option<FoundSession>> {
        let found = sqlx::query("SELECT id, status FROM sync_sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(&mut *self.0)
            .await?;
        found
            .map(|r| {
                let status: String = r.try_get(1)?;
                Ok(FoundSession {
                    row: r.try_get(0)?,
                    finished: parse_status::<SessionStatus>(status)?.is_finished(),
                })
            })
            .transpose()
    }

    async fn audit_insert(&mut self, row: &crate::model::NewAuditEvent) -> Result<()> {
        use crate::store::sql::Fetch;
        let q = crate::store::common::audit_insert_query(row);
        sqlx::Postgres::run(crate::store::sql::Ex::Conn(&mut *self.0), q).await?;
        Ok(())
    }
}
