//! [`LimitOps`] on SQLite, inside the batch's transaction on the writer thread. No row
//! locks: SQLite's writes are serial, so a grant's count of live leases cannot race
//! another's.

use std::collections::HashMap;

use async_trait::async_trait;

use super::now;
use super::pipeline::{SqliteOps, arr};
use crate::store::Result;
use crate::store::batch::LimitOps;

const OWED_BY_GROUP: &str = "SELECT r.id, r.limit_wait_since_ms FROM sync_instance_records r \
     JOIN instances i ON i.id = r.instance_id WHERE r.status = 'pending' \
     AND r.limit_wait_since_ms IS NOT NULL AND r.limit_wait_since_ms <= ?1 AND i.group_name = ?2 \
     ORDER BY r.limit_wait_since_ms, r.id LIMIT ?3";
const OWED_BY_HOST: &str = "SELECT r.id, r.limit_wait_since_ms FROM sync_instance_records r \
     JOIN instances i ON i.id = r.instance_id WHERE r.status = 'pending' \
     AND r.limit_wait_since_ms IS NOT NULL AND r.limit_wait_since_ms <= ?1 AND i.host = ?2 \
     ORDER BY r.limit_wait_since_ms, r.id LIMIT ?3";

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
                "SELECT i.group_name, i.host FROM sync_locks l JOIN instances i ON i.id = l.instance_id ",
                "WHERE l.expires_at > ",
                now!()
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    async fn limit_owed(&mut self, key: &str, owed_by_ms: i64, n: i64) -> Result<Vec<(i64, i64)>> {
        let (sql, value) = match key.split_once(':') {
            Some(("group", g)) => (OWED_BY_GROUP, g),
            Some(("host", h)) => (OWED_BY_HOST, h),
            _ => return Ok(vec![]),
        };
        self.rows(sql, rusqlite::params![owed_by_ms, value, n], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    async fn records_limit_wait(&mut self, rows: &[(i64, i64)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.exec(
            "UPDATE sync_instance_records SET limit_wait_since_ms = \
             COALESCE(limit_wait_since_ms, v.value->>1) FROM json_each(?1) AS v \
             WHERE sync_instance_records.id = v.value->>0",
            [arr(rows)],
        )?;
        Ok(())
    }
}
