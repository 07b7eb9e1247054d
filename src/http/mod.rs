//! `syncpool serve`: the HTTP API of DESIGN.md §6, `/metrics`, health, and the legacy
//! routes of the previous platform. Handlers validate, call the [`Store`], and shape JSON;
//! they never hold SQL.

mod api;
mod error;
mod extract;
mod legacy;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;

pub use error::ApiError;
pub use metrics::{metrics_router, serve_metrics};

use crate::store::Store;

/// Request bodies above this are refused with 413 before they are parsed.
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// `SYNCPOOL_API_TOKEN`, when set.
    pub token: Option<Arc<str>>,
}

/// The whole application: API, legacy routes, health, metrics and the OpenAPI document.
pub fn app(state: AppState) -> Router {
    let protected = api::routes()
        .merge(legacy::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state.clone());
    Router::new()
        .merge(protected)
        .merge(api::open_routes().with_state(state.clone()))
        .merge(metrics_router(state.store.clone()))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// Compares in time that does not depend on where the strings differ, so the token
/// cannot be guessed byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(req).await)
}

/// Binds `bind` (port 0 picks a free port), logs the address, serves until `shutdown`.
pub async fn serve(
    state: AppState,
    bind: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {bind}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "syncpool API listening on http://{addr}");
    let app = app(state);
    let handle = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((addr, handle))
}
