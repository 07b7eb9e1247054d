//! [`Store`] on PostgreSQL: many worker hosts share one queue.
//!
//! Times come from `clock_timestamp()`, not `now()`: `now()` is the transaction's start,
//! and a transaction that waited for a row lock would stamp a lease or a record with a
//! time in the past (docs/APALIS.md, "PostgreSQL `now()`"). Every pipeline transaction touches rows in one
//! order (records, then leases, then session totals in ascending session order, applied
//! last) so that two processes' batches do not deadlock.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{PgConnection, Pool, Postgres, Row};
use uuid::Uuid;

use super::batch::Batch;
use super::common::{Backend, Queries, SqlStore};
use super::sql::{Arg, Dialect};
use super::*;
use pipeline::PgOps;

mod drift;
mod limits;
mod pipeline;

/// The current time in the stored format.
macro_rules! now {
    () => {
        "clock_timestamp()"
    };
}
pub(crate) use now;

/// The [`Store`] on PostgreSQL: several hosts share one database.
pub(crate) type PgStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
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
        Ok(Self { pool, local: () })
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
            // No JIT: syncpool's statements are small, and `enable_seqscan = off` (the
            // pipeline's) makes a statement that must scan a tiny table look costly
            // enough to be compiled, each time: the outbox's webhook join took 100 ms
            // (a policy fleet on PostgreSQL ran at 138 syncs/s, 1,069 without it).
            ("jit", "off"),
        ]))
}

pub(super) fn instance_from_row(row: &PgRow) -> Result<Instance> {
    common::rows::instance::<Postgres>(row)
}

impl Dialect for Postgres {
    fn bind_special(
        q: sqlx::query::Query<'_, Self, <Self as sqlx::Database>::Arguments>,
        a: Arg,
    ) -> sqlx::query::Query<'_, Self, <Self as sqlx::Database>::Arguments> {
        match a {
            Arg::Uuid(u) => q.bind(u),
            Arg::Time(t) | Arg::QueueTime(t) => q.bind(t),
            Arg::OptTime(t) => q.bind(t),
            Arg::Json(v) => q.bind(v),
            Arg::Ids(ids) => q.bind(ids),
            Arg::Texts(v) => q.bind(v),
            other => unreachable!("bound by sql::build: {other:?}"),
        }
    }
    fn in_list(column: &str, n: usize) -> String {
        format!("{column} = ANY(${n})")
    }
    fn uuid_at(row: &PgRow, col: &str) -> Result<Uuid> {
        Ok(row.try_get(col)?)
    }
    fn json_at(row: &PgRow, col: &str) -> Result<serde_json::Value> {
        Ok(row.try_get(col)?)
    }
    fn queue_time_at(row: &PgRow, col: &str) -> Result<DateTime<Utc>> {
        Ok(row.try_get(col)?)
    }
    fn rows_affected(r: &PgQueryResult) -> u64 {
        r.rows_affected()
    }
}

/// How a pipeline transaction begins, in one round trip (see `write`).
const PIPELINE_BEGIN: &str =
    "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL plan_cache_mode = force_generic_plan";

