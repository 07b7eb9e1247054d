//! Webhooks and their deliveries, written once. A delivery is claimed (a short
//! transaction), sent with no transaction open, then settled (another), conditional on
//! the claim: a worker that lost its claim (frozen past the lease) changes nothing.

use async_trait::async_trait;

use super::access::InTx;
use super::{Backend, SqlStore, is_unique_violation};
use crate::model::{
    AccountChange, AttemptOutcome, AuditTarget, Delivery, DeliveryFilter, DeliveryJob,
    DeliveryState, Event, EventType, NewWebhook, Webhook,
};
use crate::store::sql::Q;
use crate::store::{Result, StoreError, WebhookStore, parse_status};

const COLS: &str = "name, url, secret_env, events, created_at";

/// How a delivery whose webhook was removed ends.
const GONE: &str =
    "state = 'dead', last_error = 'the webhook was removed', claimed_by = NULL, claimed_at = NULL";

/// `,a,b,`: matched by `LIKE '%,type,%'` in both databases.
fn events_text(events: &[EventType]) -> String {
    let names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
    format!(",{},", names.join(","))
}

fn webhook<D: Backend>(r: &D::Row) -> Result<Webhook> {
    let events: String = D::get(r, "events")?;
    Ok(Webhook {
        name: D::get(r, "name")?,
        url: D::get(r, "url")?,
        secret_env: D::get(r, "secret_env")?,
        events: events
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| parse_status(e.to_string()))
            .collect::<Result<_>>()?,
        created_at: D::get(r, "created_at")?,
    })
}

/// An event row, its place in the stream in column `seq`.
fn event<D: Backend>(r: &D::Row, seq: &str) -> Result<Event> {
    Ok(Event {
        seq: D::get(r, seq)?,
        id: D::get(r, "event_id")?,
        kind: parse_status(D::get(r, "type")?)?,
        timestamp: D::get(r, "occurred_at")?,
        instance: D::get(r, "instance_name")?,
        data: D::get(r, "data")?,
    })
}

#[async_trait]
impl<D: Backend> WebhookStore for SqlStore<D> {
    async fn webhook_add(&self, new: &NewWebhook) -> Result<Webhook> {
        let audit = InTx::new(vec![AuditTarget::new("webhook", &new.name)]);
        let mut tx = self.begin().await?;
        let q = Q::new(format!(
            "INSERT INTO webhooks (name, url, secret_env, events) VALUES ($1, $2, $3, $4) \
             RETURNING {COLS}"
        ))
        .bind(&new.name)
        .bind(&new.url)
        .bind(&new.secret_env)
        .bind(events_text(&new.events));
        let row = D::one(&mut tx, q)
            .await
            .map_err(|e| match is_unique_violation(&e) {
                true => StoreError::Conflict(format!("a webhook named '{}' exists", new.name)),
                false => e,
            })?;
        let w = webhook::<D>(&row)?;
        audit.write::<D>(&mut tx).await?;
        tx.commit().await?;
        audit.committed();
        Ok(w)
    }

    async fn webhook_list(&self) -> Result<Vec<Webhook>> {
        let q = Q::new(format!("SELECT {COLS} FROM webhooks ORDER BY name"));
        D::all(&self.pool, q)
            .await?
            .iter()
            .map(webhook::<D>)
            .collect()
    }

    async fn webhook_remove(&self, name: &str) -> Result<bool> {
        let audit = InTx::new(vec![AuditTarget::new("webhook", name)]);
        let mut tx = self.begin().await?;
        let q = Q::new("DELETE FROM webhooks WHERE name = $1 RETURNING id").bind(name);
        let Some(row) = D::opt(&mut tx, q).await? else {
            return Ok(false);
        };
        let id: i64 = D::get(&row, "id")?;
        // Those a transaction still open writes meanwhile die at the next claim.
        let q = Q::new(format!(
            "UPDATE webhook_deliveries SET {GONE} WHERE webhook_id = $1 AND state = 'pending'"
        ))
        .bind(id);
        D::run(&mut tx, q).await?;
        audit.write::<D>(&mut tx).await?;
        tx.commit().await?;
        audit.committed();
        Ok(true)
    }

