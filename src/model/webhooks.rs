//! Webhooks: where the outbox's events are sent, and each delivery's state. Served by
//! `syncpool webhooks`, `/api/v1/webhooks`, `/api/v1/webhook-deliveries` and the console.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{EventType, ts};

status_enum!(
    /// Where a delivery stands: `pending` (due now or after its backoff), `delivered`
    /// (the receiver answered 2xx), `dead` (still failing when its retries ran out).
    DeliveryState ("delivery state") {
        Pending => "pending",
        Delivered => "delivered",
        Dead => "dead",
    }
);

/// A webhook to register.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Unique; 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'.
    pub name: String,
    /// `https://` (or `http://`) URL whose host the delivering processes allow
    /// (`--webhook-allow`); no user or password in it.
    pub url: String,
    /// The `SYNCPOOL_SECRET_*` variable, in the workers' environment, that holds the
    /// signing secret (`whsec_` and base64). The secret itself is never stored.
    pub secret_env: String,
    /// The event types it takes.
    pub events: Vec<EventType>,
}

/// A registered webhook.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Webhook {
    /// Its name.
    pub name: String,
    /// Where events are posted.
    pub url: String,
    /// The variable that holds its signing secret (never the secret).
    pub secret_env: String,
    /// The event types it takes.
    pub events: Vec<EventType>,
    /// When it was added.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
}

/// One event's delivery to one webhook.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// Its id (`webhooks redeliver ID`).
    pub id: i64,
    /// The webhook.
    pub webhook: String,
    /// The event's id: the `webhook-id` header of every attempt.
    pub event_id: String,
    /// The event's type.
    pub event_type: EventType,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: i64,
    /// The last attempt's HTTP status, if the receiver answered.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was written (with its event), or redelivered.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// When the last attempt was made.
    #[serde(with = "ts::opt")]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When the receiver took it.
    #[serde(with = "ts::opt")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Which deliveries to list: newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this webhook's.
    pub webhook: Option<String>,
    /// Only in this state.
    pub state: Option<DeliveryState>,
    /// Ids below this one.
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// A page of deliveries.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub items: Vec<Delivery>,
    /// The `after` of the next page; null on the last one.
    pub next_after: Option<i64>,
}

impl DeliveryPage {
    /// A page of at most `limit` items.
    pub fn new(items: Vec<Delivery>, limit: i64) -> Self {
        let next_after = super::next_after(&items, limit, |d| d.id);
        DeliveryPage { items, next_after }
    }
}

/// Every webhook.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookList {
    /// By name.
    pub items: Vec<Webhook>,
}

/// A delivery claimed by a worker: what to send, and where.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    /// The delivery's id.
    pub id: i64,
    /// Attempts made before this one.
    pub attempts: i64,
    /// The webhook.
    pub webhook: Webhook,
    /// The event.
    pub event: super::Event,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered {
        /// Its status.
        status: u16,
    },
    /// It did not: retried after `backoff_s`, or dead once its retries ran out.
    Failed {
        /// The receiver's status, if it answered.
        status: Option<u16>,
        /// Why, in a line (never a secret).
        error: String,
        /// Seconds until the next attempt.
        backoff_s: f64,
    },
}
