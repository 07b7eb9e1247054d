//! [`Store`] on PostgreSQL: many worker hosts share one queue.
//!
//! Times come from `clock_timestamp()`, not `now()`: `now()` is the transaction's start,
//! and a transaction that waited for a row lock would stamp a lease or a record with a
//! time in the past (docs/APALIS.md, "PostgreSQL `now()`"). Every pipeline transaction touches rows in one
//! order (records, then leases, then session totals in ascending session order, applied
//! last) so that two processes' batches do not deadlock.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::*;
use pipeline::PgOps;

mod history;
mod operator;
mod pipeline;
use crate::queue;

/// The current time in the stored format.
macro_rules! now {
    () => {
        "clock_timestamp()"
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

/// The [`Store`] on PostgreSQL: several hosts share one database.
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects with syncpool's session settings (timeouts, keepalives) and the queue's pool.
    /// With `create`, a missing database is created (`CREATE DATABASE`, from the server's
    /// `postgres` database), as a missing SQLite file is; without, it is bad input that
    /// says how to create it.
    pub async fn connect(url: &str, create: bool) -> Result<Self> {
        let opts = connect_options(url)?;
        // A pool retries a refused connection until its acquire timeout (30 s) and then
        // says only "pool timed out"; one plain connection first fails at once, with the
        // real cause (refused, unknown host, bad password, no such database).
        let probe = match sqlx::ConnectOptions::connect(&opts).await {
            Err(e) if is_missing_database(&e) && create => {
                create_database(&opts).await?;
                sqlx::ConnectOptions::connect(&opts)
                    .await
                    .map_err(|e| connect_error(&opts, e))?
            }
            other => other.map_err(|e| connect_error(&opts, e))?,
        };
        let probe: PgConnection = probe;
        sqlx::Connection::close(probe).await?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .min_connections(1)
            .connect_with(opts)
            .await?;
        Ok(Self { pool })
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

/// Where `opts` connects, as an operator would write it: `HOST:PORT` or the socket.
fn server(opts: &PgConnectOptions) -> String {
    match opts.get_socket() {
        Some(dir) => format!("{} (port {})", dir.display(), opts.get_port()),
        None => format!("{}:{}", opts.get_host(), opts.get_port()),
    }
}

/// SQLSTATE 3D000, `invalid_catalog_name`: the URL names a database the server lacks.
fn is_missing_database(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000"))
}

/// A failed first connection, naming the server (and the database when it is missing):
/// "Connection refused" alone does not say which of several servers refused.
fn connect_error(opts: &PgConnectOptions, e: sqlx::Error) -> StoreError {
    let at = server(opts);
    if is_missing_database(&e) {
        return StoreError::NoDatabase(format!(
            "no database '{}' on the PostgreSQL server at {at}: create it with `syncpool \
             migrate` (or check --database-url)",
            opts.get_database().unwrap_or_default()
        ));
    }
    match e {
        sqlx::Error::Database(_) => StoreError::Database(e),
        e => StoreError::Unreachable(format!(
            "cannot connect to syncpool's PostgreSQL database at {at}: {e}"
        )),
    }
}

/// Creates the database `opts` names, connected to the same server's `postgres`
/// database. Another process creating it at the same moment is no error.
async fn create_database(opts: &PgConnectOptions) -> Result<()> {
    let name = opts.get_database().unwrap_or_default().to_string();
    let admin = opts.clone().database("postgres");
    let mut conn: PgConnection = sqlx::ConnectOptions::connect(&admin)
        .await
        .map_err(|e| connect_error(&admin, e))?;
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await;
    let _ = sqlx::Connection::close(conn).await;
    match done {
        Ok(_) => {
            tracing::info!(database = %name, server = %server(opts), "created the database");
            Ok(())
        }
        // 42P04 duplicate_database; 23505 when two CREATE DATABASE race on the catalog.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04" | "23505")) =>
        {
            Ok(())
        }
        Err(e) => Err(StoreError::Other(format!(
            "the database '{name}' does not exist on the PostgreSQL server at {} and could not \
             be created ({}): create it (`createdb {name}`) and run `syncpool migrate`",
            server(opts),
            describe(&e)
        ))),
    }
}

/// Server-side limits on syncpool's own sessions. A worker that freezes (SIGSTOP, a
/// long GC-like pause, a dead network) in the middle of a transaction would otherwise
/// keep its row locks, and every other worker would queue behind it for as long as the
/// server's TCP keepalive takes to notice (two hours by default). Our transactions never
/// wait on anything but the database, so a few seconds idle inside one means its process
/// is gone or frozen: the server ends it and releases the locks, well within a lease TTL.
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "5s";

/// The connect options of every syncpool connection to PostgreSQL.
pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?
        .application_name("syncpool")
        .options([
            (
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            ),
            // A statement waiting on a row lock gives up (a transient error: retried)
            // instead of waiting on a stalled holder indefinitely.
            ("lock_timeout", "10s"),
            ("statement_timeout", "120s"),
            // The server probes a silent client after 10 s, 3 times 5 s apart.
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
        ]))
}

pub(super) fn instance_from_row(row: &PgRow) -> Result<Instance> {
    Ok(Instance {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        host: row.try_get("host")?,
        port: row.try_get("port")?,
        username: row.try_get("username")?,
        database: row.try_get("database")?,
        password_env: row.try_get("password_env")?,
        password_file: row.try_get("password_file")?,
        options: row.try_get("options")?,
        active: row.try_get("active")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        history_since: row.try_get("history_since")?,
    })
}

const SESSION_COLS: &str = "id, session_id, sync_type, status, total_instances, successful_instances, \
     failed_instances, cancelled_instances, cancel_requested, created_at, started_at, completed_at, updated_at";

fn session_from_row(row: &PgRow) -> Result<Session> {
    Ok(Session {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
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

fn record_from_row(row: &PgRow) -> Result<Record> {
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
impl Store for PgStore {
    fn pool(&self) -> DbPool {
        DbPool::Postgres(self.pool.clone())
    }
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn migrations_pending(&self) -> Result<Option<usize>> {
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _syncpool_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
            {
                Ok(v) => v,
                // undefined_table
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            };
        Ok(Some(super::pending(
            &sqlx::migrate!("./migrations/postgres"),
            &applied,
        )))
    }

    async fn migrate(&self) -> Result<()> {
        // sqlx's migrator locks, but creates its bookkeeping table before it does; two
        // processes migrating a fresh database at once could race there. One advisory
        // lock of our own around both migrators serialises them.
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock(7347651100)")
            .execute(&mut *conn)
            .await?;
        let result = async {
            apalis_postgres::PostgresStorage::migrations()
                .run(&self.pool)
                .await?;
            let mut ours = sqlx::migrate!("./migrations/postgres");
            ours.dangerous_set_table_name("_syncpool_migrations");
            ours.run(&self.pool).await?;
            Ok::<_, StoreError>(())
        }
        .await;
        sqlx::query("SELECT pg_advisory_unlock(7347651100)")
            .execute(&mut *conn)
            .await?;
        result
    }

    async fn ready(&self) -> Result<bool> {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('_syncpool_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        if !exists {
            return Ok(false);
        }
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _syncpool_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as usize >= sqlx::migrate!("./migrations/postgres").iter().count())
    }

    async fn analyze(&self) -> Result<()> {
        sqlx::query("ANALYZE sync_sessions, sync_instance_records, sync_locks, instance_accounts, apalis.jobs").execute(&self.pool).await?;
        Ok(())
    }

    async fn instance_insert(&self, new: &NewInstance) -> Result<Instance> {
        let mut tx = self.begin().await?;
        let id = insert_instance(&mut tx, new).await?;
        let row = sqlx::query("SELECT * FROM instances WHERE id = $1")
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
        let row = sqlx::query("SELECT * FROM instances WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    async fn instance_get_by_name(&self, name: &str) -> Result<Option<Instance>> {
        let row = sqlx::query("SELECT * FROM instances WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    async fn instance_delete(&self, id: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        // The instance row first, then its accounts: the order a finish takes them in
        // (it share-locks the instance), so a delete racing a finish cannot deadlock.
        let n = sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM instance_accounts WHERE instance_id = $1")
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
        let sql = format!("SELECT {SESSION_COLS} FROM sync_sessions WHERE session_id = $1");
        // One snapshot for the session and its records, so totals match the records.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let session = session_from_row(&row)?;
        let records =
            sqlx::query("SELECT * FROM sync_instance_records WHERE session_id = $1 ORDER BY id")
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
        let sql = format!("SELECT {SESSION_COLS} FROM sync_sessions WHERE session_id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    async fn session_record_counts(&self, session_id: Uuid) -> Result<Vec<(RecordStatus, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT r.status, COUNT(*) FROM sync_instance_records r \
             JOIN sync_sessions s ON s.id = r.session_id WHERE s.session_id = $1 GROUP BY r.status",
        )
        .bind(session_id)
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
        // The status is one of five names, written into the statement (never the caller's
        // text): a cached generic plan that did not know it walked the primary key past the
        // older sessions' records (94 ms at 100,000); knowing it, the (session_id, status,
        // id) index serves a page as one range read. Both start at the session's first
        // record (`first_record_id`, set when the session is made), so that a plan walking
        // the primary key (chosen when most of a session matches) never crosses older
        // sessions' records (90 ms at 100,000 when it did).
        let sql = match f.status {
            Some(st) => format!(
                "SELECT * FROM sync_instance_records WHERE session_id = $1 AND status = '{}' \
                 AND id > GREATEST($2, COALESCE((SELECT first_record_id FROM sync_sessions \
                 WHERE id = $1), 1) - 1) ORDER BY id LIMIT $3",
                st.as_str()
            ),
            None => {
                "SELECT * FROM sync_instance_records WHERE session_id = $1 AND id > GREATEST($2, \
                 COALESCE((SELECT first_record_id FROM sync_sessions WHERE id = $1), 1) - 1) \
                 ORDER BY id LIMIT $3"
                    .to_string()
            }
        };
        // Planned for its own session and position each time (an unnamed statement): a
        // cached generic plan guessed the table's average session and walked the primary
        // key past an older session's records (90 ms at 100,000).
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(session.id)
            .bind(f.after)
            .bind(f.limit)
            .persistent(false)
            .fetch_all(&self.pool)
            .await?;
        let records = rows.iter().map(record_from_row).collect::<Result<_>>()?;
        Ok(Some((session, records)))
    }

    async fn locks_list(&self) -> Result<Vec<crate::model::Lease>> {
        operator::locks_list(&self.pool).await
    }

    async fn session_ids_between(&self, lo: Uuid, hi: Uuid, limit: i64) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT session_id FROM sync_sessions WHERE session_id BETWEEN $1 AND $2 \
             ORDER BY session_id LIMIT $3",
        )
        .bind(lo)
        .bind(hi)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn records_finished_since(&self, seconds: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM sync_instance_records \
             WHERE completed_at >= now() - make_interval(secs => $1)",
        )
        .bind(seconds as f64)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn workers_live(&self, within_seconds: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM apalis.workers WHERE worker_type = $1 \
             AND last_seen >= now() - make_interval(secs => $2)",
        )
        .bind(crate::queue::QUEUE)
        .bind(within_seconds as f64)
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
            "SELECT {SESSION_COLS} FROM sync_sessions WHERE ($1::text IS NULL OR status = $1) \
             AND ($4::text IS NULL OR sync_type = $4) ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
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
            "SELECT COUNT(*) FROM sync_sessions WHERE ($1::text IS NULL OR status = $1) \
             AND ($2::text IS NULL OR sync_type = $2)",
        )
        .bind(&f.status)
        .bind(&f.sync_type)
        .fetch_one(&self.pool)
        .await?;
        Ok((items, total))
    }

    async fn session_cancel(&self, session_id: Uuid) -> Result<Option<Cancelled>> {
        let mut tx = self.begin().await?;
        let Some(row) = sqlx::query("SELECT id, status FROM sync_sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let (session_row, status): (i64, String) = (row.get(0), row.get(1));
        let finished = if FINISHED_SESSION_STATUSES.contains(&status.as_str()) {
            None
        } else {
            batch::cancel(&mut PgOps(&mut tx), session_row).await?
        };
        tx.commit().await?;
        let session = self.session_get(session_id).await?.map(|d| d.session);
        Ok(session.map(|session| Cancelled { session, finished }))
    }

    async fn lease_grant_batch(
        &self,
        p: &LeaseParams,
        reqs: &[GrantRequest],
    ) -> Result<Vec<GrantOutcome>> {
        let mut tx = self.begin().await?;
        let out = batch::grant(&mut PgOps(&mut tx), p, reqs).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn lease_renew_batch(
        &self,
        p: &LeaseParams,
        reqs: &[RenewRequest],
    ) -> Result<Vec<RenewOutcome>> {
        let mut tx = self.begin().await?;
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
            .bind(p.ttl.as_secs_f64())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            let cancel_requested: bool = sqlx::query_scalar(
                "SELECT s.cancel_requested FROM sync_instance_records r JOIN sync_sessions s ON s.id = r.session_id WHERE r.id = $1",
            )
            .bind(r.record_id)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(false);
            out[i] = RenewOutcome {
                held,
                cancel_requested,
            };
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn record_finish_batch(
        &self,
        _p: &LeaseParams,
        reqs: &[FinishRequest],
    ) -> Result<Vec<FinishOutcome>> {
        let mut tx = self.begin().await?;
        let out = batch::finish(&mut PgOps(&mut tx), reqs).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn records_rescue(&self, p: &LeaseParams, limit: i64) -> Result<RescueOutcome> {
        let mut tx = self.begin().await?;
        let out = batch::rescue(&mut PgOps(&mut tx), p, limit).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn job_kill(&self, job_id: &str, reason: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE apalis.jobs SET status = 'Killed', done_at = now(), last_result = $2::jsonb WHERE id = $1")
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
            "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
             WHERE lock_by = ANY($1) AND status IN ('Queued', 'Running')",
        )
        .bind(worker_names)
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
             FROM instance_accounts WHERE instance_id = $1 AND ($2 OR deleted_at IS NULL) ORDER BY username, host",
        )
        .bind(instance_id)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(StoredAccount {
                username: r.try_get(0)?,
                host: r.try_get(1)?,
                attributes: r.try_get(2)?,
                privileges: r.try_get(3)?,
                first_seen_at: r.try_get(4)?,
                last_seen_at: r.try_get(5)?,
                deleted_at: r.try_get(6)?,
            })
        })
        .collect()
    }

    async fn cleanup(&self, days: i64, history_days: i64) -> Result<CleanupCounts> {
        let cutoff = Utc::now() - chrono::Duration::days(days);
        let mut counts = CleanupCounts::default();
        // Small batches, one short transaction each, so cleanup never holds the write
        // lock long enough to stall workers.
        loop {
            let mut tx = self.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM sync_sessions WHERE status IN ('completed', 'completed_with_errors', 'failed', 'cancelled') \
                 AND completed_at < $1 ORDER BY id LIMIT 100",
            )
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?;
            if ids.is_empty() {
                break;
            }
            counts.records_deleted +=
                sqlx::query("DELETE FROM sync_instance_records WHERE session_id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            counts.sessions_deleted += sqlx::query("DELETE FROM sync_sessions WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
        }
        loop {
            let mut tx = self.begin().await?;
            let n = sqlx::query(
                "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs WHERE job_type = $1 \
                 AND status IN ('Done', 'Killed') AND done_at < $2 LIMIT 1000)",
            )
            .bind(queue::QUEUE)
            .bind(cutoff)
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
        let history_cutoff = Utc::now() - chrono::Duration::days(history_days);
        loop {
            let mut tx = self.begin().await?;
            let n = sqlx::query(
                "DELETE FROM account_changes WHERE id IN \
                 (SELECT id FROM account_changes WHERE changed_at < $1 LIMIT 1000)",
            )
            .bind(history_cutoff)
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
        let slot_cutoff = Utc::now() - chrono::Duration::days(days.max(1));
        sqlx::query("DELETE FROM schedule_slots WHERE created_at < $1")
            .bind(slot_cutoff)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // A revoked nonce past its cookie's expiry is refused by the expiry alone.
        sqlx::query("DELETE FROM console_revoked_nonces WHERE expires_at < clock_timestamp()")
            .execute(&self.pool)
            .await?;
        Ok(counts)
    }

    async fn instance_update(&self, id: i64, new: &NewInstance) -> Result<Instance> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(concat!(
            "UPDATE instances SET name = $2, kind = $3, host = $4, port = $5, username = $6, database = $7, ",
            "password_env = $8, options = $9, active = $10, password_file = $11, updated_at = ",
            now!(),
            " WHERE id = $1 RETURNING *"
        ))
        .bind(id)
        .bind(&new.name)
        .bind(&new.kind)
        .bind(&new.host)
        .bind(new.port)
        .bind(&new.username)
        .bind(&new.database)
        .bind(&new.password_env)
        .bind(&new.options)
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
        sqlx::query(
            "INSERT INTO console_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT secret FROM console_secrets WHERE name = $1")
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
        sqlx::query(
            "INSERT INTO console_revoked_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn console_nonce_revoked(&self, nonce: &str) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM console_revoked_nonces WHERE nonce = $1)",
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
        let n = sqlx::query("INSERT INTO schedule_slots (name, slot) VALUES ($1, $2) ON CONFLICT (name, slot) DO NOTHING")
            .bind(name)
            .bind(slot)
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
        let claimed = sqlx::query("INSERT INTO schedule_slots (name, slot) VALUES ($1, $2) ON CONFLICT (name, slot) DO NOTHING")
            .bind(name)
            .bind(slot)
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
            sqlx::query("UPDATE schedule_slots SET skipped = TRUE WHERE name = $1 AND slot = $2")
                .bind(name)
                .bind(slot)
                .execute(&mut *tx)
                .await?;
            SlotFired::Skipped
        } else {
            let created = match session_insert(&mut tx, SyncType::Scheduled, None).await {
                Err(StoreError::NoInstances) => {
                    sqlx::query(
                        "UPDATE schedule_slots SET skipped = TRUE WHERE name = $1 AND slot = $2",
                    )
                    .bind(name)
                    .bind(slot)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(SlotFired::NothingToSync);
                }
                other => other?,
            };
            sqlx::query("UPDATE schedule_slots SET session_id = $3 WHERE name = $1 AND slot = $2")
                .bind(name)
                .bind(slot)
                .bind(created.session_id)
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
             COUNT(*) FILTER (WHERE status IN ('Failed', 'Killed')) FROM apalis.jobs WHERE job_type = $1",
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
        let extra = sqlx::query(
            "SELECT COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - MIN(COALESCE(started_at, created_at)))::float8, 0.0) \
             FROM sync_sessions WHERE status IN ('pending', 'running')",
        )
        .fetch_one(&self.pool)
        .await?;
        let unleased: i64 = sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM sync_instance_records r WHERE ",
            unleased_running!()
        ))
        .fetch_one(&self.pool)
        .await?;
        let slots = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE NOT skipped), COUNT(*) FILTER (WHERE skipped) FROM schedule_slots \
             WHERE created_at > clock_timestamp() - interval '1 day'",
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

/// A session, its records and its jobs, in the caller's transaction.
async fn session_insert(
    tx: &mut PgConnection,
    sync_type: SyncType,
    instance_ids: Option<&[i64]>,
) -> Result<SessionCreated> {
    let rows = match instance_ids {
        None => {
            sqlx::query("SELECT id, name FROM instances WHERE active ORDER BY id")
                .fetch_all(&mut *tx)
                .await?
        }
        Some(ids) => {
            let rows = sqlx::query("SELECT id, name FROM instances WHERE id = ANY($1) ORDER BY id")
                .bind(ids)
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
         VALUES ($1, $2, 'pending', $3) RETURNING id",
    )
    .bind(session_id)
    .bind(sync_type.as_str())
    .bind(total)
    .fetch_one(&mut *tx)
    .await?;
    // Three statements whatever the size: rows travel as arrays.
    let (ids, names): (Vec<i64>, Vec<String>) = rows
        .iter()
        .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)))
        .unzip();
    let job_ids: Vec<String> = ids.iter().map(|_| queue::new_job_id()).collect();
    sqlx::query(
        "INSERT INTO sync_instance_records (session_id, instance_id, instance_name, job_id) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[])",
    )
    .bind(session_row)
    .bind(&ids)
    .bind(&names)
    .bind(&job_ids)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE sync_sessions SET first_record_id = (SELECT MIN(id) FROM sync_instance_records \
         WHERE session_id = $1 AND status = 'pending') WHERE id = $1",
    )
    .bind(session_row)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority) \
         SELECT convert_to(json_build_object('session_id', $1::text, 'record_id', id, 'instance_id', instance_id, 'attempt', 1)::text, 'UTF8'), \
         job_id, $2, 'Pending', 0, $3, now(), 0 FROM sync_instance_records WHERE session_id = $4",
    )
    .bind(session_id)
    .bind(queue::QUEUE)
    .bind(queue::APALIS_MAX_ATTEMPTS as i32)
    .bind(session_row)
    .execute(&mut *tx)
    .await?;
    let status: String = sqlx::query_scalar("SELECT status FROM sync_sessions WHERE id = $1")
        .bind(session_row)
        .fetch_one(&mut *tx)
        .await?;
    Ok(SessionCreated {
        session_id,
        total_instances: total,
        status,
    })
}

async fn insert_instance(tx: &mut PgConnection, n: &NewInstance) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO instances (name, kind, host, port, username, database, password_env, options, active, password_file) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(&n.name)
    .bind(&n.kind)
    .bind(&n.host)
    .bind(n.port)
    .bind(&n.username)
    .bind(&n.database)
    .bind(&n.password_env)
    .bind(&n.options)
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
