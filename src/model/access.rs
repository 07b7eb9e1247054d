//! Who may do what, and what they did: API tokens with a role, and the audit trail.
//! Served by `syncpool tokens|audit`, `/api/v1/tokens`, `/api/v1/audit` and the console.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ts;

status_enum!(
    /// What a token may do. Each role may do everything the ones before it may:
    /// `viewer` reads; `operator` also starts, cancels and retries sessions; `admin` also
    /// changes instances, limits and tokens and runs cleanup.
    Role ("role") {
        Viewer => "viewer",
        Operator => "operator",
        Admin => "admin",
    }
);

status_enum!(
    /// How a change asked for ended: `ok` (done, recorded in its own transaction),
    /// `refused` (the caller's fault: bad input, no such thing, not allowed) or `failed`
    /// (the server's).
    AuditOutcome ("outcome") {
        Ok => "ok",
        Refused => "refused",
        Failed => "failed",
    }
);

/// Who made a request: a token's name and role. The name is what the audit trail says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A token's name, `SYNCPOOL_API_TOKEN`, or `anonymous` on an open server.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// A stored API token, as listed (never the token itself, which is shown once).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenInfo {
    /// Its unique name, which the audit trail records.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was created.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// When it was revoked; null while it works.
    #[serde(with = "ts::opt")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just created: the only time the token is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenCreated {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The bearer token; syncpool keeps only its hash.
    pub token: String,
}

/// What an audited change acted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditTarget {
    /// `instance`, `session`, `token`, `limit` or `cleanup`.
    pub kind: String,
    /// Its id (an instance id, a session's UUID, a token's or limit's name).
    pub id: String,
    /// Its name, where it has one besides the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl AuditTarget {
    /// A target of `kind` with this id and no other name.
    pub fn new(kind: &str, id: impl ToString) -> Self {
        AuditTarget {
            kind: kind.into(),
            id: id.to_string(),
            name: None,
        }
    }
    /// The same with a name.
    pub fn named(kind: &str, id: impl ToString, name: &str) -> Self {
        AuditTarget {
            name: Some(name.into()),
            ..Self::new(kind, id)
        }
    }
}

/// An audit row to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    /// A token's name (or `anonymous`), or `cli:USER` for the command line.
    pub actor: String,
    /// The client's address, or `local:HOST` for the command line.
    pub client: String,
    /// What was asked for: `instance.create`, `session.cancel`, ...
    pub action: String,
    /// What it acted on.
    pub targets: Vec<AuditTarget>,
    /// The request's fields, secrets left out.
    pub fields: Value,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Why it was refused or failed (the error's message).
    pub detail: Option<String>,
}

/// A row of the audit trail.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEvent {
    /// Increasing; pages go by it.
    pub id: i64,
    /// When (the database's clock).
    #[serde(with = "ts")]
    pub at: DateTime<Utc>,
    /// Who: a token's name, `SYNCPOOL_API_TOKEN`, `anonymous`, or `cli:USER`.
    pub actor: String,
    /// From where: the client's address, or `local:HOST`.
    pub client: String,
    /// What was asked for.
    pub action: String,
    /// What it acted on.
    pub targets: Vec<AuditTarget>,
    /// The request's fields, secrets left out.
    #[schema(value_type = Object)]
    pub fields: Value,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Why it was refused or failed.
    pub detail: Option<String>,
}

/// A page of the audit trail, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub items: Vec<AuditEvent>,
    /// The `after` of the next page; null on the last one.
    pub next_after: Option<i64>,
}

impl AuditPage {
    /// A page of at most `limit` items: a full page may have a next one.
    pub fn new(items: Vec<AuditEvent>, limit: i64) -> Self {
        let next_after = super::next_after(&items, limit, |e| e.id);
        AuditPage { items, next_after }
    }
}

/// Which audit rows to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only rows at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only this actor's rows.
    pub actor: Option<String>,
    /// Page size.
    pub limit: i64,
    /// Keyset cursor: only rows with a smaller id.
    pub after: Option<i64>,
}
