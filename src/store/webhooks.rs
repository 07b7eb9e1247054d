//! The storage of webhooks and their deliveries (the outbox's rows are written by the
//! transactions that cause events: `batch/drift.rs`, `common/events.rs`). Written once
//! for both databases in `common/webhooks.rs`.

use async_trait::async_trait;

use super::Result;
use crate::model::{
    AccountChange, AttemptOutcome, Delivery, DeliveryFilter, DeliveryJob, DeliveryState, Event,
    NewWebhook, Webhook,
};

/// Webhooks, and the deliveries the workers claim, send and settle.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Registers a webhook (checked by the caller: `validate::webhook`); a conflict if
    /// the name is taken. Events written from now on are delivered to it.
    async fn webhook_add(&self, new: &NewWebhook) -> Result<Webhook>;
    /// Every webhook, by name.
    async fn webhook_list(&self) -> Result<Vec<Webhook>>;
    /// Removes a webhook; its pending deliveries die. False if there was none.
    async fn webhook_remove(&self, name: &str) -> Result<bool>;
    /// Deliveries, newest first, a page at a time.
    async fn deliveries_list(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>>;
    /// Makes a delivery pending and due again, its retry window starting now. False if
    /// there is no such delivery.
    async fn delivery_redeliver(&self, id: i64) -> Result<bool>;
    /// Claims up to `limit` due deliveries for `owner` (unique per claim) until
    /// `lease_s` seconds pass, with their webhook and event. A claim outlives no crash:
    /// once its lease passes, another worker claims the delivery again.
    async fn deliveries_claim(
        &self,
        owner: &str,
        limit: i64,
        lease_s: f64,
    ) -> Result<Vec<DeliveryJob>>;
    /// Records an attempt of a delivery `owner` still holds: delivered, or failed and
    /// due again after its backoff, or dead when that would pass `retry_for_s` from
    /// its creation. `None` when the claim was lost (another worker has it now).
    async fn delivery_settle(
        &self,
        id: i64,
        owner: &str,
        outcome: &AttemptOutcome,
        retry_for_s: f64,
    ) -> Result<Option<DeliveryState>>;
    /// Deliveries by state, fleet-wide (the metric).
    async fn deliveries_by_state(&self) -> Result<Vec<(DeliveryState, i64)>>;
    /// Up to `limit` events after event `after` in commit order (the stream; never one
    /// skipped for committing late). `after` 0: from the start.
    async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<Event>>;
    /// Up to `limit` history rows after row `after`, in commit order (`changes --follow`).
    async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<AccountChange>>;
    /// The newest event's and history row's ids (where a follower that starts now starts).
    async fn stream_heads(&self) -> Result<(i64, i64)>;
}
