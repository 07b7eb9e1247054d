//! [`LimitOps`] on SQLite, inside the batch's transaction on the writer thread. No row
//! locks: SQLite's writes are serial, so a grant's count of live leases cannot race
//! another's.

use std::collections::HashMap;

use async_trait::async_trait;

use super::now;
use super::pipeline::{SqliteOps, arr};
use crate::store::Result;
use crate::store::batch::{LimitOps, LimitWait, keys_of};

const ANY_WAITING: &str = "SELECT 1 FROM sync_instance_records \
     WHERE limit_wait_key IS NOT NULL AND status = 'pending' LIMIT 1";
const OWED: &str = "SELECT id, limit_wait_since_ms FROM sync_instance_records \
     WHERE limit_wait_key = ?1 AND status = 'pending' AND limit_wait_since_ms <= ?2 \
     AND limit_seen_ms >= ?3 ORDER BY limit_wait_since_ms, id LIMIT ?4";

#[async_trait]
impl LimitOps for SqliteOps<'_> {
    async fn limits_for(&mut self, keys: &[String]) -> Result<HashMap<String, i64>> {
        let rows = self.rows(
            "SELECT key, max_concurrent FROM sync_limits WHERE key IN (SELECT value FROM json_each(?1))",
            [arr(keys)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.into_iter().collect())
    }

    async fn leased_keys(&mut self) -> Result<Vec<(Option<String>, Option<String>)>> {
        self.rows(
            concat!(
                // By the expiry index, whatever the statistics say: `sync_locks` keeps a
                // row per instance ever leased, and statistics taken while it was empty
                // made the planner read it whole (half the throughput with limits set).
                "SELECT i.group_name, i.host FROM sync_locks l INDEXED BY idx_sync_locks_expires ",
                "JOIN instances i ON i.id = l.instance_id WHERE l.expires_at > ",
                now!()
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    async fn limit_owed(
        &mut self,
        keys: &[(String, i64)],
        owed_by_ms: i64,
        seen_after_ms: i64,
    ) -> Result<HashMap<String, Vec<(i64, i64)>>> {
        let mut out = HashMap::new();
        // One look at the partial index first: usually nobody waits, and then the
        // per-key lookups below (a statement each) are skipped.
        if self.rows(ANY_WAITING, [], |_| Ok(()))?.is_empty() {
            return Ok(out);
        }
        for (key, n) in keys {
            let list = self.rows(
                OWED,
                rusqlite::params![key, owed_by_ms, seen_after_ms, n],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            out.insert(key.clone(), list);
        }
        Ok(out)
    }

    async fn records_limit_wait(&mut self, rows: &[LimitWait]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = rows
            .iter()
            .map(|w| (w.record_id, &w.key, w.now_ms))
            .collect();
        self.exec(
            "UPDATE sync_instance_records SET limit_wait_key = v.value->>1, \
             limit_wait_since_ms = COALESCE(limit_wait_since_ms, v.value->>2), \
             limit_seen_ms = v.value->>2 FROM json_each(?1) AS v \
             WHERE sync_instance_records.id = v.value->>0",
            [arr(&rows)],
        )?;
        Ok(())
    }

    async fn limits_wake(&mut self, instance_ids: &[i64]) -> Result<()> {
        // Local calls, not round trips: a few statements cost little here.
        if self
            .rows("SELECT 1 FROM sync_limits LIMIT 1", [], |_| Ok(()))?
            .is_empty()
            || self.rows(ANY_WAITING, [], |_| Ok(()))?.is_empty()
        {
            return Ok(());
        }
        let mut freed: HashMap<String, i64> = HashMap::new();
        let rows: Vec<(Option<String>, Option<String>)> = self.rows(
            "SELECT group_name, host FROM instances WHERE id IN (SELECT value FROM json_each(?1))",
            [arr(instance_ids)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        for (g, h) in rows {
            for k in keys_of(g.as_deref(), h.as_deref()) {
                *freed.entry(k).or_default() += 1;
            }
        }
        let keys: Vec<&String> = freed.keys().collect();
        let limited: Vec<String> = self.rows(
            "SELECT key FROM sync_limits WHERE key IN (SELECT value FROM json_each(?1)) ORDER BY key",
            [arr(&keys)],
            |r| Ok(r.get(0)?),
        )?;
        for key in limited {
            self.exec(
                "UPDATE Jobs SET run_at = unixepoch(), priority = 1 WHERE status = 'Pending' \
                 AND id IN (SELECT r.job_id FROM sync_instance_records r JOIN Jobs j \
                 ON j.id = r.job_id WHERE r.limit_wait_key = ?1 AND r.status = 'pending' \
                 AND j.status = 'Pending' ORDER BY r.limit_wait_since_ms, r.id LIMIT ?2)",
                rusqlite::params![key, freed[&key]],
            )?;
        }
        Ok(())
    }
}
