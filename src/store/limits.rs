//! The storage of concurrency limits (`batch/limits.rs` enforces them in the grant).
//! Written once for both databases in `common/limits.rs`.

use async_trait::async_trait;

use super::Result;
use crate::model::Limit;

/// Concurrency limits per group or host.
#[async_trait]
pub trait LimitStore: Send + Sync + 'static {
    /// Sets the limit on `key` (`group:NAME` or `host:HOST`) to `max_concurrent`; the
    /// next grant under it obeys. Lowering it stops no running sync.
    async fn limit_set(&self, key: &str, max_concurrent: i64) -> Result<Limit>;
    /// Removes the limit on `key`; false if there was none.
    async fn limit_remove(&self, key: &str) -> Result<bool>;
    /// Every limit with its slots in use and waiting jobs, by key.
    async fn limits_list(&self) -> Result<Vec<Limit>>;
}
