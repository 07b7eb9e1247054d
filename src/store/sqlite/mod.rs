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
use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Pool, Row, Sqlite};
use uuid::Uuid;

use super::batch::{Batch, BatchOps};
use super::common::{Backend, Queries, SqlStore};
use super::sql::{Arg, Dialect};
use super::*;
use exec::Exec;

mod drift;
mod exec;
mod limits;
mod pipeline;

/// The current time in the stored format.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
    };
}
pub(crate) use now;

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The stored text of a time: UTC, milliseconds, `Z`, so that text order is time order.
fn stored(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The [`Store`] on one SQLite file: several processes of one host share it.
pub(crate) type SqliteStore = SqlStore<Sqlite>;

/// What a SQLite store keeps beside its pool.
pub(crate) struct SqliteLocal {
    path: Option<std::path::PathBuf>,
    /// The pipeline's write transactions (rounds, rescues, cancels): see `exec.rs`.
    exec: Exec,
}

impl SqlStore<Sqlite> {
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
        Ok(Self {
            pool,
            local: SqliteLocal { path, exec },
        })
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
            kind: parse_status(row.$get::<_, String>("kind")?)?,
            host: row.$get("host")?,
            port: row.$get("port")?,
            username: row.$get("username")?,
            database: row.$get("database")?,
            password_env: row.$get("password_env")?,
            password_file: row.$get("password_file")?,
            options: serde_json::from_str(&options).unwrap_or_else(|_| serde_json::json!({})),
            active: row.$get("active")?,
            group: row.$get("group_name")?,
            created_at: row.$get("created_at")?,
            updated_at: row.$get("updated_at")?,
            history_since: row.$get("history_since")?,
        })
    }};
}
pub(super) use instance_from;

impl Dialect for Sqlite {
    fn bind_special(
        q: sqlx::query::Query<'_, Self, <Self as sqlx::Database>::Arguments>,
        a: Arg,
    ) -> sqlx::query::Query<'_, Self, <Self as sqlx::Database>::Arguments> {
        match a {
            Arg::Uuid(u) => q.bind(u.to_string()),
            Arg::Time(t) => q.bind(stored(t)),
            Arg::OptTime(t) => q.bind(t.map(stored)),
            Arg::QueueTime(t) => q.bind(t.timestamp()),
            Arg::Json(v) => q.bind(v.to_string()),
            Arg::Ids(ids) => q.bind(serde_json::to_string(&ids).unwrap_or_default()),
            Arg::Texts(v) => q.bind(serde_json::to_string(&v).unwrap_or_default()),
            other => unreachable!("bound by sql::build: {other:?}"),
        }
    }
    fn in_list(column: &str, n: usize) -> String {
        format!("{column} IN (SELECT value FROM json_each(${n}))")
    }
    fn uuid_at(row: &SqliteRow, col: &str) -> Result<Uuid> {
        parse_uuid(&row.try_get::<String, _>(col)?)
    }
    fn json_at(row: &SqliteRow, col: &str) -> Result<serde_json::Value> {
        let s: Option<String> = row.try_get(col)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default())
    }
    fn queue_time_at(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>> {
        let secs: i64 = row.try_get(col)?;
        Ok(Utc.timestamp_opt(secs, 0).single().unwrap_or_default())
    }
    fn rows_affected(r: &SqliteQueryResult) -> u64 {
        r.rows_affected()
    }
}

