//! [`Store`] on SQLite: the embedded default, one host, several worker processes.
//!
//! SQLite has one writer at a time, so every write transaction here starts with
//! `BEGIN IMMEDIATE`: it takes the write lock up front, and a read-then-write transaction
//! can never fail its lock upgrade with "database is locked". Timestamps are TEXT in one
//! fixed UTC format, so string comparison is time comparison and the lease expiry is
//! judged by SQLite's clock, never a worker's.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::*;
use exec::Exec;
use pipeline::SqliteOps;

mod exec;
mod history;
mod operator;
mod pipeline;
use crate::queue;

/// The current time in the stored format.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
    };
}
pub(crate) use now;

/// The condition on a record `r` that the rescuer acts on: running without a live lease
/// carrying its token. One definition, shared by the rescuer and the fleet gauge.
macro_rules! unleased_running {
    () => {
        concat!(
            "r.status = 'running' AND NOT EXISTS (SELECT 1 FROM sync_locks l ",
            "WHERE l.instance_id = r.instance_id AND l.token = r.lock_token AND l.expires_at > ",
            now!(),
            ")"
        )
    };
}
pub(crate) use unleased_running;

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The [`Store`] on one SQLite file: several processes of one host share it.
pub struct SqliteStore {
    pool: SqlitePool,
    path: Option<std::path::PathBuf>,
    /// The pipeline's write transactions (rounds, rescues, cancels): see `exec.rs`.
    exec: Exec,
}

impl SqliteStore {
    /// Opens the database at `url`; `create` allows creating a missing file (commands
    /// that read never do: a typo in a path must not leave an empty database behind).
    pub async fn connect(url: &str, create: bool) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        let path = (!url.contains(":memory:")).then(|| opts.get_filename().to_path_buf());
        // SQLite would say only "unable to open database file".
        if let Some(dir) = path
            .as_ref()
            .and_then(|p| p.parent())
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            return Err(StoreError::NoDatabase(format!(
                "cannot open the database at {}: its folder {} does not exist (create the \
                 folder, or check --database-url)",
                path.as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                dir.display()
            )));
        }
        if let Some(path) = path.as_ref().filter(|p| !create && !p.exists()) {
            return Err(StoreError::NoDatabase(format!(
                "no database at {}: create it with `syncpool migrate` (or check --database-url)",
                path.display()
            )));
        }
        let new_file = path.as_ref().is_some_and(|p| !p.exists());
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .after_connect(|conn, _| {
                Box::pin(async move { crate::sqlite_busy::install(conn).await })
            })
            // sqlx counts a transaction as ended only when its ROLLBACK succeeds; after a
            // full disk SQLite may have rolled back on its own, the ROLLBACK fails, and the
            // connection went back to the pool "inside" a transaction, refusing every
            // later BEGIN ("begin_with at non-zero transaction depth"). Such a connection
            // (or one whose queued rollback has not run yet) is closed, not reused.
            .after_release(|conn, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            })
            .connect_with(opts)
            .await?;
        let Some(file) = path.as_ref() else {
            return Err(StoreError::UnsupportedUrl(format!(
                "{url} (an in-memory database cannot be shared by worker processes; use a file)"
            )));
        };
        if new_file {
            // The inventory says who may do what on every instance: not for every local
            // user to read. SQLite gives the -wal and -shm files the database's mode.
            // Those made before this point get it here.
            use std::os::unix::fs::PermissionsExt;
            for suffix in ["", "-wal", "-shm"] {
                let mut f = file.clone().into_os_string();
                f.push(suffix);
                let f = std::path::PathBuf::from(f);
                if suffix.is_empty() || f.exists() {
                    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).map_err(
                        |e| StoreError::Other(format!("making {} private: {e}", f.display())),
                    )?;
                }
            }
        }
        let exec = Exec::open(file)?;
        Ok(Self { pool, path, exec })
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// An `instances` row as an [`Instance`], read with `$get` (sqlx's `try_get` here,
/// rusqlite's `get` on the writer thread): one column mapping for both connections.
macro_rules! instance_from {
    ($row:expr, $get:ident) => {{
        let row = $row;
        let options: String = row.$get("options")?;
        Ok(Instance {
            id: row.$get("id")?,
            name: row.$get("name")?,
            kind: row.$get("kind")?,
            host: row.$get("host")?,
            port: row.$get("port")?,
            username: row.$get("username")?,
            database: row.$get("database")?,
            password_env: row.$get("password_env")?,
            password_file: row.$get("password_file")?,
            options: serde_json::from_str(&options).unwrap_or_else(|_| serde_json::json!({})),
            active: row.$get("active")?,
            created_at: row.$get("created_at")?,
            updated_at: row.$get("updated_at")?,
            history_since: row.$get("history_since")?,
        })
    }};
}
pub(super) use instance_from;

