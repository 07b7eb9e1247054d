//! Rows of syncpool's tables as model types, one column mapping for both databases.

use chrono::Utc;

use crate::model::{Instance, Record, Session};
use crate::store::sql::Fetch;
use crate::store::{Result, parse_status, parse_uuid};

/// The columns [`session`] reads.
pub(crate) const SESSION_COLS: &str = "id, session_id, sync_type, status, total_instances, \
     successful_instances, failed_instances, cancelled_instances, cancel_requested, created_at, \
     started_at, completed_at, updated_at, retry_of";

/// An `instances` row (`SELECT *`, or `i.*` among other columns).
pub(crate) fn instance<D: Fetch>(row: &D::Row) -> Result<Instance> {
    let options = match D::get(row, "options")? {
        serde_json::Value::Null => serde_json::json!({}),
        v => v,
    };
    Ok(Instance {
        id: D::get(row, "id")?,
        name: D::get(row, "name")?,
        kind: parse_status(D::get(row, "kind")?)?,
        host: D::get(row, "host")?,
        port: D::get(row, "port")?,
        username: D::get(row, "username")?,
        database: D::get(row, "database")?,
        password_env: D::get(row, "password_env")?,
        password_file: D::get(row, "password_file")?,
        options,
        active: D::get(row, "active")?,
        group: D::get(row, "group_name")?,
        created_at: D::get(row, "created_at")?,
        updated_at: D::get(row, "updated_at")?,
        history_since: D::get(row, "history_since")?,
    })
}

/// A `sync_sessions` row read with [`SESSION_COLS`].
pub(crate) fn session<D: Fetch>(row: &D::Row) -> Result<Session> {
    Ok(Session {
        id: D::get(row, "id")?,
        session_id: D::get(row, "session_id")?,
        sync_type: parse_status(D::get(row, "sync_type")?)?,
        status: parse_status(D::get(row, "status")?)?,
        total_instances: D::get(row, "total_instances")?,
        successful_instances: D::get(row, "successful_instances")?,
        failed_instances: D::get(row, "failed_instances")?,
        cancelled_instances: D::get(row, "cancelled_instances")?,
        cancel_requested: D::get(row, "cancel_requested")?,
        created_at: D::get(row, "created_at")?,
        started_at: D::get(row, "started_at")?,
        completed_at: D::get(row, "completed_at")?,
        updated_at: D::get(row, "updated_at")?,
        retry_of: D::get::<Option<String>>(row, "retry_of")?
            .as_deref()
            .map(parse_uuid)
            .transpose()?,
        duration_seconds: None,
        success_rate: None,
    }
    .with_derived(Utc::now()))
}

/// A `sync_instance_records` row (`SELECT *`, or `r.*` among other columns).
pub(crate) fn record<D: Fetch>(row: &D::Row) -> Result<Record> {
    Ok(Record {
        id: D::get(row, "id")?,
        instance_id: D::get(row, "instance_id")?,
        instance_name: D::get(row, "instance_name")?,
        status: parse_status(D::get(row, "status")?)?,
        attempts: D::get(row, "attempts")?,
        worker_id: D::get(row, "worker_id")?,
        lock_wait_ms: D::get(row, "lock_wait_ms")?,
        started_at: D::get(row, "started_at")?,
        completed_at: D::get(row, "completed_at")?,
        accounts_total: D::get(row, "accounts_total")?,
        accounts_added: D::get(row, "accounts_added")?,
        accounts_removed: D::get(row, "accounts_removed")?,
        accounts_changed: D::get(row, "accounts_changed")?,
        error: D::get(row, "error")?,
    })
}
