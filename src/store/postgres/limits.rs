//! [`LimitOps`] on PostgreSQL. The limit rows a grant counts under are locked
//! (`FOR UPDATE`) after its records, leases and instances, so two workers' grants under
//! one key take turns: the second counts the first's leases once it has committed
//! (read committed: each statement sees what committed before it began).

use std::collections::HashMap;

use async_trait::async_trait;

use super::pipeline::PgOps;
use crate::store::Result;
use crate::store::batch::LimitOps;

const OWED_BY_GROUP: &str = "SELECT r.id, r.limit_wait_since_ms FROM sync_instance_records r \
     JOIN instances i ON i.id = r.instance_id WHERE r.status = 'pending' \
     AND r.limit_wait_since_ms IS NOT NULL AND r.limit_wait_since_ms <= $1 AND i.group_name = $2 \
     ORDER BY r.limit_wait_since_ms, r.id LIMIT $3";
const OWED_BY_HOST: &str = "SELECT r.id, r.limit_wait_since_ms FROM sync_instance_records r \
     JOIN instances i ON i.id = r.instance_id WHERE r.status = 'pending' \
     AND r.limit_wait_since_ms IS NOT NULL AND r.limit_wait_since_ms <= $1 AND i.host = $2 \
     ORDER BY r.limit_wait_since_ms, r.id LIMIT $3";

#[async_trait]
impl LimitOps for PgOps<'_> {
    async fn limits_for(&mut self, keys: &[String]) -> Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT key, max_concurrent FROM sync_limits WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        )
        .bind(keys)
        .fetch_all(&mut *self.0)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn leased_keys(&mut self) -> Result<Vec<(Option<String>, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT i.group_name, i.host FROM sync_locks l JOIN instances i ON i.id = l.instance_id \
             WHERE l.expires_at > clock_timestamp()",
        )
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn limit_owed(&mut self, key: &str, owed_by_ms: i64, n: i64) -> Result<Vec<(i64, i64)>> {
        let (sql, value) = match key.split_once(':') {
            Some(("group", g)) => (OWED_BY_GROUP, g),
            Some(("host", h)) => (OWED_BY_HOST, h),
            _ => return Ok(vec![]),
        };
        Ok(sqlx::query_as(sql)
            .bind(owed_by_ms)
            .bind(value)
            .bind(n)
            .fetch_all(&mut *self.0)
            .await?)
    }

    async fn records_limit_wait(&mut self, rows: &[(i64, i64)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (ids, since): (Vec<i64>, Vec<i64>) = rows.iter().copied().unzip();
        sqlx::query(
            "UPDATE sync_instance_records r SET limit_wait_since_ms = \
             COALESCE(r.limit_wait_since_ms, v.s) FROM UNNEST($1::bigint[], $2::bigint[]) AS v(i, s) \
             WHERE r.id = v.i",
        )
        .bind(&ids)
        .bind(&since)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }
}
