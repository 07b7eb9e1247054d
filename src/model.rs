//! The domain types that cross the storage boundary. They carry no SQL and no database
//! kind: the storage layer maps rows to them, everything else consumes them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

mod operator;
pub use operator::*;

pub use syncpool_workers::Account;

/// Serialises timestamps as RFC 3339 with microseconds, as the public contract says.
pub mod ts {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    /// RFC 3339 with microseconds, `Z` for UTC.
    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
    /// For `#[serde(with = "ts")]`.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }
    /// The same for an optional timestamp (`null` when absent).
    pub mod opt {
        use super::*;
        /// For `#[serde(with = "ts::opt")]`.
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
    /// syncpool's id, from 1.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// `postgres`, `mysql` or `simulated`.
    pub kind: InstanceKind,
    /// Host name or address (the database kinds need one).
    pub host: Option<String>,
    /// TCP port; the kind's default when null.
    pub port: Option<i64>,
    /// Login user.
    pub username: Option<String>,
    /// Database to connect to.
    pub database: Option<String>,
    /// The worker environment variable (`SYNCPOOL_SECRET_*`) that holds the password.
    pub password_env: Option<String>,
    /// A file name in the worker's secrets folder that holds the password.
    pub password_file: Option<String>,
    /// Kind-specific options (see `instances add --help`).
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
    /// Inactive instances are left out of `sync-all` and scheduled sessions.
    pub active: bool,
    /// The group it belongs to, for concurrency limits (`group:NAME`).
    pub group: Option<String>,
    /// When it was registered.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// When its change history began: the sync that recorded its baseline (null before
    /// its first completed sync).
    #[serde(with = "ts::opt")]
    pub history_since: Option<DateTime<Utc>>,
}

impl Instance {
    /// Its registration as it stands, the starting point of an edit.
    pub fn as_new(&self) -> NewInstance {
        NewInstance {
            name: self.name.clone(),
            kind: self.kind,
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            database: self.database.clone(),
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            options: self.options.clone(),
            active: self.active,
            group: self.group.clone(),
        }
    }

