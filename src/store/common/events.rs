//! The outbox off the pipeline: events written by a change's own transaction (an
//! instance deleted, a policy's sweep), with their deliveries. One statement per event:
//! here events are few; the pipeline's finishes write theirs set-based (`DriftOps`).

use serde_json::json;

use super::{Backend, SqlStore};
use crate::model::{EventType, Finding};
use crate::store::Result;
use crate::store::batch::NewEvent;
use crate::store::sql::{Arg, Q};

pub(super) async fn insert<D: Backend>(
    tx: &mut sqlx::Transaction<'static, D>,
    events: &[NewEvent],
) -> Result<()> {
    for e in events {
        let q = Q::new(
            "INSERT INTO events (event_id, type, instance_name, data) VALUES ($1, $2, $3, $4)",
        )
        .bind(e.event_id.as_str())
        .bind(e.kind.as_str())
        .bind(&e.instance_name)
        .bind(Arg::Json(e.data.clone()));
        D::run(&mut *tx, q).await?;
        let q = Q::new(
            "INSERT INTO webhook_deliveries (webhook_id, webhook, event_id) SELECT id, name, $1 FROM webhooks \
             WHERE events LIKE $2",
        )
        .bind(e.event_id.as_str())
        .bind(format!("%,{},%", e.kind.as_str()));
        D::run(&mut *tx, q).await?;
    }
    Ok(())
}

/// Resolves the open violations `condition` selects (on `policy_violations`, with `$1`
/// bound to `arg` if there is one), with an event each saying `why`.
pub(super) async fn resolve_where<D: Backend>(
    tx: &mut sqlx::Transaction<'static, D>,
    condition: &str,
    arg: Option<i64>,
    why: &str,
) -> Result<u64> {
    let q = Q::new(format!(
        "UPDATE policy_violations SET resolved_at = {} WHERE resolved_at IS NULL AND {condition} \
         RETURNING instance_name, rule, account, what, reason",
        D::SQL.now
    ));
    let q = match arg {
        Some(a) => q.bind(a),
        None => q,
    };
    let rows = D::all(&mut *tx, q).await?;
    let mut events = vec![];
    for r in &rows {
        let f = Finding {
            instance: D::get(r, "instance_name")?,
            rule: D::get(r, "rule")?,
            account: D::get(r, "account")?,
            what: D::get(r, "what")?,
            reason: D::get(r, "reason")?,
        };
        let mut e = crate::store::batch::drift::violation_event(EventType::ViolationResolved, &f);
        e.data["resolved_because"] = json!(why);
        events.push(e);
    }
    insert(tx, &events).await?;
    Ok(rows.len() as u64)
}

/// Resolves the open violations of instances that no longer exist (deleted before
/// their delete resolved them, or by hand).
pub(super) async fn resolve_orphans<D: Backend>(s: &SqlStore<D>) -> Result<u64> {
    let mut tx = s.begin().await?;
    let n = resolve_where(
        &mut tx,
        "instance_id NOT IN (SELECT id FROM instances)",
        None,
        "the instance was deleted",
    )
    .await?;
    tx.commit().await?;
    Ok(n)
}
