//! What an operator looks at: who holds each instance's lease and what waits for it, the
//! queue's depth, and the per-instance views of the console. Read-only shapes, served by
//! `GET /api/v1/locks`, `GET /api/v1/queue`, `syncpool locks|queue` and the console.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Instance, Record, SyncType, ts};

/// At most this many waiting jobs are listed per lease (`waiting_total` counts them all).
pub const WAITERS_SHOWN: usize = 10;

/// One instance's lease row: who holds it, since when, until when, and what waits.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Lease {
    /// The leased instance.
    pub instance_id: i64,
    /// Its name, as the holding record has it.
    pub instance_name: String,
    /// The session whose record holds it.
    pub session_id: Uuid,
    /// The holding record.
    pub record_id: i64,
    /// The worker process that holds it.
    pub holder: String,
    /// The fencing token every write of this sync carries.
    pub token: i64,
    /// When it was taken.
    #[serde(with = "ts")]
    pub locked_at: DateTime<Utc>,
    /// When it lapses unless renewed.
    #[serde(with = "ts")]
    pub expires_at: DateTime<Utc>,
    /// Seconds since it was taken (by the database's clock).
    pub age_seconds: f64,
    /// Seconds until it lapses; negative once it has (its holder stopped renewing, and
    /// the next worker to want the instance takes it over).
    pub expires_in_seconds: f64,
    /// It has lapsed.
    pub expired: bool,
    /// Jobs queued for this instance while it is leased, oldest first (at most
    /// [`WAITERS_SHOWN`]).
    pub waiting: Vec<WaitingJob>,
    /// How many there are in all.
    pub waiting_total: i64,
}

/// A record queued for an instance that another record holds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WaitingJob {
    /// The waiting record.
    pub record_id: i64,
    /// Its session.
    pub session_id: Uuid,
    /// Attempts it has started so far.
    pub attempts: i64,
    /// When it was enqueued.
    #[serde(with = "ts")]
    pub waiting_since: DateTime<Utc>,
    /// Seconds since then.
    pub waited_seconds: f64,
}

/// Hands each waiting job (with its instance id) to the lease on that instance; one
/// pass, whatever the number of leases.
pub fn attach_waiters(leases: &mut [Lease], waiters: Vec<(i64, WaitingJob)>) {
    let at: std::collections::HashMap<i64, usize> = leases
        .iter()
        .enumerate()
        .map(|(i, l)| (l.instance_id, i))
        .collect();
    for (instance_id, w) in waiters {
        if let Some(&i) = at.get(&instance_id) {
            leases[i].waiting.push(w);
        }
    }
}

/// `GET /api/v1/locks`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseList {
    /// Oldest first.
    pub items: Vec<Lease>,
    /// How many leases there are.
    pub total: usize,
}

/// `GET /api/v1/queue`: syncpool's jobs in the apalis queue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueStats {
    /// Jobs by apalis state: Pending, Queued, Running, Done, Failed, Killed (all present).
    pub depth: BTreeMap<String, i64>,
    /// Pending jobs whose time has come.
    pub ready: i64,
    /// Pending jobs set to run later (retries after a busy lease or a failure).
    pub delayed: i64,
    /// The pending job that has been due longest; null when none is pending.
    pub oldest_pending: Option<OldestJob>,
    /// Each count stops one past this many (the console's bounded reading): a count above
    /// it means "more than". Null: every count is exact (the API and the CLI).
    pub counted_up_to: Option<i64>,
}

/// The apalis states [`QueueStats::depth`] always lists.
pub const JOB_STATES: [&str; 6] = ["Pending", "Queued", "Running", "Done", "Failed", "Killed"];

/// The head of the queue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OldestJob {
    /// The apalis job id.
    pub job_id: String,
    /// When it is (or was) due.
    #[serde(with = "ts")]
    pub run_at: DateTime<Utc>,
    /// Seconds it has been due (0 when it is due later).
    pub waited_seconds: f64,
    /// Attempts apalis has made.
    pub attempts: i64,
}

/// An instance with what the console's list shows of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstanceOverview {
    /// The instance.
    #[serde(flatten)]
    pub instance: Instance,
    /// The status of its newest record; null if never synced.
    pub last_status: Option<super::RecordStatus>,
    /// When that record ended (or started, while it runs).
    #[serde(with = "ts::opt")]
    pub last_sync_at: Option<DateTime<Utc>>,
    /// Its current (not deleted) accounts.
    pub account_count: i64,
}

/// One of an instance's syncs: a record with its session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstanceSync {
    /// The session it belonged to.
    pub session_id: Uuid,
    /// That session's type.
    pub sync_type: SyncType,
    /// The record.
    pub record: Record,
}

/// A concurrency limit and where it stands now (fleet-wide, from the database).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Limit {
    /// `group:NAME` or `host:HOST`.
    pub key: String,
    /// Most syncs under it at once.
    pub max_concurrent: i64,
    /// Syncs running under it: live leases of its instances. Above the maximum only
    /// after the maximum was lowered (a running sync is never stopped for it).
    pub in_use: i64,
    /// Jobs of its instances waiting for one of its slots.
    pub waiting: i64,
}

/// Every limit, by key.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LimitList {
    /// By key.
    pub items: Vec<Limit>,
}
