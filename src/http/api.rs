//! The `/api/v1` routes and health.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::extract::{ApiJson, Params, RequiredJson, instance_id, session_id};
use super::{ApiError, AppState};
use crate::model::{
    CleanupCounts, Instance, NewInstance, Session, SessionCreated, StoredAccount, SyncType,
};
use crate::store::{RecordFilter, SessionFilter};
use crate::validate;

type ApiResult<T> = Result<T, ApiError>;

#[derive(Serialize, ToSchema)]
pub struct SessionPage {
    pub items: Vec<Session>,
    pub total: i64,
}

#[derive(Serialize, ToSchema)]
pub struct InstancePage {
    pub items: Vec<Instance>,
    pub total: usize,
}

#[derive(Serialize, ToSchema)]
pub struct AccountPage {
    pub items: Vec<StoredAccount>,
    pub total: usize,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub database: Option<String>,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sessions", post(session_create).get(session_list))
        .route("/api/v1/sessions/{session_id}", get(session_get))
        .route(
            "/api/v1/sessions/{session_id}/records",
            get(session_records),
        )
        .route("/api/v1/sessions/{session_id}/cancel", post(session_cancel))
        .route("/api/v1/sessions/{session_id}/retry", post(session_retry))
        .route(
            "/api/v1/instances",
            post(instance_create).get(instance_list),
        )
        .route(
            "/api/v1/instances/{id}",
            get(instance_get)
                .patch(instance_patch)
                .delete(instance_delete),
        )
        .route("/api/v1/instances/{id}/sync", post(instance_sync))
        .route("/api/v1/instances/{id}/accounts", get(instance_accounts))
        .route("/api/v1/maintenance/cleanup", post(cleanup))
        .route("/api/v1/changes", get(changes_list))
        .route("/api/v1/locks", get(locks_list))
        .route("/api/v1/queue", get(queue_stats))
}

/// Liveness and readiness, also served on a worker's metrics port for its orchestrator.
pub fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "OK", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        database: None,
    })
}

#[utoipa::path(get, path = "/readyz", security(()), responses((status = 200, description = "OK", body = Health), (status = 503, description = "The database is not ready", body = super::error::ErrorBody)))]
pub(super) async fn readyz(State(s): State<AppState>) -> ApiResult<Json<Health>> {
    match s.store.ready().await {
        Ok(true) => Ok(Json(Health {
            status: "ready".into(),
            database: Some(s.store.kind().into()),
        })),
        _ => Err(ApiError::Unavailable),
    }
}

/// Which instances to sync: name them, or ask for every active one with `"all": true`.
/// An empty request is refused: syncing the whole fleet is never an accident.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionRequest {
    /// Ids of the instances to sync (each at least 1, at most 100,000 of them).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 100000, value_type = Option<Vec<i64>>)]
    instance_ids: Option<Vec<i64>>,
    /// `true`: every active instance. Exclusive with `instance_ids`.
    #[serde(default)]
    all: Option<bool>,
    /// `manual_single` or `manual_batch` (default: single for one id, batch otherwise);
    /// `scheduled` sessions are started by the scheduler only.
    #[serde(default)]
    sync_type: Option<SyncType>,
}

/// Most instances one request may name.
pub(super) const MAX_IDS: usize = 100_000;

