//! The SQLite write path of the pipeline: one connection on its own thread, to which a
//! whole transaction (a writer round, a rescue sweep, a cancel) is sent as one call.
//!
//! Why not sqlx for these: sqlx runs each SQLite connection on a worker thread and sends
//! every statement there and every result back, two thread hand-offs per statement. A
//! round is a dozen statements or more, and on a busy two-core machine each hand-off can
//! wait for a CPU, all while this process holds SQLite's one write lock: measured, a
//! round of 8 requests held the lock ~4 ms, and the lock, not the work, set the
//! throughput (docs/BENCHMARKS.md). Here the statements run back to back on the thread
//! that holds the lock, with one hand-off in and one out per transaction.
//!
//! rusqlite links the same libsqlite3-sys as sqlx, so the binary holds one SQLite. The
//! connection follows the same settings as the sqlx pool (WAL, `synchronous=NORMAL`,
//! foreign keys, the counting busy handler).

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;

use rusqlite::Connection;

use super::pipeline::SqliteOps;
use crate::store::{Result, StoreError};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The handle to the writer thread; the thread and its connection end when it is dropped.
pub(crate) struct Exec {
    tx: mpsc::Sender<Job>,
}

impl Exec {
    /// Opens a connection to the database file at `path` on a new thread.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let conn = connect(path)?;
        let path = path.to_path_buf();
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("syncpool-sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                for job in rx {
                    job(&mut conn);
                    // A connection still inside a transaction would hold SQLite's write
                    // lock for good and stop every writer of every process (seen after a
                    // full disk: "database is locked" until restart). `transaction` rolls
                    // back on every failure; should even that fail, the connection is
                    // replaced, which ends its transaction.
                    if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
                        match connect(&path) {
                            Ok(fresh) => {
                                tracing::warn!("SQLite writer connection replaced after a failed rollback");
                                conn = fresh;
                            }
                            Err(e) => tracing::error!(error = %e, "reopening the SQLite writer connection failed"),
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Other(format!("starting the SQLite writer thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer thread: committed if
    /// it returns `Ok`, rolled back if it fails or panics. The transaction runs to its
    /// end even if the caller stops waiting, like any transaction already sent.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteOps<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(transaction(conn, f));
        });
        self.tx.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Other("the SQLite writer thread has stopped".into())
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = memory;",
    )?;
    conn.busy_handler(Some(crate::sqlite_busy::retry))?;
    // Every statement of a round stays prepared (there are about 30).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn transaction<T>(
    conn: &mut Connection,
    f: impl FnOnce(&mut SqliteOps<'_>) -> Result<T>,
) -> Result<T> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut SqliteOps(&mut *conn))))
        .unwrap_or_else(|_| {
            Err(StoreError::Other(
                "a SQLite write transaction panicked".into(),
            ))
        });
    let result = result.and_then(|v| conn.execute_batch("COMMIT").map(|_| v).map_err(Into::into));
    if result.is_err() && !conn.is_autocommit() {
        // Nothing half-written: a failed statement or commit leaves the transaction open.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}
