//! Concurrency limits in the grant step. A limit caps how many syncs run at once under a
//! key: `group:NAME` (instances of that group) or `host:HOST`. A *slot* is a live lease
//! of an instance under the key, so it is taken with the lease in the grant, renewed by
//! the same heartbeat, fenced by the same token, released by the same finish, and handed
//! on when the lease lapses (a killed or frozen holder): a limit holds under every fault
//! the lease does, with no state of its own to leak.
//!
//! A job whose key is full waits as a job for a busy instance does (re-pushed with a
//! delay, holding no worker slot). So that a waiting job cannot starve
//! while new ones keep arriving, a pending record stamps which key refused it, when it
//! first waited and when it last asked. Once it has waited a whole retry delay it is
//! *owed* a slot of that key, and the owed records, oldest first, are granted before
//! anyone younger. Owing only after a delay keeps a freed slot from idling while its
//! owner's delayed job comes back, when nobody has waited that long; owing only while it
//! keeps asking (`OWED_WHILE_SEEN`) keeps a job that cannot come back (fetched by a
//! worker that was then killed, until the queue hands it on) from holding a slot. A
//! finish that frees slots makes the copies of the longest waiters whose job can run due
//! at once and fetched first (`LimitOps::limits_wake`), so a slot changes hands at the
//! next poll, not after a delay; the other waiting copies keep the ordinary priority, so
//! a large backlog of waiters does not crowd out other sessions' jobs.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use super::ops::RecState;
use crate::model::Instance;
use crate::store::Result;

/// The statements limits need, per database.
#[async_trait]
pub(crate) trait LimitOps: Send {
    /// The maximum of each configured limit among `keys`; PostgreSQL locks those rows
    /// (`FOR UPDATE`, in key order, after records, leases and instances) so that two
    /// grants under one key count each other's leases.
    async fn limits_for(&mut self, keys: &[String]) -> Result<HashMap<String, i64>>;
    /// The group and host of every instance with a live lease.
    async fn leased_keys(&mut self) -> Result<Vec<(Option<String>, Option<String>)>>;
    /// For each `(key, n)`: the `n` oldest pending records refused by `key` that first
    /// waited at or before `owed_by_ms` and last asked at or after `seen_after_ms`
    /// (database clock): record id and first wait, oldest first. One round trip, and
    /// nearly free when nobody waits (the common case: a limit that does not bind).
    async fn limit_owed(
        &mut self,
        keys: &[(String, i64)],
        owed_by_ms: i64,
        seen_after_ms: i64,
    ) -> Result<HashMap<String, Vec<(i64, i64)>>>;
    /// Stamps records as refused by a key now, keeping the first wait's time.
    async fn records_limit_wait(&mut self, rows: &[LimitWait]) -> Result<()>;
    /// After a finish released the leases of `instance_ids`: for each limited key among
    /// them, makes the jobs of as many of its longest-waiting records as slots were freed
    /// due now, so that a freed slot is taken at the next poll instead of after a retry
    /// delay (without it: 22 syncs/s where 20 slots of 50 ms syncs allow 400). Best
    /// effort: a job another transaction holds is skipped. Nearly free without limits.
    async fn limits_wake(&mut self, instance_ids: &[i64]) -> Result<()>;
}

/// A record refused by a full key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LimitWait {
    pub record_id: i64,
    pub key: String,
    pub now_ms: i64,
}

/// How many retry delays a waiting record may go without asking and still be owed a
/// slot: its delayed copy comes back after one delay (plus a poll, plus the time a busy
/// worker takes to get to it); one that has not asked for longer is presumed unable to.
pub(crate) const OWED_WHILE_SEEN: u32 = 4;

/// The times of [`LimitOps::limit_owed`] for a grant at `now_ms` with retry delay
/// `busy_retry`: owed once waited one delay, while seen within a few (at least 2 s, a
/// worker's poll and fetch on a loaded machine).
pub(crate) fn owed_window(now_ms: i64, busy_retry: Duration) -> (i64, i64) {
    let delay = busy_retry.as_millis() as i64;
    let seen = (delay * OWED_WHILE_SEEN as i64).max(2_000);
    (now_ms - delay, now_ms - seen)
}