    /// What a worker needs to sync it.
    pub fn spec(&self) -> syncpool_workers::InstanceSpec {
        syncpool_workers::InstanceSpec {
            id: self.id,
            name: self.name.clone(),
            kind: self.kind.as_str().to_string(),
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
    /// Unique name: 1 to 200 characters, no control characters, no space at either end.
    pub name: String,
    /// `postgres`, `mysql` or `simulated`.
    pub kind: InstanceKind,
    /// Host name or address (the database kinds need one).
    #[serde(default)]
    pub host: Option<String>,
    /// TCP port (1-65535); the kind's default when absent.
    #[serde(default)]
    pub port: Option<i64>,
    /// Login user.
    #[serde(default)]
    pub username: Option<String>,
    /// Database to connect to.
    #[serde(default)]
    pub database: Option<String>,
    /// The worker environment variable (`SYNCPOOL_SECRET_*`) that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file name in the worker's secrets folder (`SYNCPOOL_SECRETS_DIR`, default
    /// `/run/secrets`) that holds the password; read at sync time, never stored.
    #[serde(default)]
    pub password_file: Option<String>,
    /// Kind-specific options.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
    /// Whether `sync-all` and scheduled sessions include it (default true).
    #[serde(default = "yes")]
    pub active: bool,
    /// A group for concurrency limits (`limits set group:NAME`): 1 to 64 of A-Z, a-z,
    /// 0-9, '.', '_', '-'.
    #[serde(default)]
    pub group: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}
fn yes() -> bool {
    true
}

/// Defines an enum stored and serialised as its snake_case name; its list of names comes
/// from the enum (`ALL`), so no list of strings can drift from it.
macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident ($label:literal) { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $(#[doc = concat!("`", $text, "`")] $variant),* }

        impl $name {
            /// Every status, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// Its stored and serialized name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
            /// Every name, in order (for error messages, schemas and forms).
            pub fn names() -> Vec<&'static str> {
                Self::ALL.iter().map(|v| v.as_str()).collect()
            }
            /// The status with this name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad`, not `write_str`: tables format statuses with a width (`{:<21}`).
                f.pad(self.as_str())
            }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s).ok_or_else(|| {
                    format!(
                        "unknown {} '{s}' (expected one of: {})",
                        $label,
                        Self::names().join(", ")
                    )
                })
            }
        }
        // Read through `FromStr`, so a request body, an import file and a flag all say
        // the same thing about a wrong name (and the API's error names the field).
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<De: serde::Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

// After the macro: the module's enums are `status_enum!`s too.
mod access;
pub use access::*;
mod policy;
pub use policy::*;
mod webhooks;
pub use webhooks::*;

status_enum!(
    /// What an instance is, and so which source reads it (`syncpool_workers::KINDS`).
    InstanceKind ("kind") {
        Postgres => "postgres",
        Mysql => "mysql",
        Simulated => "simulated",
    }
);

status_enum!(
    /// What happened to one account: `baseline` is the instance's first synced state
    /// (recorded once, so later changes have a starting point, and never alerted on);
    /// `added` a new account (or one that came back), `removed` one that is gone,
    /// `changed` one whose attributes or privileges differ.
    ChangeKind ("kind") {
        Baseline => "baseline",
        Added => "added",
        Removed => "removed",
        Changed => "changed",
    }
);

status_enum!(
    /// Who started a session.
    SyncType ("sync type") {
        ManualSingle => "manual_single",
        ManualBatch => "manual_batch",
        Scheduled => "scheduled",
    }
);

status_enum!(
    /// Where one instance's record is. `running` only ever under a lease (or until the
    /// rescuer notices the lease is gone); the last three are terminal.
    RecordStatus ("record status") {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

status_enum!(
    /// Where a session is; it finishes in the transaction that ends its last record.
    SessionStatus ("status") {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        CompletedWithErrors => "completed_with_errors",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl SyncType {
    /// A manual session over `named` instances its caller named (a sync, a retry): one is
    /// `manual_single`, more `manual_batch`.
    pub fn manual(named: usize) -> Self {
        if named == 1 {
            SyncType::ManualSingle
        } else {
            SyncType::ManualBatch
        }
    }
}

impl RecordStatus {
    /// Completed, failed or cancelled: nothing more happens to it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RecordStatus::Completed | RecordStatus::Failed | RecordStatus::Cancelled
        )
    }
}

impl SessionStatus {
    /// Anything but pending or running.
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

impl SessionStatus {
    /// The statuses of a finished session.
    pub const FINISHED: &'static [SessionStatus] = &[
        SessionStatus::Completed,
        SessionStatus::CompletedWithErrors,
        SessionStatus::Failed,
        SessionStatus::Cancelled,
    ];
}

/// One sync session and its totals.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Session {
    /// Row id.
    pub id: i64,
    /// Public id.
    pub session_id: Uuid,
    /// Who started it.
    pub sync_type: SyncType,
    /// Where it is.
    pub status: SessionStatus,
    /// Instances in it.
    pub total_instances: i64,
    /// Records completed.
    pub successful_instances: i64,
    /// Records failed.
    pub failed_instances: i64,
    /// Records cancelled.
    pub cancelled_instances: i64,
    /// A cancel was asked for; running records stop at their next renewal.
    pub cancel_requested: bool,
    /// When it was enqueued.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// When its first record started.
    #[serde(with = "ts::opt")]
    pub started_at: Option<DateTime<Utc>>,
    /// When its last record ended.
    #[serde(with = "ts::opt")]
    pub completed_at: Option<DateTime<Utc>>,
    /// When it last changed.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// The session this one retries (`retry`): null for any other.
    pub retry_of: Option<Uuid>,
    /// Seconds from start to finish (or to now while running); null before it starts.
    pub duration_seconds: Option<f64>,
    /// `successful_instances / total_instances`; null for an empty session.
    pub success_rate: Option<f64>,
}

impl Session {
    /// Whether it has ended.
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }
    /// Whether, by its totals, it can hold a record in this status: a page of a status it
    /// has none of needs no query (on PostgreSQL, a plan walking the primary key would
    /// read the whole session to find nothing).
    pub fn may_hold(&self, status: RecordStatus) -> bool {
        let ended = self.successful_instances + self.failed_instances + self.cancelled_instances;
        match status {
            RecordStatus::Completed => self.successful_instances > 0,
            RecordStatus::Failed => self.failed_instances > 0,
            RecordStatus::Cancelled => self.cancelled_instances > 0,
            RecordStatus::Pending | RecordStatus::Running => ended < self.total_instances,
        }
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
    /// Row id.
    pub id: i64,
    /// The instance synced.
    pub instance_id: i64,
    /// Its name when the session was made.
    pub instance_name: String,
    /// Where it is.
    pub status: RecordStatus,
    /// Attempts started (1 for the first).
    pub attempts: i64,
    /// The worker process that holds or held it.
    pub worker_id: Option<String>,
    /// Time waited for the instance's lease, in milliseconds.
    pub lock_wait_ms: Option<i64>,
    /// When its current attempt took the lease.
    #[serde(with = "ts::opt")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(with = "ts::opt")]
    pub completed_at: Option<DateTime<Utc>>,
    /// Accounts found on the instance.
    pub accounts_total: Option<i64>,
    /// Accounts new (or back) since the last sync.
    pub accounts_added: Option<i64>,
    /// Accounts gone since the last sync.
    pub accounts_removed: Option<i64>,
    /// Accounts whose attributes or privileges changed.
    pub accounts_changed: Option<i64>,
    /// Why its last attempt failed.
    pub error: Option<String>,
}

/// A session with its records, as `session ID --json` and the API show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionDetail {
    /// The session and its totals.
    #[serde(flatten)]
    pub session: Session,
    /// One record per instance.
    pub records: Vec<Record>,
}

/// What `session_create` reports.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionCreated {
    /// Its public id.
    pub session_id: Uuid,
    /// Instances in it.
    pub total_instances: i64,
    /// `pending` at first.
    pub status: SessionStatus,
    /// The session it retries, when `retry` started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<Uuid>,
}

