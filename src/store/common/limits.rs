//! Concurrency limits: their rows, and where each stands (slots in use are live leases of
//! its instances; waiting jobs are pending records stamped as waiting for a slot).

use std::collections::HashMap;

use super::access::InTx;
use super::{Backend, SqlStore};
use crate::model::{AuditTarget, Limit};
use crate::store::Result;
use crate::store::batch::{keys_of, normal_key};
use crate::store::sql::Q;

pub(super) async fn set<D: Backend>(s: &SqlStore<D>, key: &str, max: i64) -> Result<Limit> {
    let key = normal_key(key);
    let key = key.as_str();
    let audit = InTx::new(vec![AuditTarget::new("limit", key)]);
    let mut tx = s.begin().await?;
    let q = Q::new(format!(
        "INSERT INTO sync_limits (key, max_concurrent) VALUES ($1, $2) ON CONFLICT (key) \
         DO UPDATE SET max_concurrent = excluded.max_concurrent, updated_at = {}",
        D::SQL.now
    ))
    .bind(key)
    .bind(max);
    D::run(&mut tx, q).await?;
    audit.write::<D>(&mut tx).await?;
    tx.commit().await?;
    audit.committed();
    let found = list(s).await?.into_iter().find(|l| l.key == key);
    Ok(found.unwrap_or(Limit {
        key: key.into(),
        max_concurrent: max,
        in_use: 0,
        waiting: 0,
    }))
}

pub(super) async fn remove<D: Backend>(s: &SqlStore<D>, key: &str) -> Result<bool> {
    let key = normal_key(key);
    let key = key.as_str();
    let audit = InTx::new(vec![AuditTarget::new("limit", key)]);
    let mut tx = s.begin().await?;
    let q = Q::new("DELETE FROM sync_limits WHERE key = $1").bind(key);
    if D::run(&mut tx, q).await? == 0 {
        return Ok(false);
    }
    audit.write::<D>(&mut tx).await?;
    tx.commit().await?;
    audit.committed();
    Ok(true)
}

pub(super) async fn list<D: Backend>(s: &SqlStore<D>) -> Result<Vec<Limit>> {
    let q = Q::new("SELECT key, max_concurrent FROM sync_limits ORDER BY key");
    let mut limits: Vec<Limit> = D::all(&s.pool, q)
        .await?
        .iter()
        .map(|r| {
            Ok(Limit {
                key: D::get(r, "key")?,
                max_concurrent: D::get(r, "max_concurrent")?,
                in_use: 0,
                waiting: 0,
            })
        })
        .collect::<Result<_>>()?;
    if limits.is_empty() {
        return Ok(limits);
    }
    // In use: counted by the keys each live lease (few) falls under, in one pass
    // whatever the number of limits.
    let at: HashMap<String, usize> = limits
        .iter()
        .enumerate()
        .map(|(i, l)| (l.key.clone(), i))
        .collect();
    let leased = Q::new(format!(
        "SELECT i.group_name, i.host, COUNT(*) AS n FROM sync_locks l \
         JOIN instances i ON i.id = l.instance_id WHERE l.expires_at > {} \
         GROUP BY i.group_name, i.host",
        D::SQL.now
    ));
    for r in D::all(&s.pool, leased).await? {
        let (g, h, n): (Option<String>, Option<String>, i64) = (
            D::get(&r, "group_name")?,
            D::get(&r, "host")?,
            D::get(&r, "n")?,
        );
        for k in keys_of(g.as_deref(), h.as_deref()) {
            if let Some(&i) = at.get(&k) {
                limits[i].in_use += n;
            }
        }
    }
    // Waiting: pending records a key refused (each under that one key).
    let waiting = Q::new(
        "SELECT limit_wait_key AS k, COUNT(*) AS n FROM sync_instance_records \
         WHERE limit_wait_key IS NOT NULL AND status = 'pending' GROUP BY limit_wait_key",
    );
    for r in D::all(&s.pool, waiting).await? {
        if let Some(&i) = at.get(&D::get::<String>(&r, "k")?) {
            limits[i].waiting += D::get::<i64>(&r, "n")?;
        }
    }
    Ok(limits)
}
