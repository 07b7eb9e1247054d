//! Account change history: what a sync found different from the inventory, as rows an
//! auditor can read ("who gained or lost what, and when"). Pure functions: the store's
//! finish step calls them inside the transaction that writes the inventory, so a change
//! is recorded exactly when, and only when, the inventory changes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::model::Account;
pub(crate) use crate::model::ChangeKind;

/// One change of one account, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountChangeRow {
    /// User name.
    pub username: String,
    /// Host part (MySQL), empty elsewhere.
    pub host: String,
    /// What happened.
    pub kind: ChangeKind,
    /// For `changed`: `{"attributes": {NAME: {"from", "to"}}, "privileges": {"granted",
    /// "revoked"}}` with only what differs. For the others: the account's attributes and
    /// privileges as found (or, for `removed`, as last stored).
    pub detail: Value,
    /// Why it matters to an auditor (`superuser`, `create_role`, ...); empty for most.
    pub flags: Vec<&'static str>,
}

/// The privilege entries of an account split into single grants, so that adding
/// `INSERT` beside `SELECT` on one database reads as one grant, not as one entry revoked
/// and another granted. An entry with a `privileges` list becomes one atom per privilege
/// (`privilege`), one with a `roles` list one atom per role (`role`); others stay whole.
pub fn privilege_atoms(privileges: &Value) -> BTreeSet<String> {
    let mut atoms = BTreeSet::new();
    for entry in privileges.as_array().into_iter().flatten() {
        let Value::Object(fields) = entry else {
            atoms.insert(entry.to_string());
            continue;
        };
        let split = [("privileges", "privilege"), ("roles", "role")]
            .into_iter()
            .find_map(|(list, one)| Some((list, one, fields.get(list)?.as_array()?)));
        match split {
            Some((list, one, items)) => {
                for item in items {
                    let mut atom: Map<String, Value> = fields.clone();
                    atom.remove(list);
                    atom.insert(one.into(), item.clone());
                    // serde_json's map is ordered by key, so equal atoms print equally.
                    atoms.insert(Value::Object(atom).to_string());
                }
            }
            None => {
                atoms.insert(entry.to_string());
            }
        }
    }
    atoms
}

fn parse_atoms(atoms: impl IntoIterator<Item = String>) -> Vec<Value> {
    atoms
        .into_iter()
        .map(|a| serde_json::from_str(&a).unwrap_or(Value::String(a)))
        .collect()
}

/// PostgreSQL role attributes whose gain is privilege-sensitive.
const SENSITIVE_ATTRIBUTES: &[(&str, &str)] = &[
    ("superuser", "superuser"),
    ("create_role", "create_role"),
    ("bypass_rls", "bypass_rls"),
    ("replication", "replication"),
];

/// Why a change from `old` (None: a new account) to `new` matters: attributes gained,
/// an account unlocked, and sensitive grants among `granted`.
fn flags(old: Option<&Value>, new: &Value, granted: &[Value]) -> Vec<&'static str> {
    let mut out = BTreeSet::new();
    let truthy = |attrs: Option<&Value>, key: &str| {
        attrs.and_then(|a| a.get(key)).and_then(Value::as_bool) == Some(true)
    };
    for (attr, flag) in SENSITIVE_ATTRIBUTES {
        if truthy(Some(new), attr) && !truthy(old, attr) {
            out.insert(*flag);
        }
    }
    if old.is_some() && truthy(old, "locked") && new.get("locked") == Some(&json!(false)) {
        out.insert("unlocked");
    }
    for g in granted {
        let global = g.get("level").and_then(Value::as_str) == Some("global");
        match g.get("privilege").and_then(Value::as_str) {
            Some("ALL PRIVILEGES") if global => {
                out.insert("all_privileges");
            }
            Some("SUPER") if global => {
                out.insert("super");
            }
            _ => {}
        }
        if g.get("grant_option") == Some(&json!(true))
            || g.get("admin_option") == Some(&json!(true))
        {
            out.insert("grant_option");
        }
    }
    out.into_iter().collect()
}

/// A new account (`Added`) or one found by the instance's first sync (`Baseline`). A
/// baseline is never flagged: sensitive means access was *gained*, and a baseline says
/// only what the account held when its history began.
pub fn found(account: &Account, kind: ChangeKind) -> AccountChangeRow {
    let granted = parse_atoms(privilege_atoms(&account.privileges));
    let flags = match kind {
        ChangeKind::Baseline => vec![],
        _ => flags(None, &account.attributes, &granted),
    };
    AccountChangeRow {
        username: account.username.clone(),
        host: account.host.clone(),
        kind,
        detail: json!({"attributes": account.attributes, "privileges": account.privileges}),
        flags,
    }
}

