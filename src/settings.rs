//! Timings and limits of the worker pipeline, with their defaults. Every one can be
//! set by a `SYNCPOOL_*` environment variable or the matching CLI flag (see `cli.rs`).

use std::time::Duration;

use crate::store::LeaseParams;

/// The worker pipeline's timings and limits.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a lease lives without renewal.
    pub lease_ttl: Duration,
    /// How often a running sync renews its lease.
    pub lease_renew: Duration,
    /// Longest a single sync may take.
    pub sync_timeout: Duration,
    /// Attempts per record (the first one included).
    pub max_attempts: i64,
    /// First retry delay; doubles per attempt, with jitter.
    pub retry_backoff: Duration,
    /// Delay before a job whose instance is leased elsewhere tries again.
    pub busy_retry: Duration,
    /// How long a job may wait for a busy instance before its record fails.
    pub lock_wait_timeout: Duration,
    /// How long running syncs may go on after SIGINT/SIGTERM before they are handed back.
    pub shutdown_grace: Duration,
    /// How often an idle worker looks for new jobs.
    pub poll_interval: Duration,
    /// apalis worker heartbeat; the orphan timeout is this times `missed_heartbeats`.
    pub queue_heartbeat: Duration,
    /// Heartbeats a worker may miss before its jobs are orphans.
    pub missed_heartbeats: usize,
    /// Time allowed to connect to an instance.
    pub connect_timeout: Duration,
    /// Time allowed for one catalog query on an instance.
    pub statement_timeout: Duration,
    /// Most accounts one instance may return.
    pub max_accounts: usize,
    /// Most bytes one account may take as read (`--max-account-bytes`).
    pub max_row_bytes: usize,
    /// Most bytes one sync of an instance may read.
    pub max_sync_bytes: usize,
    /// The hosts a worker may connect to; empty: any (docs/SECURITY.md).
    pub instance_hosts: syncpool_workers::HostAllowList,
    /// How this process delivers webhooks (none without an allow-list).
    pub webhooks: crate::webhooks::DeliverySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            lease_renew: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(300),
            max_attempts: 3,
            retry_backoff: Duration::from_secs(2),
            busy_retry: Duration::from_secs(1),
            lock_wait_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            queue_heartbeat: Duration::from_secs(10),
            missed_heartbeats: 3,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(60),
            max_accounts: syncpool_workers::SourceSettings::default().max_accounts,
            max_row_bytes: syncpool_workers::SourceSettings::default().max_row_bytes,
            max_sync_bytes: syncpool_workers::SourceSettings::default().max_sync_bytes,
            instance_hosts: syncpool_workers::HostAllowList::default(),
            webhooks: crate::webhooks::DeliverySettings::default(),
        }
    }
}

impl Settings {
    /// The part the store needs to grant and renew leases.
    pub fn lease_params(&self) -> LeaseParams {
        LeaseParams {
            ttl: self.lease_ttl,
            busy_retry: self.busy_retry,
            lock_wait_timeout: self.lock_wait_timeout,
            max_attempts: self.max_attempts,
        }
    }

    /// The part a source needs to reach an instance.
    pub fn source_settings(&self) -> syncpool_workers::SourceSettings {
        syncpool_workers::SourceSettings {
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
            max_accounts: self.max_accounts,
            max_row_bytes: self.max_row_bytes,
            max_sync_bytes: self.max_sync_bytes,
            instance_hosts: self.instance_hosts.clone(),
        }
    }

    /// The time after which apalis hands a silent worker's jobs to others.
    pub fn orphan_timeout(&self) -> Duration {
        self.queue_heartbeat * self.missed_heartbeats as u32
    }

    /// Exponential backoff with full jitter for the attempt that follows `attempt`.
    pub fn retry_delay(&self, attempt: i64) -> Duration {
        use rand::Rng;
        let base = self.retry_backoff.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << (attempt.clamp(1, 16) - 1) as u32);
        let jittered = exp / 2 + rand::rng().random_range(0..=exp / 2);
        Duration::from_millis(jittered.max(1000))
    }
}
