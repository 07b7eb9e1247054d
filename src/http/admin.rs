//! The admin's routes: API tokens, the audit trail and concurrency limits (roles in
//! `access.rs`).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, put};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Params, RequiredJson};
use super::{ApiError, AppState};
use crate::model::{AuditPage, Limit, LimitList, Role, TokenCreated, TokenInfo};
use crate::validate;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(token_list).post(token_create))
        .route("/api/v1/tokens/{name}", delete(token_revoke))
        .route("/api/v1/audit", get(audit_list))
        .route("/api/v1/limits", get(limit_list))
        .route("/api/v1/limits/{key}", put(limit_set).delete(limit_remove))
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    /// Every token, working or revoked, by name.
    pub items: Vec<TokenInfo>,
}

/// A token to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenRequest {
    /// Unique; 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'.
    name: String,
    /// `viewer`, `operator` or `admin`.
    role: Role,
}

#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, description = "Every token (never the token itself)", body = TokenList), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn token_list(State(s): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        items: s.store.tokens_list().await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = TokenRequest, responses((status = 201, description = "Created: the token, shown this once (syncpool keeps its hash)", body = TokenCreated), (status = 409, description = "A working token has this name", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn token_create(
    State(s): State<AppState>,
    super::extract::ApiJson(req): RequiredJson<TokenRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let name = validate::token_name(&req.name)?;
    let token = crate::tokens::generate();
    let info = s
        .store
        .token_insert(&name, req.role, &crate::tokens::hash(&token))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            name: info.name,
            role: info.role,
            token,
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{name}", params(("name" = String, Path)), responses((status = 204, description = "Revoked: it no longer works, for the API or the console"), (status = 404, description = "No working token has this name", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn token_revoke(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = validate::token_name(&name)?;
    if !s.store.token_revoke(&name).await? {
        return Err(ApiError::NotFound(format!(
            "no working token named '{name}'"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/audit", params(("since" = Option<String>, Query, description = "RFC 3339 time, or a duration back from now: 30m, 24h, 7d"), ("actor" = Option<String>, Query, description = "Only this actor: a token's name, SYNCPOOL_API_TOKEN, anonymous, or cli:USER"), ("limit" = Option<i64>, Query), ("after" = Option<i64>, Query, description = "The next_after of the previous page")), responses((status = 200, description = "The audit trail, newest first", body = AuditPage), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn audit_list(
    State(s): State<AppState>,
    q: Params,
) -> Result<Json<AuditPage>, ApiError> {
    let filter = validate::audit_filter(
        q.str("since"),
        q.str("actor"),
        q.int("limit", 50)?,
        q.opt_int("after")?,
    )?;
    let items = s.store.audit_list(&filter).await?;
    Ok(Json(AuditPage::new(items, filter.limit)))
}

/// A limit's new maximum.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitRequest {
    /// Most syncs under the key at once (1 to 100,000).
    max_concurrent: i64,
}

#[utoipa::path(get, path = "/api/v1/limits", responses((status = 200, description = "Every concurrency limit with its slots in use and its waiting jobs", body = LimitList), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn limit_list(State(s): State<AppState>) -> Result<Json<LimitList>, ApiError> {
    Ok(Json(LimitList {
        items: s.store.limits_list().await?,
    }))
}

#[utoipa::path(put, path = "/api/v1/limits/{key}", params(("key" = String, Path, description = "group:NAME or host:HOST")), request_body = LimitRequest, responses((status = 200, description = "Set: the next grant under the key obeys it; lowering it stops no running sync", body = Limit), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn limit_set(
    State(s): State<AppState>,
    Path(key): Path<String>,
    super::extract::ApiJson(req): RequiredJson<LimitRequest>,
) -> Result<Json<Limit>, ApiError> {
    let key = validate::limit_key(&key)?;
    let max = validate::max_concurrent(req.max_concurrent)?;
    Ok(Json(s.store.limit_set(&key, max).await?))
}

#[utoipa::path(delete, path = "/api/v1/limits/{key}", params(("key" = String, Path, description = "group:NAME or host:HOST")), responses((status = 204, description = "Removed: syncs under the key are no longer held back"), (status = 404, description = "No limit on this key", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn limit_remove(
    State(s): State<AppState>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let key = validate::limit_key(&key)?;
    if !s.store.limit_remove(&key).await? {
        return Err(ApiError::NotFound(format!("no limit on '{key}'")));
    }
    Ok(StatusCode::NO_CONTENT)
}