/// An account that is gone, with what it last had.
pub fn removed(
    username: &str,
    host: &str,
    attributes: &Value,
    privileges: &Value,
) -> AccountChangeRow {
    AccountChangeRow {
        username: username.into(),
        host: host.into(),
        kind: ChangeKind::Removed,
        detail: json!({"attributes": attributes, "privileges": privileges}),
        flags: vec![],
    }
}

/// What differs between the stored account and the one found; None when nothing does.
pub fn changed(
    old_attributes: &Value,
    old_privileges: &Value,
    new: &Account,
) -> Option<AccountChangeRow> {
    let mut attributes = Map::new();
    let empty = Map::new();
    let old_map = old_attributes.as_object().unwrap_or(&empty);
    let new_map = new.attributes.as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = old_map.keys().chain(new_map.keys()).collect();
    for key in keys {
        let (from, to) = (old_map.get(key), new_map.get(key));
        if from != to {
            attributes.insert(
                key.clone(),
                json!({"from": from.unwrap_or(&Value::Null), "to": to.unwrap_or(&Value::Null)}),
            );
        }
    }
    let (before, after) = (
        privilege_atoms(old_privileges),
        privilege_atoms(&new.privileges),
    );
    let granted = parse_atoms(after.difference(&before).cloned());
    let revoked = parse_atoms(before.difference(&after).cloned());
    if attributes.is_empty() && granted.is_empty() && revoked.is_empty() {
        return None;
    }
    let flags = flags(Some(old_attributes), &new.attributes, &granted);
    Some(AccountChangeRow {
        username: new.username.clone(),
        host: new.host.clone(),
        kind: ChangeKind::Changed,
        detail: json!({
            "attributes": attributes,
            "privileges": {"granted": granted, "revoked": revoked},
        }),
        flags,
    })
}

/// Compares the accounts found on an instance with the stored ones (keyed by
/// `(username, host)`): what to insert, what to update, what to mark deleted.
pub struct AccountDiff<'a> {
    /// Accounts new to the inventory.
    pub added: Vec<&'a Account>,
    /// Accounts whose attributes or privileges changed, each with its stored row (the
    /// history records the difference).
    pub changed: Vec<(&'a Account, &'a StoredRow)>,
    /// Stored, not-deleted accounts no longer on the instance.
    pub removed: Vec<&'a StoredRow>,
    /// Accounts previously marked deleted that came back: they count as added.
    pub revived: Vec<&'a Account>,
}

/// An account as the inventory holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// The account's name.
    pub username: String,
    /// Its host (MySQL) or `""`.
    pub host: String,
    /// Its attributes, as the source reported them.
    pub attributes: Value,
    /// Its privileges, as the source reported them.
    pub privileges: Value,
    /// Marked deleted: gone from the instance at an earlier sync.
    pub deleted: bool,
}

impl<'a> AccountDiff<'a> {
    /// Compares `found` with the inventory's `stored` rows of the same instance.
    pub fn compute(found: &'a [Account], stored: &'a [StoredRow]) -> Self {
        use std::collections::HashMap;
        let index: HashMap<(&str, &str), &StoredRow> = stored
            .iter()
            .map(|row| ((row.username.as_str(), row.host.as_str()), row))
            .collect();
        let mut diff = AccountDiff {
            added: vec![],
            changed: vec![],
            removed: vec![],
            revived: vec![],
        };
        let mut seen = std::collections::HashSet::new();
        for acc in found {
            seen.insert((acc.username.as_str(), acc.host.as_str()));
            match index.get(&(acc.username.as_str(), acc.host.as_str())) {
                None => diff.added.push(acc),
                Some(row) if row.deleted => diff.revived.push(acc),
                Some(row) => {
                    if row.attributes != acc.attributes || row.privileges != acc.privileges {
                        diff.changed.push((acc, row))
                    }
                }
            }
        }
        for row in stored {
            if !row.deleted && !seen.contains(&(row.username.as_str(), row.host.as_str())) {
                diff.removed.push(row);
            }
        }
        diff
    }
}

/// The history rows of one completed sync: with `baseline` (the instance's first), every
/// account found; otherwise one row per account the diff added, revived, changed or
/// removed.
pub fn rows_for_sync(
    found_accounts: &[Account],
    diff: &AccountDiff<'_>,
    baseline: bool,
) -> Vec<AccountChangeRow> {
    if baseline {
        return found_accounts
            .iter()
            .map(|a| found(a, ChangeKind::Baseline))
            .collect();
    }
    let mut rows: Vec<AccountChangeRow> = diff
        .added
        .iter()
        .chain(&diff.revived)
        .map(|a| found(a, ChangeKind::Added))
        .collect();
    rows.extend(
        diff.changed
            .iter()
            .filter_map(|(a, row)| changed(&row.attributes, &row.privileges, a)),
    );
    rows.extend(
        diff.removed
            .iter()
            .map(|row| removed(&row.username, &row.host, &row.attributes, &row.privileges)),
    );
    rows
}

