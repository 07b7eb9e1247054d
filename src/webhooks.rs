//! Webhook deliveries, as the Standard Webhooks specification has them: each event is
//! posted as JSON with `webhook-id` (the event's id, the same on every retry),
//! `webhook-timestamp` and `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of
//! `id.timestamp.body` under the secret `whsec_<base64>`), so receivers verify it with
//! that specification's libraries. Workers claim due deliveries from the outbox, send
//! them with no transaction open, and settle them: retried with exponential backoff for
//! `--webhook-retry-for` (a day by default), then dead and visible.
//!
//! Where a token holder could make workers call: only hosts of the allow-list the
//! delivering process was started with (`--webhook-allow`), checked when a webhook is
//! added and again before every attempt; no redirect is followed, so an allowed host
//! cannot send the request on. A process without a list delivers nothing.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use syncpool_workers::HostAllowList;

use crate::model::{AttemptOutcome, DeliveryJob, DeliveryState, Event};
use crate::store::WebhookStore;

/// How the delivering processes deliver.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// The hosts webhooks may name; empty: this process delivers nothing.
    pub allow: HostAllowList,
    /// Time allowed for one attempt (connect, send, answer).
    pub timeout: Duration,
    /// Delay after the first failed attempt; doubles per attempt, at most an hour.
    pub backoff: Duration,
    /// How long a delivery is retried before it is dead.
    pub retry_for: Duration,
    /// How often an idle process looks for due deliveries.
    pub poll: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            allow: HostAllowList::default(),
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(5),
            retry_for: Duration::from_secs(24 * 3600),
            poll: Duration::from_secs(1),
        }
    }
}

/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Checks a webhook URL: `http` or `https`, a host the allow-list takes, no user or
/// password (it would be stored and shown). An empty list takes none.
pub fn check_url(url: &str, allow: &HostAllowList) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "a webhook URL is http:// or https://, not {}:",
            parsed.scheme()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a webhook URL holds no user or password".into());
    }
    let host = parsed.host_str().unwrap_or_default();
    if allow.is_empty() {
        return Err(
            "no webhook host is allowed: start the server and the workers with --webhook-allow (SYNCPOOL_WEBHOOK_ALLOW)"
                .into(),
        );
    }
    if !allow.allows(host) {
        return Err(format!(
            "host '{host}' is not in --webhook-allow (SYNCPOOL_WEBHOOK_ALLOW)"
        ));
    }
    Ok(parsed)
}

/// The `webhook-signature` of `body` sent as event `id` at Unix time `timestamp`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
        .filter(|k| !k.is_empty())
        .ok_or("the signing secret is not whsec_ and base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The body of an event: its type, time and what happened (`data`; never a secret).
pub fn body(event: &Event) -> Vec<u8> {
    let mut data = event.data.clone();
    if let (Some(obj), Some(instance)) = (data.as_object_mut(), &event.instance) {
        obj.entry("instance").or_insert_with(|| json!(instance));
    }
    let doc = json!({
        "type": event.kind,
        "timestamp": event.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    });
    serde_json::to_vec(&doc).expect("JSON values serialize")
}

/// The delay after attempt number `attempts` (1 for the first) failed.
pub fn backoff(first: Duration, attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    first.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// Delivers due deliveries until `stop` says so. Runs in every worker process started
/// with an allow-list.
pub async fn run(
    store: Arc<dyn WebhookStore>,
    settings: DeliverySettings,
    worker_id: String,
    stop: impl Fn() -> bool + Send + 'static,
) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; this worker delivers no webhooks");
            return;
        }
    };
    // A claim outlives the attempt's timeout: a worker that dies mid-attempt leaves its
    // deliveries to others once this passes.
    let lease = (settings.timeout + Duration::from_secs(5)).as_secs_f64();
    while !stop() {
        let owner = format!("{worker_id}:{}", ulid::Ulid::new());
        let jobs = match store.deliveries_claim(&owner, 16, lease).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "claiming webhook deliveries failed; trying again");
                vec![]
            }
        };
        if jobs.is_empty() {
            tokio::time::sleep(settings.poll).await;
            continue;
        }
        let attempts = jobs.iter().map(|job| {
            let (client, settings, store, owner) = (&client, &settings, &store, &owner);
            async move {
                let outcome = attempt(client, settings, job).await;
                settle(store.as_ref(), settings, job, owner, &outcome).await;
            }
        });
        futures::future::join_all(attempts).await;
    }
}

