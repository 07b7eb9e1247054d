//! API tokens and the audit trail. A token is looked up by its hash on every request,
//! so a revocation holds at once on every replica; an audit row is written by the
//! changing method itself, in its transaction ([`InTx`]).

use std::sync::Arc;

use super::{Backend, SqlStore, count, is_unique_violation};
use crate::audit::Scope;
use crate::model::{
    AuditEvent, AuditFilter, AuditTarget, NewAuditEvent, Principal, Role, TokenInfo,
};
use crate::store::sql::{Arg, Ex, Fetch, Q};
use crate::store::{Result, StoreError, parse_status};

const TOKEN_COLS: &str = "name, role, created_at, revoked_at";

fn token<D: Fetch>(row: &D::Row) -> Result<TokenInfo> {
    Ok(TokenInfo {
        name: D::get(row, "name")?,
        role: parse_status(D::get(row, "role")?)?,
        created_at: D::get(row, "created_at")?,
        revoked_at: D::get(row, "revoked_at")?,
    })
}

pub(super) async fn token_insert<D: Backend>(
    s: &SqlStore<D>,
    name: &str,
    role: Role,
    token_hash: &str,
) -> Result<TokenInfo> {
    let audit = InTx::new(vec![AuditTarget::new("token", name)]);
    let mut tx = s.begin().await?;
    // A revoked token's name may be given to a new one; a working token's may not.
    let q = Q::new("DELETE FROM api_tokens WHERE name = $1 AND revoked_at IS NOT NULL").bind(name);
    D::run(&mut tx, q).await?;
    let q = Q::new(format!(
        "INSERT INTO api_tokens (name, role, token_hash) VALUES ($1, $2, $3) RETURNING {TOKEN_COLS}"
    ))
    .bind(name)
    .bind(role.as_str())
    .bind(token_hash);
    let row = D::one(&mut tx, q).await.map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!(
                "a token named '{name}' already exists: revoke it first"
            ))
        } else {
            e
        }
    })?;
    let info = token::<D>(&row)?;
    audit.write::<D>(&mut tx).await?;
    tx.commit().await?;
    audit.committed();
    Ok(info)
}

