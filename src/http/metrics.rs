//! HTTP surface. For now: `/metrics` for `worker --metrics-bind` and the demo; the full
//! API builds on this router.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio::sync::Mutex;

use crate::store::Store;

#[derive(Clone)]
struct MetricsState {
    store: Arc<dyn Store>,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    /// Fleet figures are read from the database at most once a second, however often
    /// Prometheus (or several of them) scrape.
    last_refresh: Arc<Mutex<Refresh>>,
}

/// The last read of the fleet figures: when, and the session metrics' text it rendered.
#[derive(Default)]
struct Refresh {
    at: Option<Instant>,
    sessions: String,
}

/// `/metrics` for Prometheus: this process's metrics plus the fleet-wide figures read
/// from the database (at most once a second, however often it is scraped).
pub fn metrics_router(store: Arc<dyn Store>) -> Router {
    let state = MetricsState {
        store,
        handle: crate::metrics::install(),
        last_refresh: Arc::default(),
    };
    Router::new()
        .route("/metrics", get(render))
        .with_state(state)
}

async fn render(State(s): State<MetricsState>) -> String {
    let sessions = {
        let mut last = s.last_refresh.lock().await;
        if last.at.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            match s.store.fleet_gauges().await {
                Ok(g) => {
                    crate::metrics::fleet(&g);
                    last.sessions = crate::metrics::render_sessions(&g);
                }
                Err(e) => tracing::warn!(error = %e, "reading fleet gauges failed"),
            }
            let (size, idle) = s.store.pool().size_and_idle();
            crate::metrics::pool(size, idle);
            last.at = Some(Instant::now());
        }
        last.sessions.clone()
    };
    let mut text = s.handle.render();
    text.push_str(&sessions);
    text
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` in the background (a
/// worker's port); returns the bound address.
pub async fn serve_metrics(
    store: Arc<dyn Store>,
    addr: &str,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind metrics address {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "serving /metrics");
    let app = metrics_router(store.clone()).merge(super::api::health_routes().with_state(
        super::AppState {
            store,
            tokens: vec![],
            site: super::Site::default(),
            webhook_allow: Default::default(),
        },
    ));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(local)
}