/// One grant in a line: `INSERT on database shop`, `role reader`.
fn grant_text(atom: &Value) -> String {
    let field = |k: &str| atom.get(k).and_then(Value::as_str);
    let what = field("privilege")
        .map(str::to_string)
        .or_else(|| field("role").map(|r| format!("role {r}")))
        .unwrap_or_else(|| atom.to_string());
    let place: Vec<&str> = ["database", "schema", "table", "routine"]
        .into_iter()
        .filter_map(field)
        .collect();
    let mut text = match field("level") {
        Some("global") => format!("{what} on *.*"),
        Some(level) if !place.is_empty() => format!("{what} on {level} {}", place.join(".")),
        _ => what,
    };
    if atom.get("grant_option") == Some(&json!(true))
        || atom.get("admin_option") == Some(&json!(true))
    {
        text.push_str(" with grant option");
    }
    text
}

/// A change in one line, for the CLI's table.
pub fn summary(kind: ChangeKind, detail: &Value) -> String {
    if kind != ChangeKind::Changed {
        let grants = privilege_atoms(&detail["privileges"]).len();
        return format!("{grants} grant(s)");
    }
    let mut parts: Vec<String> = detail["attributes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {} -> {}", v["from"], v["to"]))
        .collect();
    for (sign, key) in [("+", "granted"), ("-", "revoked")] {
        parts.extend(
            detail["privileges"][key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| format!("{sign}{}", grant_text(a))),
        );
    }
    parts.join("; ")
}

/// How many changes of each kind, sensitive or not, a finish recorded: for the
/// `syncpool_account_changes_total` counter, counted after the commit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeTally(pub BTreeMap<(ChangeKind, bool), u64>);

impl ChangeTally {
    /// Counts `rows`.
    pub fn of(rows: &[AccountChangeRow]) -> Self {
        let mut tally = BTreeMap::new();
        for r in rows {
            *tally.entry((r.kind, !r.flags.is_empty())).or_insert(0) += 1;
        }
        ChangeTally(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(attributes: Value, privileges: Value) -> Account {
        Account {
            username: "u".into(),
            host: "%".into(),
            attributes,
            privileges,
        }
    }

    #[test]
    fn a_privilege_added_to_an_existing_grant_reads_as_one_grant() {
        let old = json!([{"level": "database", "database": "shop", "privileges": ["SELECT"], "grant_option": false}]);
        let new = account(
            json!({"locked": false}),
            json!([{"level": "database", "database": "shop", "privileges": ["SELECT", "INSERT"], "grant_option": false}]),
        );
        let c = changed(&json!({"locked": false}), &old, &new).unwrap();
        assert_eq!(
            c.detail["privileges"],
            json!({"granted": [{"level": "database", "database": "shop", "privilege": "INSERT", "grant_option": false}], "revoked": []})
        );
        assert_eq!(c.detail["attributes"], json!({}));
        assert!(c.flags.is_empty());
    }

    #[test]
    fn gains_that_widen_access_are_flagged_and_losses_are_not() {
        let new = account(
            json!({"superuser": true, "create_role": true, "can_login": true}),
            json!([]),
        );
        let c = changed(
            &json!({"superuser": false, "can_login": true}),
            &json!([]),
            &new,
        )
        .unwrap();
        assert_eq!(c.flags, vec!["create_role", "superuser"]);
        assert_eq!(
            c.detail["attributes"],
            json!({"create_role": {"from": null, "to": true}, "superuser": {"from": false, "to": true}})
        );
        let back = account(json!({"superuser": false}), json!([]));
        assert!(
            changed(&json!({"superuser": true}), &json!([]), &back)
                .unwrap()
                .flags
                .is_empty()
        );
        let unlocked = account(json!({"locked": false}), json!([]));
        assert_eq!(
            changed(&json!({"locked": true}), &json!([]), &unlocked)
                .unwrap()
                .flags,
            vec!["unlocked"]
        );
        let global = account(
            json!({}),
            json!([{"level": "global", "privileges": ["ALL PRIVILEGES"], "grant_option": true}]),
        );
        assert_eq!(
            found(&global, ChangeKind::Added).flags,
            vec!["all_privileges", "grant_option"]
        );
    }

    #[test]
    fn a_baseline_is_never_flagged_though_the_same_account_added_later_is() {
        let root = account(
            json!({"superuser": true}),
            json!([{"level": "global", "privileges": ["ALL PRIVILEGES"], "grant_option": true}]),
        );
        assert!(found(&root, ChangeKind::Baseline).flags.is_empty());
        assert_eq!(
            found(&root, ChangeKind::Added).flags,
            vec!["all_privileges", "grant_option", "superuser"]
        );
    }

    #[test]
    fn an_unchanged_account_is_no_change() {
        let a = account(
            json!({"x": 1}),
            json!([{"level": "role", "roles": ["r"], "admin_option": false}]),
        );
        assert_eq!(changed(&a.attributes, &a.privileges, &a), None);
    }
}
