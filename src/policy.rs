//! The policy's rules as pure functions: parsed and checked whole (YAML or JSON; every
//! error names the rule and the field), and evaluated against one instance's accounts.
//! The store evaluates in the transaction that writes an inventory, so a violation is
//! fenced and replayed with the sync that found it (docs/POLICY.md).

use std::collections::HashSet;

use serde_json::Value;
use wildmatch::WildMatch;

use crate::model::{Attribute, Finding, Instance, Policy, Rule};

/// Largest policy file, in bytes: read whole into memory, and kept as given.
pub const MAX_BYTES: usize = 256 * 1024;
/// Most rules in a policy.
pub const MAX_RULES: usize = 500;
/// Most patterns or names in one list of a rule.
pub const MAX_LIST: usize = 500;
/// Longest rule name: it is a metric label, so short and plain.
pub const MAX_RULE_NAME: usize = 64;
/// Longest pattern or name.
pub const MAX_PATTERN: usize = 256;

/// Why a policy is refused. The store turns it into its own error (`Invalid`: 400, exit
/// 2; `DuplicateRule`: a conflict, 409).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A field is wrong: its path in the document (`rules[1].deny[0]`) and why, the
    /// message naming the rule.
    #[error("{message}")]
    Invalid {
        /// Where.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Two rules share a name; each alone is valid.
    #[error("{0}")]
    DuplicateRule(String),
}

impl PolicyError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Reads a policy from YAML (JSON is YAML too) and checks it whole. An error's field is
/// the path in the document (`rules[1].deny[0]`) and its message names the rule.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    if text.len() > MAX_BYTES {
        return Err(PolicyError::invalid(
            "policy",
            format!("a policy is at most {MAX_BYTES} bytes"),
        ));
    }
    // JSON is read as JSON: YAML would take `null` for the string "null", and it refuses
    // some escapes JSON allows (a surrogate pair written as two `\u`).
    // A document that is not JSON at all (a YAML flow mapping `{rules: []}`) is YAML.
    let json = text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    let read = if json {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))
            .and_then(|p| {
                de.end()
                    .map(|()| p)
                    .map_err(|e| (".".into(), e.to_string()))
            })
    } else {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de)
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))
    };
    let policy: Policy = match read {
        Ok(p) => p,
        Err((field, message)) => {
            let field = if field == "." {
                "policy".to_string()
            } else {
                field
            };
            let message = first_line(&message);
            let message = with_rule(text, &field, &message);
            return Err(PolicyError::invalid(field, message));
        }
    };
    check(&policy)?;
    Ok(policy)
}

/// serde_yaml's messages start with its own, coarser, path (`rules[1].deny: `), which
/// the field already says, and end with the position (`at line 3 column 5`), kept.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => rest.to_string(),
        _ => line.to_string(),
    }
}

/// Prefixes `message` with the name of the rule `field` points into, when the document
/// gives one (read loosely: the strict read is what failed).
fn with_rule(text: &str, field: &str, message: &str) -> String {
    let index = field
        .strip_prefix("rules[")
        .and_then(|r| r.split(']').next())
        .and_then(|i| i.parse::<usize>().ok());
    let name = index.and_then(|i| {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
        doc.get("rules")?
            .get(i)?
            .get("name")?
            .as_str()
            .map(str::to_string)
    });
    match name {
        Some(n) => format!("rule '{n}': {field}: {message}"),
        None => format!("{field}: {message}"),
    }
}

