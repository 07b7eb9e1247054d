//! [`LimitOps`] on PostgreSQL. The limit rows a grant counts under are locked
//! (`FOR UPDATE`) after its records, leases and instances, so two workers' grants under
//! one key take turns: the second counts the first's leases once it has committed
//! (read committed: each statement sees what committed before it began).

use std::collections::HashMap;

use async_trait::async_trait;

use super::pipeline::PgOps;
use crate::store::Result;
use crate::store::batch::{LimitOps, LimitWait};

/// The owed records of every key in one statement: an index seek per key.
const OWED: &str = "SELECT v.k, o.id, o.since FROM UNNEST($1::text[], $2::bigint[]) AS v(k, m) \
     CROSS JOIN LATERAL (SELECT id, limit_wait_since_ms AS since FROM sync_instance_records \
     WHERE limit_wait_key = v.k AND status = 'pending' AND limit_wait_since_ms <= $3 \
     AND limit_seen_ms >= $4 ORDER BY limit_wait_since_ms, id LIMIT v.m) o";

/// `limits_wake` in one round trip: the keys of the released instances (as
/// `batch::keys_of` writes them: `group:NAME`, `host:` and the host in ASCII lowercase
/// without IPv6 brackets), those with a limit, and the jobs of each one's longest-waiting
/// records whose job can run, as many as slots were freed: due now and fetched first
/// (priority 1; waiting jobs are pushed at 0, so a large waiting backlog does not crowd
/// out other sessions' jobs). `SKIP LOCKED`: a job a worker is fetching, or another
/// finish is waking, is left alone, and two finishes never wait on each other's jobs.
const WAKE: &str = "WITH freed AS (SELECT x.k, COUNT(*) AS n FROM instances i \
     CROSS JOIN LATERAL (VALUES ('group:' || i.group_name), \
     ('host:' || lower(ltrim(rtrim(i.host, ']'), '[') COLLATE \"C\"))) AS x(k) \
     WHERE i.id = ANY($1) AND x.k IS NOT NULL GROUP BY x.k), \
     limited AS (SELECT f.k, f.n FROM freed f JOIN sync_limits l ON l.key = f.k), \
     owed AS (SELECT w.job_id FROM limited v CROSS JOIN LATERAL \
     (SELECT job_id FROM sync_instance_records WHERE limit_wait_key = v.k \
     AND status = 'pending' ORDER BY limit_wait_since_ms, id LIMIT v.n) w) \
     UPDATE apalis.jobs SET run_at = now(), priority = 1 WHERE id IN (SELECT j.id FROM owed o \
     JOIN apalis.jobs j ON j.id = o.job_id WHERE j.status = 'Pending' \
     FOR UPDATE OF j SKIP LOCKED)";

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

    async fn limit_owed(
        &mut self,
        keys: &[(String, i64)],
        owed_by_ms: i64,
        seen_after_ms: i64,
    ) -> Result<HashMap<String, Vec<(i64, i64)>>> {
        let (k, m): (Vec<&str>, Vec<i64>) = keys.iter().map(|(k, m)| (k.as_str(), *m)).unzip();
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(OWED)
            .bind(&k)
            .bind(&m)
            .bind(owed_by_ms)
            .bind(seen_after_ms)
            .fetch_all(&mut *self.0)
            .await?;
        let mut out: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
        for (key, id, since) in rows {
            out.entry(key).or_default().push((id, since));
        }
        // Oldest first, whatever order the join returned the keys' rows in.
        for list in out.values_mut() {
            list.sort_unstable_by_key(|&(id, since)| (since, id));
        }
        Ok(out)
    }

    async fn records_limit_wait(&mut self, rows: &[LimitWait]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = rows.iter().map(|w| w.record_id).collect();
        let keys: Vec<&str> = rows.iter().map(|w| w.key.as_str()).collect();
        let now: Vec<i64> = rows.iter().map(|w| w.now_ms).collect();
        sqlx::query(
            "UPDATE sync_instance_records r SET limit_wait_key = v.k, \
             limit_wait_since_ms = COALESCE(r.limit_wait_since_ms, v.n), limit_seen_ms = v.n \
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[]) AS v(i, k, n) WHERE r.id = v.i",
        )
        .bind(&ids)
        .bind(&keys)
        .bind(&now)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn limits_wake(&mut self, instance_ids: &[i64]) -> Result<()> {
        // Most fleets set no limit: one look at a small table, and no more.
        let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM sync_limits LIMIT 1")
            .fetch_optional(&mut *self.0)
            .await?;
        if any.is_none() {
            return Ok(());
        }
        sqlx::query(WAKE)
            .bind(instance_ids)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }
}
