//! The account change history's reads on PostgreSQL (its writes are in `pipeline.rs`,
//! in the finish transaction).

use sqlx::{PgPool, Row};

use crate::model::AccountChange;
use crate::store::{ChangeFilter, Result};

pub(super) async fn changes_list(pool: &PgPool, f: &ChangeFilter) -> Result<Vec<AccountChange>> {
    // Each filter is "NULL or equal", so one statement (and one plan) serves them all.
    sqlx::query(
        "SELECT id, instance_id, instance_name, session_id, record_id, username, host, kind, \
         detail, flags, sensitive, changed_at FROM account_changes \
         WHERE ($1::text IS NULL OR instance_name = $1) \
         AND ($2::timestamptz IS NULL OR changed_at >= $2) \
         AND ($3::text IS NULL OR kind = $3) AND (NOT $4 OR sensitive) \
         AND ($5::bigint IS NULL OR id < $5) AND (NOT $7 OR kind <> 'baseline') \
         ORDER BY id DESC LIMIT $6",
    )
    .bind(&f.instance)
    .bind(f.since)
    .bind(&f.kind)
    .bind(f.sensitive_only)
    .bind(f.after)
    .bind(f.limit)
    .bind(f.without_baselines)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        let flags: serde_json::Value = r.try_get("flags")?;
        Ok(AccountChange {
            id: r.try_get("id")?,
            instance_id: r.try_get("instance_id")?,
            instance_name: r.try_get("instance_name")?,
            session_id: r.try_get("session_id")?,
            record_id: r.try_get("record_id")?,
            username: r.try_get("username")?,
            host: r.try_get("host")?,
            kind: r.try_get("kind")?,
            detail: r.try_get("detail")?,
            flags: serde_json::from_value(flags).unwrap_or_default(),
            sensitive: r.try_get("sensitive")?,
            changed_at: r.try_get("changed_at")?,
        })
    })
    .collect()
}
