//! Input checks shared by the CLI and the HTTP API, so both reject the same things with
//! the same field names before anything is written.

use std::collections::BTreeMap;

use crate::model::{Instance, InstanceKind, NewInstance, SessionStatus, SyncType};
use crate::store::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

/// Longest retention, in days (100 years).
pub const MAX_DAYS: i64 = 36_500;
/// Largest page.
pub const MAX_LIMIT: i64 = 1_000;
/// Room for a PEM root certificate (`ssl_root_cert`) and the rest.
pub const MAX_OPTIONS_BYTES: usize = 80 * 1024;

/// Most characters in an instance name.
pub const MAX_NAME: usize = 200;

/// Checks an instance as a whole: each field by its own rule ([`instance_fields`]) and
/// then the rules between fields ([`instance_consistency`]).
pub fn new_instance(n: NewInstance) -> Result<NewInstance> {
    instance_fields(&n)?;
    instance_consistency(&n)?;
    Ok(n)
}

/// The rules each field of an instance obeys on its own, whatever the others hold.
/// A PATCH checks these first: a value wrong in itself is a 400, while a value that is
/// wrong only beside the stored fields (options of another kind) is a conflict.
pub fn instance_fields(n: &NewInstance) -> Result<()> {
    name(&n.name)?;
    if let Some(g) = &n.group {
        group(g)?;
    }
    // Bounded like the servers bound them (a DNS name is at most 253 characters; PostgreSQL
    // and MySQL names are far shorter than 128), so a 900 KB "host" is an error, not a row.
    // Counted in characters, as the OpenAPI document's maxLength counts them.
    for (field, value, max) in [
        ("host", &n.host, 253),
        ("username", &n.username, 128),
        ("database", &n.database, 128),
    ] {
        if let Some(v) = value
            && (v.chars().count() > max || v.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(StoreError::invalid(
                field,
                format!(
                    "{field} must be at most {max} characters without spaces or control characters"
                ),
            ));
        }
    }
    // A host is a DNS name or an IP address: a PostgreSQL "host" starting with '/' is a
    // Unix socket folder on the worker's own machine (peer authentication as the
    // worker's user), never an instance of the fleet.
    if let Some(h) = &n.host
        && !syncpool_workers::is_network_host(h)
    {
        return Err(StoreError::invalid(
            "host",
            "host must be a DNS name or an IP address (no path, no socket folder)",
        ));
    }
    if let Some(p) = n.port
        && !(1..=65535).contains(&p)
    {
        return Err(StoreError::invalid(
            "port",
            format!("port must be between 1 and 65535, got {p}"),
        ));
    }
    if let Some(v) = &n.password_env {
        syncpool_workers::check_secret_env(v)
            .map_err(|m| StoreError::invalid("password_env", m))?;
    }
    if let Some(v) = &n.password_file {
        syncpool_workers::check_secret_file(v)
            .map_err(|m| StoreError::invalid("password_file", m))?;
    }
    if !n.options.is_object() {
        return Err(StoreError::invalid(
            "options",
            "options must be a JSON object",
        ));
    }
    // Wrong whatever the kind (PostgreSQL's JSONB refuses it; it was a 500 there), so a
    // 400 here rather than a conflict with the stored kind.
    if has_nul(&n.options) {
        return Err(StoreError::invalid(
            "options",
            "options must not contain a NUL character",
        ));
    }
    if n.options.to_string().len() > MAX_OPTIONS_BYTES {
        return Err(StoreError::invalid(
            "options",
            format!("options must be at most {MAX_OPTIONS_BYTES} bytes of JSON"),
        ));
    }
    Ok(())
}

/// A NUL in an option's name or text value. Deeper values are wrong for every kind
/// anyway (each kind's options are flat), so the kind's rules refuse them; this rule is
/// the one the API's schema states (`propertyNames`, `additionalProperties`).
fn has_nul(options: &serde_json::Value) -> bool {
    options.as_object().is_some_and(|o| {
        o.iter()
            .any(|(k, v)| k.contains('\0') || v.as_str().is_some_and(|s| s.contains('\0')))
    })
}

