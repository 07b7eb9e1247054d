//! Account sources: where a syncpool worker reads the accounts of one database instance.
//!
//! Every database kind implements [`AccountSource`]; [`source_for`] maps an instance's
//! `kind` to its implementation, so a new kind is one new module plus one match arm.
//! A source never touches syncpool's own database: it only reads the instance and
//! returns what it found, or a [`SourceError`] that says whether retrying can help.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod common;
mod files;
mod hosts;
mod mysql;
mod postgres;
mod simulated;
mod tls;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use common::{
    MAX_PASSWORD_FILE_BYTES, SECRET_ENV_PATTERN, SECRET_ENV_PREFIX, SECRET_FILE_PATTERN, certs_dir,
    check_secret_env, check_secret_file, password, secrets_dir,
};
pub use files::MAX_SECRET_NAME;
pub use hosts::{HOST_PATTERN, HostAllowList, is_network_host};
pub use mysql::{MysqlSource, parse_grant};
pub use postgres::PostgresSource;
pub use simulated::SimulatedSource;
pub use tls::{MAX_ROOT_CERT_FILE_BYTES, SSL_MODES};

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
    /// Most accounts one instance may return (`--max-accounts`).
    pub max_accounts: usize,
    /// Most bytes one account may take as read: name, attributes and privilege text
    /// (`--max-account-bytes`).
    pub max_row_bytes: usize,
    /// Most bytes one sync may read, all accounts together (`--max-sync-bytes`).
    pub max_sync_bytes: usize,
    /// The hosts a source may connect to (`--instance-hosts`); empty: any.
    pub instance_hosts: HostAllowList,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(60),
            max_accounts: 1_000_000,
            max_row_bytes: 1024 * 1024,
            max_sync_bytes: 512 * 1024 * 1024,
            instance_hosts: HostAllowList::default(),
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

/// Refuses what syncpool's database cannot store: a NUL character anywhere in an
/// account (PostgreSQL's text and JSONB refuse it). A hostile or broken server could
/// otherwise fail the finish of every attempt; this fails the record once, with the
/// reason, and stores nothing of it.
pub fn check_storable(instance: &str, accounts: Vec<Account>) -> Result<Vec<Account>, SourceError> {
    fn has_nul(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(has_nul),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    if let Some(a) = accounts.iter().find(|a| {
        a.username.contains('\0')
            || a.host.contains('\0')
            || has_nul(&a.attributes)
            || has_nul(&a.privileges)
    }) {
        return Err(SourceError::Fatal(format!(
            "instance '{instance}' returned an account with a NUL character ({:?}), which cannot be stored",
            a.username.replace('\0', "\\0")
        )));
    }
    Ok(accounts)
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
    // PostgreSQL's JSONB refuses \u0000: such an option would be a server error on store.
    for (key, value) in options {
        if key.contains('\0') {
            return Err("option names must not contain a NUL character".into());
        }
        if holds_nul(value) {
            return Err(format!("option {key} must not contain a NUL character"));
        }
    }
    match kind {
        "simulated" => simulated::validate_options(options),
        "postgres" | "mysql" => tls::validate_db_options(kind, options),
        other => Err(format!(
            "unknown kind '{other}' (expected one of: {})",
            KINDS.join(", ")
        )),
    }
}

fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod storable_tests {
    use super::*;

    #[test]
    fn an_account_with_a_nul_anywhere_is_refused_and_others_pass() {
        let ok = Account {
            username: "app".into(),
            host: "%".into(),
            attributes: serde_json::json!({"locked": false}),
            privileges: serde_json::json!([{"on": "*.*"}]),
        };
        assert!(check_storable("i", vec![ok.clone()]).is_ok());
        for bad in [
            Account {
                username: "a\0b".into(),
                ..ok.clone()
            },
            Account {
                host: "\0".into(),
                ..ok.clone()
            },
            Account {
                attributes: serde_json::json!({"x\0": 1}),
                ..ok.clone()
            },
            Account {
                privileges: serde_json::json!([["deep\0"]]),
                ..ok.clone()
            },
        ] {
            let e = check_storable("i", vec![ok.clone(), bad]).unwrap_err();
            assert!(!e.is_retryable() && e.to_string().contains("NUL"), "{e}");
        }
    }
}
