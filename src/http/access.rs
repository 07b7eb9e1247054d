//! Who may call which route, and the audit trail of what they changed.
//!
//! Every API route is in [`RULES`] with the least role that may call it and, if it
//! changes something, the action the audit trail records. A route missing from the table
//! is refused to everyone (fail closed), and `tests/roles.rs` walks the OpenAPI document
//! with a token of each role, so a new route cannot slip past either. The console's
//! forms have their own table (`console/guard.rs`) over the same [`Authn`].
//!
//! A bearer token is one of `SYNCPOOL_API_TOKEN` (an admin, named so in the trail) or a
//! stored token (`syncpool tokens create`), found by its hash on every request, so a
//! revocation holds at once on every replica. A server with neither kind of token on
//! loopback is open: everyone is an admin named `anonymous`. The first stored token
//! closes it, and it stays closed (revoked tokens still count).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, MAX_BODY, constant_time_eq};
use crate::model::{AuditOutcome, NewAuditEvent, Principal, Role};
use crate::store::Store;

/// A route's rule: the least role that may call it, and what the trail calls it when
/// it changes something (None: a read, not audited).
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// HTTP method.
    pub method: &'static str,
    /// The route as the router and the OpenAPI document write it.
    pub path: &'static str,
    /// The least role that may call it.
    pub role: Role,
    /// The audit trail's name for it, for routes that change something.
    pub action: Option<&'static str>,
}

pub(crate) const fn read(method: &'static str, path: &'static str, role: Role) -> Rule {
    Rule {
        method,
        path,
        role,
        action: None,
    }
}

pub(crate) const fn change(
    method: &'static str,
    path: &'static str,
    role: Role,
    action: &'static str,
) -> Rule {
    Rule {
        method,
        path,
        role,
        action: Some(action),
    }
}

use Role::{Admin, Operator, Viewer};

/// Every API and legacy route behind a token.
pub const RULES: &[Rule] = &[
    read("GET", "/api/v1/sessions", Viewer),
    change("POST", "/api/v1/sessions", Operator, "session.create"),
    read("GET", "/api/v1/sessions/{session_id}", Viewer),
    read("GET", "/api/v1/sessions/{session_id}/records", Viewer),
    change(
        "POST",
        "/api/v1/sessions/{session_id}/cancel",
        Operator,
        "session.cancel",
    ),
    change(
        "POST",
        "/api/v1/sessions/{session_id}/retry",
        Operator,
        "session.retry",
    ),
    read("GET", "/api/v1/instances", Viewer),
    change("POST", "/api/v1/instances", Admin, "instance.create"),
    read("GET", "/api/v1/instances/{id}", Viewer),
    change("PATCH", "/api/v1/instances/{id}", Admin, "instance.update"),
    change("DELETE", "/api/v1/instances/{id}", Admin, "instance.delete"),
    change(
        "POST",
        "/api/v1/instances/{id}/sync",
        Operator,
        "instance.sync",
    ),
    read("GET", "/api/v1/instances/{id}/accounts", Viewer),
    change("POST", "/api/v1/maintenance/cleanup", Admin, "cleanup"),
    read("GET", "/api/v1/changes", Viewer),
    read("GET", "/api/v1/locks", Viewer),
    read("GET", "/api/v1/queue", Viewer),
    read("GET", "/api/v1/tokens", Admin),
    change("POST", "/api/v1/tokens", Admin, "token.create"),
    change("DELETE", "/api/v1/tokens/{name}", Admin, "token.revoke"),
    read("GET", "/api/v1/audit", Admin),
    read("GET", "/api/v1/limits", Viewer),
    change("PUT", "/api/v1/limits/{key}", Admin, "limit.set"),
    change("DELETE", "/api/v1/limits/{key}", Admin, "limit.remove"),
    read("GET", "/api/v1/policy", Viewer),
    change("PUT", "/api/v1/policy", Admin, "policy.set"),
    read("GET", "/api/v1/drift", Viewer),
    read("GET", "/api/v1/events", Viewer),
    // A webhook's URL may carry its receiver's token: admins only, reads too.
    read("GET", "/api/v1/webhooks", Admin),
    change("POST", "/api/v1/webhooks", Admin, "webhook.create"),
    change("DELETE", "/api/v1/webhooks/{name}", Admin, "webhook.remove"),
    read("GET", "/api/v1/webhook-deliveries", Admin),
    change(
        "POST",
        "/api/v1/webhook-deliveries/{id}/redeliver",
        Admin,
        "webhook.redeliver",
    ),
    change(
        "POST",
        "/account-sync-optimized/sync-all",
        Operator,
        "session.create",
    ),
    read("GET", "/account-sync-optimized/sync-details-batch", Viewer),
    change("POST", "/account-sync-optimized/cleanup", Admin, "cleanup"),
];

