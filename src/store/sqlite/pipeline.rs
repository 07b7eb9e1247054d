//! [`BatchOps`] on SQLite: each method is one statement over all rows of a batch, the rows
//! travelling as one JSON array (`json_each`), inside the batch's `BEGIN IMMEDIATE`
//! transaction on the writer thread (`exec.rs`). Fewer statements mean a shorter hold of
//! the one write lock. The methods are async to fit [`BatchOps`] but never wait: they run
//! on the writer thread, which drives them to completion at once.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, Params, Row, params};
use serde_json::{Value, json};

use super::now;
use crate::model::*;
use crate::queue;
use crate::store::batch::*;
use crate::store::*;

/// The batch operations on the writer thread's connection, inside its transaction.
pub(crate) struct SqliteOps<'a>(pub &'a mut Connection);

impl SqliteOps<'_> {
    /// Runs one statement (prepared once per connection); the number of rows changed.
    pub(crate) fn exec(&self, sql: &str, params: impl Params) -> Result<usize> {
        Ok(self.0.prepare_cached(sql)?.execute(params)?)
    }

    /// Runs one query and maps each row.
    pub(crate) fn rows<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        let mut out = vec![];
        while let Some(r) = rows.next()? {
            out.push(f(r)?);
        }
        Ok(out)
    }

    /// Runs one query expected to return exactly one row.
    fn one<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.rows(sql, params, f)?
            .pop()
            .ok_or_else(|| StoreError::Other("a statement returned no row".into()))
    }
}

/// An instance row as the writer thread reads it.
fn instance_from_row(r: &Row<'_>) -> Result<Instance> {
    super::instance_from!(r, get)
}

pub(super) fn arr<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("plain rows serialise")
}

/// An account as a JSON row `[instance_id, username, host, attributes, privileges]`.
/// Borrowed, not `json!`: the macro deep-copies each account's attributes and privileges
/// into a new `Value` only to print it (a tenth of the writer thread's time went to
/// allocating and freeing with 20 accounts per instance).
type AccountRow<'a> = (i64, &'a str, &'a str, &'a Value, &'a Value);

