//! The policy and its drift: `GET|PUT /api/v1/policy`, `GET /api/v1/drift` (roles in
//! `access.rs`).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use serde_json::{Value, json};

use super::extract::Params;
use super::{ApiError, AppState};
use crate::model::{DriftPage, Policy, PolicySetOutcome, StoredPolicy, ViolationState};
use crate::{policy, validate};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/policy", get(policy_get).put(policy_set))
        .route("/api/v1/drift", get(drift_list))
}

#[utoipa::path(get, path = "/api/v1/policy", responses((status = 200, description = "The policy in force, as validated and as given, with its version", body = StoredPolicy), (status = 404, description = "No policy was ever set", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn policy_get(State(s): State<AppState>) -> Result<Json<StoredPolicy>, ApiError> {
    match s.store.policy_get().await? {
        Some(p) => Ok(Json(p)),
        None => Err(ApiError::NotFound("no policy was ever set".into())),
    }
}

#[utoipa::path(put, path = "/api/v1/policy", request_body(content = Policy, description = "The policy as JSON (application/json) or the same as YAML (application/yaml, described in docs/POLICY.md)"), responses((status = 200, description = "Stored as the next version and evaluated against every instance's current accounts", body = PolicySetOutcome), (status = 400, description = "Bad input; the error names the rule and the field (rules[1].deny[0])", body = super::error::ErrorBody), (status = 409, description = "Two rules have the same name", body = super::error::ErrorBody), (status = 415, description = "Neither JSON nor YAML", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn policy_set(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PolicySetOutcome>, ApiError> {
    let media = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if !matches!(
        media.as_deref(),
        Some("application/json" | "application/yaml" | "application/x-yaml" | "text/yaml")
    ) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::field("policy", "the policy is not UTF-8 text"))?;
    let parsed = policy::parse(text).map_err(crate::store::StoreError::from)?;
    Ok(Json(s.store.policy_set(&parsed, text).await?))
}

#[utoipa::path(get, path = "/api/v1/drift", params(("instance" = Option<String>, Query, description = "Only this instance's violations"), ("rule" = Option<String>, Query, description = "Only this rule's"), ("state" = Option<ViolationState>, Query, description = "open (the default), resolved or all"), ("limit" = Option<i64>, Query), ("after" = Option<i64>, Query, description = "The next_after of the previous page")), responses((status = 200, description = "Violations, newest first", body = DriftPage), (status = 400, description = "Bad input; the error names the field", body = super::error::ErrorBody), (status = 401, description = "Missing or wrong bearer token (WWW-Authenticate: Bearer)", body = super::error::ErrorBody)))]
pub(super) async fn drift_list(
    State(s): State<AppState>,
    q: Params,
) -> Result<Json<DriftPage>, ApiError> {
    let filter = validate::drift_filter(
        q.str("instance"),
        q.str("rule"),
        q.str("state"),
        q.int("limit", 50)?,
        q.opt_int("after")?,
    )?;
    let items = s.store.drift_list(&filter).await?;
    Ok(Json(DriftPage::new(items, filter.limit)))
}

/// A rule's name as `policy::is_rule_name` takes it.
pub(super) fn rule_name_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": policy::MAX_RULE_NAME,
        "pattern": "^[A-Za-z0-9._-]+$",
    })
}

/// The policy document exactly as `policy::parse` takes it (but for the one rule no
/// schema states: names unique, a 409).
pub(super) fn policy_schema() -> Value {
    let text = |no_glob: bool| {
        let pattern = if no_glob {
            "^[^*?\\x00-\\x1f\\x7f-\\x9f]*$"
        } else {
            "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
        };
        json!({"type": "string", "minLength": 1, "maxLength": policy::MAX_PATTERN, "pattern": pattern})
    };
    let list =
        |items: Value| json!({"type": "array", "maxItems": policy::MAX_LIST, "items": items});
    let non_empty =
        |field: &str| json!({"required": [field], "properties": {field: {"minItems": 1}}});
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {"rules": {
            "type": "array",
            "maxItems": policy::MAX_RULES,
            "items": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name"],
                "properties": {
                    "name": rule_name_schema(),
                    "instances": list(text(false)),
                    "groups": list(text(false)),
                    "kinds": list(json!({"type": "string", "enum": crate::model::InstanceKind::names()})),
                    "deny": list(json!({"type": "string", "enum": crate::model::Attribute::names()})),
                    "except_accounts": list(text(false)),
                    "deny_accounts": list(text(false)),
                    "require_accounts": list(text(true)),
                },
                "anyOf": [non_empty("deny"), non_empty("deny_accounts"), non_empty("require_accounts")],
            },
        }},
    })
}
