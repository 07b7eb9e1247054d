//! Counts SQLite "busy" retries. SQLite's own `busy_timeout` retries silently, so a
//! database that is quietly contended looks healthy; this handler keeps the same
//! behaviour (back off, give up after the timeout) and counts every retry in
//! `syncpool_db_busy_total`. It needs the raw handle, hence this module's one `unsafe`.

use std::os::raw::{c_int, c_void};

/// SQLite's default back-off table (sqlite3.c, `sqliteDefaultBusyCallback`), in ms.
const DELAYS_MS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
const TIMEOUT_MS: u64 = 30_000;

extern "C" fn busy_handler(_arg: *mut c_void, count: c_int) -> c_int {
    let count = count.max(0) as usize;
    let (delay, waited) = if count < DELAYS_MS.len() {
        (DELAYS_MS[count], DELAYS_MS[..count].iter().sum::<u64>())
    } else {
        let total: u64 = DELAYS_MS.iter().sum();
        (100, total + (count - DELAYS_MS.len()) as u64 * 100)
    };
    if waited + delay > TIMEOUT_MS {
        return 0;
    }
    metrics::counter!(crate::metrics::DB_BUSY).increment(1);
    // This runs on sqlx's dedicated SQLite worker thread, never on a tokio worker, so a
    // blocking sleep is what SQLite's own handler would do here too.
    std::thread::sleep(std::time::Duration::from_millis(delay));
    1
}

/// Installs the counting busy handler on a fresh connection.
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
