//! The previous platform's three routes, kept so that its producers keep working. Their
//! shapes follow that platform: a `success` flag beside the data.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::api::CleanupRequest;
use super::extract::{ApiJson, Params, session_id};
use super::{ApiError, AppState};
use crate::model::SyncType;
use crate::validate;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/account-sync-optimized/sync-all", post(sync_all))
        .route("/account-sync-optimized/sync-details-batch", get(details))
        .route("/account-sync-optimized/cleanup", post(cleanup))
}

#[utoipa::path(post, path = "/account-sync-optimized/sync-all", responses((status = 200, description = "OK", body = Object), (status = 409, description = "No instance is active", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn sync_all(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let created = s.store.session_create(SyncType::ManualBatch, None).await?;
    Ok(Json(json!({
        "success": true,
        "message": format!("sync started for {} instances", created.total_instances),
        "session_id": created.session_id,
        "total_instances": created.total_instances,
        "status": created.status,
    })))
}

#[utoipa::path(get, path = "/account-sync-optimized/sync-details-batch", params(("session_id" = String, Query), ("status" = Option<String>, Query, description = "Only records in this status"), ("limit" = Option<i64>, Query), ("after" = Option<i64>, Query, description = "The next_after of the previous page")), responses((status = 200, description = "OK: the previous platform's shape; records paged (1,000 by default), next page at data.next_after", body = Object), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn details(State(s): State<AppState>, q: Params) -> Result<Json<Value>, ApiError> {
    let raw = q
        .str("session_id")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::field("session_id", "session_id is required"))?;
    let id = session_id(raw)?;
    let filter = super::api::record_filter(&q, 1000)?;
    let (session, records) = s
        .store
        .session_records(id, &filter)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session '{id}'")))?;
    let page = crate::model::RecordPage::new(records, filter.limit);
    let counts = s.store.session_record_counts(id).await?;
    let count = |st: &str| {
        counts
            .iter()
            .filter(|(s, _)| s.as_str() == st)
            .map(|(_, n)| n)
            .sum::<i64>()
    };
    Ok(Json(json!({
        "success": true,
        "data": {
            "session": session,
            "duration_seconds": session.duration_seconds,
            "success_rate": session.success_rate,
            "instance_statistics": {
                "total": counts.iter().map(|(_, n)| n).sum::<i64>(),
                "completed": count("completed"),
                "failed": count("failed"),
                "cancelled": count("cancelled"),
                "running": count("running"),
                "pending": count("pending"),
            },
            "records": page.items,
            "next_after": page.next_after,
        }
    })))
}

#[utoipa::path(post, path = "/account-sync-optimized/cleanup", operation_id = "legacy_cleanup", request_body = CleanupRequest, responses((status = 200, description = "OK", body = Object), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn cleanup(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CleanupRequest>,
) -> Result<Json<Value>, ApiError> {
    let counts = s
        .store
        .cleanup(
            validate::days(req.days)?,
            validate::history_days(req.history_days)?,
            validate::audit_days(req.audit_days)?,
        )
        .await?;
    Ok(Json(
        json!({"success": true, "message": format!("deleted {} sessions", counts.sessions_deleted), "data": counts}),
    ))
}
