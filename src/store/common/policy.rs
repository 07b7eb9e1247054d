//! The policy and its violations, written once: a new version is stored and evaluated
//! slice by slice through the pipeline's own statements (`batch/drift.rs`), so the SQL
//! that writes violations exists once per database, not twice.

use std::collections::HashMap;

use async_trait::async_trait;

use super::access::InTx;
use super::{Backend, SqlStore, count};
use crate::history::StoredRow;
use crate::model::{
    AuditTarget, DriftFilter, Finding, Instance, Policy, PolicySetOutcome, StoredPolicy, Violation,
    ViolationState,
};
use crate::policy::{self, AccountView};
use crate::store::batch::{self, drift};
use crate::store::sql::Q;
use crate::store::{InventoryStore, PolicyStore, Result, StoreError};

/// How many instances `policy check` reads at a time.
const CHECK_SLICE: usize = 500;

#[async_trait]
impl<D: Backend> PolicyStore for SqlStore<D> {
    async fn policy_set(&self, policy: &Policy, source: &str) -> Result<PolicySetOutcome> {
        policy::check(policy)?;
        let body = serde_json::to_string(policy).map_err(|e| StoreError::Other(e.to_string()))?;
        let audit = InTx::new(vec![AuditTarget::new("policy", "fleet")]);
        let row = audit.row();
        let by = row
            .as_ref()
            .map_or_else(|| "unknown".to_string(), |r| r.actor.clone());
        let source = source.to_string();
        let f = batch::batch(move |ops| {
            Box::pin(
                async move { drift::policy_store(ops, &body, &source, &by, row.as_ref()).await },
            )
        });
        let version = D::write(self, f).await?;
        audit.committed();
        let (mut opened, mut resolved, mut after) = (0, 0, 0);
        loop {
            let f = batch::batch(move |ops| {
                Box::pin(async move { drift::evaluate_slice(ops, after).await })
            });
            let (last, o, r) = D::write(self, f).await?;
            opened += o;
            resolved += r;
            match last {
                Some(last) => after = last,
                None => break,
            }
        }
        resolved += super::events::resolve_orphans(self).await?;
        let q = Q::new("SELECT COUNT(*) AS n FROM policy_violations WHERE resolved_at IS NULL");
        let open = count::<D>(&self.pool, q).await? as u64;
        Ok(PolicySetOutcome {
            version,
            opened,
            resolved,
            open,
        })
    }

    async fn policy_get(&self) -> Result<Option<StoredPolicy>> {
        let q = Q::new(
            "SELECT version, body, source, created_at, created_by FROM policies \
             ORDER BY version DESC LIMIT 1",
        );
        let Some(r) = D::opt(&self.pool, q).await? else {
            return Ok(None);
        };
        let body: serde_json::Value = D::get(&r, "body")?;
        Ok(Some(StoredPolicy {
            version: D::get(&r, "version")?,
            created_by: D::get(&r, "created_by")?,
            created_at: D::get(&r, "created_at")?,
            policy: serde_json::from_value(body)
                .map_err(|e| StoreError::Other(format!("the stored policy is unreadable: {e}")))?,
            source: D::get(&r, "source")?,
        }))
    }

    async fn policy_check(&self, policy: &Policy) -> Result<Vec<Finding>> {
        policy::check(policy)?;
        let mut instances: Vec<Instance> = self
            .instance_list()
            .await?
            .into_iter()
            .filter(|i| i.history_since.is_some())
            .collect();
        // By id, so that each slice's id range holds only its own instances' accounts.
        instances.sort_by_key(|i| i.id);
        let mut out = vec![];
        for slice in instances.chunks(CHECK_SLICE) {
            let accounts = accounts_of(self, slice).await?;
            for i in slice {
                let rows = accounts.get(&i.id).map(Vec::as_slice).unwrap_or_default();
                let views: Vec<AccountView<'_>> = rows.iter().map(Into::into).collect();
                out.extend(policy::evaluate(policy, i, &views));
            }
        }
        Ok(out)
    }

    async fn drift_list(&self, f: &DriftFilter) -> Result<Vec<Violation>> {
        let state = f.state.unwrap_or(ViolationState::Open);
        let q = Q::new(
            "SELECT id, instance_name, rule, account, what, reason, opened_at, last_seen_at, \
             resolved_at FROM policy_violations \
             WHERE (CAST($1 AS TEXT) IS NULL OR instance_name = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR rule = $2) \
             AND ($3 = 'all' OR ($3 = 'open') = (resolved_at IS NULL)) \
             AND (CAST($4 AS BIGINT) IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
        )
        .bind(&f.instance)
        .bind(&f.rule)
        .bind(state.as_str())
        .bind(f.before)
        .bind(f.limit);
        D::all(&self.pool, q)
            .await?
            .iter()
            .map(|r| {
                Ok(Violation {
                    id: D::get(r, "id")?,
                    instance: D::get(r, "instance_name")?,
                    rule: D::get(r, "rule")?,
                    account: D::get(r, "account")?,
                    what: D::get(r, "what")?,
                    reason: D::get(r, "reason")?,
                    opened_at: D::get(r, "opened_at")?,
                    last_seen_at: D::get(r, "last_seen_at")?,
                    resolved_at: D::get(r, "resolved_at")?,
                })
            })
            .collect()
    }

    async fn violations_by_rule(&self) -> Result<Vec<(String, i64)>> {
        let q = Q::new(
            "SELECT rule, COUNT(*) AS n FROM policy_violations WHERE resolved_at IS NULL \
             GROUP BY rule ORDER BY rule",
        );
        let mut by_rule: std::collections::BTreeMap<String, i64> = D::all(&self.pool, q)
            .await?
            .iter()
            .map(|r| Ok((D::get(r, "rule")?, D::get(r, "n")?)))
            .collect::<Result<_>>()?;
        // Every rule in force has a series from the start, so an alert sees it rise from 0.
        if let Some(p) = self.policy_get().await? {
            for rule in p.policy.rules {
                by_rule.entry(rule.name).or_insert(0);
            }
        }
        Ok(by_rule.into_iter().collect())
    }
}

/// The current (not deleted) accounts of `instances`, by instance id, in one read.
async fn accounts_of<D: Backend>(
    s: &SqlStore<D>,
    instances: &[Instance],
) -> Result<HashMap<i64, Vec<StoredRow>>> {
    let (Some(lo), Some(hi)) = (
        instances.iter().map(|i| i.id).min(),
        instances.iter().map(|i| i.id).max(),
    ) else {
        return Ok(HashMap::new());
    };
    let q = Q::new(
        "SELECT instance_id, username, host, attributes, privileges FROM instance_accounts \
         WHERE instance_id >= $1 AND instance_id <= $2 AND deleted_at IS NULL",
    )
    .bind(lo)
    .bind(hi);
    let mut out: HashMap<i64, Vec<StoredRow>> = HashMap::new();
    for r in D::all(&s.pool, q).await? {
        out.entry(D::get(&r, "instance_id")?)
            .or_default()
            .push(StoredRow {
                username: D::get(&r, "username")?,
                host: D::get(&r, "host")?,
                attributes: D::get(&r, "attributes")?,
                privileges: D::get(&r, "privileges")?,
                deleted: false,
            });
    }
    Ok(out)
}