#[utoipa::path(post, path = "/api/v1/sessions", request_body = SessionRequest, responses((status = 202, description = "Accepted: the session is enqueued", body = SessionCreated), (status = 404, description = "An instance id names no instance (field instance_ids)", body = super::error::ErrorBody), (status = 409, description = "\"all\": true, but no instance is active", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn session_create(
    State(s): State<AppState>,
    ApiJson(req): RequiredJson<SessionRequest>,
) -> ApiResult<impl IntoResponse> {
    let all = req.all.unwrap_or(false);
    match (&req.instance_ids, all) {
        (None, false) => {
            return Err(ApiError::field(
                "instance_ids",
                "name the instances to sync (instance_ids) or pass \"all\": true for every active instance",
            ));
        }
        (Some(_), true) => {
            return Err(ApiError::field(
                "all",
                "give instance_ids or \"all\": true, not both",
            ));
        }
        (Some(ids), false) => {
            if ids.is_empty() {
                return Err(ApiError::field(
                    "instance_ids",
                    "instance_ids must not be empty (pass \"all\": true to sync every active instance)",
                ));
            }
            if ids.len() > MAX_IDS {
                return Err(ApiError::field(
                    "instance_ids",
                    format!("at most {MAX_IDS} instance ids per session"),
                ));
            }
            if ids.iter().any(|&id| id < 1) {
                return Err(ApiError::field(
                    "instance_ids",
                    "instance ids are positive integers",
                ));
            }
        }
        (None, true) => {}
    }
    if req.sync_type == Some(SyncType::Scheduled) {
        return Err(ApiError::field(
            "sync_type",
            "scheduled sessions are started by the scheduler; use manual_single or manual_batch",
        ));
    }
    let ids = req.instance_ids.map(|mut v| {
        v.sort_unstable();
        v.dedup();
        v
    });
    let kind = req.sync_type.unwrap_or(match &ids {
        Some(v) => SyncType::manual(v.len()),
        None => SyncType::ManualBatch,
    });
    let created = s
        .store
        .session_create(kind, ids.as_deref())
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound(message) => ApiError::MissingReference {
                field: "instance_ids".into(),
                message,
            },
            other => other.into(),
        })?;
    Ok((StatusCode::ACCEPTED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/sessions", params(("status" = Option<String>, Query), ("sync_type" = Option<String>, Query), ("limit" = Option<i64>, Query), ("offset" = Option<i64>, Query)), responses((status = 200, description = "OK", body = SessionPage), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn session_list(
    State(s): State<AppState>,
    q: Params,
) -> ApiResult<Json<SessionPage>> {
    let filter = SessionFilter {
        status: q.str("status").map(validate::session_status).transpose()?,
        limit: validate::limit(q.int("limit", 50)?)?,
        offset: validate::offset(q.int("offset", 0)?)?,
        sync_type: q.str("sync_type").map(validate::sync_type).transpose()?,
    };
    let (items, total) = s.store.session_list(&filter).await?;
    Ok(Json(SessionPage { items, total }))
}

#[utoipa::path(get, path = "/api/v1/sessions/{session_id}", params(("session_id" = String, Path)), responses((status = 200, description = "The session and its totals; its records are paged at /records", body = Session), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn session_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    let id = session_id(&id)?;
    // A summary: a session of 10,000 records was 3.2 MB per read (docs/BENCHMARKS.md).
    let session = s
        .store
        .session_summary(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session '{id}'")))?;
    Ok(Json(session))
}

#[utoipa::path(get, path = "/api/v1/sessions/{session_id}/records", params(("session_id" = String, Path), ("status" = Option<String>, Query, description = "Only records in this status"), ("limit" = Option<i64>, Query), ("after" = Option<i64>, Query, description = "The next_after of the previous page")), responses((status = 200, description = "A page of the session's records in id order", body = crate::model::RecordPage), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn session_records(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Params,
) -> ApiResult<Json<crate::model::RecordPage>> {
    let id = session_id(&id)?;
    let filter = record_filter(&q, 50)?;
    let (_, items) = s
        .store
        .session_records(id, &filter)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session '{id}'")))?;
    Ok(Json(crate::model::RecordPage::new(items, filter.limit)))
}

/// `status`, `limit` and `after` of a records page, checked.
pub(super) fn record_filter(q: &Params, default_limit: i64) -> ApiResult<RecordFilter> {
    Ok(RecordFilter {
        status: q.str("status").map(validate::record_status).transpose()?,
        limit: validate::limit(q.int("limit", default_limit)?)?,
        after: q
            .opt_int("after")?
            .map(validate::after)
            .transpose()?
            .unwrap_or(0),
    })
}

#[utoipa::path(post, path = "/api/v1/sessions/{session_id}/cancel", params(("session_id" = String, Path)), responses((status = 200, description = "OK", body = Session), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn session_cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = session_id(&id)?;
    let cancelled = s
        .store
        .session_cancel(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session '{id}'")))?;
    // Recorded after the commit, never by the store: a rolled-back cancel counts nothing.
    cancelled
        .finished
        .iter()
        .for_each(crate::metrics::session_finished);
    let session = cancelled.session;
    Ok(Json(
        serde_json::to_value(session).map_err(anyhow::Error::from)?,
    ))
}

