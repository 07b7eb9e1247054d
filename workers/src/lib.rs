//! Account sources: where a syncpool worker reads the accounts of one database instance.
//!
//! Every database kind implements [`AccountSource`]; [`source_for`] maps an instance's
//! `kind` to its implementation, so a new kind is one new module plus one match arm.
//! A source never touches syncpool's own database: it only reads the instance and
//! returns what it found, or a [`SourceError`] that says whether retrying can help.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod common;
mod mysql;
mod postgres;
mod simulated;
mod tls;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use common::{
    MAX_SECRET_NAME, SECRET_ENV_PATTERN, SECRET_ENV_PREFIX, SECRET_FILE_PATTERN, check_secret_env,
    check_secret_file, password, secrets_dir,
};
pub use mysql::{MysqlSource, parse_grant};
pub use postgres::PostgresSource;
pub use simulated::SimulatedSource;
pub use tls::SSL_MODES;

/// The kinds of instance syncpool knows how to sync.
pub const KINDS: &[&str] = &["postgres", "mysql", "simulated"];

/// What a worker knows about the instance it is asked to sync. The password is
/// resolved by the worker from `password_env` at sync time and is never stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// syncpool's id of the instance.
    pub id: i64,
    /// Unique name, for messages.
    pub name: String,
    /// `postgres`, `mysql` or `simulated`.
    pub kind: String,
    /// Host name or address.
    pub host: Option<String>,
    /// TCP port.
    pub port: Option<u16>,
    /// Login user.
    pub username: Option<String>,
    /// Database to connect to.
    pub database: Option<String>,
    /// Name of the environment variable that holds the password.
    pub password_env: Option<String>,
    /// The file under the worker's secrets folder that holds the password.
    #[serde(default)]
    pub password_file: Option<String>,
    /// Kind-specific options (JSON object).
    pub options: serde_json::Value,
}

impl std::fmt::Debug for InstanceSpec {
    // Written by hand so that nothing secret-adjacent (options may hold hints) is
    // dumped wholesale into logs: the name and kind identify the instance well enough.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// One account as found on an instance. `(username, host)` identifies it; `host` is
/// empty for PostgreSQL roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// User or role name.
    pub username: String,
    /// MySQL account host part; empty where the kind has none.
    pub host: String,
    /// superuser, can_login, locked, expiry, ...
    pub attributes: serde_json::Value,
    /// Structured privileges.
    pub privileges: serde_json::Value,
}

/// Why a sync of one instance failed. `retryable` tells the worker whether another
/// attempt can help (a timeout can; a wrong password cannot).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// A transient failure: network, timeout, server restarting.
    #[error("{0}")]
    Retryable(String),
    /// A failure another attempt will not fix: authentication, privileges, bad config.
    #[error("{0}")]
    Fatal(String),
}

impl SourceError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Retryable(_))
    }
}

/// Settings every source honours.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one catalog query.
    pub statement_timeout: Duration,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(60),
        }
    }
}

/// Reads the accounts of one instance.
#[async_trait::async_trait]
pub trait AccountSource: Send + Sync {
    /// Returns every account of the instance, sorted by `(username, host)`.
    async fn fetch_accounts(
        &self,
        instance: &InstanceSpec,
        settings: &SourceSettings,
    ) -> Result<Vec<Account>, SourceError>;
}

/// Returns the source for an instance kind, or `None` for a kind syncpool does not know.
pub fn source_for(kind: &str) -> Option<Box<dyn AccountSource>> {
    match kind {
        "simulated" => Some(Box::new(SimulatedSource)),
        "postgres" => Some(Box::new(PostgresSource)),
        "mysql" => Some(Box::new(MysqlSource)),
        _ => None,
    }
}

/// The JSON Schema of a kind's options: the same rules as [`validate_options`], for the
/// API's OpenAPI document (the schemathesis run in the tests holds the two together).
pub fn options_schema(kind: &str) -> Option<serde_json::Value> {
    match kind {
        "simulated" => Some(simulated::options_schema()),
        "postgres" | "mysql" => Some(tls::db_options_schema(kind)),
        _ => None,
    }
}

/// Validates the kind-specific options of an instance before it is registered, so that
/// bad input is rejected at the door instead of failing every sync later.
pub fn validate_options(
    kind: &str,
    options: &BTreeMap<String, serde_json::Value>,
) -> Result<(), String> {
    match kind {
        "simulated" => simulated::validate_options(options),
        "postgres" | "mysql" => tls::validate_db_options(kind, options),
        other => Err(format!(
            "unknown kind '{other}' (expected one of: {})",
            KINDS.join(", ")
        )),
    }
}
