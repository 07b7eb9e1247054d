//! [`DriftOps`] on PostgreSQL, inside the batch's transaction.

use async_trait::async_trait;
use sqlx::Row;

use super::now;
use super::pipeline::PgOps;
use crate::store::Result;
use crate::store::batch::{DriftOps, NewEvent, OpenViolation, ViolationWrites};

#[async_trait]
impl DriftOps for PgOps<'_> {
    async fn policy_current(&mut self) -> Result<Option<(i64, String)>> {
        let row =
            sqlx::query("SELECT version, body::text FROM policies ORDER BY version DESC LIMIT 1")
                .fetch_optional(&mut *self.0)
                .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    async fn violations_open(&mut self, ids: &[i64]) -> Result<Vec<OpenViolation>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let rows = sqlx::query(
            "SELECT id, instance_id, rule, account, what, reason FROM policy_violations \
             WHERE instance_id = ANY($1) AND resolved_at IS NULL",
        )
        .bind(ids)
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OpenViolation {
                    id: r.try_get(0)?,
                    instance_id: r.try_get(1)?,
                    rule: r.try_get(2)?,
                    account: r.try_get(3)?,
                    what: r.try_get(4)?,
                    reason: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn violations_write(&mut self, w: &ViolationWrites) -> Result<()> {
        if !w.opened.is_empty() {
            let col = |f: fn(&crate::model::Finding) -> &str| -> Vec<&str> {
                w.opened.iter().map(|v| f(&v.finding)).collect()
            };
            let ids: Vec<i64> = w.opened.iter().map(|v| v.instance_id).collect();
            sqlx::query(concat!(
                "INSERT INTO policy_violations (instance_id, instance_name, rule, account, what, ",
                "reason, opened_at, last_seen_at) SELECT i, n, r, a, w, e, ",
                now!(),
                ", ",
                now!(),
                " FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], ",
                "$6::text[]) AS v(i, n, r, a, w, e)"
            ))
            .bind(&ids)
            .bind(col(|f| &f.instance))
            .bind(col(|f| &f.rule))
            .bind(col(|f| &f.account))
            .bind(col(|f| &f.what))
            .bind(col(|f| &f.reason))
            .execute(&mut *self.0)
            .await?;
        }
        for (ids, column) in [(&w.seen, "last_seen_at"), (&w.resolved, "resolved_at")] {
            if ids.is_empty() {
                continue;
            }
            // The name as it is now: a renamed instance's open violations follow it.
            let sql = format!(
                "UPDATE policy_violations SET {column} = {}, instance_name = COALESCE(\
                 (SELECT name FROM instances WHERE id = instance_id), instance_name) \
                 WHERE id = ANY($1)",
                now!()
            );
            // The column is one of two constants above, never input.
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(ids)
                .execute(&mut *self.0)
                .await?;
        }
        Ok(())
    }

    async fn events_insert(&mut self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let names: Vec<Option<&str>> = events.iter().map(|e| e.instance_name.as_deref()).collect();
        let data: Vec<&serde_json::Value> = events.iter().map(|e| &e.data).collect();
        sqlx::query(concat!(
            "INSERT INTO events (event_id, type, instance_name, occurred_at, data) ",
            "SELECT e, t, n, ",
            now!(),
            ", d FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[]) AS v(e, t, n, d)"
        ))
        .bind(&ids)
        .bind(&kinds)
        .bind(&names)
        .bind(&data)
        .execute(&mut *self.0)
        .await?;
        // The outbox's deliveries, in the same transaction: one per webhook taking the type.
        sqlx::query(
            "INSERT INTO webhook_deliveries (webhook_id, webhook, event_id) SELECT w.id, w.name, v.e \
             FROM UNNEST($1::text[], $2::text[]) AS v(e, t) \
             JOIN webhooks w ON w.events LIKE '%,' || v.t || ',%'",
        )
        .bind(&ids)
        .bind(&kinds)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn policy_insert(&mut self, body: &str, source: &str, by: &str) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO policies (body, source, created_by) VALUES ($1::jsonb, $2, $3) RETURNING version",
        )
        .bind(body)
        .bind(source)
        .bind(by)
        .fetch_one(&mut *self.0)
        .await?;
        Ok(row.try_get(0)?)
    }

    async fn instance_ids_after(&mut self, after: i64, limit: i64) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT id FROM instances WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn instances_lock(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT id FROM instances WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .fetch_all(&mut *self.0)
            .await?;
        Ok(())
    }
}