/// An instance name: 1 to 200 characters, no control characters, no space at either end.
/// Not trimmed: a name is refused rather than silently changed.
pub fn name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.chars().count() > MAX_NAME
        || name.chars().any(char::is_control)
        || name.trim() != name
    {
        return Err(StoreError::invalid(
            "name",
            format!(
                "name must be 1 to {MAX_NAME} printable characters, without spaces at either end"
            ),
        ));
    }
    Ok(())
}

/// The rules between fields: options fit the kind, a database kind has a host, and a
/// password comes from one place.
pub fn instance_consistency(n: &NewInstance) -> Result<()> {
    if n.password_env.is_some() && n.password_file.is_some() {
        return Err(StoreError::invalid(
            "password_file",
            "set password_env or password_file, not both",
        ));
    }
    let options: BTreeMap<String, serde_json::Value> = n
        .options
        .as_object()
        .map(|o| o.clone().into_iter().collect())
        .unwrap_or_default();
    syncpool_workers::validate_options(n.kind.as_str(), &options)
        .map_err(|m| StoreError::invalid("options", m))?;
    if matches!(n.kind, InstanceKind::Postgres | InstanceKind::Mysql)
        && n.host.as_deref().is_none_or(str::is_empty)
    {
        return Err(StoreError::invalid(
            "host",
            format!("a {} instance needs a host", n.kind),
        ));
    }
    Ok(())
}

/// The strength order of `ssl_mode` (the default is `prefer`, as in libpq).
fn ssl_rank(options: &serde_json::Value) -> usize {
    let mode = options
        .get("ssl_mode")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("prefer");
    syncpool_workers::SSL_MODES
        .iter()
        .position(|m| *m == mode)
        .unwrap_or(0)
}

/// What an edit changes about where an instance's password would be sent, in words, or
/// None when it changes nothing of it: the kind, the endpoint (host, port), the login
/// (username, database), a weaker `ssl_mode` or another trusted root certificate.
pub fn endpoint_change(current: &Instance, new: &NewInstance) -> Option<String> {
    let mut changed = vec![];
    if current.kind != new.kind {
        changed.push("kind");
    }
    if current.host != new.host {
        changed.push("host");
    }
    if current.port != new.port {
        changed.push("port");
    }
    if current.username != new.username {
        changed.push("username");
    }
    if current.database != new.database {
        changed.push("database");
    }
    if ssl_rank(&new.options) < ssl_rank(&current.options) {
        changed.push("a weaker ssl_mode");
    }
    if current.options.get("ssl_root_cert") != new.options.get("ssl_root_cert") {
        changed.push("ssl_root_cert");
    }
    (!changed.is_empty()).then(|| changed.join(", "))
}

/// A password reference is bound to the endpoint it was registered with. An edit that
/// moves the instance elsewhere (see [`endpoint_change`]) keeps the stored reference only
/// when the same request names it again (`named_again`): otherwise whoever may edit
/// instances could point one at a host of their own and have a worker send it the fleet's
/// password (docs/SECURITY.md). Returns the field to name in the refusal and why.
pub fn password_rebind(
    current: &Instance,
    new: &NewInstance,
    named_again: bool,
) -> std::result::Result<(), (&'static str, String)> {
    let field = if new.password_file.is_some() {
        "password_file"
    } else {
        "password_env"
    };
    let kept = (new.password_env.is_some() || new.password_file.is_some())
        && new.password_env == current.password_env
        && new.password_file == current.password_file;
    match endpoint_change(current, new) {
        Some(what) if kept && !named_again => Err((
            field,
            format!(
                "this change ({what}) would send the stored password to another endpoint: \
                 name {field} again in the same request to keep it, or give another"
            ),
        )),
        _ => Ok(()),
    }
}

/// A retention in days: 0 to [`MAX_DAYS`].
pub fn days(d: i64) -> Result<i64> {
    days_named("days", d)
}

