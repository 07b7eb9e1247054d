//! `syncpool serve`: the HTTP API (its routes are in the OpenAPI document), `/metrics`, health, the legacy
//! routes of the previous platform, and the operator console at `/`. Handlers validate, call the [`Store`], and shape JSON;
//! they never hold SQL.

mod access;
mod admin;
mod api;
mod console;
mod error;
mod extract;
mod legacy;
mod metrics;
mod openapi;
mod policy;
mod site;
mod stream;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware;
use axum::routing::get;

pub use error::ApiError;
pub use metrics::{metrics_router, serve_metrics};
pub use site::Site;

use crate::store::Store;

/// Request bodies above this are refused with 413 before they are parsed.
pub const MAX_BODY: usize = 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// syncpool's database.
    pub store: Arc<dyn Store>,
    /// The accepted bearer tokens (`SYNCPOOL_API_TOKEN`, comma-separated so that a new
    /// token can be rolled out before the old one is retired): admins. With none and no
    /// stored token (`syncpool tokens create`), the server is open (`access.rs`).
    pub tokens: Vec<Arc<str>>,
    /// The names and origins this server calls its own (`--allowed-host`,
    /// `--public-url`); [`serve`] adds the bound address.
    pub site: Site,
    /// The hosts webhooks may name (`--webhook-allow`); empty: none can be added.
    pub webhook_allow: syncpool_workers::HostAllowList,
}

/// Longest accepted token. Comparisons always cover this many bytes, so their time
/// tells nothing about a token's content or its length.
pub const MAX_TOKEN_LEN: usize = 256;

/// Shortest accepted token, in characters: a short token falls to guessing.
pub const MIN_TOKEN_LEN: usize = 16;

/// The whole application: API, legacy routes, health, metrics and the OpenAPI document.
pub fn app(state: AppState) -> Router {
    let authn = access::Authn::new(state.store.clone(), &state.tokens);
    let protected = api::routes()
        .merge(admin::routes())
        .merge(policy::routes())
        .merge(webhooks::routes())
        .merge(stream::routes())
        .merge(legacy::routes())
        .route_layer(middleware::from_fn_with_state(authn, access::guard))
        // Outside the token check: another site's request is refused whoever sent it.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            site::same_site_changes,
        ))
        .with_state(state.clone());
    Router::new()
        .merge(protected)
        // Routes that never need the token. Tools need the document to talk to the API;
        // it holds no secret.
        .merge(
            api::health_routes()
                .route("/api/v1/openapi.json", get(openapi::serve))
                .with_state(state.clone()),
        )
        .merge(metrics_router(state.store.clone()))
        .merge(console::routes(state.clone()))
        // Unknown routes and wrong methods answer in the API's JSON error shape too.
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::NotFound(format!("no route {}", uri.path()))
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed(method.to_string())
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state, site::own_host_only))
}

/// Compares `given` with `token` in a time that depends on neither their content nor
/// their lengths: both are read over [`MAX_TOKEN_LEN`] bytes, padded with zeros.
fn constant_time_eq(given: &[u8], token: &[u8]) -> bool {
    let mut diff = (given.len() != token.len()) as u8 | (given.len() > MAX_TOKEN_LEN) as u8;
    for i in 0..MAX_TOKEN_LEN {
        let a = given.get(i).copied().unwrap_or(0);
        let b = token.get(i).copied().unwrap_or(0);
        diff |= a ^ b;
    }
    std::hint::black_box(diff) == 0
}

/// The credentials of an `Authorization` header: the scheme is case-insensitive (RFC 9110).
fn bearer(req: &Request) -> &str {
    req.headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or("")
}

/// Logs an instance edit that changed where its password goes (kind, endpoint, login or
/// TLS), with the old and new endpoint: such a move is rare and worth an operator's eye.
/// Names only where the password comes from, never a password.
fn log_endpoint_change(before: &crate::model::Instance, after: &crate::model::Instance) {
    if let Some(what) = crate::validate::endpoint_change(before, &after.as_new()) {
        let at = |i: &crate::model::Instance| {
            format!(
                "{}://{}@{}:{}/{}",
                i.kind,
                i.username.as_deref().unwrap_or(""),
                i.host.as_deref().unwrap_or(""),
                i.port.map(|p| p.to_string()).unwrap_or_default(),
                i.database.as_deref().unwrap_or("")
            )
        };
        tracing::warn!(
            instance = %after.name,
            changed = %what,
            from = %at(before),
            to = %at(after),
            password_env = after.password_env.as_deref().unwrap_or(""),
            password_file = after.password_file.as_deref().unwrap_or(""),
            "instance moved to another endpoint"
        );
    }
}

/// Binds `bind` (port 0 picks a free port), logs the address, serves until `shutdown`.
pub async fn serve(
    state: AppState,
    bind: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    if state
        .tokens
        .iter()
        .any(|t| t.chars().count() < MIN_TOKEN_LEN)
    {
        anyhow::bail!("SYNCPOOL_API_TOKEN: each token must be at least {MIN_TOKEN_LEN} characters");
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {bind}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "syncpool API listening on http://{addr}");
    let state = AppState {
        site: state.site.clone().bound(addr),
        ..state
    };
    // Streams never end by themselves: they end when shutdown begins, else the graceful
    // shutdown would wait for a SIEM to hang up.
    let streams = tokio_util::sync::CancellationToken::new();
    let stop_streams = streams.clone();
    let shutdown = async move {
        shutdown.await;
        stop_streams.cancel();
    };
    // The peer's address limits wrong sign-ins per client.
    let app = app(state)
        .layer(axum::Extension(stream::Stop(streams)))
        .into_make_service_with_connect_info::<SocketAddr>();
    let handle = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((addr, handle))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_match_only_when_equal_whatever_their_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(
            !constant_time_eq(b"abc", b"abc\0"),
            "zero padding is not equality"
        );
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(
            !constant_time_eq(&[b'a'; 300], &[b'a'; 300]),
            "over-long tokens never match"
        );
    }
}
