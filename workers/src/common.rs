//! What the database sources share: credentials, timeouts and error classification.

use std::time::Duration;

use crate::{InstanceSpec, SourceError};

/// Reads the instance's password from the environment variable it names. A named but
/// missing variable is fatal: no retry will make it appear.
pub(crate) fn password(instance: &InstanceSpec) -> Result<Option<String>, SourceError> {
    match &instance.password_env {
        None => Ok(None),
        Some(var) => std::env::var(var).map(Some).map_err(|_| {
            SourceError::Fatal(format!(
                "the password variable {var} of instance '{}' is not set in the worker's environment",
                instance.name
            ))
        }),
    }
}

pub(crate) fn require<'a>(
    value: &'a Option<String>,
    what: &str,
    instance: &InstanceSpec,
) -> Result<&'a str, SourceError> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SourceError::Fatal(format!("instance '{}' has no {what}", instance.name)))
}

/// Runs `fut` with a deadline; running out of time is worth another attempt.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, SourceError>>,
) -> Result<T, SourceError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(SourceError::Retryable(format!(
            "{what} timed out after {} s",
            limit.as_secs_f64()
        )))
    })
}

/// Turns a driver error into a message a DBA understands, classified as retryable
/// (network, timeouts, overload) or fatal (authentication, privileges, configuration).
pub(crate) fn classify(e: sqlx::Error, addr: &str, user: &str) -> SourceError {
    use SourceError::{Fatal, Retryable};
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Retryable(format!(
                "connection refused by {addr}: is the server running?"
            )),
            std::io::ErrorKind::TimedOut => Retryable(format!("network timeout talking to {addr}")),
            _ => Retryable(format!("network error talking to {addr}: {io}")),
        },
        sqlx::Error::Tls(t) => Fatal(format!("TLS failure with {addr}: {t}")),
        sqlx::Error::Database(db) => {
            // MySQL's SQLSTATEs are coarse (42000 covers most denials): prefer its error number.
            let code = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|e| e.number().to_string())
                .or_else(|| db.code().map(|c| c.into_owned()))
                .unwrap_or_default();
            let msg = db.message().to_string();
            match code.as_str() {
                // PostgreSQL: invalid password / authorization; MySQL: access denied.
                "28P01" | "28000" | "1045" => Fatal(format!(
                    "authentication failed for user '{user}' at {addr}: {msg}"
                )),
                // Missing privileges (to connect or to read the catalog).
                "42501" | "1044" | "1142" | "1143" | "1227" | "1141" => Fatal(format!(
                    "user '{user}' lacks a privilege needed to read accounts at {addr}: {msg}"
                )),
                "3D000" | "1049" => Fatal(format!("database missing at {addr}: {msg}")),
                // Statement timeouts, overload, server starting or shutting down.
                "57014" | "1969" | "3024" => {
                    Retryable(format!("catalog query timed out at {addr}: {msg}"))
                }
                "53300" | "1040" | "57P03" | "57P01" | "08006" | "08001" => {
                    Retryable(format!("{addr} refused service: {msg}"))
                }
                _ => Retryable(format!("database error at {addr} ({code}): {msg}")),
            }
        }
        other => Retryable(format!("error talking to {addr}: {other}")),
    }
}