/// An account in syncpool's inventory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoredAccount {
    /// User name.
    pub username: String,
    /// Host part (MySQL); empty for PostgreSQL.
    pub host: String,
    /// Attributes as the instance reports them (superuser, login, ...).
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    /// Privileges granted to it.
    #[schema(value_type = Vec<Object>)]
    pub privileges: serde_json::Value,
    /// The first sync that found it.
    #[serde(with = "ts")]
    pub first_seen_at: DateTime<Utc>,
    /// The last sync that found it.
    #[serde(with = "ts")]
    pub last_seen_at: DateTime<Utc>,
    /// When a sync found it gone; null while it exists.
    #[serde(with = "ts::opt")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// What `cleanup` deleted.
#[derive(Debug, Clone, Default, Serialize, PartialEq, ToSchema)]
pub struct CleanupCounts {
    /// Finished sessions deleted.
    pub sessions_deleted: u64,
    /// Their records.
    pub records_deleted: u64,
    /// Finished queue jobs deleted.
    pub jobs_deleted: u64,
    /// Expired leases deleted.
    pub locks_deleted: u64,
    /// Account history rows past their retention deleted.
    pub changes_deleted: u64,
    /// Audit rows past their retention deleted.
    pub audit_deleted: u64,
}

/// Fleet-wide numbers read from the database for the gauges.
#[derive(Debug, Clone, Default)]
pub struct FleetGauges {
    /// Queue jobs waiting.
    pub jobs_pending: i64,
    /// Queue jobs running.
    pub jobs_running: i64,
    /// Queue jobs failed for good.
    pub jobs_failed: i64,
    /// Live leases.
    pub locks_held: i64,
    /// Sessions pending or running.
    pub sessions_running: i64,
    /// Every finished session ever, by type and status (never cleaned up).
    pub session_stats: Vec<SessionStat>,
    /// `(sync_type, success_rate)` of the last finished, not cancelled, session per type.
    pub last_success: Vec<(SyncType, f64)>,
    /// Age of the oldest pending or running session (0 when none).
    pub oldest_session_seconds: f64,
    /// Running records without a live lease carrying their token.
    pub records_unleased: i64,
    /// Cron slots of the last 24 h that started a session / were skipped.
    pub slots_fired_24h: i64,
    /// See `slots_fired_24h`.
    pub slots_skipped_24h: i64,
    /// Every concurrency limit with its slots in use and its waiting jobs.
    pub limits: Vec<Limit>,
    /// Open policy violations by rule: every rule of the policy in force (0 when none
    /// are open) and any other rule with violations still open.
    pub violations: Vec<(String, i64)>,
    /// Webhook deliveries by state.
    pub deliveries: Vec<(DeliveryState, i64)>,
}

