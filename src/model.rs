//! The domain types that cross the storage boundary. They carry no SQL and no database
//! kind: the storage layer maps rows to them, everything else consumes them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use syncpool_workers::Account;

/// Serialises timestamps as RFC 3339 with microseconds, as the public contract says.
pub mod ts {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }
    pub mod opt {
        use super::*;
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format(t)),
                None => s.serialize_none(),
            }
        }
    }
}

/// A registered database instance. Its password is never here: only the name of the
/// environment variable that holds it.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct Instance {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub username: Option<String>,
    pub database: Option<String>,
    pub password_env: Option<String>,
    /// A file name in the worker's secrets folder that holds the password.
    pub password_file: Option<String>,
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
    pub active: bool,
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
}

impl Instance {
    pub fn spec(&self) -> syncpool_workers::InstanceSpec {
        syncpool_workers::InstanceSpec {
            id: self.id,
            name: self.name.clone(),
            kind: self.kind.clone(),
            host: self.host.clone(),
            port: self.port.and_then(|p| u16::try_from(p).ok()),
            username: self.username.clone(),
            database: self.database.clone(),
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            options: self.options.clone(),
        }
    }
}

/// A validated request to register an instance (see `validate::new_instance`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInstance {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file name in the worker's secrets folder (`SYNCPOOL_SECRETS_DIR`, default
    /// `/run/secrets`) that holds the password; read at sync time, never stored.
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
    #[serde(default = "yes")]
    pub active: bool,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncType {
    ManualSingle,
    ManualBatch,
    Scheduled,
}

/// Every sync type's name, for metrics that show each one from the start.
pub const SYNC_TYPES: &[&str] = &["manual_single", "manual_batch", "scheduled"];

impl SyncType {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncType::ManualSingle => "manual_single",
            SyncType::ManualBatch => "manual_batch",
            SyncType::Scheduled => "scheduled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "manual_single" => SyncType::ManualSingle,
            "manual_batch" => SyncType::ManualBatch,
            "scheduled" => SyncType::Scheduled,
            _ => return None,
        })
    }
}

/// Defines a status enum stored and serialised as its snake_case name, comparable with
/// the plain name (`status == "running"`) for tests and callers that hold text.
macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s).ok_or_else(|| format!("unknown {} '{s}'", stringify!($name)))
            }
        }
    };
}

status_enum!(
    /// Where one instance's record is. `running` only ever under a lease (or until the
    /// rescuer notices the lease is gone); the last three are terminal.
    RecordStatus {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

status_enum!(
    /// Where a session is; it finishes in the transaction that ends its last record.
    SessionStatus {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        CompletedWithErrors => "completed_with_errors",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl RecordStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RecordStatus::Completed | RecordStatus::Failed | RecordStatus::Cancelled
        )
    }
}

impl SessionStatus {
    pub fn is_finished(self) -> bool {
        !matches!(self, SessionStatus::Pending | SessionStatus::Running)
    }

    /// The exit code of `sync --wait` / `sync-all --wait` for a session that finished so,
    /// documented in the README ("Exit codes") because scripts branch on it. 1 and 2 are
    /// taken by runtime failures and bad input.
    pub fn exit_code(self) -> i32 {
        match self {
            SessionStatus::Completed | SessionStatus::Pending | SessionStatus::Running => 0,
            SessionStatus::CompletedWithErrors => 3,
            SessionStatus::Failed => 4,
            SessionStatus::Cancelled => 5,
        }
    }
}

pub const SESSION_STATUSES: &[&str] = &[
    "pending",
    "running",
    "completed",
    "completed_with_errors",
    "failed",
    "cancelled",
];
pub const FINISHED_SESSION_STATUSES: &[&str] =
    &["completed", "completed_with_errors", "failed", "cancelled"];

/// One sync session and its totals.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Session {
    pub id: i64,
    pub session_id: Uuid,
    pub sync_type: String,
    pub status: SessionStatus,
    pub total_instances: i64,
    pub successful_instances: i64,
    pub failed_instances: i64,
    pub cancelled_instances: i64,
    pub cancel_requested: bool,
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "ts::opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(with = "ts::opt")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Seconds from start to finish (or to now while running); null before it starts.
    pub duration_seconds: Option<f64>,
    /// `successful_instances / total_instances`; null for an empty session.
    pub success_rate: Option<f64>,
}

