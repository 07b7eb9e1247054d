//! Request extractors whose rejections are our JSON errors naming the field, instead of
//! axum's plain-text ones.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

use super::{ApiError, MAX_BODY};

/// A JSON object body, sent as `application/json` (or `*+json`; any other declared type
/// is 415, even with an empty body). An empty body declared as JSON reads as `{}`; so
/// does one without a type (`curl -X POST`) where the body is `OPTIONAL`, and elsewhere
/// it is 415 ([`RequiredJson`]).
pub struct ApiJson<T, const OPTIONAL: bool = true>(pub T);

/// A body the route cannot do without: sent without one and without a type, 415.
pub type RequiredJson<T> = ApiJson<T, false>;

impl<S: Send + Sync, T: DeserializeOwned, const OPTIONAL: bool> FromRequest<S>
    for ApiJson<T, OPTIONAL>
{
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
        // A body in another format is not guessed at, even when it parses as JSON; and an
        // empty one declared as text or a form is refused too: that is what another
        // site's page can send without asking (a "simple" request).
        let empty = bytes.iter().all(u8::is_ascii_whitespace);
        let bytes = match json_type {
            Some(false) => return Err(ApiError::UnsupportedMediaType),
            None if !empty || !OPTIONAL => return Err(ApiError::UnsupportedMediaType),
            _ if empty => Bytes::from_static(b"{}"),
            _ => bytes,
        };
        let mut value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest {
                code: "malformed_json",
                message: e.to_string(),
                field: None,
            })?;
        // Every body of this API is an object; serde would also read a struct from an
        // array (`[30]` as `{"days": 30}`), which no client means.
        if !value.is_object() {
            return Err(ApiError::BadRequest {
                code: "invalid_body",
                message: "the body must be a JSON object".into(),
                field: None,
            });
        }
        whole_numbers_as_integers(&mut value);
        serde_path_to_error::deserialize(value)
            .map(ApiJson::<T, OPTIONAL>)
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
                ApiError::BadRequest {
                    code: "invalid_field",
                    message,
                    field,
                }
            })
    }
}

/// JSON has one number type: `7.0` is the integer 7 to JSON Schema (and so to the OpenAPI
/// document), but serde reads it as a float and would refuse it for an `i64` field. Whole
/// numbers within `i64` become integers before the body is read into its type.
fn whole_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f)
            {
                // In range and whole, so the cast is exact.
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
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
            Some(v) => plain_int(v).ok_or_else(|| {
                ApiError::field(name, format!("{name} must be an integer, got '{v}'"))
            }),
        }
    }
    /// An optional integer parameter.
    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.0.get(name).map(|_| self.int(name, 0)).transpose()
    }
    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(ApiError::field(
                name,
                format!("{name} must be true or false, got '{v}'"),
            )),
        }
    }
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
    /// Without the empty ones: an HTML form sends an unselected filter as `status=`,
    /// which means "any" on a console page (the API refuses it).
    pub fn without_empty(mut self) -> Self {
        self.0.retain(|_, v| !v.is_empty());
        self
    }
}

/// A session id in the one form syncpool prints (`8-4-4-4-12` hex digits), as the OpenAPI
/// document's pattern says; the braced, URN and hyphen-less forms `Uuid::parse_str` would
/// also take are refused, so the document and the server agree on every string.
pub fn session_id(s: &str) -> Result<uuid::Uuid, ApiError> {
    Some(s)
        .filter(|s| s.len() == 36)
        .and_then(|s| uuid::Uuid::try_parse(s).ok())
        .ok_or_else(|| ApiError::field("session_id", format!("'{s}' is not a session id (a UUID)")))
}

/// An integer written plainly (`-12`, `7`): no `+`, no spaces, as JSON Schema's
/// `integer` reads a parameter.
fn plain_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub fn delivery_id(s: &str) -> Result<i64, ApiError> {
    plain_int(s)
        .filter(|i| *i > 0)
        .ok_or_else(|| ApiError::field("id", format!("'{s}' is not a delivery id")))
}

pub fn instance_id(s: &str) -> Result<i64, ApiError> {
    plain_int(s)
        .filter(|i| *i > 0)
        .ok_or_else(|| ApiError::field("id", format!("'{s}' is not an instance id")))
}