fn days_named(field: &'static str, d: i64) -> Result<i64> {
    if !(0..=MAX_DAYS).contains(&d) {
        return Err(StoreError::invalid(
            field,
            format!("{field} must be between 0 and {MAX_DAYS}, got {d}"),
        ));
    }
    Ok(d)
}

/// A history retention in days: 0 to [`MAX_DAYS`], named `history_days`.
pub fn history_days(d: i64) -> Result<i64> {
    days_named("history_days", d)
}

/// Days of audit trail to keep: 0 to [`MAX_DAYS`].
pub fn audit_days(d: i64) -> Result<i64> {
    days_named("audit_days", d)
}

/// The start of a history query: an RFC 3339 time, or a duration back from `now`
/// (`90s`, `30m`, `24h`, `7d`; at most six digits).
pub fn since(s: &str, now: chrono::DateTime<chrono::Utc>) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let back = s.char_indices().last().and_then(|(at, _)| {
        let (digits, unit) = s.split_at(at);
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return None,
        };
        let plain = (1..=6).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        Some(chrono::Duration::seconds(
            digits.parse::<i64>().ok().filter(|_| plain)? * seconds,
        ))
    });
    back.map(|d| now - d).ok_or_else(|| {
        StoreError::invalid(
            "since",
            format!("since must be an RFC 3339 time or a duration like 30m, 24h, 7d; got '{s}'"),
        )
    })
}

/// An instance name to filter by: a name as [`name`] accepts it (no other can match),
/// reported as `field`.
pub fn name_filter(field: &'static str, s: &str) -> Result<String> {
    name(s).map(|_| s.to_string()).map_err(as_field(field))
}

/// A check's error reported as `field`: one rule, used where a value of its kind is
/// called something else (a token-like name given as `webhook`).
fn as_field(field: &'static str) -> impl Fn(StoreError) -> StoreError {
    move |e| match e {
        StoreError::Invalid { message, .. } => StoreError::invalid(field, message),
        other => other,
    }
}

/// Longest token name.
pub const MAX_TOKEN_NAME: usize = 64;

/// Longest group name.
pub const MAX_GROUP: usize = 64;

/// Most syncs one limit may allow at once.
pub const MAX_CONCURRENT: i64 = 100_000;

/// 1 to `max` of `A-Z a-z 0-9 . _ -`: a name that goes into URLs, cookies and metric
/// labels unescaped.
fn plain_word(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An instance's group: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn group(s: &str) -> Result<()> {
    if !plain_word(s, MAX_GROUP) {
        return Err(StoreError::invalid(
            "group",
            format!("a group is 1 to {MAX_GROUP} of A-Z, a-z, 0-9, '.', '_', '-'"),
        ));
    }
    Ok(())
}

/// A limit's key: `group:NAME` (a group as [`group`] takes it) or `host:HOST` (a host as
/// an instance's).
pub fn limit_key(s: &str) -> Result<String> {
    let bad = || {
        StoreError::invalid(
            "key",
            format!("'{s}' is not a limit key: give group:NAME or host:HOST"),
        )
    };
    match s.split_once(':') {
        Some(("group", g)) => group(g).map_err(|_| bad())?,
        Some(("host", h)) => {
            if h.is_empty() || h.len() > 253 || !syncpool_workers::is_network_host(h) {
                return Err(bad());
            }
            // As instances' hosts are compared (`store::batch::keys_of`).
            return Ok(crate::store::batch::normal_key(s));
        }
        _ => return Err(bad()),
    }
    Ok(s.to_string())
}

/// A limit's maximum: 1 to [`MAX_CONCURRENT`] syncs at once.
pub fn max_concurrent(n: i64) -> Result<i64> {
    if !(1..=MAX_CONCURRENT).contains(&n) {
        return Err(StoreError::invalid(
            "max_concurrent",
            format!("max_concurrent must be between 1 and {MAX_CONCURRENT}, got {n}"),
        ));
    }
    Ok(n)
}