fn account_rows<'a>(rows: &'a [AccountWrite<'_>]) -> Vec<AccountRow<'a>> {
    rows.iter()
        .map(|w| {
            let a = w.account;
            (
                w.instance_id,
                a.username.as_str(),
                a.host.as_str(),
                &a.attributes,
                &a.privileges,
            )
        })
        .collect()
}

#[async_trait]
impl BatchOps for SqliteOps<'_> {
    async fn records_load(&mut self, ids: &[i64]) -> Result<HashMap<i64, RecState>> {
        let rows = self.rows(
            "SELECT r.id, r.instance_id, r.status, r.attempts, r.job_id, r.lock_token, r.session_id, s.cancel_requested, \
             s.session_id AS uuid, r.request_id, r.accounts_total, r.accounts_added, r.accounts_removed, r.accounts_changed, \
             r.limit_wait_since_ms \
             FROM sync_instance_records r JOIN sync_sessions s ON s.id = r.session_id \
             WHERE r.id IN (SELECT value FROM json_each(?1))",
            [arr(ids)],
            |r| {
                Ok((
                    r.get("id")?,
                    RecState {
                        instance_id: r.get("instance_id")?,
                        status: parse_status(r.get("status")?)?,
                        attempts: r.get("attempts")?,
                        job_id: r.get("job_id")?,
                        lock_token: r.get("lock_token")?,
                        session_row: r.get("session_id")?,
                        session_uuid: parse_uuid(&r.get::<_, String>("uuid")?)?,
                        cancel_requested: r.get("cancel_requested")?,
                        request_id: r.get("request_id")?,
                        accounts: (
                            r.get("accounts_total")?,
                            r.get("accounts_added")?,
                            r.get("accounts_removed")?,
                            r.get("accounts_changed")?,
                        ),
                        limit_wait_since_ms: r.get("limit_wait_since_ms")?,
                    },
                ))
            },
        )?;
        Ok(rows.into_iter().collect())
    }

    async fn locks_load(&mut self, instance_ids: &[i64]) -> Result<HashMap<i64, LockState>> {
        let rows = self.rows(
            concat!(
                "SELECT l.instance_id, l.token, l.expires_at > ",
                now!(),
                " AS live, COALESCE(r.status = 'running', 0) AS holder_running FROM sync_locks l ",
                "LEFT JOIN sync_instance_records r ON r.id = l.record_id ",
                "WHERE l.instance_id IN (SELECT value FROM json_each(?1))"
            ),
            [arr(instance_ids)],
            |r| {
                Ok((
                    r.get(0)?,
                    LockState {
                        token: r.get(1)?,
                        live: r.get(2)?,
                        holder_running: r.get(3)?,
                    },
                ))
            },
        )?;
        Ok(rows.into_iter().collect())
    }

    async fn instances_load(&mut self, ids: &[i64]) -> Result<HashMap<i64, Instance>> {
        let rows = self.rows(
            "SELECT * FROM instances WHERE id IN (SELECT value FROM json_each(?1))",
            [arr(ids)],
            instance_from_row,
        )?;
        Ok(rows.into_iter().map(|i| (i.id, i)).collect())
    }

    async fn records_orphaned(&mut self, limit: i64) -> Result<Vec<i64>> {
        self.rows(
            concat!(
                "SELECT r.id FROM sync_instance_records r WHERE ",
                unleased_running!(now!()),
                " ORDER BY r.id LIMIT ?1"
            ),
            [limit],
            |r| Ok(r.get(0)?),
        )
    }

    async fn session_open_records(&mut self, session_row: i64) -> Result<Vec<i64>> {
        self.rows(
            "SELECT id FROM sync_instance_records WHERE session_id = ?1 AND status IN ('pending', 'running') ORDER BY id",
            [session_row],
            |r| Ok(r.get(0)?),
        )
    }

    async fn records_mark_request(&mut self, rows: &[RequestStamp]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = rows.iter().map(|r| (r.record_id, &r.request_id)).collect();
        self.exec(
            "UPDATE sync_instance_records SET request_id = v.value->>1 FROM json_each(?1) AS v \
             WHERE sync_instance_records.id = v.value->>0",
            [arr(&rows)],
        )?;
        Ok(())
    }

    async fn session_request_cancel(&mut self, session_row: i64) -> Result<()> {
        self.exec(
            concat!(
                "UPDATE sync_sessions SET cancel_requested = 1, updated_at = ",
                now!(),
                " WHERE id = ?1"
            ),
            [session_row],
        )?;
        Ok(())
    }

    async fn db_now_ms(&mut self) -> Result<i64> {
        self.one(
            "SELECT CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)",
            [],
            |r| Ok(r.get(0)?),
        )
    }

    async fn tokens_next(&mut self, n: usize) -> Result<Vec<i64>> {
        if n == 0 {
            return Ok(vec![]);
        }
        let last: i64 = self.one(
            "UPDATE sync_counters SET value = value + ?1 WHERE name = 'lock_token' RETURNING value",
            [n as i64],
            |r| Ok(r.get(0)?),
        )?;
        Ok((last - n as i64 + 1..=last).collect())
    }

    async fn locks_take(&mut self, owner: &str, ttl: Duration, leases: &[NewLease]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let rows: Vec<Value> = leases
            .iter()
            .map(|l| json!([l.instance_id, l.session_uuid, l.record_id, l.token]))
            .collect();
        // `WHERE true` lets SQLite parse an upsert whose rows come from a SELECT.
        self.exec(
            concat!(
                "INSERT INTO sync_locks (instance_id, session_id, record_id, owner, token, locked_at, expires_at) ",
                "SELECT value->>0, value->>1, value->>2, ?2, value->>3, ",
                now!(),
                ", strftime('%Y-%m-%dT%H:%M:%fZ','now', '+' || ?3 || ' seconds') FROM json_each(?1) WHERE true ",
                "ON CONFLICT (instance_id) DO UPDATE SET session_id = excluded.session_id, record_id = excluded.record_id, ",
                "owner = excluded.owner, token = excluded.token, locked_at = excluded.locked_at, expires_at = excluded.expires_at"
            ),
            params![arr(&rows), owner, ttl.as_secs_f64()],
        )?;
        Ok(())
    }

    async fn locks_release(&mut self, leases: &[LeaseKey]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let leases: Vec<_> = leases.iter().map(|l| (l.instance_id, l.token)).collect();
        // Expired, not deleted: the row keeps the last token for inspection until cleanup.
        self.exec(
            concat!(
                "UPDATE sync_locks SET expires_at = ",
                now!(),
                " FROM json_each(?1) AS v WHERE sync_locks.instance_id = v.value->>0 AND sync_locks.token = v.value->>1"
            ),
            [arr(&leases)],
        )?;
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
        let rows: Vec<_> = rows
            .iter()
            .map(|r| (r.record_id, r.lock_wait_ms, r.token, &r.request_id))
            .collect();
        let out = self.rows(
            concat!(
                "UPDATE sync_instance_records SET status = 'running', attempts = attempts + 1, worker_id = ?2, ",
                "lock_wait_ms = v.value->>1, lock_token = v.value->>2, request_id = v.value->>3, started_at = ",
                now!(),
                ", completed_at = NULL, limit_wait_key = NULL, limit_wait_since_ms = NULL, limit_seen_ms = NULL, updated_at = ",
                now!(),
                " FROM json_each(?1) AS v WHERE sync_instance_records.id = v.value->>0 RETURNING id, attempts"
            ),
            params![arr(&rows), owner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(out.into_iter().collect())
    }

    async fn records_end(&mut self, rows: &[RecordEnd]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = rows
            .iter()
            .map(|r| (r.record_id, r.status, &r.error))
            .collect();
        self.exec(
            concat!(
                "UPDATE sync_instance_records SET status = v.value->>1, error = COALESCE(v.value->>2, error), completed_at = ",
                now!(),
                ", updated_at = ",
                now!(),
                " FROM json_each(?1) AS v WHERE sync_instance_records.id = v.value->>0"
            ),
            [arr(&rows)],
        )?;
        Ok(())
    }

    async fn records_complete(&mut self, rows: &[RecordCompletion]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.record_id,
                    r.total,
                    r.added,
                    r.removed,
                    r.changed,
                    &r.request_id,
                )
            })
            .collect();
        self.exec(
            concat!(
                "UPDATE sync_instance_records SET status = 'completed', accounts_total = v.value->>1, ",
                "accounts_added = v.value->>2, accounts_removed = v.value->>3, accounts_changed = v.value->>4, ",
                "request_id = v.value->>5, error = NULL, completed_at = ",
                now!(),
                ", updated_at = ",
                now!(),
                " FROM json_each(?1) AS v WHERE sync_instance_records.id = v.value->>0"
            ),
            [arr(&rows)],
        )?;
        Ok(())
    }

    async fn records_requeue(&mut self, rows: &[Requeue], to_pending: bool) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = rows
            .iter()
            .map(|r| (r.record_id, &r.job_id, &r.error))
            .collect();
        self.exec(
            concat!(
                "UPDATE sync_instance_records SET job_id = v.value->>1, error = COALESCE(v.value->>2, error), ",
                "status = CASE WHEN ?2 THEN 'pending' ELSE status END, limit_wait_key = NULL, updated_at = ",
                now!(),
                " FROM json_each(?1) AS v WHERE sync_instance_records.id = v.value->>0"
            ),
            params![arr(&rows), to_pending],
        )?;
        Ok(())
    }

    async fn records_handback(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.exec(
            concat!(
                "UPDATE sync_instance_records SET status = 'pending', attempts = MAX(attempts - 1, 0), ",
                "worker_id = NULL, started_at = NULL, updated_at = ",
                now!(),
                " WHERE id IN (SELECT value FROM json_each(?1))"
            ),
            [arr(ids)],
        )?;
        Ok(())
    }

    async fn jobs_push(&mut self, jobs: &[NewJob]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let rows: Vec<Value> = jobs
            .iter()
            .map(|j| {
                json!([
                    j.id,
                    String::from_utf8_lossy(&j.payload),
                    j.delay.as_secs_f64().ceil() as i64,
                    j.priority
                ])
            })
            .collect();
        self.exec(
            "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority) \
             SELECT CAST(value->>1 AS BLOB), value->>0, ?2, 'Pending', 0, ?3, unixepoch() + value->>2, value->>3 FROM json_each(?1)",
            params![arr(&rows), queue::QUEUE, queue::APALIS_MAX_ATTEMPTS],
        )?;
        Ok(())
    }

    async fn jobs_ack(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.exec(
            "UPDATE Jobs SET status = 'Done', done_at = unixepoch(), last_result = '{\"Ok\":null}' \
             WHERE id IN (SELECT value FROM json_each(?1)) AND status <> 'Done'",
            [arr(ids)],
        )?;
        Ok(())
    }

    async fn jobs_release(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.exec(
            "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL WHERE id IN (SELECT value FROM json_each(?1))",
            [arr(ids)],
        )?;
        Ok(())
    }

    async fn sessions_start(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.exec(
            concat!(
                "UPDATE sync_sessions SET status = 'running', started_at = COALESCE(started_at, ",
                now!(),
                "), updated_at = ",
                now!(),
                " WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'pending'"
            ),
            [arr(ids)],
        )?;
        Ok(())
    }

    async fn session_add(
        &mut self,
        session_row: i64,
        ok: i64,
        failed: i64,
        cancelled: i64,
    ) -> Result<SessionTotals> {
        self.one(
            concat!(
                "UPDATE sync_sessions SET successful_instances = successful_instances + ?2, ",
                "failed_instances = failed_instances + ?3, cancelled_instances = cancelled_instances + ?4, ",
                "updated_at = ",
                now!(),
                " WHERE id = ?1 RETURNING total_instances, successful_instances, failed_instances, ",
                "cancelled_instances, cancel_requested, status, sync_type, session_id"
            ),
            [session_row, ok, failed, cancelled],
            |row| {
                Ok(SessionTotals {
                    total: row.get(0)?,
                    successful: row.get(1)?,
                    failed: row.get(2)?,
                    cancelled: row.get(3)?,
                    cancel_requested: row.get(4)?,
                    status: parse_status(row.get(5)?)?,
                    sync_type: parse_status(row.get(6)?)?,
                    session_id: parse_uuid(&row.get::<_, String>(7)?)?,
                })
            },
        )
    }

    async fn session_stats_add(
        &mut self,
        fin: &SessionFinished,
        completed_at: DateTime<Utc>,
    ) -> Result<()> {
        static SQL: std::sync::LazyLock<[String; 2]> =
            std::sync::LazyLock::new(|| session_stats_sql(|n| format!("?{n}")));
        self.exec(
            &SQL[0],
            params![
                fin.sync_type.as_str(),
                fin.status.as_str(),
                fin.duration_seconds
            ],
        )?;
        self.exec(
            &SQL[1],
            params![
                fin.sync_type.as_str(),
                fin.success_rate,
                // As the sqlx pool writes a time, so both paths store one format.
                completed_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
                fin.status.as_str()
            ],
        )?;
        Ok(())
    }

    async fn session_close(
        &mut self,
        session_row: i64,
        status: SessionStatus,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
        self.one(
            concat!(
                "UPDATE sync_sessions SET status = ?2, completed_at = ",
                now!(),
                ", started_at = COALESCE(started_at, ",
                now!(),
                "), updated_at = ",
                now!(),
                " WHERE id = ?1 RETURNING started_at, completed_at"
            ),
            params![session_row, status.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    async fn accounts_load(
        &mut self,
        instance_ids: &[i64],
    ) -> Result<HashMap<i64, Vec<StoredRow>>> {
        let mut out: HashMap<i64, Vec<StoredRow>> = HashMap::new();
        if instance_ids.is_empty() {
            return Ok(out);
        }
        let rows = self.rows(
            "SELECT instance_id, username, host, attributes, privileges, deleted_at IS NOT NULL FROM instance_accounts \
             WHERE instance_id IN (SELECT value FROM json_each(?1))",
            [arr(instance_ids)],
            |r| {
                let a: String = r.get(3)?;
                let p: String = r.get(4)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    StoredRow {
                        username: r.get(1)?,
                        host: r.get(2)?,
                        attributes: serde_json::from_str(&a).unwrap_or_default(),
                        privileges: serde_json::from_str(&p).unwrap_or_default(),
                        deleted: r.get(5)?,
                    },
                ))
            },
        )?;
        for (instance, row) in rows {
            out.entry(instance).or_default().push(row);
        }
        Ok(out)
    }

    async fn accounts_insert(&mut self, rows: &[AccountWrite<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = account_rows(rows);
        self.exec(
            concat!(
                "INSERT INTO instance_accounts (instance_id, username, host, attributes, privileges, first_seen_at, last_seen_at) ",
                "SELECT value->>0, value->>1, value->>2, value->3, value->4, ",
                now!(),
                ", ",
                now!(),
                " FROM json_each(?1)"
            ),
            [arr(&rows)],
        )?;
        Ok(())
    }

    async fn accounts_update(&mut self, rows: &[AccountWrite<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = account_rows(rows);
        self.exec(
            concat!(
                "UPDATE instance_accounts SET attributes = v.value->3, privileges = v.value->4, deleted_at = NULL, ",
                "last_seen_at = ",
                now!(),
                " FROM json_each(?1) AS v WHERE instance_accounts.instance_id = v.value->>0 ",
                "AND instance_accounts.username = v.value->>1 AND instance_accounts.host = v.value->>2"
            ),
            [arr(&rows)],
        )?;
        Ok(())
    }

    async fn accounts_mark_deleted(&mut self, rows: &[AccountKey]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = rows
            .iter()
            .map(|r| (r.instance_id, &r.username, &r.host))
            .collect();
        self.exec(
            concat!(
                "UPDATE instance_accounts SET deleted_at = ",
                now!(),
                " FROM json_each(?1) AS v WHERE instance_accounts.instance_id = v.value->>0 ",
                "AND instance_accounts.username = v.value->>1 AND instance_accounts.host = v.value->>2"
            ),
            [arr(&rows)],
        )?;
        Ok(())
    }

    async fn changes_insert(&mut self, rows: &[NewChange]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // Borrowed rows, as for accounts: the details are the largest values written.
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                let c = &r.change;
                (
                    r.instance_id,
                    r.instance_name.as_str(),
                    r.session_id,
                    r.record_id,
                    c.username.as_str(),
                    c.host.as_str(),
                    c.kind.as_str(),
                    &c.detail,
                    &c.flags,
                    !c.flags.is_empty(),
                )
            })
            .collect();
        self.exec(
            concat!(
                "INSERT INTO account_changes (instance_id, instance_name, session_id, record_id, ",
                "username, host, kind, detail, flags, sensitive, changed_at) ",
                "SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, ",
                "value->7, value->8, value->>9, ",
                now!(),
                " FROM json_each(?1)"
            ),
            [arr(&rows)],
        )?;
        Ok(())
    }

    async fn instances_history_start(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.exec(
            concat!(
                "UPDATE instances SET history_since = ",
                now!(),
                " WHERE id IN (SELECT value FROM json_each(?1)) AND history_since IS NULL"
            ),
            [arr(ids)],
        )?;
        Ok(())
    }

    async fn leases_renew(
        &mut self,
        ttl: Duration,
        reqs: &[RenewRequest],
    ) -> Result<Vec<RenewOutcome>> {
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            // Only a live lease of a still-running record is extended. A renewal that was
            // queued when its sync ended must not revive the released lease for a whole TTL,
            // and an expired lease stays expired: its holder's local deadline has passed
            // too, and the rescuer may already be handing the record on.
            let held = self.exec(
                concat!(
                    "UPDATE sync_locks SET expires_at = strftime('%Y-%m-%dT%H:%M:%fZ','now', '+' || ?3 || ' seconds') ",
                    "WHERE instance_id = ?1 AND token = ?2 AND expires_at > ",
                    now!(),
                    " AND EXISTS (SELECT 1 FROM sync_instance_records r WHERE r.id = sync_locks.record_id ",
                    "AND r.status = 'running' AND r.lock_token = ?2)"
                ),
                rusqlite::params![r.instance_id, r.token, ttl.as_secs_f64()],
            )? == 1;
            let cancel_requested = self
                .rows(
                    "SELECT s.cancel_requested FROM sync_instance_records r JOIN sync_sessions s ON s.id = r.session_id WHERE r.id = ?1",
                    [r.record_id],
                    |row| Ok(row.get::<_, bool>(0)?),
                )?
                .pop()
                .unwrap_or(false);
            out.push(RenewOutcome {
                held,
                cancel_requested,
            });
        }
        Ok(out)
    }

    async fn session_find(&mut self, session_id: uuid::Uuid) -> Result<Option<FoundSession>> {
        let found = self.rows(
            "SELECT id, status FROM sync_sessions WHERE session_id = ?1",
            [session_id.to_string()],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )?;
        let Some((row, status)) = found.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some(FoundSession {
            row,
            finished: parse_status::<SessionStatus>(status)?.is_finished(),
        }))
    }

    async fn audit_insert(&mut self, row: &crate::model::NewAuditEvent) -> Result<()> {
        let targets = serde_json::to_string(&row.targets).unwrap_or_else(|_| "[]".into());
        self.exec(
            "INSERT INTO audit_log (actor, client, action, targets, fields, outcome, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                row.actor,
                row.client,
                row.action,
                targets,
                row.fields.to_string(),
                row.outcome.as_str(),
                row.detail
            ],
        )?;
        Ok(())
    }
}