#[async_trait]
impl Backend for Postgres {
    type Local = ();
    const KIND: &'static str = "postgres";
    const ONE_TRANSACTION_PER_ROUND: bool = false;
    // A round costs about two dozen round trips whatever its size, each waking a server
    // process. Measured (docs/BENCHMARKS.md): a 2 ms wait for more requests cut the CPU
    // per sync by about 60% (workers and server); 1 ms cut the workers' by 40% and ran
    // no-op syncs faster than 2 ms did.
    const ROUND_WINDOW: std::time::Duration = std::time::Duration::from_millis(1);
    const SQL: Queries = Queries {
        begin_write: "BEGIN",
        begin_snapshot: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        now: now!(),
        day_ago: "clock_timestamp() - interval '1 day'",
        time_type: "timestamptz",
        migrations_table: "SELECT COUNT(to_regclass('_syncpool_migrations')) AS n",
        analyze: "ANALYZE sync_sessions, sync_instance_records, sync_locks, instance_accounts, \
            apalis.jobs",
        jobs: "apalis.jobs",
        no_limit: None,
        records_finished_since: "SELECT COUNT(*) AS n FROM sync_instance_records \
            WHERE completed_at >= now() - make_interval(secs => $1::float8)",
        workers_live: "SELECT COUNT(*) AS n FROM apalis.workers WHERE worker_type = $1 \
            AND last_seen >= now() - make_interval(secs => $2::float8)",
        jobs_delete_done: "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs \
            WHERE job_type = $1 AND status IN ('Done', 'Killed') AND done_at < $2 LIMIT 1000)",
        job_kill: "UPDATE apalis.jobs SET status = 'Killed', done_at = now(), \
            last_result = $2::jsonb WHERE id = $1",
        jobs_handback: "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
            WHERE lock_by = ANY($1) AND status IN ('Queued', 'Running')",
        records_insert: "INSERT INTO sync_instance_records (session_id, instance_id, \
            instance_name, job_id) SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[])",
        jobs_insert: "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, \
            run_at, priority) SELECT convert_to(json_build_object('session_id', $1::text, \
            'record_id', id, 'instance_id', instance_id, 'attempt', 1)::text, 'UTF8'), \
            job_id, $2, 'Pending', 0, $3, now(), 0 FROM sync_instance_records WHERE session_id = $4",
        oldest_session_age: "SELECT COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - \
            MIN(COALESCE(started_at, created_at)))::float8, 0.0) AS age \
            FROM sync_sessions WHERE status IN ('pending', 'running')",
        unleased_running: unleased_running!(now!()),
        queue_due: "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM apalis.jobs WHERE job_type = $1 \
            AND status = 'Pending' AND run_at <= now() ORDER BY run_at LIMIT $2) x) AS ready, \
            (SELECT COUNT(*) FROM (SELECT 1 FROM apalis.jobs WHERE job_type = $1 \
            AND status = 'Pending' AND run_at > now() ORDER BY run_at LIMIT $2) y) AS delayed",
        // The job due longest: the head of apalis' fetch order (its partial index on
        // job_type, priority, run_at).
        queue_oldest: "SELECT id, run_at, attempts::int8 AS attempts, \
            GREATEST(EXTRACT(EPOCH FROM now() - run_at), 0)::float8 AS waited \
            FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending' AND lock_by IS NULL \
            ORDER BY priority DESC, run_at LIMIT 1",
        skip_locked: " FOR UPDATE SKIP LOCKED",
        follow_head: "SELECT COALESCE((SELECT id FROM {t} \
             WHERE COALESCE(txid, '0'::xid8) < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY COALESCE(txid, '0'::xid8) DESC, id DESC LIMIT 1), 0) AS n",
        follow_after: "SELECT {cols} FROM {t} \
             WHERE (COALESCE(txid, '0'::xid8), id) > (COALESCE((SELECT txid FROM {t} WHERE id = $1), \
             (SELECT txid FROM {t} WHERE id <= $1 ORDER BY id DESC LIMIT 1), '0'::xid8), $1) \
             AND COALESCE(txid, '0'::xid8) < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY COALESCE(txid, '0'::xid8), id LIMIT $2",
        instance_overview: "SELECT i.*, last.status AS last_status, last.at AS last_sync_at, \
            (SELECT COUNT(*) FROM instance_accounts a WHERE a.instance_id = i.id \
            AND a.deleted_at IS NULL) AS account_count FROM instances i LEFT JOIN LATERAL \
            (SELECT r.status, COALESCE(r.completed_at, r.started_at, r.created_at) AS at \
            FROM sync_instance_records r WHERE r.instance_id = i.id ORDER BY r.id DESC LIMIT 1) \
            last ON true WHERE i.id > $1 ORDER BY i.id LIMIT $2",
    };
    fn db_pool(pool: &Pool<Postgres>) -> DbPool {
        DbPool::Postgres(pool.clone())
    }
    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/postgres")
    }
    fn is_undefined_table(e: &sqlx::Error) -> bool {
        // undefined_table
        matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01"))
    }
    fn record_rows(ids: Vec<i64>, names: Vec<String>, job_ids: Vec<String>) -> Vec<Arg> {
        vec![Arg::Ids(ids), Arg::Texts(names), Arg::Texts(job_ids)]
    }
    fn records_page(status: Option<RecordStatus>) -> String {
        // The status is one of five names, written into the statement (never the caller's
        // text): a cached generic plan that did not know it walked the primary key past the
        // older sessions' records (94 ms at 100,000); knowing it, the (session_id, status,
        // id) index serves a page as one range read. Both start at the session's first
        // record (`first_record_id`, set when the session is made), so that a plan walking
        // the primary key (chosen when most of a session matches) never crosses older
        // sessions' records (90 ms at 100,000 when it did).
        let status = status
            .map(|st| format!("AND status = '{}' ", st.as_str()))
            .unwrap_or_default();
        format!(
            "SELECT * FROM sync_instance_records WHERE session_id = $1 {status}\
             AND id > GREATEST($2, COALESCE((SELECT first_record_id FROM sync_sessions \
             WHERE id = $1), 1) - 1) ORDER BY id LIMIT $3"
        )
    }
    fn seconds_since(expr: &str) -> String {
        format!("EXTRACT(EPOCH FROM clock_timestamp() - {expr})::float8")
    }
    fn seconds_until(expr: &str) -> String {
        format!("EXTRACT(EPOCH FROM {expr} - clock_timestamp())::float8")
    }

    async fn migrate(s: &PgStore) -> Result<()> {
        // sqlx's migrator locks, but creates its bookkeeping table before it does; two
        // processes migrating a fresh database at once could race there. One advisory
        // lock of our own around both migrators serialises them.
        let mut conn = s.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock(7347651100)")
            .execute(&mut *conn)
            .await?;
        let result = async {
            apalis_postgres::PostgresStorage::migrations()
                .run(&s.pool)
                .await?;
            let mut ours = sqlx::migrate!("./migrations/postgres");
            ours.dangerous_set_table_name("_syncpool_migrations");
            ours.run(&s.pool).await?;
            Ok::<_, StoreError>(())
        }
        .await;
        sqlx::query("SELECT pg_advisory_unlock(7347651100)")
            .execute(&mut *conn)
            .await?;
        result
    }

    async fn write<T: Send + 'static>(s: &PgStore, f: Batch<T>) -> Result<T> {
        // The pipeline's statements all find rows by key, but the planner judges them by
        // statistics, and those are stale exactly when it matters: taken while
        // `sync_locks` and the records were empty (a new fleet, a first session) or before
        // autovacuum's next ANALYZE. It then scanned whole tables per statement: with a
        // fresh ANALYZE, or seq scans off, 3,000 no-op syncs ran 12-20% faster and the
        // server's CPU per sync fell from 550 to 400 us (docs/BENCHMARKS.md). Off for these
        // transactions only, in the same round trip as BEGIN; a table no index serves is
        // still scanned.
        // Generic plans too: the server planned every execution of these prepared
        // statements anew for its parameters (custom plans): 4.0 of the 13.9 s it spent
        // in them (`pg_stat_statements`, docs/BENCHMARKS.md). Their plans do not need the
        // values: the statuses partial indexes are chosen by are literals in the text, and
        // rows are found by key (arrays of them), by session, or by short ranges.
        let mut tx = s.pool.begin_with(PIPELINE_BEGIN).await?;
        let out = f(&mut PgOps(&mut tx)).await?;
        tx.commit().await?;
        Ok(out)
    }
}
