//! The API's one error type: the caller's fault is a 4xx naming the field, anything else a
//! 500 whose cause is logged, never returned (it could hold a connection string).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// Every way a request can fail, each with its status and code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or a field is wrong.
    #[error("{message}")]
    BadRequest {
        /// A stable machine-readable reason (`invalid_field`, `malformed_json`, ...).
        code: &'static str,
        /// What is wrong, for a person.
        message: String,
        /// The field at fault, where there is one.
        field: Option<String>,
    },
    /// 404: no such resource or route.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request clashes with the current state (a taken name, no active instance).
    #[error("{0}")]
    Conflict(String),
    /// A field of the body names something that does not exist (404, naming the field):
    /// the request is well formed, the thing it refers to is missing.
    #[error("{message}")]
    MissingReference {
        /// The field that names it.
        field: String,
        /// What is missing.
        message: String,
    },
    /// A field whose value is fine on its own but not beside the resource's stored state
    /// (409, naming the field), as when a PATCH gives options of another kind.
    #[error("{message}")]
    ConflictingField {
        /// The field whose value clashes.
        field: String,
        /// With what.
        message: String,
    },
    /// 403: a console form without this visitor's CSRF token, or a changing request
    /// from another site.
    #[error("{0}")]
    Forbidden(String),
    /// 421: the request names a host that is not this server's (`Host`).
    #[error("{0}")]
    MisdirectedRequest(String),
    /// 401: no bearer token, or not one of the configured ones.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// 413: the body is over the limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// 503: the database does not answer.
    #[error("the database is not ready")]
    Unavailable,
    /// 405: the route exists, not with this method.
    #[error("this route does not take {0}")]
    MethodNotAllowed(String),
    /// 415: a body that is not declared as JSON.
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// 500: anything else; logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: "invalid_field",
            message: message.into(),
            field: Some(field.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid { field, message } => ApiError::field(&field, message),
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            e @ StoreError::NoInstances => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

/// `{"error": {"code", "message", "field"?}}`
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = match &self {
            ApiError::BadRequest { code, field, .. } => {
                (StatusCode::BAD_REQUEST, *code, field.clone())
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::MissingReference { field, .. } => {
                (StatusCode::NOT_FOUND, "not_found", Some(field.clone()))
            }
            ApiError::ConflictingField { field, .. } => {
                (StatusCode::CONFLICT, "conflict", Some(field.clone()))
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::MisdirectedRequest(_) => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                Some("Host".to_string()),
            ),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", None),
            ApiError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                Some("Content-Type".to_string()),
            ),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
            }
        };
        let message = match &self {
            ApiError::Internal(_) => "internal error; see the server log".to_string(),
            other => other.to_string(),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: code.to_string(),
                    message,
                    field,
                },
            }),
        )
            .into_response();
        if matches!(self, ApiError::Unauthorized) {
            // RFC 9110: a 401 names the scheme the client should use.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"syncpool\""),
            );
        }
        response
    }
}
