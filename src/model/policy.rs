//! The fleet's declared state: a policy's rules (`crate::policy` parses and evaluates
//! them), the violations they find, and how those are listed. Served by `syncpool
//! policy|drift`, `/api/v1/policy`, `/api/v1/drift` and the console.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{InstanceKind, ts};

status_enum!(
    /// An attribute or privilege a `deny` rule forbids. PostgreSQL's role attributes
    /// (`superuser` also on simulated instances); MySQL's and MariaDB's global `ALL
    /// PRIVILEGES`, `SUPER` (which a global `ALL PRIVILEGES` includes) and a grant made
    /// `WITH GRANT OPTION` at any level.
    Attribute ("attribute") {
        Superuser => "superuser",
        CreateRole => "create_role",
        CreateDb => "create_db",
        BypassRls => "bypass_rls",
        Replication => "replication",
        AllPrivileges => "all_privileges",
        Super => "super",
        GrantOption => "grant_option",
    }
);

status_enum!(
    /// Which violations a drift listing shows.
    ViolationState ("state") {
        Open => "open",
        Resolved => "resolved",
        All => "all",
    }
);

/// A policy: rules over the fleet's accounts. Read from YAML or JSON by
/// `crate::policy::parse`, which refuses unknown fields and checks the whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The rules, each evaluated against every instance it selects.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// One rule: which instances it applies to, and what it forbids or requires there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique in the policy; the metric's `rule` label.
    pub name: String,
    /// Instance-name globs (`*`, `?`); empty: every instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Instance groups; empty: any group or none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Instance kinds; empty: every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<InstanceKind>,
    /// Attributes and privileges no account may hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Attribute>,
    /// Account globs exempt from `deny`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except_accounts: Vec<String>,
    /// Account globs that must not exist (`user@host` on MySQL: `*@%`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_accounts: Vec<String>,
    /// Account names that must exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_accounts: Vec<String>,
}

/// The policy in force.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoredPolicy {
    /// Its version: one more than the last `policy set`'s.
    pub version: i64,
    /// Who set it (the audit trail's actor).
    pub created_by: String,
    /// When.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// The policy as validated.
    pub policy: Policy,
    /// The file as given (YAML or JSON), comments kept.
    pub source: String,
}

/// What setting a policy did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicySetOutcome {
    /// The version now in force.
    pub version: i64,
    /// Violations opened by evaluating it against the current inventory.
    pub opened: u64,
    /// Violations it resolved (rules gone or changed).
    pub resolved: u64,
    /// Open violations after it.
    pub open: u64,
}

/// One thing a policy flags on one account of one instance (or a required account
/// missing from it), as a pure evaluation finds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
pub struct Finding {
    /// The instance's name.
    pub instance: String,
    /// The rule's name.
    pub rule: String,
    /// The account (`user@host` on MySQL), or the required name that is missing.
    pub account: String,
    /// What is wrong: an attribute's name, `denied_account` or `missing_account`.
    pub what: String,
    /// The same in words.
    pub reason: String,
}

/// A violation as stored: one row while it lasts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Violation {
    /// Its id (the drift listing's keyset cursor).
    pub id: i64,
    /// The instance's name when it was found.
    pub instance: String,
    /// The rule's name.
    pub rule: String,
    /// The account, or the required name that is missing.
    pub account: String,
    /// An attribute's name, `denied_account` or `missing_account`.
    pub what: String,
    /// The same in words.
    pub reason: String,
    /// When a sync (or a new policy) first found it.
    #[serde(with = "ts")]
    pub opened_at: DateTime<Utc>,
    /// When a sync last found it.
    #[serde(with = "ts")]
    pub last_seen_at: DateTime<Utc>,
    /// When a sync no longer found it, or its rule went; null while open.
    #[serde(with = "ts::opt")]
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Which violations to list: newest first, after the cursor.
#[derive(Debug, Clone, Default)]
pub struct DriftFilter {
    /// Only this instance's.
    pub instance: Option<String>,
    /// Only this rule's.
    pub rule: Option<String>,
    /// Open (the default), resolved or all.
    pub state: Option<ViolationState>,
    /// Ids below this one (the previous page's last id).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

status_enum!(
    /// What an event in the outbox tells: a violation opened or resolved, a change to an
    /// account that matters to an auditor, a session that finished.
    EventType ("event type") {
        ViolationOpened => "violation_opened",
        ViolationResolved => "violation_resolved",
        SensitiveChange => "sensitive_change",
        SessionFinished => "session_finished",
    }
);

/// An event as the stream and the webhooks carry it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Event {
    /// Its place in the stream (`Last-Event-ID`, `--after`).
    pub seq: i64,
    /// `evt_...`: the same across every delivery of it (`webhook-id`).
    pub id: String,
    /// What it tells.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened.
    #[serde(with = "ts")]
    pub timestamp: DateTime<Utc>,
    /// The instance it is about, if one.
    pub instance: Option<String>,
    /// What happened: the violation, the change, the session's totals. Never a secret.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A page of violations.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DriftPage {
    /// Newest first.
    pub items: Vec<Violation>,
    /// The `after` of the next page; null on the last one.
    pub next_after: Option<i64>,
}

impl DriftPage {
    /// A page of at most `limit` items: a full page may have a next one.
    pub fn new(items: Vec<Violation>, limit: i64) -> Self {
        let next_after = super::next_after(&items, limit, |v| v.id);
        DriftPage { items, next_after }
    }
}

/// What a policy would flag.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FindingList {
    /// By instance, rule and account.
    pub items: Vec<Finding>,
}