pub(super) fn instance_from_row(row: &SqliteRow) -> Result<Instance> {
    instance_from!(row, try_get)
}

const SESSION_COLS: &str = "id, session_id, sync_type, status, total_instances, successful_instances, \
     failed_instances, cancelled_instances, cancel_requested, created_at, started_at, completed_at, updated_at";

fn session_from_row(row: &SqliteRow) -> Result<Session> {
    let sid: String = row.try_get("session_id")?;
    Ok(Session {
        id: row.try_get("id")?,
        session_id: Uuid::parse_str(&sid).map_err(|e| StoreError::Other(e.to_string()))?,
        sync_type: row.try_get("sync_type")?,
        status: parse_status(row.try_get("status")?)?,
        total_instances: row.try_get("total_instances")?,
        successful_instances: row.try_get("successful_instances")?,
        failed_instances: row.try_get("failed_instances")?,
        cancelled_instances: row.try_get("cancelled_instances")?,
        cancel_requested: row.try_get("cancel_requested")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        updated_at: row.try_get("updated_at")?,
        duration_seconds: None,
        success_rate: None,
    }
    .with_derived(Utc::now()))
}

fn record_from_row(row: &SqliteRow) -> Result<Record> {
    Ok(Record {
        id: row.try_get("id")?,
        instance_id: row.try_get("instance_id")?,
        instance_name: row.try_get("instance_name")?,
        status: parse_status(row.try_get("status")?)?,
        attempts: row.try_get("attempts")?,
        worker_id: row.try_get("worker_id")?,
        lock_wait_ms: row.try_get("lock_wait_ms")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        accounts_total: row.try_get("accounts_total")?,
        accounts_added: row.try_get("accounts_added")?,
        accounts_removed: row.try_get("accounts_removed")?,
        accounts_changed: row.try_get("accounts_changed")?,
        error: row.try_get("error")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait]
impl Store for SqliteStore {
    fn pool(&self) -> DbPool {
        DbPool::Sqlite(self.pool.clone())
    }
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn migrations_pending(&self) -> Result<Option<usize>> {
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _syncpool_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
            {
                Ok(v) => v,
                Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => {
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            };
        Ok(Some(super::pending(
            &sqlx::migrate!("./migrations/sqlite"),
            &applied,
        )))
    }

    async fn migrate(&self) -> Result<()> {
        // SQLite's migrator takes no lock, so two processes starting at once could both
        // apply a migration: serialise them with an OS file lock beside the database.
        let _guard = match &self.path {
            Some(path) => {
                let lock_path = path.with_extension("migrate-lock");
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| {
                        StoreError::Other(format!("cannot open {}: {e}", lock_path.display()))
                    })?;
                let file = tokio::task::spawn_blocking(move || file.lock().map(|_| file))
                    .await
                    .map_err(|e| StoreError::Other(e.to_string()))?
                    .map_err(|e| {
                        StoreError::Other(format!("cannot lock {}: {e}", lock_path.display()))
                    })?;
                Some(file)
            }
            None => None,
        };
        apalis_sqlite::SqliteStorage::migrations()
            .run(&self.pool)
            .await?;
        let mut ours = sqlx::migrate!("./migrations/sqlite");
        ours.dangerous_set_table_name("_syncpool_migrations");
        ours.run(&self.pool).await?;
        // A fresh file has no planner statistics and runs ~40x slower (docs/APALIS.md, "Planner statistics");
        // once they exist, workers refresh them, so a CLI call need not re-analyze.
        let has_stats: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'",
        )
        .fetch_one(&self.pool)
        .await?;
        if has_stats == 0 {
            self.analyze().await?;
        }
        Ok(())
    }

    async fn ready(&self) -> Result<bool> {
        let applied: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_syncpool_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        if applied == 0 {
            return Ok(false);
        }
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _syncpool_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as usize >= sqlx::migrate!("./migrations/sqlite").iter().count())
    }

    async fn analyze(&self) -> Result<()> {
        sqlx::query("ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    async fn instance_insert(&self, new: &NewInstance) -> Result<Instance> {
        let mut tx = self.begin().await?;
        let id = insert_instance(&mut tx, new).await?;
        let row = sqlx::query("SELECT * FROM instances WHERE id = ?1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        instance_from_row(&row)
    }

    async fn instance_insert_many(&self, new: &[NewInstance]) -> Result<u64> {
        let mut tx = self.begin().await?;
        for n in new {
            insert_instance(&mut tx, n).await?;
        }
        tx.commit().await?;
        Ok(new.len() as u64)
    }

    async fn instance_list(&self) -> Result<Vec<Instance>> {
        sqlx::query("SELECT * FROM instances ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(instance_from_row)
            .collect()
    }

    async fn instance_get(&self, id: i64) -> Result<Option<Instance>> {
        let row = sqlx::query("SELECT * FROM instances WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    async fn instance_get_by_name(&self, name: &str) -> Result<Option<Instance>> {
        let row = sqlx::query("SELECT * FROM instances WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    async fn instance_delete(&self, id: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        // The instance row first, then its accounts: the order a finish takes them in
        // (it share-locks the instance), so a delete racing a finish cannot deadlock.
        let n = sqlx::query("DELETE FROM instances WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM instance_accounts WHERE instance_id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn session_create(
        &self,
        sync_type: SyncType,
        instance_ids: Option<&[i64]>,
    ) -> Result<SessionCreated> {
        let mut tx = self.begin().await?;
        let created = session_insert(&mut tx, sync_type, instance_ids).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn session_get(&self, session_id: Uuid) -> Result<Option<SessionDetail>> {
        let sql = format!("SELECT {SESSION_COLS} FROM sync_sessions WHERE session_id = ?1");
        // One snapshot for the session and its records, so totals match the records.
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(session_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let session = session_from_row(&row)?;
        let records =
            sqlx::query("SELECT * FROM sync_instance_records WHERE session_id = ?1 ORDER BY id")
                .bind(session.id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(record_from_row)
                .collect::<Result<_>>()?;
        tx.commit().await?;
        Ok(Some(SessionDetail { session, records }))
    }

    async fn session_summary(&self, session_id: Uuid) -> Result<Option<Session>> {
        let sql = format!("SELECT {SESSION_COLS} FROM sync_sessions WHERE session_id = ?1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(session_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    async fn session_record_counts(&self, session_id: Uuid) -> Result<Vec<(RecordStatus, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT r.status, COUNT(*) FROM sync_instance_records r \
             JOIN sync_sessions s ON s.id = r.session_id WHERE s.session_id = ?1 GROUP BY r.status",
        )
        .bind(session_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(st, n)| Ok((parse_status(st)?, n)))
            .collect()
    }

    async fn session_records(
        &self,
        session_id: Uuid,
        f: &RecordFilter,
    ) -> Result<Option<(Session, Vec<Record>)>> {
        let Some(session) = self.session_summary(session_id).await? else {
            return Ok(None);
        };
        if f.status.is_some_and(|st| !session.may_hold(st)) {
            return Ok(Some((session, Vec::new())));
        }
        // With a status: the (session_id, status) index, whose entries end with the rowid,
        // so a page is one range read (named: with statistics, the planner preferred walking
        // the primary key past older sessions' records, 13 ms at 100,000). Without: the
        // primary key from the session's first record (`first_record_id`).
        let sql = match f.status {
            Some(_) => {
                "SELECT * FROM sync_instance_records \
                 INDEXED BY idx_sync_instance_records_session_status \
                 WHERE session_id = ?1 AND status = ?4 AND id > ?2 ORDER BY id LIMIT ?3"
            }
            None => {
                "SELECT * FROM sync_instance_records WHERE session_id = ?1 AND id > max(?2, \
                 COALESCE((SELECT first_record_id FROM sync_sessions WHERE id = ?1), 1) - 1) \
                 AND ?4 IS NULL ORDER BY id LIMIT ?3"
            }
        };
        let rows = sqlx::query(sql)
            .bind(session.id)
            .bind(f.after)
            .bind(f.limit)
            .bind(f.status.map(|s| s.as_str()))
            .fetch_all(&self.pool)
            .await?;
        let records = rows.iter().map(record_from_row).collect::<Result<_>>()?;
        Ok(Some((session, records)))
    }

    async fn locks_list(&self) -> Result<Vec<crate::model::Lease>> {
        operator::locks_list(&self.pool).await
    }

    async fn session_ids_between(&self, lo: Uuid, hi: Uuid, limit: i64) -> Result<Vec<Uuid>> {
        // Stored as lowercase hyphenated text, which sorts as the ids do.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT session_id FROM sync_sessions WHERE session_id BETWEEN ?1 AND ?2 \
             ORDER BY session_id LIMIT ?3",
        )
        .bind(lo.to_string())
        .bind(hi.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        ids.iter()
            .map(|s| {
                Uuid::parse_str(s).map_err(|e| StoreError::Other(format!("session id {s}: {e}")))
            })
            .collect()
    }

    async fn records_finished_since(&self, seconds: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM sync_instance_records WHERE completed_at >= \
             strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || ?1 || ' seconds')",
        )
        .bind(seconds)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn workers_live(&self, within_seconds: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM Workers WHERE worker_type = ?1 AND last_seen >= unixepoch() - ?2",
        )
        .bind(crate::queue::QUEUE)
        .bind(within_seconds)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn queue_stats(&self, cap: Option<i64>) -> Result<crate::model::QueueStats> {
        operator::queue_stats(&self.pool, cap).await
    }

    async fn instance_overview(
        &self,
        limit: i64,
        after: i64,
    ) -> Result<Vec<crate::model::InstanceOverview>> {
        operator::instance_overview(&self.pool, limit, after).await
    }

    async fn instance_syncs(
        &self,
        instance_id: i64,
        limit: i64,
    ) -> Result<Vec<crate::model::InstanceSync>> {
        operator::instance_syncs(&self.pool, instance_id, limit).await
    }

    async fn session_list(&self, f: &SessionFilter) -> Result<(Vec<Session>, i64)> {
        let sql = format!(
            "SELECT {SESSION_COLS} FROM sync_sessions WHERE (?1 IS NULL OR status = ?1) \
             AND (?4 IS NULL OR sync_type = ?4) ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3"
        );
        let items = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&f.status)
            .bind(f.limit)
            .bind(f.offset)
            .bind(&f.sync_type)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(session_from_row)
            .collect::<Result<_>>()?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sync_sessions WHERE (?1 IS NULL OR status = ?1) \
             AND (?2 IS NULL OR sync_type = ?2)",
        )
        .bind(&f.status)
        .bind(&f.sync_type)
        .fetch_one(&self.pool)
        .await?;
        Ok((items, total))
    }

    async fn session_cancel(&self, session_id: Uuid) -> Result<Option<Cancelled>> {
        let found = self
            .exec
            .write(move |ops| {
                let Some((session_row, status)) = ops
                    .rows(
                        "SELECT id, status FROM sync_sessions WHERE session_id = ?1",
                        [session_id.to_string()],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                    )?
                    .pop()
                else {
                    return Ok(None);
                };
                if FINISHED_SESSION_STATUSES.contains(&status.as_str()) {
                    return Ok(Some(None));
                }
                futures::executor::block_on(batch::cancel(ops, session_row)).map(Some)
            })
            .await?;
        let Some(finished) = found else {
            return Ok(None);
        };
        let session = self.session_get(session_id).await?.map(|d| d.session);
        Ok(session.map(|session| Cancelled { session, finished }))
    }

    async fn lease_grant_batch(
        &self,
        p: &LeaseParams,
        reqs: &[GrantRequest],
    ) -> Result<Vec<GrantOutcome>> {
        let (p, reqs) = (p.clone(), reqs.to_vec());
        self.exec
            .write(move |ops| futures::executor::block_on(batch::grant(ops, &p, &reqs)))
            .await
    }

    async fn lease_renew_batch(
        &self,
        p: &LeaseParams,
        reqs: &[RenewRequest],
    ) -> Result<Vec<RenewOutcome>> {
        let (p, reqs) = (p.clone(), reqs.to_vec());
        self.exec.write(move |ops| renew(ops, &p, &reqs)).await
    }

    fn combines_rounds(&self) -> bool {
        true
    }

    async fn pipeline_round(
        &self,
        p: &LeaseParams,
        finishes: &[FinishRequest],
        renews: &[RenewRequest],
        grants: &[GrantRequest],
    ) -> Result<(Vec<FinishOutcome>, Vec<RenewOutcome>, Vec<GrantOutcome>)> {
        // One writer at a time is SQLite's rule anyway: take the write lock once per round.
        let (p, finishes, renews, grants) = (
            p.clone(),
            finishes.to_vec(),
            renews.to_vec(),
            grants.to_vec(),
        );
        self.exec
            .write(move |ops| {
                futures::executor::block_on(async {
                    let f = batch::finish(ops, &finishes).await?;
                    let r = renew(ops, &p, &renews)?;
                    let g = batch::grant(ops, &p, &grants).await?;
                    Ok((f, r, g))
                })
            })
            .await
    }

    async fn record_finish_batch(
        &self,
        _p: &LeaseParams,
        reqs: &[FinishRequest],
    ) -> Result<Vec<FinishOutcome>> {
        let reqs = reqs.to_vec();
        self.exec
            .write(move |ops| futures::executor::block_on(batch::finish(ops, &reqs)))
            .await
    }

    async fn records_rescue(&self, p: &LeaseParams, limit: i64) -> Result<RescueOutcome> {
        let p = p.clone();
        self.exec
            .write(move |ops| futures::executor::block_on(batch::rescue(ops, &p, limit)))
            .await
    }

    async fn job_kill(&self, job_id: &str, reason: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE Jobs SET status = 'Killed', done_at = unixepoch(), last_result = ?2 WHERE id = ?1")
            .bind(job_id)
            .bind(serde_json::json!({ "Err": reason }).to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn jobs_handback(&self, worker_names: &[String]) -> Result<u64> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
             WHERE lock_by IN (SELECT value FROM json_each(?1)) AND status IN ('Queued', 'Running')",
        )
        .bind(serde_json::to_string(worker_names).unwrap_or_default())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn changes_list(&self, filter: &ChangeFilter) -> Result<Vec<AccountChange>> {
        history::changes_list(&self.pool, filter).await
    }

    async fn accounts_list(
        &self,
        instance_id: i64,
        include_deleted: bool,
    ) -> Result<Vec<StoredAccount>> {
        sqlx::query(
            "SELECT username, host, attributes, privileges, first_seen_at, last_seen_at, deleted_at \
             FROM instance_accounts WHERE instance_id = ?1 AND (?2 OR deleted_at IS NULL) ORDER BY username, host",
        )
        .bind(instance_id)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let a: String = r.try_get(2)?;
            let p: String = r.try_get(3)?;
            Ok(StoredAccount {
                username: r.try_get(0)?,
                host: r.try_get(1)?,
                attributes: serde_json::from_str(&a).unwrap_or_default(),
                privileges: serde_json::from_str(&p).unwrap_or_default(),
                first_seen_at: r.try_get(4)?,
                last_seen_at: r.try_get(5)?,
                deleted_at: r.try_get(6)?,
            })
        })
        .collect()
    }

    async fn cleanup(&self, days: i64, history_days: i64) -> Result<CleanupCounts> {
        let cutoff = (Utc::now() - chrono::Duration::days(days))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let cutoff_epoch = (Utc::now() - chrono::Duration::days(days)).timestamp();
        let mut counts = CleanupCounts::default();
        // Small batches, one short transaction each, so cleanup never holds the write
        // lock long enough to stall workers.
        loop {
            let mut tx = self.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM sync_sessions WHERE status IN ('completed', 'completed_with_errors', 'failed', 'cancelled') \
                 AND completed_at < ?1 ORDER BY id LIMIT 100",
            )
            .bind(&cutoff)
            .fetch_all(&mut *tx)
            .await?;
            if ids.is_empty() {
                break;
            }
            let ids_json = serde_json::to_string(&ids).unwrap_or_default();
            counts.records_deleted += sqlx::query(
                "DELETE FROM sync_instance_records WHERE session_id IN (SELECT value FROM json_each(?1))",
            )
            .bind(&ids_json)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            counts.sessions_deleted += sqlx::query(
                "DELETE FROM sync_sessions WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .bind(&ids_json)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
        }
        loop {
            let mut tx = self.begin().await?;
            let n = sqlx::query(
                "DELETE FROM Jobs WHERE rowid IN (SELECT rowid FROM Jobs WHERE job_type = ?1 \
                 AND status IN ('Done', 'Killed') AND done_at < ?2 LIMIT 1000)",
            )
            .bind(queue::QUEUE)
            .bind(cutoff_epoch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            counts.jobs_deleted += n;
            if n < 1000 {
                break;
            }
        }
        loop {
            let mut tx = self.begin().await?;
            let n = sqlx::query(concat!(
                "DELETE FROM sync_locks WHERE id IN (SELECT id FROM sync_locks WHERE expires_at <= ",
                now!(),
                " LIMIT 1000)"
            ))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            counts.locks_deleted += n;
            if n < 1000 {
                break;
            }
        }
        let history_cutoff = (Utc::now() - chrono::Duration::days(history_days))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        loop {
            let mut tx = self.begin().await?;
            let n = sqlx::query(
                "DELETE FROM account_changes WHERE id IN \
                 (SELECT id FROM account_changes WHERE changed_at < ?1 LIMIT 1000)",
            )
            .bind(&history_cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            counts.changes_deleted += n;
            if n < 1000 {
                break;
            }
        }
        // Fired cron slots older than the retention only prove a slot fired once.
        let mut tx = self.begin().await?;
        // Slots are kept a day at least, whatever the retention: a replica whose clock
        // lags could otherwise claim a just-deleted slot again and fire it twice.
        let slot_cutoff = (Utc::now() - chrono::Duration::days(days.max(1)))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        sqlx::query("DELETE FROM schedule_slots WHERE created_at < ?1")
            .bind(&slot_cutoff)
            .execute(&mut *tx)
            .await?;
        // A revoked nonce past its cookie's expiry is refused by the expiry alone.
        sqlx::query(concat!(
            "DELETE FROM console_revoked_nonces WHERE expires_at < ",
            now!()
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(counts)
    }

    async fn instance_update(&self, id: i64, new: &NewInstance) -> Result<Instance> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(concat!(
            "UPDATE instances SET name = ?2, kind = ?3, host = ?4, port = ?5, username = ?6, database = ?7, ",
            "password_env = ?8, options = ?9, active = ?10, password_file = ?11, updated_at = ",
            now!(),
            " WHERE id = ?1 RETURNING *"
        ))
        .bind(id)
        .bind(&new.name)
        .bind(&new.kind)
        .bind(&new.host)
        .bind(new.port)
        .bind(&new.username)
        .bind(&new.database)
        .bind(&new.password_env)
        .bind(new.options.to_string())
        .bind(new.active)
        .bind(&new.password_file)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("an instance named '{}' already exists", new.name))
            } else {
                e.into()
            }
        })?
        .ok_or_else(|| StoreError::NotFound(format!("unknown instance {id}")))?;
        tx.commit().await?;
        instance_from_row(&row)
    }

    async fn secret_get_or_insert(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        // Two processes starting at once both insert; the primary key keeps the first,
        // and both read that one.
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO console_secrets (name, secret) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(
            sqlx::query_scalar("SELECT secret FROM console_secrets WHERE name = ?1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn console_nonce_revoke(
        &self,
        nonce: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO console_revoked_nonces (nonce, expires_at) VALUES (?1, ?2) ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(expires_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn console_nonce_revoked(&self, nonce: &str) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM console_revoked_nonces WHERE nonce = ?1)",
        )
        .bind(nonce)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn schedule_slot_claim(
        &self,
        name: &str,
        slot: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("INSERT INTO schedule_slots (name, slot) VALUES (?1, ?2) ON CONFLICT (name, slot) DO NOTHING")
            .bind(name)
            .bind(slot.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn schedule_sync_fire(
        &self,
        name: &str,
        slot: chrono::DateTime<chrono::Utc>,
    ) -> Result<SlotFired> {
        // Claim, check and start in one transaction: a crash between them can neither
        // lose the slot (claimed, no session) nor start a session no slot accounts for.
        let mut tx = self.begin().await?;
        let claimed = sqlx::query("INSERT INTO schedule_slots (name, slot) VALUES (?1, ?2) ON CONFLICT (name, slot) DO NOTHING")
            .bind(name)
            .bind(slot.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !claimed {
            return Ok(SlotFired::Taken);
        }
        let running: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sync_sessions WHERE sync_type = 'scheduled' AND status IN ('pending', 'running')",
        )
        .fetch_one(&mut *tx)
        .await?;
        let fired = if running > 0 {
            sqlx::query("UPDATE schedule_slots SET skipped = 1 WHERE name = ?1 AND slot = ?2")
                .bind(name)
                .bind(slot.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .execute(&mut *tx)
                .await?;
            SlotFired::Skipped
        } else {
            let created = match session_insert(&mut tx, SyncType::Scheduled, None).await {
                Err(StoreError::NoInstances) => {
                    sqlx::query(
                        "UPDATE schedule_slots SET skipped = 1 WHERE name = ?1 AND slot = ?2",
                    )
                    .bind(name)
                    .bind(slot.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(SlotFired::NothingToSync);
                }
                other => other?,
            };
            sqlx::query("UPDATE schedule_slots SET session_id = ?3 WHERE name = ?1 AND slot = ?2")
                .bind(name)
                .bind(slot.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .bind(created.session_id.to_string())
                .execute(&mut *tx)
                .await?;
            SlotFired::Started(created)
        };
        tx.commit().await?;
        Ok(fired)
    }

    async fn fleet_gauges(&self) -> Result<FleetGauges> {
        let jobs = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE status = 'Pending'), COUNT(*) FILTER (WHERE status IN ('Queued', 'Running')), \
             COUNT(*) FILTER (WHERE status IN ('Failed', 'Killed')) FROM Jobs WHERE job_type = ?1",
        )
        .bind(queue::QUEUE)
        .fetch_one(&self.pool)
        .await?;
        let locks: i64 = sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM sync_locks WHERE expires_at > ",
            now!()
        ))
        .fetch_one(&self.pool)
        .await?;
        let sessions: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sync_sessions WHERE status = 'running'")
                .fetch_one(&self.pool)
                .await?;
        let (session_stats, last_success) = super::session_stats_read(&self.pool).await?;
        // Oldest unfinished session's age, running records without a live lease (the
        // rescuer should leave none for long), and the scheduler's slots of the last day.
        let extra = sqlx::query(concat!(
            "SELECT COALESCE((julianday('now') - julianday(MIN(COALESCE(started_at, created_at)))) * 86400.0, 0.0) ",
            "FROM sync_sessions WHERE status IN ('pending', 'running')"
        ))
        .fetch_one(&self.pool)
        .await?;
        let unleased: i64 = sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM sync_instance_records r WHERE ",
            unleased_running!()
        ))
        .fetch_one(&self.pool)
        .await?;
        let slots = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE skipped = 0), COUNT(*) FILTER (WHERE skipped <> 0) FROM schedule_slots \
             WHERE created_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(FleetGauges {
            jobs_pending: jobs.try_get(0)?,
            jobs_running: jobs.try_get(1)?,
            jobs_failed: jobs.try_get(2)?,
            locks_held: locks,
            sessions_running: sessions,
            session_stats,
            last_success,
            oldest_session_seconds: extra.try_get(0)?,
            records_unleased: unleased,
            slots_fired_24h: slots.try_get(0)?,
            slots_skipped_24h: slots.try_get(1)?,
        })
    }
}

/// Extends the leases whose token is still current and reports cancel requests.
fn renew(ops: &SqliteOps<'_>, p: &LeaseParams, reqs: &[RenewRequest]) -> Result<Vec<RenewOutcome>> {
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        // Only a live lease of a still-running record is extended. A renewal that was
        // queued when its sync ended must not revive the released lease for a whole TTL,
        // and an expired lease stays expired: its holder's local deadline has passed
        // too, and the rescuer may already be handing the record on.
        let held = ops.exec(
            concat!(
                "UPDATE sync_locks SET expires_at = strftime('%Y-%m-%dT%H:%M:%fZ','now', '+' || ?3 || ' seconds') ",
                "WHERE instance_id = ?1 AND token = ?2 AND expires_at > ",
                now!(),
                " AND EXISTS (SELECT 1 FROM sync_instance_records r WHERE r.id = sync_locks.record_id ",
                "AND r.status = 'running' AND r.lock_token = ?2)"
            ),
            rusqlite::params![r.instance_id, r.token, p.ttl.as_secs_f64()],
        )? == 1;
        let cancel_requested = ops
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

/// A session, its records and its jobs, in the caller's transaction.
async fn session_insert(
    tx: &mut SqliteConnection,
    sync_type: SyncType,
    instance_ids: Option<&[i64]>,
) -> Result<SessionCreated> {
    let rows = match instance_ids {
        None => {
            sqlx::query("SELECT id, name FROM instances WHERE active = 1 ORDER BY id")
                .fetch_all(&mut *tx)
                .await?
        }
        Some(ids) => {
            let rows = sqlx::query(
                "SELECT id, name FROM instances WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id",
            )
            .bind(serde_json::to_string(ids).unwrap_or_default())
            .fetch_all(&mut *tx)
            .await?;
            check_all_found(ids, rows.iter().map(|r| r.get::<i64, _>(0)))?;
            rows
        }
    };
    if rows.is_empty() {
        return Err(StoreError::NoInstances);
    }
    let session_id = Uuid::new_v4();
    let total = rows.len() as i64;
    // Never empty (refused above), so a new session is always pending.
    let session_row: i64 = sqlx::query_scalar(
        "INSERT INTO sync_sessions (session_id, sync_type, status, total_instances) \
         VALUES (?1, ?2, 'pending', ?3) RETURNING id",
    )
    .bind(session_id.to_string())
    .bind(sync_type.as_str())
    .bind(total)
    .fetch_one(&mut *tx)
    .await?;
    // Three statements whatever the size: rows travel as one JSON array each.
    let records: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!([
                r.get::<i64, _>(0),
                r.get::<String, _>(1),
                queue::new_job_id()
            ])
        })
        .collect();
    sqlx::query(
        "INSERT INTO sync_instance_records (session_id, instance_id, instance_name, job_id) \
         SELECT ?1, value->>0, value->>1, value->>2 FROM json_each(?2)",
    )
    .bind(session_row)
    .bind(serde_json::Value::Array(records).to_string())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE sync_sessions SET first_record_id = (SELECT MIN(id) FROM sync_instance_records \
         WHERE session_id = ?1 AND status = 'pending') WHERE id = ?1",
    )
    .bind(session_row)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority) \
         SELECT CAST(json_object('session_id', ?1, 'record_id', id, 'instance_id', instance_id, 'attempt', 1) AS BLOB), \
         job_id, ?2, 'Pending', 0, ?3, unixepoch(), 0 FROM sync_instance_records WHERE session_id = ?4",
    )
    .bind(session_id.to_string())
    .bind(queue::QUEUE)
    .bind(queue::APALIS_MAX_ATTEMPTS)
    .bind(session_row)
    .execute(&mut *tx)
    .await?;
    let status: String = sqlx::query_scalar("SELECT status FROM sync_sessions WHERE id = ?1")
        .bind(session_row)
        .fetch_one(&mut *tx)
        .await?;
    Ok(SessionCreated {
        session_id,
        total_instances: total,
        status,
    })
}

async fn insert_instance(tx: &mut SqliteConnection, n: &NewInstance) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO instances (name, kind, host, port, username, database, password_env, options, active, password_file) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
    )
    .bind(&n.name)
    .bind(&n.kind)
    .bind(&n.host)
    .bind(n.port)
    .bind(&n.username)
    .bind(&n.database)
    .bind(&n.password_env)
    .bind(n.options.to_string())
    .bind(n.active)
    .bind(&n.password_file)
    .fetch_one(tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("an instance named '{}' already exists", n.name))
        } else {
            e.into()
        }
    })
}