/// The rule for `method` on the route `path` (as matched, with its `{params}`).
pub fn rule(method: &str, path: &str) -> Option<&'static Rule> {
    find(RULES, method, path)
}

/// The rule of `rules` for `method` on `path`; HEAD is GET's (axum serves it with the
/// GET handler, so it must need what GET needs, no more and no less).
pub fn find<'r>(rules: &'r [Rule], method: &str, path: &str) -> Option<&'r Rule> {
    let method = if method.eq_ignore_ascii_case("HEAD") {
        "GET"
    } else {
        method
    };
    rules
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
}

/// The trail's name for the holder of a `SYNCPOOL_API_TOKEN` token.
pub const ENV_TOKEN_NAME: &str = "SYNCPOOL_API_TOKEN";
/// The actor of an open server (no token anywhere, loopback only).
pub const ANONYMOUS: &str = "anonymous";

/// Finds who a bearer token belongs to.
#[derive(Clone)]
pub struct Authn {
    store: Arc<dyn Store>,
    /// `SYNCPOOL_API_TOKEN`'s tokens: admins.
    env: Vec<Arc<str>>,
    /// Set once a stored token has been seen: the server is closed for good.
    closed: Arc<AtomicBool>,
}

impl Authn {
    /// Over `store`'s tokens and the `env` ones.
    pub fn new(store: Arc<dyn Store>, env: &[Arc<str>]) -> Self {
        Authn {
            store,
            env: env.to_vec(),
            closed: Arc::new(AtomicBool::new(!env.is_empty())),
        }
    }

    /// Whether everyone is let in: no token configured or stored.
    pub async fn open(&self) -> Result<bool, ApiError> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let closed = self.store.tokens_exist().await?;
        if closed {
            self.closed.store(true, Ordering::Relaxed);
        }
        Ok(!closed)
    }

    /// The index of the `SYNCPOOL_API_TOKEN` token `given` is, comparing every one in
    /// constant time (no early exit to time).
    pub fn env_index(&self, given: &str) -> Option<usize> {
        self.env.iter().enumerate().fold(None, |found, (i, t)| {
            let ok = constant_time_eq(given.trim().as_bytes(), t.as_bytes());
            if ok && found.is_none() {
                Some(i)
            } else {
                found
            }
        })
    }

    /// The `SYNCPOOL_API_TOKEN` tokens.
    pub fn env(&self) -> &[Arc<str>] {
        &self.env
    }

    /// The store the tokens are in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The stored token `given` is, by its hash.
    pub async fn stored(&self, given: &str) -> Result<Option<Principal>, ApiError> {
        let given = given.trim();
        if given.is_empty() || given.len() > super::MAX_TOKEN_LEN {
            return Ok(None);
        }
        Ok(self
            .store
            .token_by_hash(&crate::tokens::hash(given))
            .await?)
    }

    /// Who presents `bearer`: an env token's holder, a stored token's, `anonymous` on
    /// an open server (whatever it presents), or no one.
    pub async fn principal(&self, bearer: &str) -> Result<Option<Principal>, ApiError> {
        if self.env_index(bearer).is_some() {
            return Ok(Some(admin(ENV_TOKEN_NAME)));
        }
        if let Some(p) = self.stored(bearer).await? {
            return Ok(Some(p));
        }
        Ok(self.open().await?.then(|| admin(ANONYMOUS)))
    }
}

/// An admin of this name.
pub fn admin(name: &str) -> Principal {
    Principal {
        name: name.into(),
        role: Role::Admin,
    }
}

/// The 403 of a principal whose role is short of `needed`.
pub fn forbidden(who: &Principal, needed: Role, what: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "{what} needs the {needed} role; '{}' is a {}",
        who.name, who.role
    ))
}