/// The keys an instance counts under, whether or not a limit is set on them. A host is
/// compared as DNS compares names (case aside) and without an IPv6 address's brackets,
/// as `validate::limit_key` stores it.
pub(crate) fn keys_of(group: Option<&str>, host: Option<&str>) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    if let Some(g) = group {
        keys.push(format!("group:{g}"));
    }
    if let Some(h) = host {
        keys.push(format!("host:{}", host_key(h)));
    }
    keys
}

/// A limit's key as stored and compared: a host's part as [`host_key`] writes it.
pub(crate) fn normal_key(key: &str) -> String {
    match key.split_once(':') {
        Some(("host", h)) => format!("host:{}", host_key(h)),
        _ => key.to_string(),
    }
}

/// A host as limit keys name it: lowercase, IPv6 brackets removed.
pub(crate) fn host_key(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// The limits that bear on one batch of grants, read under lock.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    /// Each configured limit on the batch's keys: its maximum.
    pub max: HashMap<String, i64>,
    /// Live leases under each of those keys before this batch.
    pub in_use: HashMap<String, i64>,
    /// Under each key, the records owed a slot, oldest first (at most its maximum).
    pub owed: HashMap<String, Vec<(i64, i64)>>,
}

impl Limits {
    /// Reads the limits on the keys of `instances`; nothing beyond one lookup when none
    /// is set (the common case), and not even that when no instance has a group or host.
    pub(crate) async fn load<O: LimitOps + ?Sized>(
        ops: &mut O,
        instances: &HashMap<i64, Instance>,
        (owed_by_ms, seen_after_ms): (i64, i64),
    ) -> Result<Limits> {
        let mut keys: Vec<String> = instances
            .values()
            .flat_map(|i| keys_of(i.group.as_deref(), i.host.as_deref()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Ok(Limits::default());
        }
        let max = ops.limits_for(&keys).await?;
        if max.is_empty() {
            return Ok(Limits::default());
        }
        let mut in_use: HashMap<String, i64> = HashMap::new();
        for (g, h) in ops.leased_keys().await? {
            for k in keys_of(g.as_deref(), h.as_deref()) {
                if max.contains_key(&k) {
                    *in_use.entry(k).or_default() += 1;
                }
            }
        }
        // A full key owes nothing this batch: no one gets its slots anyway.
        let open: Vec<(String, i64)> = max
            .iter()
            .filter(|(k, m)| in_use.get(*k).copied().unwrap_or(0) < **m)
            .map(|(k, m)| (k.clone(), *m))
            .collect();
        let owed = match open.is_empty() {
            true => HashMap::new(),
            false => ops.limit_owed(&open, owed_by_ms, seen_after_ms).await?,
        };
        Ok(Limits { max, in_use, owed })
    }

    /// Whether any limit bears on this batch.
    pub(crate) fn is_empty(&self) -> bool {
        self.max.is_empty()
    }
}

/// The slots one batch hands out, as it decides.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Slots granted in this batch, per key.
    granted: HashMap<String, i64>,
    /// Records granted in this batch (no longer owed anything).
    records: std::collections::HashSet<i64>,
}

