//! What the database sources share: credentials, timeouts and error classification.

use std::time::Duration;

use crate::tls::{SslMode, Tls};
use crate::{InstanceSpec, SourceError};

/// Reads the instance's password: from the environment variable it names, which must
/// start with [`SECRET_ENV_PREFIX`], or from the file it names under [`secrets_dir`].
/// The rules are checked when an instance is added and again here, so a row written
/// around the API (or by an older version) still cannot make a worker read
/// `SYNCPOOL_DATABASE_URL`, `SYNCPOOL_API_TOKEN` or a file outside the secrets folder
/// and send it to whatever host the instance names. A named but missing secret is fatal:
/// no retry will make it appear.
pub fn password(instance: &InstanceSpec) -> Result<Option<String>, SourceError> {
    if let Some(var) = &instance.password_env {
        check_secret_env(var).map_err(SourceError::Fatal)?;
        return std::env::var(var).map(Some).map_err(|_| {
            SourceError::Fatal(format!(
                "the password variable {var} of instance '{}' is not set in the worker's environment",
                instance.name
            ))
        });
    }
    if let Some(file) = &instance.password_file {
        check_secret_file(file).map_err(SourceError::Fatal)?;
        let path = secrets_dir().join(file);
        return std::fs::read_to_string(&path)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| {
                SourceError::Fatal(format!(
                    "the password file {} of instance '{}' cannot be read: {}",
                    path.display(),
                    instance.name,
                    e.kind()
                ))
            });
    }
    Ok(None)
}

/// The only environment variables an instance may name for its password start with this.
pub const SECRET_ENV_PREFIX: &str = "SYNCPOOL_SECRET_";

/// Where `password_file` names are looked up: `SYNCPOOL_SECRETS_DIR`, by default
/// `/run/secrets` (where container platforms mount secrets).
pub fn secrets_dir() -> std::path::PathBuf {
    std::env::var_os("SYNCPOOL_SECRETS_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/run/secrets".into())
}

/// [`check_secret_env`] as a regular expression, for the API's schema.
pub const SECRET_ENV_PATTERN: &str = "^SYNCPOOL_SECRET_[A-Z0-9_]+$";

/// [`check_secret_file`] as a regular expression, for the API's schema.
pub const SECRET_FILE_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$";

/// Longest `password_env` or `password_file`.
pub const MAX_SECRET_NAME: usize = 128;

/// The rule for `password_env`, in words a user can act on.
pub fn check_secret_env(var: &str) -> Result<(), String> {
    let rest = var.strip_prefix(SECRET_ENV_PREFIX).unwrap_or("");
    let ok = !rest.is_empty()
        && var.len() <= MAX_SECRET_NAME
        && rest
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "password_env must name a variable {SECRET_ENV_PREFIX}NAME (upper-case letters, digits, underscores), \
             not hold a password; a worker reads no other variable for an instance"
        ))
    }
}

/// The rule for `password_file`: a plain file name inside the secrets folder.
pub fn check_secret_file(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SECRET_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(
            "password_file must be a plain file name (letters, digits, '.', '_', '-'; no path) \
             in the worker's secrets folder (SYNCPOOL_SECRETS_DIR, default /run/secrets)"
                .into(),
        )
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
///
/// `tls` is given while connecting: a handshake that fails (a certificate that does not
/// chain or names another host) is a configuration problem no retry fixes, and its
/// message names the `ssl_mode` so the operator knows which knob to turn.
pub(crate) fn classify(e: sqlx::Error, addr: &str, user: &str, tls: Option<&Tls>) -> SourceError {
    use SourceError::{Fatal, Retryable};
    let mode = tls.map(Tls::name).unwrap_or("prefer");
    match e {
        // rustls reports a rejected certificate through the socket as InvalidData.
        sqlx::Error::Io(io)
            if io.kind() == std::io::ErrorKind::InvalidData
                && tls.is_some_and(|t| t.mode != SslMode::Disable) =>
        {
            Fatal(format!(
                "TLS handshake with {addr} failed (ssl_mode={mode}): {io}"
            ))
        }
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Retryable(format!(
                "connection refused by {addr}: is the server running?"
            )),
            std::io::ErrorKind::TimedOut => Retryable(format!("network timeout talking to {addr}")),
            _ => Retryable(format!("network error talking to {addr}: {io}")),
        },
        sqlx::Error::Tls(t) => Fatal(format!("TLS failure with {addr} (ssl_mode={mode}): {t}")),
        sqlx::Error::Database(db) => {
            // MySQL's SQLSTATEs are coarse (42000 covers most denials): prefer its error number.
            let code = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|e| e.number().to_string())
                .or_else(|| db.code().map(|c| c.into_owned()))
                .unwrap_or_default();
            let msg = db.message().to_string();
            let insecure_refused = (code == "28000" && msg.contains("no encryption"))
                || code == "3159"
                || msg.contains("insecure transport");
            match code.as_str() {
                // pg_hba.conf with hostssl only, or MySQL's require_secure_transport.
                _ if insecure_refused => Fatal(format!(
                    "{addr} accepts only TLS connections but ssl_mode is {mode}: {msg}"
                )),
                // PostgreSQL: invalid password / authorization; MySQL: access denied.
                // MariaDB answers a plain connection refused by require_secure_transport
                // with an ordinary "access denied", so the hint can only be a maybe.
                "1045" if tls.is_some_and(|t| t.mode == SslMode::Disable) => Fatal(format!(
                    "authentication failed for user '{user}' at {addr}: {msg} \
                     (ssl_mode is disable: the server may accept this user only over TLS)"
                )),
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
