//! Errors at the storage boundary: what went wrong, and whether it is the caller's
//! fault (exit code 2, a 4xx) or worth trying again (the writer's retries).

/// Errors at the storage boundary. `Invalid` and `NotFound` are the caller's fault (4xx,
/// exit code 2); everything else is unexpected.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad input: the field and why (400 / exit code 2).
    #[error("{message}")]
    Invalid {
        /// The field at fault (a path such as `rules[1].deny[0]` for a policy).
        field: std::borrow::Cow<'static, str>,
        /// What is wrong.
        message: String,
    },
    /// What was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Clashes with the current state (a taken name).
    #[error("{0}")]
    Conflict(String),
    /// A database URL of no supported kind.
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// The database is missing or has no (or an older) syncpool schema; the message says
    /// what to run.
    #[error("{0}")]
    NoDatabase(String),
    /// syncpool's own database server cannot be reached; the message names it.
    #[error("{0}")]
    Unreachable(String),
    /// A session would have no instance: refused rather than "completed" over nothing.
    #[error("there is no active instance to sync: register one (`instances add`) or activate one")]
    NoInstances,
    // Not marked as sources: sqlx's errors repeat their causes in their own text, so a
    // chain would print the same words three times. The text is in the message, once.
    /// The database failed.
    #[error("database error: {}", describe(.0))]
    Database(sqlx::Error),
    /// The database failed, on the SQLite writer's own connection (`sqlite/exec.rs`).
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

impl From<crate::policy::PolicyError> for StoreError {
    fn from(e: crate::policy::PolicyError) -> Self {
        match e {
            crate::policy::PolicyError::Invalid { field, message } => {
                StoreError::invalid(field, message)
            }
            crate::policy::PolicyError::DuplicateRule(m) => StoreError::Conflict(m),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

/// A database error in one line: the server's own message (without sqlx's "error
/// returned from database" and the server's source line), or sqlx's text.
pub(crate) fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

impl StoreError {
    /// An [`StoreError::Invalid`] naming `field`.
    pub fn invalid(
        field: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        StoreError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
    /// True for errors that are the caller's fault.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::Invalid { .. }
                | StoreError::NotFound(_)
                | StoreError::Conflict(_)
                | StoreError::NoDatabase(_)
                | StoreError::NoInstances
                | StoreError::UnsupportedUrl(_)
        )
    }

    /// True when the same request may succeed if tried again: a lost or refused
    /// connection, a busy SQLite file, a PostgreSQL deadlock, serialization failure, lock
    /// or statement timeout, or a server shutting down. Everything else (bad input, a
    /// constraint, a bug) fails the same way every time, so retrying it only delays.
    pub fn is_transient(&self) -> bool {
        if let StoreError::Sqlite(e) = self {
            // A full disk or an I/O error is transient too: space comes back, and the
            // write is retried whole (its transaction was rolled back).
            return matches!(
                e.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::SystemIoFailure
                )
            );
        }
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                // SQLite: 5 SQLITE_BUSY, 6 SQLITE_LOCKED, 10 SQLITE_IOERR, 13 SQLITE_FULL
                // and their extended codes (x + 256 n).
                if let Ok(n) = code.parse::<i64>() {
                    return matches!(n & 0xff, 5 | 6 | 10 | 13);
                }
                // PostgreSQL SQLSTATEs: 40001 serialization, 40P01 deadlock, 55P03 lock
                // timeout, 57014 statement timeout, 57P0x shutdown, 08xxx connection, 53xxx
                // resources, 25P03 idle-in-transaction timeout.
                matches!(
                    code.as_ref(),
                    "40001" | "40P01" | "55P03" | "57014" | "25P03"
                ) || code.starts_with("57P")
                    || code.starts_with("08")
                    || code.starts_with("53")
            }
            _ => false,
        }
    }
}