impl Admission {
    /// Whether record `rid` (in `rec`) of `instance` may take a slot under every limited
    /// key of its instance now; if so, the slots are counted as taken, and if not, the
    /// key that refused it.
    pub(crate) fn admit(
        &mut self,
        limits: &Limits,
        rid: i64,
        rec: &RecState,
        instance: &Instance,
    ) -> std::result::Result<(), String> {
        if limits.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = keys_of(instance.group.as_deref(), instance.host.as_deref())
            .into_iter()
            .filter(|k| limits.max.contains_key(k))
            .collect();
        let me = rec.limit_wait_since_ms.map(|since| (since, rid));
        for k in &keys {
            let free = limits.max[k]
                - limits.in_use.get(k).copied().unwrap_or(0)
                - self.granted.get(k).copied().unwrap_or(0);
            // Slots owed to records that waited longer than this one (all of them, for a
            // record that has not waited) are not this one's to take.
            let ahead = limits.owed.get(k).map_or(0, |owed| {
                owed.iter()
                    .filter(|&&(other, since)| {
                        other != rid
                            && !self.records.contains(&other)
                            && me.is_none_or(|m| (since, other) < m)
                    })
                    .count() as i64
            });
            if free - ahead <= 0 {
                return Err(k.clone());
            }
        }
        for k in keys {
            *self.granted.entry(k).or_default() += 1;
        }
        self.records.insert(rid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RecordStatus;

    fn inst(group: Option<&str>, host: Option<&str>) -> Instance {
        let now = chrono::Utc::now();
        Instance {
            id: 1,
            name: "db".into(),
            kind: crate::model::InstanceKind::Simulated,
            host: host.map(Into::into),
            port: None,
            username: None,
            database: None,
            password_env: None,
            password_file: None,
            options: serde_json::json!({}),
            active: true,
            group: group.map(Into::into),
            created_at: now,
            updated_at: now,
            history_since: None,
        }
    }

    fn rec(since: Option<i64>) -> RecState {
        RecState {
            instance_id: 1,
            status: RecordStatus::Pending,
            attempts: 0,
            job_id: None,
            lock_token: None,
            session_row: 1,
            session_uuid: uuid::Uuid::nil(),
            cancel_requested: false,
            request_id: None,
            accounts: (None, None, None, None),
            limit_wait_since_ms: since,
        }
    }

    fn limits(max: i64, in_use: i64, owed: Vec<(i64, i64)>) -> Limits {
        Limits {
            max: [("group:g".to_string(), max)].into(),
            in_use: [("group:g".to_string(), in_use)].into(),
            owed: [("group:g".to_string(), owed)].into(),
        }
    }

    #[test]
    fn a_key_admits_up_to_its_maximum_counting_live_leases_and_this_batch() {
        let l = limits(3, 1, vec![]);
        let i = inst(Some("g"), None);
        let mut a = Admission::default();
        assert!(a.admit(&l, 10, &rec(None), &i).is_ok());
        assert!(a.admit(&l, 11, &rec(None), &i).is_ok());
        assert_eq!(
            a.admit(&l, 12, &rec(None), &i),
            Err("group:g".into()),
            "1 live + 2 granted = 3"
        );
        // An instance outside the key is not held back.
        assert!(
            a.admit(&l, 13, &rec(None), &inst(Some("other"), None))
                .is_ok()
        );
        assert!(a.admit(&l, 14, &rec(None), &inst(None, None)).is_ok());
    }

    #[test]
    fn owed_records_are_served_oldest_first_and_newcomers_wait_behind_them() {
        // Two free slots, two records owed them (waiting since 100 and 200).
        let l = limits(2, 0, vec![(7, 100), (8, 200)]);
        let i = inst(Some("g"), None);
        let mut a = Admission::default();
        assert!(
            a.admit(&l, 20, &rec(None), &i).is_err(),
            "a newcomer takes no owed slot"
        );
        assert!(
            a.admit(&l, 21, &rec(Some(900)), &i).is_err(),
            "nor a younger waiter"
        );
        assert!(a.admit(&l, 8, &rec(Some(200)), &i).is_ok(), "one slot each");
        assert!(a.admit(&l, 7, &rec(Some(100)), &i).is_ok());
        assert!(a.admit(&l, 22, &rec(None), &i).is_err(), "full");
        // One slot, two owed: only the oldest gets it.
        let l = limits(1, 0, vec![(7, 100), (8, 200)]);
        let mut a = Admission::default();
        assert!(a.admit(&l, 8, &rec(Some(200)), &i).is_err());
        assert!(a.admit(&l, 7, &rec(Some(100)), &i).is_ok());
    }

    #[test]
    fn both_the_group_and_the_host_limit_apply_and_hosts_compare_as_names_do() {
        let l = Limits {
            max: [("group:g".into(), 5), ("host:h.example".into(), 1)].into(),
            in_use: HashMap::new(),
            owed: HashMap::new(),
        };
        let mut a = Admission::default();
        let both = inst(Some("g"), Some("H.Example"));
        assert!(a.admit(&l, 1, &rec(None), &both).is_ok());
        assert_eq!(
            a.admit(&l, 2, &rec(None), &both),
            Err("host:h.example".into())
        );
        assert!(
            a.admit(&l, 3, &rec(None), &inst(Some("g"), Some("other")))
                .is_ok()
        );
        assert_eq!(keys_of(Some("g"), Some("[::1]")), ["group:g", "host:::1"]);
    }

    #[test]
    fn a_waiter_is_owed_after_one_delay_while_it_keeps_asking() {
        let (owed_by, seen_after) = owed_window(10_000, Duration::from_secs(1));
        assert_eq!((owed_by, seen_after), (9_000, 6_000));
        // A short delay still allows two seconds for a poll and a fetch.
        assert_eq!(owed_window(10_000, Duration::ZERO), (10_000, 8_000));
    }
}
