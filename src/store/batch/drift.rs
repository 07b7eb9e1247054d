//! Drift: the policy in force evaluated against an instance's whole inventory, in the
//! transaction that writes it (a finish) or, for a new policy, in one transaction per
//! slice of instances. Written once; [`DriftOps`] is each database's statements. Every
//! violation opened or resolved, every sensitive change and every finished session is
//! also an event in the outbox, in the same transaction (`events`).

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::model::{ChangeKind, EventType, Finding, Instance, Policy};
use crate::policy::{self, AccountView};
use crate::store::Result;

use super::ops::{BatchOps, NewChange};

/// The statements drift and the outbox need, per database.
#[async_trait]
pub(crate) trait DriftOps: Send {
    /// The policy in force: its version and body (JSON text), if one was ever set.
    async fn policy_current(&mut self) -> Result<Option<(i64, String)>>;
    /// The open violations of these instances.
    async fn violations_open(&mut self, instance_ids: &[i64]) -> Result<Vec<OpenViolation>>;
    /// Opens, marks seen and resolves violations: a statement each.
    async fn violations_write(&mut self, w: &ViolationWrites) -> Result<()>;
    /// Appends events to the outbox, each with its deliveries to the webhooks that take
    /// its type.
    async fn events_insert(&mut self, events: &[NewEvent]) -> Result<()>;
    /// Stores a new policy version; returns it.
    async fn policy_insert(&mut self, body: &str, source: &str, created_by: &str) -> Result<i64>;
    /// Up to `limit` instance ids above `after`, ascending.
    async fn instance_ids_after(&mut self, after: i64, limit: i64) -> Result<Vec<i64>>;
    /// Locks these instances against a finish (PostgreSQL: `FOR UPDATE`, which a
    /// finish's share lock waits for), so that a new policy's evaluation of an instance
    /// and a sync's never interleave. SQLite's writes are serial already.
    async fn instances_lock(&mut self, ids: &[i64]) -> Result<()>;
}

/// A stored open violation, by its key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenViolation {
    pub id: i64,
    pub instance_id: i64,
    pub rule: String,
    pub account: String,
    pub what: String,
    pub reason: String,
}

/// A violation to open.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewViolation {
    pub instance_id: i64,
    pub finding: Finding,
}

/// What one evaluation writes.
#[derive(Debug, Default)]
pub(crate) struct ViolationWrites {
    pub opened: Vec<NewViolation>,
    /// Open violations found again.
    pub seen: Vec<i64>,
    /// Open violations no longer found (or whose rule is gone).
    pub resolved: Vec<i64>,
}

/// An event for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewEvent {
    /// `evt_` and a ULID: the webhook id, the same across every retry.
    pub event_id: String,
    pub kind: EventType,
    pub instance_name: Option<String>,
    pub data: Value,
}

impl NewEvent {
    pub(crate) fn new(kind: EventType, instance_name: Option<&str>, data: Value) -> Self {
        NewEvent {
            event_id: format!("evt_{}", ulid::Ulid::new()),
            kind,
            instance_name: instance_name.map(str::to_string),
            data,
        }
    }
}

/// The policy in force, parsed; `None` when none was ever set (then drift costs the
/// finish one small read). An empty policy is still evaluated: it resolves whatever an
/// earlier version left open (say, a `policy set` interrupted part-way).
pub(crate) async fn current<O: DriftOps + ?Sized>(ops: &mut O) -> Result<Option<Policy>> {
    let Some((version, body)) = ops.policy_current().await? else {
        return Ok(None);
    };
    match serde_json::from_str(&body) {
        Ok(policy) => Ok(Some(policy)),
        Err(e) => {
            // Written by a newer syncpool (a field this one does not know): syncs go on
            // without drift rather than every finish failing fleet-wide.
            tracing::error!(version, error = %e, "the policy in force is unreadable by this version; drift is not evaluated");
            Ok(None)
        }
    }
}

/// Compares what an evaluation found on each instance (`found`, every instance
/// evaluated, with or without findings) with the open violations of those instances.
pub(crate) fn plan(
    found: &[(&Instance, Vec<Finding>)],
    open: &[OpenViolation],
) -> (ViolationWrites, Vec<NewEvent>) {
    let mut w = ViolationWrites::default();
    let mut events = vec![];
    let mut open_by_key: HashMap<(i64, &str, &str, &str), &OpenViolation> = open
        .iter()
        .map(|v| {
            (
                (
                    v.instance_id,
                    v.rule.as_str(),
                    v.account.as_str(),
                    v.what.as_str(),
                ),
                v,
            )
        })
        .collect();
    for (instance, findings) in found {
        for f in findings {
            let key = (
                instance.id,
                f.rule.as_str(),
                f.account.as_str(),
                f.what.as_str(),
            );
            match open_by_key.remove(&key) {
                Some(v) => w.seen.push(v.id),
                None => {
                    events.push(violation_event(EventType::ViolationOpened, f));
                    w.opened.push(NewViolation {
                        instance_id: instance.id,
                        finding: f.clone(),
                    });
                }
            }
        }
    }
    let names: HashMap<i64, &str> = found.iter().map(|(i, _)| (i.id, i.name.as_str())).collect();
    let mut gone: Vec<&OpenViolation> = open_by_key.into_values().collect();
    gone.sort_by_key(|v| v.id);
    for v in gone {
        w.resolved.push(v.id);
        let f = Finding {
            instance: names
                .get(&v.instance_id)
                .copied()
                .unwrap_or_default()
                .to_string(),
            rule: v.rule.clone(),
            account: v.account.clone(),
            what: v.what.clone(),
            reason: v.reason.clone(),
        };
        events.push(violation_event(EventType::ViolationResolved, &f));
    }
    w.seen.sort_unstable();
    (w, events)
}