/// One attempt; never inside a transaction.
async fn attempt(
    client: &reqwest::Client,
    s: &DeliverySettings,
    job: &DeliveryJob,
) -> AttemptOutcome {
    let failed = |status: Option<u16>, error: String| AttemptOutcome::Failed {
        status,
        error,
        backoff_s: backoff(s.backoff, job.attempts + 1).as_secs_f64(),
    };
    // Checked again here: this process's list may be narrower than the server's.
    let url = match check_url(&job.webhook.url, &s.allow) {
        Ok(u) => u,
        Err(e) => return failed(None, format!("not sent: {e}")),
    };
    // Only a SYNCPOOL_SECRET_* variable, whatever the row says: no other part of this
    // process's environment can be sent anywhere as a key.
    let var = &job.webhook.secret_env;
    let secret = match syncpool_workers::check_secret_env(var)
        .and_then(|()| std::env::var(var).map_err(|_| String::new()))
    {
        Ok(v) => v,
        Err(_) => {
            let e = format!(
                "not sent: {} is not set in this worker's environment",
                job.webhook.secret_env
            );
            return failed(None, e);
        }
    };
    let body = body(&job.event);
    let timestamp = chrono::Utc::now().timestamp();
    let signature = match sign(&secret, &job.event.id, timestamp, &body) {
        Ok(s) => s,
        Err(e) => {
            return failed(
                None,
                format!("not sent: {} holds {e}", job.webhook.secret_env),
            );
        }
    };
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &job.event.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => AttemptOutcome::Delivered {
            status: r.status().as_u16(),
        },
        Ok(r) => failed(Some(r.status().as_u16()), format!("HTTP {}", r.status())),
        // Without the URL: its query may hold a receiver's token.
        Err(e) => failed(None, e.without_url().to_string()),
    }
}

async fn settle(
    store: &dyn WebhookStore,
    s: &DeliverySettings,
    job: &DeliveryJob,
    owner: &str,
    outcome: &AttemptOutcome,
) {
    let state = store
        .delivery_settle(job.id, owner, outcome, s.retry_for.as_secs_f64())
        .await;
    let label = match (&state, outcome) {
        (Ok(Some(DeliveryState::Dead)), _) => "dead",
        (Ok(Some(_)), AttemptOutcome::Delivered { .. }) => "delivered",
        (Ok(Some(_)), AttemptOutcome::Failed { .. }) => "failed",
        (Ok(None), _) => "lost_claim",
        (Err(_), _) => "unsettled",
    };
    metrics::counter!(crate::metrics::WEBHOOK_ATTEMPTS, "outcome" => label).increment(1);
    match (state, outcome) {
        (Err(e), _) => {
            tracing::warn!(delivery = job.id, error = %e, "recording a webhook attempt failed; it is sent again after its claim lapses")
        }
        (Ok(Some(DeliveryState::Dead)), AttemptOutcome::Failed { error, .. }) => {
            tracing::warn!(delivery = job.id, webhook = %job.webhook.name, event = %job.event.id, error = %error, "a webhook delivery is dead: its retries ran out")
        }
        (Ok(_), AttemptOutcome::Failed { error, .. }) => {
            tracing::info!(delivery = job.id, webhook = %job.webhook.name, error = %error, "a webhook attempt failed; it is retried")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_specifications_reference_vector() {
        // Computed with the Standard Webhooks Python library (`standardwebhooks` 1.0.0).
        let secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let sig = sign(secret, "evt_1", 1_700_000_000, br#"{"a":1}"#).unwrap();
        assert_eq!(sig, REFERENCE);
        assert!(sign("nope", "evt_1", 1, b"").is_err());
    }

    const REFERENCE: &str = "v1,E91RjL3XwKNvhbIjLEB4Oo053Uu727CszikrY+6s9HE=";

    #[test]
    fn urls_are_checked_against_the_allow_list() {
        let allow = HostAllowList::parse("hooks.example.com, 127.0.0.1").unwrap();
        assert!(check_url("https://hooks.example.com/x?t=1", &allow).is_ok());
        assert!(check_url("http://127.0.0.1:9/x", &allow).is_ok());
        for bad in [
            "https://169.254.169.254/latest",
            "https://hooks.example.com.evil.net/",
            "ftp://hooks.example.com/",
            "https://u:p@hooks.example.com/",
            "not a url",
        ] {
            assert!(check_url(bad, &allow).is_err(), "{bad}");
        }
        assert!(check_url("https://hooks.example.com/", &HostAllowList::default()).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let b = |n| backoff(Duration::from_secs(5), n).as_secs();
        assert_eq!((b(1), b(2), b(3), b(30)), (5, 10, 20, 3600));
    }
}