    async fn deliveries_list(&self, f: &DeliveryFilter) -> Result<Vec<Delivery>> {
        let q = Q::new(
            "SELECT d.id, d.webhook, d.event_id, e.type, d.state, d.attempts, d.last_status, \
             d.last_error, d.created_at, d.last_attempt_at, d.delivered_at \
             FROM webhook_deliveries d JOIN events e ON e.event_id = d.event_id \
             WHERE (CAST($1 AS TEXT) IS NULL OR d.webhook = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR d.state = $2) \
             AND (CAST($3 AS BIGINT) IS NULL OR d.id < $3) ORDER BY d.id DESC LIMIT $4",
        )
        .bind(&f.webhook)
        .bind(f.state.map(|s| s.as_str().to_string()))
        .bind(f.before)
        .bind(f.limit);
        D::all(&self.pool, q)
            .await?
            .iter()
            .map(|r| {
                Ok(Delivery {
                    id: D::get(r, "id")?,
                    webhook: D::get(r, "webhook")?,
                    event_id: D::get(r, "event_id")?,
                    event_type: parse_status(D::get(r, "type")?)?,
                    state: parse_status(D::get(r, "state")?)?,
                    attempts: D::get(r, "attempts")?,
                    last_status: D::get(r, "last_status")?,
                    last_error: D::get(r, "last_error")?,
                    created_at: D::get(r, "created_at")?,
                    last_attempt_at: D::get(r, "last_attempt_at")?,
                    delivered_at: D::get(r, "delivered_at")?,
                })
            })
            .collect()
    }

    async fn delivery_redeliver(&self, id: i64) -> Result<bool> {
        let audit = InTx::new(vec![AuditTarget::new("delivery", id)]);
        let mut tx = self.begin().await?;
        // Only while its webhook exists (a removed webhook's deliveries have nowhere to
        // go) and no worker is sending it (it would be sent twice); a new window, from
        // the first backoff.
        let q = Q::new(format!(
            "UPDATE webhook_deliveries SET state = 'pending', created_at = {now}, attempts = 0, \
             last_attempt_at = NULL, backoff_s = 0, claimed_by = NULL, claimed_at = NULL \
             WHERE id = $1 AND webhook_id IN (SELECT id FROM webhooks) \
             AND (claimed_at IS NULL OR {since_claim} > claim_lease_s)",
            now = D::SQL.now,
            since_claim = D::seconds_since("claimed_at"),
        ))
        .bind(id);
        if D::run(&mut tx, q).await? == 0 {
            return Ok(false);
        }
        audit.write::<D>(&mut tx).await?;
        tx.commit().await?;
        audit.committed();
        Ok(true)
    }

    async fn deliveries_claim(
        &self,
        owner: &str,
        limit: i64,
        lease_s: f64,
    ) -> Result<Vec<DeliveryJob>> {
        let mut tx = self.begin().await?;
        // A removed webhook's deliveries that a transaction open at its removal wrote.
        let q = Q::new(format!(
            "UPDATE webhook_deliveries SET {GONE} WHERE state = 'pending' \
             AND webhook_id NOT IN (SELECT id FROM webhooks)"
        ));
        D::run(&mut tx, q).await?;
        // Each claim carries its claimer's lease: a worker with a short timeout never
        // takes over one a worker with a long timeout is still sending.
        let q = Q::new(format!(
            "UPDATE webhook_deliveries SET claimed_by = $1, claimed_at = {now}, claim_lease_s = $3 \
             WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' \
             AND (last_attempt_at IS NULL OR {since_attempt} >= backoff_s) \
             AND (claimed_at IS NULL OR {since_claim} > claim_lease_s) ORDER BY id LIMIT $2{skip})",
            now = D::SQL.now,
            since_attempt = D::seconds_since("last_attempt_at"),
            since_claim = D::seconds_since("claimed_at"),
            skip = D::SQL.skip_locked,
        ))
        .bind(owner)
        .bind(limit)
        .bind(lease_s);
        if D::run(&mut tx, q).await? == 0 {
            tx.commit().await?;
            return Ok(vec![]);
        }
        tx.commit().await?;
        let q = Q::new(
            "SELECT d.id AS delivery_id, d.attempts, w.name, w.url, w.secret_env, w.events, \
             w.created_at, e.id AS seq, e.event_id, e.type, e.occurred_at, e.instance_name, e.data \
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             JOIN events e ON e.event_id = d.event_id \
             WHERE d.claimed_by = $1 AND d.state = 'pending' ORDER BY d.id",
        )
        .bind(owner);
        D::all(&self.pool, q)
            .await?
            .iter()
            .map(|r| {
                Ok(DeliveryJob {
                    id: D::get(r, "delivery_id")?,
                    attempts: D::get(r, "attempts")?,
                    webhook: webhook::<D>(r)?,
                    event: event::<D>(r, "seq")?,
                })
            })
            .collect()
    }

