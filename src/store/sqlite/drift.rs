//! [`DriftOps`] on SQLite, inside the batch's transaction on the writer thread.

use async_trait::async_trait;

use super::now;
use super::pipeline::{SqliteOps, arr};
use crate::store::Result;
use crate::store::batch::{DriftOps, NewEvent, OpenViolation, ViolationWrites};

#[async_trait]
impl DriftOps for SqliteOps<'_> {
    async fn policy_current(&mut self) -> Result<Option<(i64, String)>> {
        let rows = self.rows(
            "SELECT version, body FROM policies ORDER BY version DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.into_iter().next())
    }

    async fn violations_open(&mut self, ids: &[i64]) -> Result<Vec<OpenViolation>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        self.rows(
            "SELECT id, instance_id, rule, account, what, reason FROM policy_violations \
             WHERE instance_id IN (SELECT value FROM json_each(?1)) AND resolved_at IS NULL",
            [arr(ids)],
            |r| {
                Ok(OpenViolation {
                    id: r.get(0)?,
                    instance_id: r.get(1)?,
                    rule: r.get(2)?,
                    account: r.get(3)?,
                    what: r.get(4)?,
                    reason: r.get(5)?,
                })
            },
        )
    }

    async fn violations_write(&mut self, w: &ViolationWrites) -> Result<()> {
        if !w.opened.is_empty() {
            let rows: Vec<_> = w
                .opened
                .iter()
                .map(|v| {
                    let f = &v.finding;
                    (
                        v.instance_id,
                        &f.instance,
                        &f.rule,
                        &f.account,
                        &f.what,
                        &f.reason,
                    )
                })
                .collect();
            self.exec(
                concat!(
                    "INSERT INTO policy_violations (instance_id, instance_name, rule, account, what, ",
                    "reason, opened_at, last_seen_at) SELECT value->>0, value->>1, value->>2, ",
                    "value->>3, value->>4, value->>5, ",
                    now!(),
                    ", ",
                    now!(),
                    " FROM json_each(?1)"
                ),
                [arr(&rows)],
            )?;
        }
        // The name as it is now: a renamed instance's open violations follow it.
        for (ids, column) in [(&w.seen, "last_seen_at"), (&w.resolved, "resolved_at")] {
            if ids.is_empty() {
                continue;
            }
            let sql = format!(
                "UPDATE policy_violations SET {column} = {}, instance_name = COALESCE(\
                 (SELECT name FROM instances WHERE id = instance_id), instance_name) \
                 WHERE id IN (SELECT value FROM json_each(?1))",
                now!()
            );
            self.exec(&sql, [arr(ids)])?;
        }
        Ok(())
    }

    async fn events_insert(&mut self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = events
            .iter()
            .map(|e| (&e.event_id, e.kind.as_str(), &e.instance_name, &e.data))
            .collect();
        self.exec(
            concat!(
                "INSERT INTO events (event_id, type, instance_name, occurred_at, data) ",
                "SELECT value->>0, value->>1, value->>2, ",
                now!(),
                ", value->3 FROM json_each(?1)"
            ),
            [arr(&rows)],
        )?;
        // The outbox's deliveries, in the same transaction: one per webhook taking the type.
        self.exec(
            "INSERT INTO webhook_deliveries (webhook_id, webhook, event_id) SELECT w.id, w.name, v.value->>0 \
             FROM json_each(?1) AS v JOIN webhooks w ON w.events LIKE '%,' || (v.value->>1) || ',%'",
            [arr(&rows)],
        )?;
        Ok(())
    }

    async fn policy_insert(&mut self, body: &str, source: &str, by: &str) -> Result<i64> {
        self.exec(
            "INSERT INTO policies (body, source, created_by) VALUES (?1, ?2, ?3)",
            [body, source, by],
        )?;
        Ok(self.0.last_insert_rowid())
    }

    async fn instance_ids_after(&mut self, after: i64, limit: i64) -> Result<Vec<i64>> {
        self.rows(
            "SELECT id FROM instances WHERE id > ?1 ORDER BY id LIMIT ?2",
            [after, limit],
            |r| Ok(r.get(0)?),
        )
    }

    async fn instances_lock(&mut self, _ids: &[i64]) -> Result<()> {
        Ok(())
    }
}