#[utoipa::path(post, path = "/api/v1/sessions/{session_id}/retry", params(("session_id" = String, Path)), responses((status = 202, description = "Accepted: a new session over the instances whose records failed or were cancelled, naming this one (retry_of)", body = SessionCreated), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 409, description = "The session is still running, or none of its records failed or was cancelled", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn session_retry(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<SessionCreated>)> {
    let id = session_id(&id)?;
    let created = s
        .store
        .session_retry(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown session '{id}'")))?;
    Ok((StatusCode::ACCEPTED, Json(created)))
}

#[utoipa::path(post, path = "/api/v1/instances", request_body = NewInstance, responses((status = 201, description = "Created; the new resource", body = Instance), (status = 409, description = "Conflict with the current state", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn instance_create(
    State(s): State<AppState>,
    ApiJson(new): RequiredJson<NewInstance>,
) -> ApiResult<impl IntoResponse> {
    let new = validate::new_instance(new)?;
    Ok((
        StatusCode::CREATED,
        Json(s.store.instance_insert(&new).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/instances", responses((status = 200, description = "OK", body = InstancePage), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn instance_list(State(s): State<AppState>) -> ApiResult<Json<InstancePage>> {
    let items = s.store.instance_list().await?;
    Ok(Json(InstancePage {
        total: items.len(),
        items,
    }))
}

async fn load_instance(s: &AppState, id: &str) -> ApiResult<Instance> {
    let id = instance_id(id)?;
    s.store
        .instance_get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown instance {id}")))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}", params(("id" = i64, Path)), responses((status = 200, description = "OK", body = Instance), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn instance_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Instance>> {
    Ok(Json(load_instance(&s, &id).await?))
}

/// Applies the fields present in the body; `null` clears an optional field.
#[utoipa::path(patch, path = "/api/v1/instances/{id}", params(("id" = i64, Path)), request_body = Object, responses((status = 200, description = "OK", body = Instance), (status = 409, description = "A value clashes with the stored instance or the name is taken; the error names the field", body = super::error::ErrorBody), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn instance_patch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<Instance>> {
    let current = load_instance(&s, &id).await?;
    // Named again only by the field that still holds a reference, as a string: a `null`
    // for the other field names nothing.
    let names_env = patch.get("password_env").is_some_and(Value::is_string);
    let names_file = patch.get("password_file").is_some_and(Value::is_string);
    let mut new = current.as_new();
    for (key, value) in patch {
        let text = |v: &Value| -> ApiResult<Option<String>> {
            match v {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s.clone())),
                _ => Err(ApiError::field(
                    &key,
                    format!("{key} must be a string or null"),
                )),
            }
        };
        match key.as_str() {
            "name" => {
                new.name =
                    text(&value)?.ok_or_else(|| ApiError::field("name", "name cannot be null"))?
            }
            "kind" => {
                new.kind = text(&value)?
                    .ok_or_else(|| ApiError::field("kind", "kind cannot be null"))?
                    .parse()
                    .map_err(|m: String| ApiError::field("kind", m))?
            }
            "host" => new.host = text(&value)?,
            "username" => new.username = text(&value)?,
            "database" => new.database = text(&value)?,
            "password_env" => new.password_env = text(&value)?,
            "password_file" => new.password_file = text(&value)?,
            "group" => new.group = text(&value)?,
            "port" => {
                new.port = match value {
                    Value::Null => None,
                    v => Some(v.as_i64().ok_or_else(|| {
                        ApiError::field("port", "port must be an integer or null")
                    })?),
                }
            }
            "options" => new.options = value,
            "active" => {
                new.active = value
                    .as_bool()
                    .ok_or_else(|| ApiError::field("active", "active must be true or false"))?
            }
            other => return Err(ApiError::field(other, format!("unknown field '{other}'"))),
        }
    }
    // Each value must be right on its own (400); a value that clashes only with what is
    // stored (options of another kind, a database kind left without a host) is a 409.
    validate::instance_fields(&new)?;
    validate::instance_consistency(&new).map_err(|e| match e {
        crate::store::StoreError::Invalid { field, message } => ApiError::ConflictingField {
            field: field.into(),
            message,
        },
        other => other.into(),
    })?;
    let named_again =
        (new.password_env.is_some() && names_env) || (new.password_file.is_some() && names_file);
    validate::password_rebind(&current, &new, named_again).map_err(|(field, message)| {
        ApiError::ConflictingField {
            field: field.into(),
            message,
        }
    })?;
    let updated = s.store.instance_update(current.id, &new).await?;
    super::log_endpoint_change(&current, &updated);
    Ok(Json(updated))
}

#[utoipa::path(delete, path = "/api/v1/instances/{id}", params(("id" = i64, Path)), responses((status = 204, description = "Deleted"), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn instance_delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let inst = load_instance(&s, &id).await?;
    s.store.instance_delete(inst.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/sync", params(("id" = i64, Path)), responses((status = 202, description = "Accepted: the session is enqueued", body = SessionCreated), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn instance_sync(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let inst = load_instance(&s, &id).await?;
    let created = s
        .store
        .session_create(SyncType::ManualSingle, Some(&[inst.id]))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/accounts", params(("id" = i64, Path), ("include_deleted" = Option<bool>, Query)), responses((status = 200, description = "OK", body = AccountPage), (status = 404, description = "No such resource", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn instance_accounts(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Params,
) -> ApiResult<Json<Value>> {
    let inst = load_instance(&s, &id).await?;
    let items = s
        .store
        .accounts_list(inst.id, q.bool("include_deleted")?)
        .await?;
    Ok(Json(json!({"total": items.len(), "items": items})))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CleanupRequest {
    #[serde(default = "seven")]
    pub days: i64,
    #[serde(default = "a_year")]
    pub history_days: i64,
    #[serde(default = "a_year")]
    pub audit_days: i64,
}
fn seven() -> i64 {
    7
}
fn a_year() -> i64 {
    365
}

#[utoipa::path(post, path = "/api/v1/maintenance/cleanup", request_body = CleanupRequest, responses((status = 200, description = "OK", body = CleanupCounts), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn cleanup(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CleanupRequest>,
) -> ApiResult<Json<CleanupCounts>> {
    Ok(Json(
        s.store
            .cleanup(
                validate::days(req.days)?,
                validate::history_days(req.history_days)?,
                validate::audit_days(req.audit_days)?,
            )
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/changes", params(("instance" = Option<String>, Query, description = "Only this instance, by the name it had then"), ("since" = Option<String>, Query, description = "RFC 3339 time, or a duration back from now: 30m, 24h, 7d"), ("kind" = Option<String>, Query, description = "Only this kind: baseline, added, removed, changed; without it (and without all=true) baselines are left out"), ("all" = Option<bool>, Query, description = "Every kind, baselines included"), ("sensitive" = Option<bool>, Query, description = "Only privilege-sensitive changes"), ("limit" = Option<i64>, Query), ("after" = Option<i64>, Query, description = "The next_after of the previous page")), responses((status = 200, description = "Account changes, newest first", body = crate::model::ChangePage), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn changes_list(
    State(s): State<AppState>,
    q: Params,
) -> ApiResult<Json<crate::model::ChangePage>> {
    let filter = validate::change_filter(validate::ChangeQuery {
        instance: q.str("instance"),
        since: q.str("since"),
        kind: q.str("kind"),
        sensitive: q.bool("sensitive")?,
        limit: q.int("limit", 50)?,
        after: q.opt_int("after")?,
        all: q.bool("all")?,
    })?;
    let items = s.store.changes_list(&filter).await?;
    Ok(Json(crate::model::ChangePage::new(items, filter.limit)))
}

#[utoipa::path(get, path = "/api/v1/locks", responses((status = 200, description = "Every instance lease, oldest first, with the jobs waiting for its instance; a lapsed lease (expired: true) is taken over by the next worker that wants the instance", body = crate::model::LeaseList), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn locks_list(
    State(s): State<AppState>,
) -> ApiResult<Json<crate::model::LeaseList>> {
    let items = s.store.locks_list().await?;
    Ok(Json(crate::model::LeaseList {
        total: items.len(),
        items,
    }))
}

#[utoipa::path(get, path = "/api/v1/queue", responses((status = 200, description = "syncpool's jobs in the queue: depth by state, due and delayed, the job due longest", body = crate::model::QueueStats), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn queue_stats(
    State(s): State<AppState>,
) -> ApiResult<Json<crate::model::QueueStats>> {
    Ok(Json(s.store.queue_stats(None).await?))
}