    async fn delivery_settle(
        &self,
        id: i64,
        owner: &str,
        outcome: &AttemptOutcome,
        retry_for_s: f64,
    ) -> Result<Option<DeliveryState>> {
        let now = D::SQL.now;
        let q = match outcome {
            AttemptOutcome::Delivered { status } => Q::new(format!(
                "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1, \
                 last_attempt_at = {now}, delivered_at = {now}, last_status = $3, \
                 last_error = NULL, claimed_by = NULL, claimed_at = NULL \
                 WHERE id = $1 AND claimed_by = $2 AND state = 'pending' RETURNING state"
            ))
            .bind(id)
            .bind(owner)
            .bind(i64::from(*status)),
            AttemptOutcome::Failed {
                status,
                error,
                backoff_s,
            } => Q::new(format!(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = {now}, \
                 backoff_s = $3, last_status = $4, last_error = $5, claimed_by = NULL, \
                 claimed_at = NULL, state = CASE WHEN {age} + $3 > $6 THEN 'dead' ELSE 'pending' END \
                 WHERE id = $1 AND claimed_by = $2 AND state = 'pending' RETURNING state",
                age = D::seconds_since("created_at"),
            ))
            .bind(id)
            .bind(owner)
            .bind(*backoff_s)
            .bind(status.map(i64::from))
            .bind(error.as_str())
            .bind(retry_for_s),
        };
        let mut tx = self.begin().await?;
        let row = D::opt(&mut tx, q).await?;
        tx.commit().await?;
        row.map(|r| parse_status(D::get(&r, "state")?)).transpose()
    }

    async fn deliveries_by_state(&self) -> Result<Vec<(DeliveryState, i64)>> {
        let q = Q::new("SELECT state, COUNT(*) AS n FROM webhook_deliveries GROUP BY state");
        let mut out: Vec<(DeliveryState, i64)> =
            DeliveryState::ALL.iter().map(|&s| (s, 0)).collect();
        for r in D::all(&self.pool, q).await? {
            let state: DeliveryState = parse_status(D::get(&r, "state")?)?;
            if let Some(slot) = out.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = D::get(&r, "n")?;
            }
        }
        Ok(out)
    }

    async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<Event>> {
        let sql = D::SQL.follow_after.replace("{t}", "events").replace(
            "{cols}",
            "id, event_id, type, occurred_at, instance_name, data",
        );
        let q = Q::new(sql).bind(after).bind(limit);
        D::all(&self.pool, q)
            .await?
            .iter()
            .map(|r| event::<D>(r, "id"))
            .collect()
    }

    async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<AccountChange>> {
        let sql = D::SQL
            .follow_after
            .replace("{t}", "account_changes")
            .replace(
                "{cols}",
                "id, instance_id, instance_name, session_id, record_id, username, host, kind, \
             detail, flags, sensitive, changed_at",
            );
        let q = Q::new(sql).bind(after).bind(limit);
        D::all(&self.pool, q)
            .await?
            .iter()
            .map(super::inventory::change::<D>)
            .collect()
    }

    async fn stream_heads(&self) -> Result<(i64, i64)> {
        let head = |t: &str| Q::new(D::SQL.follow_head.replace("{t}", t));
        let e = super::count::<D>(&self.pool, head("events")).await?;
        let c = super::count::<D>(&self.pool, head("account_changes")).await?;
        Ok((e, c))
    }
}
