//! `GET /api/v1/events`: the outbox as Server-Sent Events, the same events the webhooks
//! carry, for a SIEM or the console. Each event's SSE `id` is its place in the stream:
//! a client that reconnects with `Last-Event-ID` (as browsers' EventSource does) resumes
//! after it and misses nothing, on PostgreSQL too (rows are read in commit order). Not in
//! the OpenAPI document: a response that never ends is no operation a schema tool can
//! test; its rule is in `access::RULES` like every route's.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;

use super::extract::Params;
use super::{ApiError, AppState};

/// How often a caught-up stream looks for new events.
const POLL: Duration = Duration::from_millis(500);

/// Cancelled when the server begins to shut down: every stream ends then.
#[derive(Clone)]
pub(super) struct Stop(pub tokio_util::sync::CancellationToken);

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/events", get(events))
}

/// Where to start: after `Last-Event-ID`, else after `?after=` (0: from the oldest
/// event kept), else from now.
async fn start(s: &AppState, headers: &HeaderMap, q: &Params) -> Result<i64, ApiError> {
    let bad = |field: &str, v: &str| {
        ApiError::field(
            field,
            format!("{field} must be an event's id (0 or more), got '{v}'"),
        )
    };
    if let Some(v) = headers.get("last-event-id") {
        let v = v.to_str().unwrap_or_default();
        return v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad("Last-Event-ID", v));
    }
    match q.str("after") {
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad("after", v)),
        None => Ok(s.store.stream_heads().await?.0),
    }
}

async fn events(
    State(s): State<AppState>,
    stop: Option<axum::Extension<Stop>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    use futures::StreamExt;
    let stop = stop.map(|e| e.0.0).unwrap_or_default();
    let after = start(&s, &headers, &q).await?;
    let store = s.store.clone();
    let stream = futures::stream::unfold(
        (store, after, VecDeque::new()),
        |(store, mut after, mut queue)| async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    let e: crate::model::Event = e;
                    after = e.seq;
                    let body = String::from_utf8(crate::webhooks::body(&e)).unwrap_or_default();
                    let sse = SseEvent::default()
                        .id(e.seq.to_string())
                        .event(e.kind.as_str())
                        .data(body);
                    return Some((Ok(sse), (store, after, queue)));
                }
                match store.events_after(after, 100).await {
                    Ok(found) if !found.is_empty() => queue.extend(found),
                    Ok(_) => tokio::time::sleep(POLL).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the event stream failed; retrying");
                        tokio::time::sleep(POLL * 4).await;
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream.take_until(stop.cancelled_owned())).keep_alive(KeepAlive::default()))
}
