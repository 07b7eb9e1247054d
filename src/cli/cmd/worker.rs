//! `syncpool worker`: a worker process, syncing instances until SIGINT/SIGTERM, with
//! `/metrics`, `/healthz` and `/readyz` on `--metrics-bind` when given.

use std::future::Future;
use std::sync::Arc;

use crate::cli::{CliError, Out, TimingArgs};
use crate::store::Store;

/// `syncpool worker`: runs `concurrency` syncs at once until `shutdown` resolves.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    concurrency: u16,
    metrics_bind: Option<String>,
    timing: &TimingArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Out {
    let settings = timing.settings()?;
    if let Some(addr) = metrics_bind {
        crate::http::serve_metrics(store.clone(), &addr).await?;
    }
    let worker_id = crate::worker::new_worker_id();
    tracing::info!(worker_id, concurrency, "worker started");
    crate::worker::run(store, settings, concurrency as usize, worker_id, shutdown)
        .await
        .map_err(CliError::Runtime)
}
