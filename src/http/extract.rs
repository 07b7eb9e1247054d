//! Request extractors whose rejections are our JSON errors naming the field, instead of
//! axum's plain-text ones.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

use super::{ApiError, MAX_BODY};

/// A JSON body, sent as `application/json` (or `*+json`; anything else is 415). An empty
/// body reads as `{}`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(MAX_BODY)
            } else {
                ApiError::BadRequest {
                    code: "invalid_body",
                    message: e.body_text(),
                    field: None,
                }
            }
        })?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
            Bytes::from_static(b"{}")
        } else if json_type != Some(true) {
            // A body in another format is not guessed at, even when it parses as JSON.
            return Err(ApiError::UnsupportedMediaType);
        } else {
            bytes
        };
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = inner.to_string();
                // The path names the field ("." is the whole body, "?" unknown); for an unknown
                // field at the top level, take its name from the message.
                let field = match path.as_str() {
                    "." | "?" => message
                        .strip_prefix("unknown field `")
                        .and_then(|r| r.split('`').next())
                        .map(str::to_string),
                    _ => Some(path),
                };
                let code = if inner.is_syntax() || inner.is_eof() {
                    "malformed_json"
                } else {
                    "invalid_field"
                };
                ApiError::BadRequest {
                    code,
                    message,
                    field,
                }
            })
    }
}

/// Query parameters as strings; handlers parse each one and name it when it is wrong.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .map(|v| Params(v.into_iter().collect()))
            .map_err(|e| ApiError::BadRequest {
                code: "invalid_query",
                message: e.to_string(),
                field: None,
            })
    }
}

impl Params {
    pub fn int(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                ApiError::field(name, format!("{name} must be an integer, got '{v}'"))
            }),
        }
    }
    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(v) => Err(ApiError::field(
                name,
                format!("{name} must be true or false, got '{v}'"),
            )),
        }
    }
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

pub fn session_id(s: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(s.trim())
        .map_err(|_| ApiError::field("session_id", format!("'{s}' is not a session id (a UUID)")))
}

pub fn instance_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| ApiError::field("id", format!("'{s}' is not an instance id")))
}