/// The client's address, as the trail records it.
pub fn client(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Authenticates, checks the route's role, and runs a changing route inside an audit
/// scope (`crate::audit`), recording what it did not record itself.
pub(super) async fn guard(
    State(authn): State<Authn>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let who = authn
        .principal(super::bearer(&req))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().clone();
    let Some(rule) = rule(method.as_str(), &path) else {
        // Fail closed: a route nobody gave a role to is nobody's.
        return Err(ApiError::Forbidden(format!(
            "no role is granted {method} {path}"
        )));
    };
    let Some(action) = rule.action else {
        if who.role < rule.role {
            return Err(forbidden(&who, rule.role, &format!("{method} {path}")));
        }
        return Ok(next.run(req).await);
    };
    let denied =
        (who.role < rule.role).then(|| forbidden(&who, rule.role, &format!("{method} {path}")));
    let secrets: Vec<&str> = authn.env.iter().map(|t| t.as_ref()).collect();
    let ctx = Audited {
        store: &authn.store,
        who: &who,
        action,
        secrets: &secrets,
    };
    audited(ctx, denied, IntoResponse::into_response, req, next).await
}

/// Who does what, for [`audited`].
pub(super) struct Audited<'a> {
    /// Where the rows go.
    pub store: &'a Arc<dyn Store>,
    /// Who asks.
    pub who: &'a Principal,
    /// The trail's name for what they ask.
    pub action: &'a str,
    /// Values never recorded (the `SYNCPOOL_API_TOKEN` tokens), besides `audit::scrub`'s.
    pub secrets: &'a [&'a str],
}

/// Runs a changing request inside an audit scope (`crate::audit`) as `who` doing
/// `action`, or refuses it with `denied` (rendered by `render`); then records whatever
/// no change recorded in its own transaction: a refusal, a failure, or nothing changed.
pub(super) async fn audited(
    ctx: Audited<'_>,
    denied: Option<ApiError>,
    render: fn(ApiError) -> Response,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Audited {
        store,
        who,
        action,
        secrets,
    } = ctx;
    let client = client(&req);
    let method = req.method().clone();
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY))?;
    let fields = request_fields(
        &method,
        parts.uri.path(),
        parts.uri.query(),
        &bytes,
        secrets,
    );
    let event = NewAuditEvent {
        actor: who.name.clone(),
        client,
        action: action.into(),
        targets: vec![],
        fields,
        outcome: AuditOutcome::Refused,
        detail: None,
    };
    let refusal = denied.as_ref().map(ToString::to_string);
    let req = Request::from_parts(parts, Body::from(bytes));
    let (response, scope) = crate::audit::run(event, async {
        match denied {
            Some(e) => render(e),
            None => next.run(req).await,
        }
    })
    .await;
    if scope.written() {
        return Ok(response);
    }
    let (response, message) = error_message(response).await;
    let outcome = outcome_of(response.status());
    // A message may echo the input (`'spt_…' is not a limit key`): scrubbed like fields.
    let detail = refusal
        .or(message)
        .map(|d| crate::audit::scrub_text(&d, secrets))
        .or_else(|| (outcome == AuditOutcome::Ok).then(|| "nothing changed".into()));
    if let Err(e) = store.audit_insert(&scope.closing(outcome, detail)).await {
        // The request is answered either way: its change, if any, committed with its
        // own row; only the record of a refusal is lost, and the log says so.
        tracing::error!(error = %e, action, "could not record a refused request in the audit trail");
    }
    Ok(response)
}

/// How a response's status reads in the trail.
pub fn outcome_of(status: StatusCode) -> AuditOutcome {
    if status.is_server_error() {
        AuditOutcome::Failed
    } else if status.is_client_error() {
        AuditOutcome::Refused
    } else {
        AuditOutcome::Ok
    }
}

/// The fields of a changing request: its path, query and body (JSON, or a form's
/// pairs), secrets left out.
pub fn request_fields(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    secrets: &[&str],
) -> Value {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else if let Ok(v) = serde_json::from_slice::<Value>(body) {
        v
    } else if let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
        Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )
    } else {
        json!(format!("({} bytes, neither JSON nor a form)", body.len()))
    };
    crate::audit::scrub(
        json!({
            "method": method.as_str(),
            "path": path,
            "query": query,
            "body": body,
        }),
        secrets,
    )
}

/// The message of an error as it left a handler, for responses whose body is not our
/// JSON error shape (the console's error pages).
#[derive(Clone, Debug)]
pub struct ErrorMessage(pub String);

/// The message of an error response (our JSON error shape), and the response rebuilt.
pub async fn error_message(response: Response) -> (Response, Option<String>) {
    if response.status().is_success() || response.status().is_redirection() {
        return (response, None);
    }
    if let Some(ErrorMessage(m)) = response.extensions().get::<ErrorMessage>() {
        let m = m.clone();
        return (response, Some(m));
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {}", parts.status.as_u16()));
    (
        Response::from_parts(parts, Body::from(bytes)),
        Some(message),
    )
}
