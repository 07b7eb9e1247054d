//! Counts SQLite "busy" retries. SQLite's own `busy_timeout` retries silently, so a
//! database that is quietly contended looks healthy; this handler keeps the same
//! behaviour (back off, give up after the timeout) and counts every retry in
//! `syncpool_db_busy_total`. It needs the raw handle, hence this module's one `unsafe`.

use std::os::raw::{c_int, c_void};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Whether to try again after `count` busy retries (sleeping first); shared by the
/// sqlx pool's connections and the pipeline's writer connection.
pub fn retry(count: i32) -> bool {
    // SQLite's own handler sleeps 1, 2, 5, 10 ... 100 ms between tries: under steady
    // contention a waiter then sleeps long after the lock was freed (writes here hold it
    // for well under a millisecond). Short, growing waits capped at 1 ms keep the lock
    // busy instead, at the cost of a few more wake-ups.
    let count = count.max(0) as u32;
    let delay = Duration::from_micros((50u64 << count.min(5)).min(1000));
    let waited = Duration::from_micros(50 * ((1u64 << count.min(5)) - 1))
        + Duration::from_millis(count.saturating_sub(5) as u64);
    if waited > TIMEOUT {
        return false;
    }
    metrics::counter!(crate::metrics::DB_BUSY).increment(1);
    // This runs on a connection's own thread (sqlx's SQLite worker, or the pipeline's
    // writer), never on a tokio worker, so a blocking sleep is what SQLite's own handler
    // would do here too.
    std::thread::sleep(delay);
    true
}

extern "C" fn busy_handler(_arg: *mut c_void, count: c_int) -> c_int {
    retry(count) as c_int
}

/// Installs the counting busy handler on a fresh connection.
#[allow(unsafe_code)]
pub async fn install(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is a live connection handle, locked for our exclusive use for the
    // duration of this call; the callback is a plain function with no captured state.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_busy_handler(db, Some(busy_handler), std::ptr::null_mut())
    };
    if rc != libsqlite3_sys::SQLITE_OK {
        return Err(sqlx::Error::Protocol(format!(
            "sqlite3_busy_handler failed with code {rc}"
        )));
    }
    Ok(())
}
