//! Administration: the schema's state, cleanup, the scheduler's cron slots and the
//! console's stored secrets.

use chrono::{DateTime, Utc};

use super::{Backend, SLOT_CLAIM, SqlStore, count, sessions};
use crate::model::{AuditTarget, CleanupCounts, SyncType};
use crate::queue;
use crate::store::sql::{Arg, Q};
use crate::store::{Result, SlotFired, StoreError, pending};

pub(super) async fn migrations_pending<D: Backend>(s: &SqlStore<D>) -> Result<Option<usize>> {
    let q = Q::new("SELECT version FROM _syncpool_migrations WHERE success");
    let applied = match D::all(&s.pool, q).await {
        Ok(rows) => rows
            .iter()
            .map(|r| D::get(r, "version"))
            .collect::<Result<Vec<i64>>>()?,
        Err(StoreError::Database(e)) if D::is_undefined_table(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(pending(&D::migrator(), &applied)))
}

pub(super) async fn ready<D: Backend>(s: &SqlStore<D>) -> Result<bool> {
    if count(&s.pool, Q::new(D::SQL.migrations_table)).await? == 0 {
        return Ok(false);
    }
    let q = Q::new("SELECT COUNT(*) AS n FROM _syncpool_migrations WHERE success");
    let n = count(&s.pool, q).await?;
    Ok(n as usize >= D::migrator().iter().count())
}

/// Runs `q` in its own transaction until it deletes fewer than `batch` rows: small
/// batches, one short transaction each, so cleanup never holds a lock long enough to
/// stall workers (on SQLite, the write lock).
async fn delete_in_batches<D: Backend>(s: &SqlStore<D>, q: Q, batch: u64) -> Result<u64> {
    let mut total = 0;
    loop {
        let mut tx = s.begin().await?;
        let n = D::run(&mut tx, q.clone()).await?;
        tx.commit().await?;
        total += n;
        if n < batch {
            return Ok(total);
        }
    }
}

pub(super) async fn cleanup<D: Backend>(
    s: &SqlStore<D>,
    days: i64,
    history_days: i64,
    audit_days: i64,
) -> Result<CleanupCounts> {
    let cutoff = Utc::now() - chrono::Duration::days(days);
    let mut counts = CleanupCounts::default();
    // Cleanup is many short transactions by design (below), so its audit row cannot
    // share one with all of them: it is written first, in its own, so that nothing is
    // deleted unrecorded even if the process dies halfway, and it says what was deleted
    // at the end. Audit rows from it on are never deleted by it.
    let audit =
        super::access::InTx::new(vec![AuditTarget::new("cleanup", "all")]).with_detail(format!(
            "started: keeping {days} days of sessions, {history_days} of account history, \
             {audit_days} of audit trail"
        ));
    let mut own_row = None;
    if audit.row().is_some() {
        let mut tx = s.begin().await?;
        own_row = audit.write_id::<D>(&mut tx).await?;
        tx.commit().await?;
        audit.committed();
    }
    loop {
        let mut tx = s.begin().await?;
        let q = Q::new(
            "SELECT id FROM sync_sessions WHERE status IN ('completed', 'completed_with_errors', \
             'failed', 'cancelled') AND completed_at < $1 ORDER BY id LIMIT 100",
        )
        .bind(cutoff);
        let ids = D::all(&mut tx, q)
            .await?
            .iter()
            .map(|r| D::get(r, "id"))
            .collect::<Result<Vec<i64>>>()?;
        if ids.is_empty() {
            break;
        }
        let q = Q::new(format!(
            "DELETE FROM sync_instance_records WHERE {}",
            D::in_list("session_id", 1)
        ));
        counts.records_deleted += D::run(&mut tx, q.bind(Arg::Ids(ids.clone()))).await?;
        let q = Q::new(format!(
            "DELETE FROM sync_sessions WHERE {}",
            D::in_list("id", 1)
        ));
        counts.sessions_deleted += D::run(&mut tx, q.bind(Arg::Ids(ids))).await?;
        tx.commit().await?;
    }
    let q = Q::new(D::SQL.jobs_delete_done)
        .bind(queue::QUEUE)
        .bind(Arg::QueueTime(cutoff));
    counts.jobs_deleted = delete_in_batches(s, q, 1000).await?;
    let q = Q::new(format!(
        "DELETE FROM sync_locks WHERE id IN (SELECT id FROM sync_locks WHERE expires_at <= {} \
         LIMIT 1000)",
        D::SQL.now
    ));
    counts.locks_deleted = delete_in_batches(s, q, 1000).await?;
    let q = Q::new(
        "DELETE FROM account_changes WHERE id IN \
         (SELECT id FROM account_changes WHERE changed_at < $1 LIMIT 1000)",
    )
    .bind(Utc::now() - chrono::Duration::days(history_days));
    counts.changes_deleted = delete_in_batches(s, q, 1000).await?;
    outbox_cleanup(s, history_days).await?;

    // Fired cron slots older than the retention only prove a slot fired once.
    let mut tx = s.begin().await?;
    // Slots are kept a day at least, whatever the retention: a replica whose clock
    // lags could otherwise claim a just-deleted slot again and fire it twice.
    let q = Q::new("DELETE FROM schedule_slots WHERE created_at < $1")
        .bind(Utc::now() - chrono::Duration::days(days.max(1)));
    D::run(&mut tx, q).await?;
    // A revoked nonce past its cookie's expiry is refused by the expiry alone.
    let q = Q::new(format!(
        "DELETE FROM console_revoked_nonces WHERE expires_at < {}",
        D::SQL.now
    ));
    D::run(&mut tx, q).await?;
    tx.commit().await?;
    let q = Q::new(
        "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < $1 \
         AND (CAST($2 AS BIGINT) IS NULL OR id < $2) LIMIT 1000)",
    )
    .bind(Utc::now() - chrono::Duration::days(audit_days))
    .bind(own_row);
    counts.audit_deleted = delete_in_batches(s, q, 1000).await?;
    if let Some(id) = own_row {
        let mut tx = s.begin().await?;
        let q = Q::new("UPDATE audit_log SET detail = $2 WHERE id = $1")
            .bind(id)
            .bind(format!("{counts:?}"));
        D::run(&mut tx, q).await?;
        tx.commit().await?;
    }
    Ok(counts)
}

pub(super) async fn schedule_fire<D: Backend>(
    s: &SqlStore<D>,
    name: &str,
    slot: DateTime<Utc>,
) -> Result<SlotFired> {
    const SKIPPED: &str = "UPDATE schedule_slots SET skipped = TRUE WHERE name = $1 AND slot = $2";
    // Claim, check and start in one transaction: a crash between them can neither
    // lose the slot (claimed, no session) nor start a session no slot accounts for.
    let mut tx = s.begin().await?;
    if D::run(&mut tx, Q::new(SLOT_CLAIM).bind(name).bind(slot)).await? != 1 {
        return Ok(SlotFired::Taken);
    }
    let q = Q::new(
        "SELECT COUNT(*) AS n FROM sync_sessions WHERE sync_type = 'scheduled' \
         AND status IN ('pending', 'running')",
    );
    let fired = if count(&mut tx, q).await? > 0 {
        D::run(&mut tx, Q::new(SKIPPED).bind(name).bind(slot)).await?;
        SlotFired::Skipped
    } else {
        let created = match sessions::insert(&mut tx, SyncType::Scheduled, None).await {
            Err(StoreError::NoInstances) => {
                D::run(&mut tx, Q::new(SKIPPED).bind(name).bind(slot)).await?;
                tx.commit().await?;
                return Ok(SlotFired::NothingToSync);
            }
            other => other?,
        };
        let q = Q::new("UPDATE schedule_slots SET session_id = $3 WHERE name = $1 AND slot = $2")
            .bind(name)
            .bind(slot)
            .bind(created.session_id);
        D::run(&mut tx, q).await?;
        SlotFired::Started(created)
    };
    tx.commit().await?;
    Ok(fired)
}

pub(super) async fn secret_get_or_insert<D: Backend>(
    s: &SqlStore<D>,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>> {
    // Two processes starting at once both insert; the primary key keeps the first,
    // and both read that one.
    let q = Q::new(
        "INSERT INTO console_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(Arg::Bytes(candidate.to_vec()));
    let mut tx = s.begin().await?;
    D::run(&mut tx, q).await?;
    tx.commit().await?;
    let q = Q::new("SELECT secret FROM console_secrets WHERE name = $1").bind(name);
    D::get(&D::one(&s.pool, q).await?, "secret")
}

/// The outbox and drift are history too: settled deliveries, events no pending delivery
/// still needs, resolved violations, past the history's retention.
async fn outbox_cleanup<D: Backend>(s: &SqlStore<D>, history_days: i64) -> Result<()> {
    let history_cutoff = Utc::now() - chrono::Duration::days(history_days);
    for sql in [
        "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
         WHERE state <> 'pending' AND created_at < $1 LIMIT 1000)",
        "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.occurred_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.event_id \
         AND d.state = 'pending') LIMIT 1000)",
        "DELETE FROM policy_violations WHERE id IN (SELECT id FROM policy_violations \
         WHERE resolved_at < $1 LIMIT 1000)",
    ] {
        delete_in_batches(s, Q::new(sql).bind(history_cutoff), 1000).await?;
    }
    Ok(())
}