/// A token's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, and not a name the audit trail gives
/// to someone else (`SYNCPOOL_API_TOKEN`, `anonymous`), so a token cannot pass for them.
pub fn token_name(s: &str) -> Result<String> {
    if !plain_word(s, MAX_TOKEN_NAME) {
        return Err(StoreError::invalid(
            "name",
            format!("a token name is 1 to {MAX_TOKEN_NAME} of A-Z, a-z, 0-9, '.', '_', '-'"),
        ));
    }
    if s == "SYNCPOOL_API_TOKEN" || s == "anonymous" {
        return Err(StoreError::invalid(
            "name",
            format!("'{s}' is reserved for the audit trail"),
        ));
    }
    Ok(s.to_string())
}

/// A role: `viewer`, `operator` or `admin`.
pub fn role(s: &str) -> Result<crate::model::Role> {
    s.parse().map_err(|m| StoreError::invalid("role", m))
}

/// An audit query: `since` (a time or a duration back), `actor`, a page.
pub fn audit_filter(
    since: Option<&str>,
    actor: Option<&str>,
    limit_: i64,
    after_: Option<i64>,
) -> Result<crate::model::AuditFilter> {
    let actor = actor
        .map(|a| {
            if a.is_empty()
                || a.len() > 256
                || a.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                Err(StoreError::invalid(
                    "actor",
                    "actor must be 1 to 256 printable characters without spaces",
                ))
            } else {
                Ok(a.to_string())
            }
        })
        .transpose()?;
    Ok(crate::model::AuditFilter {
        since: since
            .map(|s| self::since(s, chrono::Utc::now()))
            .transpose()?,
        actor,
        limit: limit(limit_)?,
        after: after_.map(after).transpose()?,
    })
}

/// The raw inputs of a history query, from the CLI's flags or the API's parameters.
pub struct ChangeQuery<'a> {
    /// `instance`: a name.
    pub instance: Option<&'a str>,
    /// `since`: an RFC 3339 time or a duration back from now.
    pub since: Option<&'a str>,
    /// `kind`: a change kind.
    pub kind: Option<&'a str>,
    /// `sensitive`.
    pub sensitive: bool,
    /// `limit`.
    pub limit: i64,
    /// `after`: a keyset cursor.
    pub after: Option<i64>,
    /// `all`: every kind, baselines included (without it and without `kind`, baselines
    /// are left out: they say what an instance held, not what changed).
    pub all: bool,
}

/// Checks a history query and makes it a store filter.
pub fn change_filter(q: ChangeQuery) -> Result<crate::store::ChangeFilter> {
    Ok(crate::store::ChangeFilter {
        instance: q.instance.map(|n| name_filter("instance", n)).transpose()?,
        since: q.since.map(|s| since(s, chrono::Utc::now())).transpose()?,
        kind: q.kind.map(change_kind).transpose()?,
        sensitive_only: q.sensitive,
        without_baselines: q.kind.is_none() && !q.all,
        limit: limit(q.limit)?,
        after: q.after.map(after).transpose()?,
    })
}

/// A change kind: `baseline`, `added`, `removed` or `changed`.
pub fn change_kind(s: &str) -> Result<crate::model::ChangeKind> {
    s.parse().map_err(|m| StoreError::invalid("kind", m))
}

/// A webhook to add: a name like a token's, a URL the allow-list takes
/// (`webhooks::check_url`), a `SYNCPOOL_SECRET_*` variable, at least one event type.
pub fn webhook(
    n: crate::model::NewWebhook,
    allow: &syncpool_workers::HostAllowList,
) -> Result<crate::model::NewWebhook> {
    token_name(&n.name).map_err(as_field("name"))?;
    if n.url.len() > 2048 {
        return Err(StoreError::invalid("url", "a URL is at most 2048 bytes"));
    }
    crate::webhooks::check_url(&n.url, allow).map_err(|m| StoreError::invalid("url", m))?;
    syncpool_workers::check_secret_env(&n.secret_env).map_err(|_| {
        StoreError::invalid(
            "secret_env",
            "secret_env must name a variable SYNCPOOL_SECRET_NAME (upper-case letters, digits, \
             underscores) that holds whsec_ and base64 in the workers' environment, not the secret",
        )
    })?;
    if n.events.is_empty() {
        return Err(StoreError::invalid(
            "events",
            format!(
                "name at least one event type: {}",
                crate::model::EventType::names().join(", ")
            ),
        ));
    }
    let mut n = n;
    n.events.sort();
    n.events.dedup();
    Ok(n)
}

