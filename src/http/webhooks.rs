//! Webhooks and their deliveries: `/api/v1/webhooks`, `/api/v1/webhook-deliveries`
//! (admin only: a URL may carry a receiver's token). A webhook's host must be in the
//! server's `--webhook-allow`; the served OpenAPI document states that list as the URL's
//! pattern, so the document promises what the server takes.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};

use super::extract::{Params, RequiredJson};
use super::{ApiError, AppState};
use crate::model::{DeliveryPage, NewWebhook, Webhook, WebhookList};
use crate::validate;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/webhooks", get(webhook_list).post(webhook_create))
        .route("/api/v1/webhooks/{name}", delete(webhook_remove))
        .route("/api/v1/webhook-deliveries", get(delivery_list))
        .route(
            "/api/v1/webhook-deliveries/{id}/redeliver",
            post(delivery_redeliver),
        )
}

#[utoipa::path(get, path = "/api/v1/webhooks", responses((status = 200, description = "Every webhook (never a secret: only the variable that holds it)", body = WebhookList), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn webhook_list(State(s): State<AppState>) -> Result<Json<WebhookList>, ApiError> {
    Ok(Json(WebhookList {
        items: s.store.webhook_list().await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/webhooks", request_body = NewWebhook, responses((status = 201, description = "Added: events written from now on are delivered to it", body = Webhook), (status = 400, description = "Bad input; the error names the field (a URL whose host is not in --webhook-allow: url)", body = super::error::ErrorBody), (status = 409, description = "A webhook has this name", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn webhook_create(
    State(s): State<AppState>,
    super::extract::ApiJson(req): RequiredJson<NewWebhook>,
) -> Result<(StatusCode, Json<Webhook>), ApiError> {
    let new = validate::webhook(req, &s.webhook_allow)?;
    Ok((StatusCode::CREATED, Json(s.store.webhook_add(&new).await?)))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{name}", params(("name" = String, Path)), responses((status = 204, description = "Removed; its pending deliveries are dead"), (status = 404, description = "No webhook has this name", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn webhook_remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = validate::token_name(&name)?;
    if !s.store.webhook_remove(&name).await? {
        return Err(ApiError::NotFound(format!("no webhook named '{name}'")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/webhook-deliveries", params(("webhook" = Option<String>, Query, description = "Only this webhook's"), ("state" = Option<String>, Query, description = "pending, delivered or dead"), ("limit" = Option<i64>, Query), ("after" = Option<i64>, Query, description = "The next_after of the previous page")), responses((status = 200, description = "Deliveries, newest first", body = DeliveryPage), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn delivery_list(
    State(s): State<AppState>,
    q: Params,
) -> Result<Json<DeliveryPage>, ApiError> {
    let filter = validate::delivery_filter(
        q.str("webhook"),
        q.str("state"),
        q.int("limit", 50)?,
        q.opt_int("after")?,
    )?;
    let items = s.store.deliveries_list(&filter).await?;
    Ok(Json(DeliveryPage::new(items, filter.limit)))
}

#[utoipa::path(post, path = "/api/v1/webhook-deliveries/{id}/redeliver", params(("id" = i64, Path)), responses((status = 202, description = "Pending again, due now, retried for another --webhook-retry-for"), (status = 404, description = "No such delivery, or its webhook was removed", body = super::error::ErrorBody), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn delivery_redeliver(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = super::extract::delivery_id(&id)?;
    if !s.store.delivery_redeliver(id).await? {
        return Err(ApiError::NotFound(format!(
            "no delivery {id} to send again"
        )));
    }
    Ok(StatusCode::ACCEPTED)
}
