//! `syncpool migrate` and `syncpool cleanup`: looking after syncpool's own database.

use crate::cli::{CliError, Out, print_json};
use crate::store::{self, Store};
use crate::text::plural;
use crate::validate;

/// `syncpool migrate`: creates the database if missing, applies the migrations and says
/// what it did. It opens the database itself: what is pending must be read before
/// migrating, so that it can say what it applied.
pub(crate) async fn migrate(database_url: &str) -> Out {
    let store = store::connect(database_url).await?;
    let pending = store.migrations_pending().await?;
    store
        .migrate()
        .await
        .map_err(|e| CliError::Runtime(anyhow::anyhow!(e).context("migrating the database")))?;
    match pending {
        Some(0) => println!("the database is up to date: no migration to apply"),
        Some(n) => println!("applied {}", plural(n as i64, "migration")),
        None => println!("created syncpool's tables"),
    }
    Ok(())
}

/// `syncpool cleanup`: deletes finished sessions older than `days` (their records and
/// jobs), expired locks, and account changes older than `history_days`.
pub(crate) async fn cleanup(
    store: &dyn Store,
    days: i64,
    history_days: i64,
    audit_days: i64,
    json: bool,
) -> Out {
    let counts = store
        .cleanup(
            validate::days(days)?,
            validate::history_days(history_days)?,
            validate::audit_days(audit_days)?,
        )
        .await?;
    if json {
        print_json(&counts);
    } else {
        println!(
            "deleted {} sessions, {} records, {} jobs, {} locks, {} account changes, {} audit rows",
            counts.sessions_deleted,
            counts.records_deleted,
            counts.jobs_deleted,
            counts.locks_deleted,
            counts.changes_deleted,
            counts.audit_deleted
        );
    }
    Ok(())
}