pub(crate) fn violation_event(kind: EventType, f: &Finding) -> NewEvent {
    let data = json!({
        "instance": f.instance, "rule": f.rule, "account": f.account,
        "what": f.what, "reason": f.reason,
    });
    NewEvent::new(kind, Some(&f.instance), data)
}

/// Evaluates `policy` on these instances with their whole inventories (a finish's new
/// accounts, or the stored ones), against their open violations, and writes the
/// difference with its events. Returns how many it opened and resolved.
pub(crate) async fn after_syncs<O: DriftOps + ?Sized>(
    ops: &mut O,
    policy: &Policy,
    synced: &[(&Instance, Vec<AccountView<'_>>)],
) -> Result<(u64, u64)> {
    let ids: Vec<i64> = synced.iter().map(|(i, _)| i.id).collect();
    let open = ops.violations_open(&ids).await?;
    let found: Vec<(&Instance, Vec<Finding>)> = synced
        .iter()
        .map(|(i, accounts)| (*i, policy::evaluate(policy, i, accounts)))
        .collect();
    let (writes, events) = plan(&found, &open);
    ops.violations_write(&writes).await?;
    ops.events_insert(&events).await?;
    Ok((writes.opened.len() as u64, writes.resolved.len() as u64))
}

/// How many instances a new policy's evaluation locks and reads per transaction: short
/// transactions, so syncs of the same instances wait for at most one slice.
pub(crate) const SLICE: i64 = 200;

/// Stores a new policy version with its audit row; returns the version.
pub(crate) async fn policy_store<O: BatchOps + ?Sized>(
    ops: &mut O,
    body: &str,
    source: &str,
    by: &str,
    audit: Option<&crate::model::NewAuditEvent>,
) -> Result<i64> {
    let version = ops.policy_insert(body, source, by).await?;
    if let Some(row) = audit {
        ops.audit_insert(row).await?;
    }
    Ok(version)
}

/// Evaluates the policy in force on the next [`SLICE`] instances after id `after` whose
/// inventory was ever written (one that never synced has no inventory to judge), with
/// their stored accounts. Returns the last id looked at (`None`: no more), and how many
/// violations it opened and resolved.
pub(crate) async fn evaluate_slice<O: BatchOps + ?Sized>(
    ops: &mut O,
    after: i64,
) -> Result<(Option<i64>, u64, u64)> {
    let ids = ops.instance_ids_after(after, SLICE).await?;
    let Some(&last) = ids.last() else {
        return Ok((None, 0, 0));
    };
    // The lock first (a finish of one of them waits, or has committed), then the reads.
    ops.instances_lock(&ids).await?;
    let instances = ops.instances_load(&ids).await?;
    let stored = ops.accounts_load(&ids).await?;
    let policy = current(ops).await?.unwrap_or_default();
    let mut judged: Vec<&Instance> = instances
        .values()
        .filter(|i| i.history_since.is_some())
        .collect();
    judged.sort_by_key(|i| i.id);
    let synced: Vec<(&Instance, Vec<AccountView<'_>>)> = judged
        .into_iter()
        .map(|i| {
            let rows = stored.get(&i.id).map(Vec::as_slice).unwrap_or_default();
            (
                i,
                rows.iter().filter(|r| !r.deleted).map(Into::into).collect(),
            )
        })
        .collect();
    let (opened, resolved) = after_syncs(ops, &policy, &synced).await?;
    Ok((Some(last), opened, resolved))
}

/// The events of a finish's history rows: one per sensitive change (a baseline is the
/// first look, not a change, so it raises none).
pub(crate) fn sensitive_events(changes: &[NewChange]) -> Vec<NewEvent> {
    changes
        .iter()
        .filter(|c| !c.change.flags.is_empty() && c.change.kind != ChangeKind::Baseline)
        .map(|c| {
            let ch = &c.change;
            let account = if ch.host.is_empty() {
                ch.username.clone()
            } else {
                format!("{}@{}", ch.username, ch.host)
            };
            let data = json!({
                "instance": c.instance_name, "account": account, "change": ch.kind,
                "flags": ch.flags, "detail": ch.detail, "session_id": c.session_id,
            });
            NewEvent::new(EventType::SensitiveChange, Some(&c.instance_name), data)
        })
        .collect()
}