/// The deliveries listing's filter, as the CLI and the API take it.
pub fn delivery_filter(
    webhook: Option<&str>,
    state: Option<&str>,
    limit_: i64,
    after_: Option<i64>,
) -> Result<crate::model::DeliveryFilter> {
    Ok(crate::model::DeliveryFilter {
        webhook: webhook
            .map(|w| token_name(w).map_err(as_field("webhook")))
            .transpose()?,
        state: state
            .map(|s| s.parse().map_err(|m| StoreError::invalid("state", m)))
            .transpose()?,
        before: after_.map(after).transpose()?,
        limit: limit(limit_)?,
    })
}

/// The drift listing's filter, as the CLI and the API take it.
pub fn drift_filter(
    instance: Option<&str>,
    rule: Option<&str>,
    state: Option<&str>,
    limit_: i64,
    after_: Option<i64>,
) -> Result<crate::model::DriftFilter> {
    if let Some(r) = rule
        && !crate::policy::is_rule_name(r)
    {
        return Err(StoreError::invalid(
            "rule",
            format!("'{r}' is not a rule name (letters, digits, '-', '_', '.')"),
        ));
    }
    Ok(crate::model::DriftFilter {
        instance: instance.map(|i| name_filter("instance", i)).transpose()?,
        rule: rule.map(str::to_string),
        state: Some(match state {
            None => crate::model::ViolationState::Open,
            Some(s) => s.parse().map_err(|m| StoreError::invalid("state", m))?,
        }),
        before: after_.map(after).transpose()?,
        limit: limit(limit_)?,
    })
}

/// A keyset cursor: a positive id.
pub fn after(a: i64) -> Result<i64> {
    if a < 1 {
        return Err(StoreError::invalid(
            "after",
            format!("after must be a positive id, got {a}"),
        ));
    }
    Ok(a)
}

/// A page size: 1 to [`MAX_LIMIT`].
pub fn limit(l: i64) -> Result<i64> {
    if !(1..=MAX_LIMIT).contains(&l) {
        return Err(StoreError::invalid(
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}, got {l}"),
        ));
    }
    Ok(l)
}

/// A page offset: not negative.
pub fn offset(o: i64) -> Result<i64> {
    if o < 0 {
        return Err(StoreError::invalid(
            "offset",
            format!("offset must not be negative, got {o}"),
        ));
    }
    Ok(o)
}

/// A session type, as the `sync_type` filter names it.
pub fn sync_type(s: &str) -> Result<SyncType> {
    s.parse().map_err(|m| StoreError::invalid("sync_type", m))
}

/// One of the session statuses.
pub fn session_status(s: &str) -> Result<SessionStatus> {
    s.parse().map_err(|m| StoreError::invalid("status", m))
}

/// One of the record statuses.
pub fn record_status(s: &str) -> Result<crate::model::RecordStatus> {
    crate::model::RecordStatus::parse(s).ok_or_else(|| {
        let all: Vec<&str> = crate::model::RecordStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        StoreError::invalid(
            "status",
            format!("unknown status '{s}' (expected one of: {})", all.join(", ")),
        )
    })
}

/// Parses `KEY=VALUE` options from the CLI; values that parse as JSON numbers or booleans
/// are kept as such.
pub fn option_pairs(pairs: &[String]) -> Result<serde_json::Value> {
    let mut map = serde_json::Map::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            return Err(StoreError::invalid(
                "options",
                format!("option '{p}' must look like KEY=VALUE"),
            ));
        };
        let value = serde_json::from_str::<serde_json::Value>(v)
            .ok()
            .filter(|j| j.is_number() || j.is_boolean())
            .unwrap_or_else(|| serde_json::Value::String(v.to_string()));
        map.insert(k.trim().to_string(), value);
    }
    Ok(serde_json::Value::Object(map))
}
