//! The inventory: instances, their stored accounts, and the account change history's
//! reads (its writes are in the finish transaction, `store/batch/`).

use super::access::InTx;
use super::{Backend, SqlStore, is_unique_violation, rows};
use crate::model::{AccountChange, AuditTarget, ChangeKind, Instance, NewInstance, StoredAccount};
use crate::store::sql::{Arg, Q};
use crate::store::{ChangeFilter, Result, StoreError, parse_status, parse_uuid};

fn conflict(name: &str) -> impl FnOnce(StoreError) -> StoreError + '_ {
    move |e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("an instance named '{name}' already exists"))
        } else {
            e
        }
    }
}

async fn insert_one<D: Backend>(
    tx: &mut sqlx::Transaction<'static, D>,
    n: &NewInstance,
) -> Result<i64> {
    let q = Q::new(
        "INSERT INTO instances (name, kind, host, port, username, database, password_env, \
         options, active, password_file, group_name) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(&n.name)
    .bind(n.kind.as_str())
    .bind(&n.host)
    .bind(n.port)
    .bind(&n.username)
    .bind(&n.database)
    .bind(&n.password_env)
    .bind(Arg::Json(n.options.clone()))
    .bind(n.active)
    .bind(&n.password_file)
    .bind(&n.group);
    let row = D::one(tx, q).await.map_err(conflict(&n.name))?;
    D::get(&row, "id")
}

pub(super) async fn insert<D: Backend>(s: &SqlStore<D>, new: &NewInstance) -> Result<Instance> {
    let mut tx = s.begin().await?;
    let id = insert_one(&mut tx, new).await?;
    let q = Q::new("SELECT * FROM instances WHERE id = $1").bind(id);
    let row = D::one(&mut tx, q).await?;
    let audit = InTx::new(vec![AuditTarget::named("instance", id, &new.name)]);
    audit.write::<D>(&mut tx).await?;
    tx.commit().await?;
    audit.committed();
    rows::instance::<D>(&row)
}

pub(super) async fn insert_many<D: Backend>(s: &SqlStore<D>, new: &[NewInstance]) -> Result<u64> {
    if new.is_empty() {
        // No change, so no audit row claiming one.
        return Ok(0);
    }
    let mut tx = s.begin().await?;
    let mut targets = Vec::with_capacity(new.len());
    for n in new {
        let id = insert_one(&mut tx, n).await?;
        targets.push(AuditTarget::named("instance", id, &n.name));
    }
    let audit = InTx::new(targets);
    audit.write::<D>(&mut tx).await?;
    tx.commit().await?;
    audit.committed();
    Ok(new.len() as u64)
}

pub(super) async fn list<D: Backend>(s: &SqlStore<D>) -> Result<Vec<Instance>> {
    let rows = D::all(&s.pool, Q::new("SELECT * FROM instances ORDER BY name")).await?;
    rows.iter().map(rows::instance::<D>).collect()
}

pub(super) async fn get<D: Backend>(s: &SqlStore<D>, id: i64) -> Result<Option<Instance>> {
    let q = Q::new("SELECT * FROM instances WHERE id = $1").bind(id);
    let row = D::opt(&s.pool, q).await?;
    row.as_ref().map(rows::instance::<D>).transpose()
}

pub(super) async fn get_by_name<D: Backend>(
    s: &SqlStore<D>,
    name: &str,
) -> Result<Option<Instance>> {
    let q = Q::new("SELECT * FROM instances WHERE name = $1").bind(name);
    let row = D::opt(&s.pool, q).await?;
    row.as_ref().map(rows::instance::<D>).transpose()
}

pub(super) async fn delete<D: Backend>(s: &SqlStore<D>, id: i64) -> Result<bool> {
    let mut tx = s.begin().await?;
    // The instance row first, then its accounts: the order a finish takes them in
    // (it share-locks the instance), so a delete racing a finish cannot deadlock.
    let q = Q::new("DELETE FROM instances WHERE id = $1 RETURNING name").bind(id);
    let Some(gone) = D::opt(&mut tx, q).await? else {
        return Ok(false);
    };
    let q = Q::new("DELETE FROM instance_accounts WHERE instance_id = $1").bind(id);
    D::run(&mut tx, q).await?;
    // Nothing is wrong with an instance that is gone: its violations end with it.
    super::events::resolve_where(
        &mut tx,
        "instance_id = $1",
        Some(id),
        "the instance was deleted",
    )
    .await?;
    let name: String = D::get(&gone, "name")?;
    let audit = InTx::new(vec![AuditTarget::named("instance", id, &name)]);
    audit.write::<D>(&mut tx).await?;
    tx.commit().await?;
    audit.committed();
    Ok(true)
}

pub(super) async fn update<D: Backend>(
    s: &SqlStore<D>,
    id: i64,
    new: &NewInstance,
) -> Result<Instance> {
    let mut tx = s.begin().await?;
    let q = Q::new(format!(
        "UPDATE instances SET name = $2, kind = $3, host = $4, port = $5, username = $6, \
         database = $7, password_env = $8, options = $9, active = $10, password_file = $11, \
         group_name = $12, updated_at = {} WHERE id = $1 RETURNING *",
        D::SQL.now
    ))
    .bind(id)
    .bind(&new.name)
    .bind(new.kind.as_str())
    .bind(&new.host)
    .bind(new.port)
    .bind(&new.username)
    .bind(&new.database)
    .bind(&new.password_env)
    .bind(Arg::Json(new.options.clone()))
    .bind(new.active)
    .bind(&new.password_file)
    .bind(&new.group);
    let row = D::opt(&mut tx, q)
        .await
        .map_err(conflict(&new.name))?
        .ok_or_else(|| StoreError::NotFound(format!("unknown instance {id}")))?;
    let audit = InTx::new(vec![AuditTarget::named("instance", id, &new.name)]);
    audit.write::<D>(&mut tx).await?;
    tx.commit().await?;
    audit.committed();
    rows::instance::<D>(&row)
}

pub(super) async fn accounts<D: Backend>(
    s: &SqlStore<D>,
    instance_id: i64,
    include_deleted: bool,
) -> Result<Vec<StoredAccount>> {
    let q = Q::new(
        "SELECT username, host, attributes, privileges, first_seen_at, last_seen_at, deleted_at \
         FROM instance_accounts WHERE instance_id = $1 AND ($2 OR deleted_at IS NULL) \
         ORDER BY username, host",
    )
    .bind(instance_id)
    .bind(include_deleted);
    D::all(&s.pool, q)
        .await?
        .iter()
        .map(|r| {
            Ok(StoredAccount {
                username: D::get(r, "username")?,
                host: D::get(r, "host")?,
                attributes: D::get(r, "attributes")?,
                privileges: D::get(r, "privileges")?,
                first_seen_at: D::get(r, "first_seen_at")?,
                last_seen_at: D::get(r, "last_seen_at")?,
                deleted_at: D::get(r, "deleted_at")?,
            })
        })
        .collect()
}

pub(super) async fn changes<D: Backend>(
    s: &SqlStore<D>,
    f: &ChangeFilter,
) -> Result<Vec<AccountChange>> {
    // Each filter is "NULL or equal", so one statement (and one plan) serves them all.
    let q = Q::new(format!(
        "SELECT id, instance_id, instance_name, session_id, record_id, username, host, kind, \
         detail, flags, sensitive, changed_at FROM account_changes \
         WHERE (CAST($1 AS TEXT) IS NULL OR instance_name = $1) \
         AND (CAST($2 AS {}) IS NULL OR changed_at >= $2) \
         AND (CAST($3 AS TEXT) IS NULL OR kind = $3) AND (NOT $4 OR sensitive) \
         AND (CAST($5 AS BIGINT) IS NULL OR id < $5) AND (NOT $7 OR kind <> 'baseline') \
         ORDER BY id DESC LIMIT $6",
        D::SQL.time_type
    ))
    .bind(&f.instance)
    .bind(f.since)
    .bind(f.kind.map(ChangeKind::as_str))
    .bind(f.sensitive_only)
    .bind(f.after)
    .bind(f.limit)
    .bind(f.without_baselines);
    D::all(&s.pool, q).await?.iter().map(change::<D>).collect()
}

/// A history row, as `changes` and the follower read it.
pub(super) fn change<D: Backend>(r: &D::Row) -> Result<AccountChange> {
    let flags: serde_json::Value = D::get(r, "flags")?;
    Ok(AccountChange {
        id: D::get(r, "id")?,
        instance_id: D::get(r, "instance_id")?,
        instance_name: D::get(r, "instance_name")?,
        // Text in both databases: the history outlives its sessions.
        session_id: parse_uuid(&D::get::<String>(r, "session_id")?)?,
        record_id: D::get(r, "record_id")?,
        username: D::get(r, "username")?,
        host: D::get(r, "host")?,
        kind: parse_status(D::get(r, "kind")?)?,
        detail: D::get(r, "detail")?,
        flags: serde_json::from_value(flags).unwrap_or_default(),
        sensitive: D::get(r, "sensitive")?,
        changed_at: D::get(r, "changed_at")?,
    })
}