impl Session {
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }
    /// Derives the fields that are not stored.
    pub fn with_derived(mut self, now: DateTime<Utc>) -> Self {
        self.duration_seconds = self.started_at.map(|s| {
            (self.completed_at.unwrap_or(now) - s)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e6
        });
        self.success_rate = (self.total_instances > 0)
            .then(|| self.successful_instances as f64 / self.total_instances as f64);
        self
    }
}

/// One instance's part in a session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Record {
    pub id: i64,
    pub instance_id: i64,
    pub instance_name: String,
    pub status: RecordStatus,
    pub attempts: i64,
    pub worker_id: Option<String>,
    pub lock_wait_ms: Option<i64>,
    #[serde(with = "ts::opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(with = "ts::opt")]
    pub completed_at: Option<DateTime<Utc>>,
    pub accounts_total: Option<i64>,
    pub accounts_added: Option<i64>,
    pub accounts_removed: Option<i64>,
    pub accounts_changed: Option<i64>,
    pub error: Option<String>,
}

/// A session with its records, as `session ID --json` and the API show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub session: Session,
    pub records: Vec<Record>,
}

/// What `session_create` reports.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionCreated {
    pub session_id: Uuid,
    pub total_instances: i64,
    pub status: String,
}

/// An account in syncpool's inventory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoredAccount {
    pub username: String,
    pub host: String,
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub privileges: serde_json::Value,
    #[serde(with = "ts")]
    pub first_seen_at: DateTime<Utc>,
    #[serde(with = "ts")]
    pub last_seen_at: DateTime<Utc>,
    #[serde(with = "ts::opt")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// What `cleanup` deleted.
#[derive(Debug, Clone, Default, Serialize, PartialEq, ToSchema)]
pub struct CleanupCounts {
    pub sessions_deleted: u64,
    pub records_deleted: u64,
    pub jobs_deleted: u64,
    pub locks_deleted: u64,
}

/// Fleet-wide numbers read from the database for the gauges.
#[derive(Debug, Clone, Default)]
pub struct FleetGauges {
    pub jobs_pending: i64,
    pub jobs_running: i64,
    pub jobs_failed: i64,
    pub locks_held: i64,
    pub sessions_running: i64,
    /// Every finished session ever, by type and status (never cleaned up).
    pub session_stats: Vec<SessionStat>,
    /// `(sync_type, success_rate)` of the last finished, not cancelled, session per type.
    pub last_success: Vec<(String, f64)>,
    /// Age of the oldest pending or running session (0 when none).
    pub oldest_session_seconds: f64,
    /// Running records without a live lease carrying their token.
    pub records_unleased: i64,
    /// Cron slots of the last 24 h that started a session / were skipped.
    pub slots_fired_24h: i64,
    pub slots_skipped_24h: i64,
}

/// Upper bounds, in seconds, of the session-duration histogram's buckets: one counter
/// column `le_N` each in `session_stats` (migration 0005).
pub const SESSION_DURATION_BUCKETS: &[u32] = &[
    1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400,
];

/// The finished sessions of one type and status, as a cumulative histogram.
#[derive(Debug, Clone, Default)]
pub struct SessionStat {
    pub sync_type: String,
    pub status: String,
    pub finished: i64,
    pub duration_sum: f64,
    /// Cumulative counts, one per [`SESSION_DURATION_BUCKETS`] entry.
    pub buckets: Vec<i64>,
}