/// A rule's name: 1 to [`MAX_RULE_NAME`] letters, digits, '-', '_' or '.' (a metric
/// label, printed in tables).
pub fn is_rule_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_RULE_NAME
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The rules between fields, once the document has the right shape.
pub fn check(policy: &Policy) -> Result<(), PolicyError> {
    if policy.rules.len() > MAX_RULES {
        return Err(PolicyError::invalid(
            "rules",
            format!("a policy has at most {MAX_RULES} rules"),
        ));
    }
    let mut names = HashSet::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let bad = |field: &str, message: String| {
            let field = format!("rules[{i}].{field}");
            let message = format!("rule '{}': {field}: {message}", rule.name);
            PolicyError::invalid(field, message)
        };
        let n = &rule.name;
        if !is_rule_name(n) {
            return Err(bad(
                "name",
                format!("a rule's name is 1 to {MAX_RULE_NAME} letters, digits, '-', '_' or '.'"),
            ));
        }
        if !names.insert(n.as_str()) {
            // A conflict, not a shape error: each rule alone is valid (the API's 409).
            return Err(PolicyError::DuplicateRule(format!(
                "rule '{n}': rules[{i}].name: another rule has this name"
            )));
        }
        if rule.deny.is_empty() && rule.deny_accounts.is_empty() && rule.require_accounts.is_empty()
        {
            return Err(bad(
                "deny",
                "a rule needs at least one of deny, deny_accounts or require_accounts".into(),
            ));
        }
        for (field, list) in [
            ("instances", &rule.instances),
            ("groups", &rule.groups),
            ("except_accounts", &rule.except_accounts),
            ("deny_accounts", &rule.deny_accounts),
            ("require_accounts", &rule.require_accounts),
        ] {
            if list.len() > MAX_LIST {
                return Err(bad(field, format!("at most {MAX_LIST} entries")));
            }
            for (j, p) in list.iter().enumerate() {
                if p.is_empty()
                    || p.chars().count() > MAX_PATTERN
                    || p.chars().any(char::is_control)
                {
                    return Err(bad(
                        &format!("{field}[{j}]"),
                        format!("1 to {MAX_PATTERN} characters, no control characters"),
                    ));
                }
                if field == "require_accounts" && p.contains(['*', '?']) {
                    return Err(bad(
                        &format!("{field}[{j}]"),
                        format!("'{p}': a required account is a name, not a pattern"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// An account as a rule sees it: from a sync's result or from the inventory.
#[derive(Debug, Clone, Copy)]
pub struct AccountView<'a> {
    /// User or role name.
    pub username: &'a str,
    /// MySQL's host part, or `""`.
    pub host: &'a str,
    /// As the source reported them.
    pub attributes: &'a Value,
    /// As the source reported them.
    pub privileges: &'a Value,
}

impl<'a> From<&'a crate::model::Account> for AccountView<'a> {
    fn from(a: &'a crate::model::Account) -> Self {
        AccountView {
            username: &a.username,
            host: &a.host,
            attributes: &a.attributes,
            privileges: &a.privileges,
        }
    }
}

impl<'a> From<&'a crate::history::StoredRow> for AccountView<'a> {
    fn from(a: &'a crate::history::StoredRow) -> Self {
        AccountView {
            username: &a.username,
            host: &a.host,
            attributes: &a.attributes,
            privileges: &a.privileges,
        }
    }
}

impl AccountView<'_> {
    /// How the account is named in findings: `user@host` where the kind has hosts.
    pub fn name(&self) -> String {
        if self.host.is_empty() {
            self.username.to_string()
        } else {
            format!("{}@{}", self.username, self.host)
        }
    }

    /// A pattern with '@' matches `user@host` on kinds with hosts; without, the user
    /// name (so `monitor` means that user from any host). Case matters, as it does for
    /// PostgreSQL role and MySQL user names.
    fn matches(&self, pattern: &str) -> bool {
        if !self.host.is_empty() && pattern.contains('@') {
            WildMatch::new(pattern).matches(&self.name())
        } else {
            WildMatch::new(pattern).matches(self.username)
        }
    }

    fn holds(&self, attr: Attribute) -> bool {
        let flag = |name: &str| self.attributes.get(name) == Some(&Value::Bool(true));
        let grants = || self.privileges.as_array().into_iter().flatten();
        let global = |wanted: &[&str]| {
            grants().any(|g| {
                g.get("level").and_then(Value::as_str) == Some("global")
                    && g.get("privileges")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .any(|p| wanted.iter().any(|w| p.eq_ignore_ascii_case(w)))
            })
        };
        match attr {
            Attribute::Superuser
            | Attribute::CreateRole
            | Attribute::CreateDb
            | Attribute::BypassRls
            | Attribute::Replication => flag(attr.as_str()),
            Attribute::AllPrivileges => global(&["ALL PRIVILEGES", "ALL"]),
            Attribute::Super => global(&["SUPER", "ALL PRIVILEGES", "ALL"]),
            Attribute::GrantOption => {
                grants().any(|g| g.get("grant_option") == Some(&Value::Bool(true)))
            }
        }
    }
}

/// Whether `rule` applies to `instance`: every selector given matches (a name glob, a
/// group, a kind), an empty one matches all.
pub fn selects(rule: &Rule, instance: &Instance) -> bool {
    (rule.instances.is_empty()
        || rule
            .instances
            .iter()
            .any(|p| WildMatch::new(p).matches(&instance.name)))
        && (rule.groups.is_empty()
            || instance
                .group
                .as_ref()
                .is_some_and(|g| rule.groups.iter().any(|r| r == g)))
        && (rule.kinds.is_empty() || rule.kinds.contains(&instance.kind))
}

/// What `policy` flags on `instance` with these accounts (its whole inventory), sorted.
pub fn evaluate(
    policy: &Policy,
    instance: &Instance,
    accounts: &[AccountView<'_>],
) -> Vec<Finding> {
    let mut out = vec![];
    for rule in policy.rules.iter().filter(|r| selects(r, instance)) {
        let mut found = |account: String, what: &str, reason: String| {
            out.push(Finding {
                instance: instance.name.clone(),
                rule: rule.name.clone(),
                account,
                what: what.to_string(),
                reason,
            })
        };
        for a in accounts {
            if !rule.deny.is_empty() && !rule.except_accounts.iter().any(|p| a.matches(p)) {
                for &attr in rule.deny.iter().filter(|&&attr| a.holds(attr)) {
                    found(a.name(), attr.as_str(), format!("holds {attr}"));
                }
            }
            if let Some(p) = rule.deny_accounts.iter().find(|p| a.matches(p)) {
                let reason = format!("matches deny_accounts '{p}'");
                found(a.name(), "denied_account", reason);
            }
        }
        for required in &rule.require_accounts {
            if !accounts.iter().any(|a| a.matches_name(required)) {
                let reason = "a required account is missing".to_string();
                found(required.clone(), "missing_account", reason);
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| (&a.rule, &a.account, &a.what) == (&b.rule, &b.account, &b.what));
    out
}

impl AccountView<'_> {
    /// A required name: `user@host` exactly on kinds with hosts, else the user name.
    fn matches_name(&self, name: &str) -> bool {
        if !self.host.is_empty() && name.contains('@') {
            self.name() == name
        } else {
            self.username == name
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