/// Upper bounds, in seconds, of the session-duration histogram's buckets: one counter
/// column `le_N` each in `session_stats` (migration 0005).
pub const SESSION_DURATION_BUCKETS: &[u32] = &[
    1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400,
];

/// The finished sessions of one type and status, as a cumulative histogram.
#[derive(Debug, Clone)]
pub struct SessionStat {
    /// The sessions' type.
    pub sync_type: SyncType,
    /// Their status.
    pub status: SessionStatus,
    /// How many finished so.
    pub finished: i64,
    /// Their durations summed, in seconds.
    pub duration_sum: f64,
    /// Cumulative counts, one per [`SESSION_DURATION_BUCKETS`] entry.
    pub buckets: Vec<i64>,
}

/// One recorded change of one account (see [`crate::history`]).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountChange {
    /// Increasing with time; the `after` cursor of the next page.
    pub id: i64,
    /// The instance's id when the change was recorded.
    pub instance_id: i64,
    /// The instance's name when the change was recorded.
    pub instance_name: String,
    /// The session whose sync found it.
    pub session_id: Uuid,
    /// The record of that sync.
    pub record_id: i64,
    /// User name.
    pub username: String,
    /// Host part (MySQL); empty for PostgreSQL.
    pub host: String,
    /// `baseline`, `added`, `removed` or `changed`.
    pub kind: ChangeKind,
    /// What changed: for `changed`, only the differences (`attributes`: name to
    /// `{from, to}`; `privileges`: `granted` and `revoked` single grants); otherwise the
    /// account's attributes and privileges.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// Why it is privilege-sensitive (`superuser`, `create_role`, `bypass_rls`,
    /// `replication`, `all_privileges`, `super`, `grant_option`, `unlocked`).
    pub flags: Vec<String>,
    /// Whether `flags` is not empty.
    pub sensitive: bool,
    /// When the sync that found it committed.
    #[serde(with = "ts")]
    pub changed_at: DateTime<Utc>,
}

/// The keyset cursor after a page of at most `limit` items: the last one's id when the
/// page is full (a next page may exist), else none.
pub fn next_after<T>(items: &[T], limit: i64, id: impl Fn(&T) -> i64) -> Option<i64> {
    (items.len() as i64 == limit)
        .then(|| items.last().map(id))
        .flatten()
}

/// A page of the change history, as the API and `changes --json` print it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChangePage {
    /// Newest first.
    pub items: Vec<AccountChange>,
    /// The `after` of the next page; null on the last one.
    pub next_after: Option<i64>,
}

/// A page of a session's records in id order, as `GET /api/v1/sessions/{id}/records`
/// returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordPage {
    /// In record id order.
    pub items: Vec<Record>,
    /// The `after` of the next page; null on the last one.
    pub next_after: Option<i64>,
}

impl RecordPage {
    /// A page of at most `limit` items: a full page may have a next one.
    pub fn new(items: Vec<Record>, limit: i64) -> Self {
        let next_after = next_after(&items, limit, |r| r.id);
        RecordPage { items, next_after }
    }
}

impl ChangePage {
    /// A page of at most `limit` items: a full page may have a next one.
    pub fn new(items: Vec<AccountChange>, limit: i64) -> Self {
        let next_after = next_after(&items, limit, |c| c.id);
        ChangePage { items, next_after }
    }
}

/// Reported once, by the finish that made a session's last record terminal.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionFinished {
    /// The session's type.
    pub sync_type: SyncType,
    /// How it ended.
    pub status: SessionStatus,
    /// Start to finish, in seconds.
    pub duration_seconds: f64,
    /// Completed records over all records.
    pub success_rate: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_a_worker_can_read_is_an_instance_kind_and_no_other() {
        assert_eq!(InstanceKind::names(), syncpool_workers::KINDS);
    }
}