pub(super) async fn token_by_hash<D: Backend>(
    s: &SqlStore<D>,
    token_hash: &str,
) -> Result<Option<Principal>> {
    let q =
        Q::new("SELECT name, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(token_hash);
    D::opt(&s.pool, q)
        .await?
        .map(|r| {
            Ok(Principal {
                name: D::get(&r, "name")?,
                role: parse_status(D::get(&r, "role")?)?,
            })
        })
        .transpose()
}

pub(super) async fn token_hash_of<D: Backend>(
    s: &SqlStore<D>,
    name: &str,
) -> Result<Option<(Role, String)>> {
    let q =
        Q::new("SELECT role, token_hash FROM api_tokens WHERE name = $1 AND revoked_at IS NULL")
            .bind(name);
    D::opt(&s.pool, q)
        .await?
        .map(|r| {
            Ok((
                parse_status(D::get(&r, "role")?)?,
                D::get(&r, "token_hash")?,
            ))
        })
        .transpose()
}

pub(super) async fn tokens_list<D: Backend>(s: &SqlStore<D>) -> Result<Vec<TokenInfo>> {
    let q = Q::new(format!("SELECT {TOKEN_COLS} FROM api_tokens ORDER BY name"));
    D::all(&s.pool, q).await?.iter().map(token::<D>).collect()
}

pub(super) async fn token_revoke<D: Backend>(s: &SqlStore<D>, name: &str) -> Result<bool> {
    let audit = InTx::new(vec![AuditTarget::new("token", name)]);
    let mut tx = s.begin().await?;
    let q = Q::new(format!(
        "UPDATE api_tokens SET revoked_at = {} WHERE name = $1 AND revoked_at IS NULL",
        D::SQL.now
    ))
    .bind(name);
    if D::run(&mut tx, q).await? == 0 {
        return Ok(false);
    }
    audit.write::<D>(&mut tx).await?;
    tx.commit().await?;
    audit.committed();
    Ok(true)
}

pub(super) async fn tokens_exist<D: Backend>(s: &SqlStore<D>) -> Result<bool> {
    Ok(count(&s.pool, Q::new("SELECT COUNT(*) AS n FROM api_tokens")).await? > 0)
}

/// The statement that writes an audit row, and its arguments.
pub(crate) fn audit_insert_query(row: &NewAuditEvent) -> Q {
    insert_row(row, "")
}

fn insert_row(row: &NewAuditEvent, returning: &str) -> Q {
    Q::new(format!(
        "INSERT INTO audit_log (actor, client, action, targets, fields, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7){returning}"
    ))
    .bind(&row.actor)
    .bind(&row.client)
    .bind(&row.action)
    .bind(Arg::Json(
        serde_json::to_value(&row.targets).unwrap_or_default(),
    ))
    .bind(Arg::Json(row.fields.clone()))
    .bind(row.outcome.as_str())
    .bind(&row.detail)
}

pub(super) async fn audit_insert<D: Backend>(s: &SqlStore<D>, row: &NewAuditEvent) -> Result<()> {
    let mut tx = s.begin().await?;
    D::run(&mut tx, audit_insert_query(row)).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn audit_list<D: Backend>(
    s: &SqlStore<D>,
    f: &AuditFilter,
) -> Result<Vec<AuditEvent>> {
    // "NULL or equal" filters: one statement, one plan, as the change history's.
    let q = Q::new(format!(
        "SELECT id, at, actor, client, action, targets, fields, outcome, detail FROM audit_log \
         WHERE (CAST($1 AS {}) IS NULL OR at >= $1) AND (CAST($2 AS TEXT) IS NULL OR actor = $2) \
         AND (CAST($3 AS BIGINT) IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        D::SQL.time_type
    ))
    .bind(f.since)
    .bind(&f.actor)
    .bind(f.after)
    .bind(f.limit);
    D::all(&s.pool, q)
        .await?
        .iter()
        .map(|r| {
            let targets: serde_json::Value = D::get(r, "targets")?;
            Ok(AuditEvent {
                id: D::get(r, "id")?,
                at: D::get(r, "at")?,
                actor: D::get(r, "actor")?,
                client: D::get(r, "client")?,
                action: D::get(r, "action")?,
                targets: serde_json::from_value(targets)
                    .map_err(|e| StoreError::Other(format!("an audit row's targets: {e}")))?,
                fields: D::get(r, "fields")?,
                outcome: parse_status(D::get(r, "outcome")?)?,
                detail: D::get(r, "detail")?,
            })
        })
        .collect()
}

/// The audit row of the request this task serves (none outside one), to be written in
/// the transaction of the change it names: [`InTx::write`] before the commit,
/// [`InTx::committed`] after it (a rolled-back change leaves the row to the caller,
/// which records the failure).
pub(crate) struct InTx(Option<(Arc<Scope>, NewAuditEvent)>);

impl InTx {
    /// The row for a change of `targets`.
    pub(crate) fn new(targets: Vec<AuditTarget>) -> Self {
        InTx(crate::audit::current().map(|s| {
            let row = s.ok_row(targets);
            (s, row)
        }))
    }
    /// The same, with what the change did in words.
    pub(crate) fn with_detail(mut self, detail: String) -> Self {
        if let Some((_, row)) = &mut self.0 {
            row.detail = Some(detail);
        }
        self
    }
    /// The row, if this change is audited (for a write through the batch layer).
    pub(crate) fn row(&self) -> Option<NewAuditEvent> {
        self.0.as_ref().map(|(_, row)| row.clone())
    }
    pub(crate) async fn write<'c, D: Backend>(&self, e: impl Into<Ex<'c, D>>) -> Result<()> {
        if let Some((_, row)) = &self.0 {
            D::run(e, audit_insert_query(row)).await?;
        }
        Ok(())
    }
    /// [`InTx::write`], returning the row's id.
    pub(crate) async fn write_id<'c, D: Backend>(
        &self,
        e: impl Into<Ex<'c, D>>,
    ) -> Result<Option<i64>> {
        match &self.0 {
            Some((_, row)) => {
                let r = D::one(e, insert_row(row, " RETURNING id")).await?;
                Ok(Some(D::get(&r, "id")?))
            }
            None => Ok(None),
        }
    }
    pub(crate) fn committed(self) {
        if let Some((s, _)) = self.0 {
            s.mark_written();
        }
    }
}