#[async_trait]
impl Backend for Sqlite {
    type Local = SqliteLocal;
    const KIND: &'static str = "sqlite";
    const ONE_TRANSACTION_PER_ROUND: bool = true;
    // The write lock already makes requests gather while another process writes.
    const ROUND_WINDOW: std::time::Duration = std::time::Duration::ZERO;
    const SQL: Queries = Queries {
        begin_write: "BEGIN IMMEDIATE",
        begin_snapshot: "BEGIN",
        now: now!(),
        day_ago: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')",
        time_type: "TEXT",
        migrations_table: "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' \
            AND name = '_syncpool_migrations'",
        analyze: "ANALYZE",
        jobs: "Jobs",
        no_limit: Some(-1),
        records_finished_since: "SELECT COUNT(*) AS n FROM sync_instance_records WHERE \
            completed_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $1 || ' seconds')",
        workers_live: "SELECT COUNT(*) AS n FROM Workers WHERE worker_type = $1 \
            AND last_seen >= unixepoch() - $2",
        jobs_delete_done: "DELETE FROM Jobs WHERE rowid IN (SELECT rowid FROM Jobs \
            WHERE job_type = $1 AND status IN ('Done', 'Killed') AND done_at < $2 LIMIT 1000)",
        job_kill: "UPDATE Jobs SET status = 'Killed', done_at = unixepoch(), last_result = $2 \
            WHERE id = $1",
        jobs_handback: "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
            WHERE lock_by IN (SELECT value FROM json_each($1)) AND status IN ('Queued', 'Running')",
        records_insert: "INSERT INTO sync_instance_records (session_id, instance_id, \
            instance_name, job_id) SELECT $1, value->>0, value->>1, value->>2 FROM json_each($2)",
        jobs_insert: "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, \
            run_at, priority) SELECT CAST(json_object('session_id', $1, 'record_id', id, \
            'instance_id', instance_id, 'attempt', 1) AS BLOB), job_id, $2, 'Pending', 0, $3, \
            unixepoch(), 0 FROM sync_instance_records WHERE session_id = $4",
        oldest_session_age: "SELECT COALESCE((julianday('now') - \
            julianday(MIN(COALESCE(started_at, created_at)))) * 86400.0, 0.0) AS age \
            FROM sync_sessions WHERE status IN ('pending', 'running')",
        unleased_running: unleased_running!(now!()),
        queue_due: "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM Jobs WHERE job_type = $1 \
            AND status = 'Pending' AND run_at <= unixepoch() LIMIT $2)) AS ready, \
            (SELECT COUNT(*) FROM (SELECT 1 FROM Jobs WHERE job_type = $1 \
            AND status = 'Pending' AND run_at > unixepoch() LIMIT $2)) AS delayed",
        // The head of apalis' own fetch order (its partial index): the job due longest.
        queue_oldest: "SELECT id, run_at, attempts, MAX(unixepoch() - run_at, 0) * 1.0 AS waited \
            FROM Jobs WHERE job_type = $1 AND status = 'Pending' AND lock_by IS NULL \
            ORDER BY priority DESC, run_at, id LIMIT 1",
        // Per instance, its newest record (the (instance_id, status) index holds the
        // rowid) and its live accounts (the unique (instance_id, username, host) index).
        skip_locked: "",
        follow_after: "SELECT {cols} FROM {t} WHERE id > $1 ORDER BY id LIMIT $2",
        follow_head: "SELECT COALESCE(MAX(id), 0) AS n FROM {t}",
        instance_overview: "SELECT i.*, (SELECT r.status FROM sync_instance_records r \
            WHERE r.instance_id = i.id ORDER BY r.id DESC LIMIT 1) AS last_status, \
            (SELECT COALESCE(r.completed_at, r.started_at, r.created_at) \
            FROM sync_instance_records r WHERE r.instance_id = i.id ORDER BY r.id DESC LIMIT 1) \
            AS last_sync_at, (SELECT COUNT(*) FROM instance_accounts a \
            WHERE a.instance_id = i.id AND a.deleted_at IS NULL) AS account_count \
            FROM instances i WHERE i.id > $1 ORDER BY i.id LIMIT $2",
    };
    fn db_pool(pool: &Pool<Sqlite>) -> DbPool {
        DbPool::Sqlite(pool.clone())
    }
    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/sqlite")
    }
    fn is_undefined_table(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(db) if db.message().contains("no such table"))
    }
    fn record_rows(ids: Vec<i64>, names: Vec<String>, job_ids: Vec<String>) -> Vec<Arg> {
        // One JSON array of [id, name, job id] rows: one statement whatever the size.
        let rows: Vec<_> = ids
            .into_iter()
            .zip(names)
            .zip(job_ids)
            .map(|((id, name), job)| serde_json::json!([id, name, job]))
            .collect();
        vec![Arg::Text(serde_json::Value::Array(rows).to_string())]
    }
    fn records_page(status: Option<RecordStatus>) -> String {
        // With a status: the (session_id, status) index, whose entries end with the rowid,
        // so a page is one range read (named: with statistics, the planner preferred walking
        // the primary key past older sessions' records, 13 ms at 100,000). Without: the
        // primary key from the session's first record (`first_record_id`).
        match status {
            Some(st) => format!(
                "SELECT * FROM sync_instance_records \
                 INDEXED BY idx_sync_instance_records_session_status \
                 WHERE session_id = $1 AND status = '{}' AND id > $2 ORDER BY id LIMIT $3",
                st.as_str()
            ),
            None => "SELECT * FROM sync_instance_records WHERE session_id = $1 AND id > max($2, \
                 COALESCE((SELECT first_record_id FROM sync_sessions WHERE id = $1), 1) - 1) \
                 ORDER BY id LIMIT $3"
                .to_string(),
        }
    }
    fn seconds_since(expr: &str) -> String {
        format!("(julianday('now') - julianday({expr})) * 86400.0")
    }
    fn seconds_until(expr: &str) -> String {
        format!("(julianday({expr}) - julianday('now')) * 86400.0")
    }

    async fn migrate(s: &SqliteStore) -> Result<()> {
        // SQLite's migrator takes no lock, so two processes starting at once could both
        // apply a migration: serialise them with an OS file lock beside the database.
        let _guard = match &s.local.path {
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
            .run(&s.pool)
            .await?;
        let mut ours = sqlx::migrate!("./migrations/sqlite");
        ours.dangerous_set_table_name("_syncpool_migrations");
        ours.run(&s.pool).await?;
        // A fresh file has no planner statistics and runs ~40x slower (docs/APALIS.md, "Planner statistics");
        // once they exist, workers refresh them, so a CLI call need not re-analyze.
        let has_stats: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'",
        )
        .fetch_one(&s.pool)
        .await?;
        if has_stats == 0 {
            s.analyze().await?;
        }
        Ok(())
    }

    async fn write<T: Send + 'static>(s: &SqliteStore, f: Batch<T>) -> Result<T> {
        // The batch's statements run on the writer thread, where their futures never
        // wait (rusqlite is synchronous): block_on only drives them to the end.
        s.local
            .exec
            .write(move |ops| futures::executor::block_on(f(ops as &mut dyn BatchOps)))
            .await
    }
}
