//! Concurrency limits in the grant step. A limit caps how many syncs run at once under a
//! key: `group:NAME` (instances of that group) or `host:HOST`. A *slot* is a live lease
//! of an instance under the key, so it is taken with the lease in the grant, renewed by
//! the same heartbeat, fenced by the same token, released by the same finish, and handed
//! on when the lease lapses (a killed or frozen holder): a limit holds under every fault
//! the lease does, with no state of its own to leak.
//!
//! A job whose key is full waits as a job for a busy instance does (re-pushed with a
//! delay, holding no worker slot). So that a waiting job cannot starve while new ones keep
//! arriving, a pending record stamps when it first found a key full; once it has waited a
//! whole retry delay it is *owed* a slot, and the owed records, oldest first, are granted
//! before anyone younger. Owing only after a delay keeps a freed slot from idling while
//! its owner's delayed job comes back, when nobody has waited that long.

use std::collections::HashMap;

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
    /// The `n` oldest pending records under `key` that first found it full at or before
    /// `owed_by_ms` (database clock): record id and stamp, oldest first.
    async fn limit_owed(&mut self, key: &str, owed_by_ms: i64, n: i64) -> Result<Vec<(i64, i64)>>;
    /// Stamps records as waiting for a slot since `ms`, keeping an earlier stamp.
    async fn records_limit_wait(&mut self, rows: &[(i64, i64)]) -> Result<()>;
}

/// The keys an instance counts under, whether or not a limit is set on them.
pub(crate) fn keys_of(group: Option<&str>, host: Option<&str>) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    if let Some(g) = group {
        keys.push(format!("group:{g}"));
    }
    if let Some(h) = host {
        keys.push(format!("host:{h}"));
    }
    keys
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
        owed_by_ms: i64,
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
        let mut owed = HashMap::new();
        for (k, &m) in &max {
            owed.insert(k.clone(), ops.limit_owed(k, owed_by_ms, m).await?);
        }
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
    /// key of its instance now; if so, the slots are counted as taken.
    pub(crate) fn admit(
        &mut self,
        limits: &Limits,
        rid: i64,
        rec: &RecState,
        instance: &Instance,
    ) -> bool {
        if limits.is_empty() {
            return true;
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
                return false;
            }
        }
        for k in keys {
            *self.granted.entry(k).or_default() += 1;
        }
        self.records.insert(rid);
        true
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
        assert!(a.admit(&l, 10, &rec(None), &i));
        assert!(a.admit(&l, 11, &rec(None), &i));
        assert!(!a.admit(&l, 12, &rec(None), &i), "1 live + 2 granted = 3");
        // An instance outside the key is not held back.
        assert!(a.admit(&l, 13, &rec(None), &inst(Some("other"), None)));
        assert!(a.admit(&l, 14, &rec(None), &inst(None, None)));
    }

    #[test]
    fn owed_records_are_served_oldest_first_and_newcomers_wait_behind_them() {
        // Two free slots, two records owed them (waiting since 100 and 200).
        let l = limits(2, 0, vec![(7, 100), (8, 200)]);
        let i = inst(Some("g"), None);
        let mut a = Admission::default();
        assert!(
            !a.admit(&l, 20, &rec(None), &i),
            "a newcomer takes no owed slot"
        );
        assert!(
            !a.admit(&l, 21, &rec(Some(900)), &i),
            "nor does a younger waiter"
        );
        assert!(
            a.admit(&l, 8, &rec(Some(200)), &i),
            "the younger owed one: one slot each"
        );
        assert!(a.admit(&l, 7, &rec(Some(100)), &i));
        assert!(!a.admit(&l, 22, &rec(None), &i), "full");
        // One slot, two owed: only the oldest gets it.
        let l = limits(1, 0, vec![(7, 100), (8, 200)]);
        let mut a = Admission::default();
        assert!(!a.admit(&l, 8, &rec(Some(200)), &i));
        assert!(a.admit(&l, 7, &rec(Some(100)), &i));
    }

    #[test]
    fn both_the_group_and_the_host_limit_apply() {
        let l = Limits {
            max: [("group:g".into(), 5), ("host:h".into(), 1)].into(),
            in_use: HashMap::new(),
            owed: HashMap::new(),
        };
        let mut a = Admission::default();
        assert!(a.admit(&l, 1, &rec(None), &inst(Some("g"), Some("h"))));
        assert!(
            !a.admit(&l, 2, &rec(None), &inst(Some("g"), Some("h"))),
            "the host is full"
        );
        assert!(a.admit(&l, 3, &rec(None), &inst(Some("g"), Some("other"))));
        assert_eq!(keys_of(Some("g"), Some("h")), ["group:g", "host:h"]);
    }
}
