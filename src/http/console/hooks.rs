//! The webhooks page (admins only, `guard.rs`): where events go, and each delivery's
//! state, newest first; a dead or delivered one can be sent again.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::view::{self, csrf_field, time};
use super::{Console, PAGE, PageError, PageResult, Post, Visitor, html as page_html};
use crate::http::ApiError;
use crate::http::extract::Params;
use crate::model::{Delivery, DeliveryState, Webhook};
use crate::validate;

pub(super) async fn page(
    State(c): State<Console>,
    who: Visitor,
    q: Params,
) -> Result<Response, PageError> {
    let q = q.without_empty();
    let filter =
        validate::delivery_filter(q.str("webhook"), q.str("state"), PAGE, q.opt_int("after")?)?;
    let hooks = c.app.store.webhook_list().await?;
    let items = c.app.store.deliveries_list(&filter).await?;
    let next = crate::model::next_after(&items, PAGE, |d| d.id);
    let body = html! {
        h1 { "Webhooks" }
        (webhooks(&hooks))
        h2 { "Deliveries" }
        (deliveries(&items, &who.csrf, next, filter.state))
    };
    Ok(page_html(view::page(
        &who.frame("Webhooks", "webhooks", false),
        body,
    )))
}

fn webhooks(hooks: &[Webhook]) -> Markup {
    html! {
        @if hooks.is_empty() {
            p.empty { "No webhooks: " span.mono { "syncpool webhooks add NAME --url URL --secret-env VAR --events TYPES" } }
        } @else {
            table {
                thead { tr { th { "Name" } th { "URL" } th { "Secret in" } th { "Events" } th { "Added" } } }
                tbody {
                    @for w in hooks {
                        tr {
                            td { (w.name) }
                            td.mono { (w.url) }
                            td.mono { (w.secret_env) }
                            td { @for e in &w.events { span.badge { (e) } " " } }
                            td { (time(&w.created_at)) }
                        }
                    }
                }
            }
        }
    }
}

fn deliveries(
    items: &[Delivery],
    csrf: &str,
    next: Option<i64>,
    state: Option<DeliveryState>,
) -> Markup {
    let badge = |s: DeliveryState| match s {
        DeliveryState::Delivered => "completed",
        DeliveryState::Pending => "running",
        DeliveryState::Dead => "failed",
    };
    let older = |n: i64| {
        let mut pairs = vec![("after", n.to_string())];
        pairs.extend(state.map(|s| ("state", s.to_string())));
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    };
    html! {
        nav.tabs {
            a href="/webhooks" { "All" } " "
            @for s in DeliveryState::ALL { a href={"/webhooks?state=" (s)} { (s) } " " }
        }
        @if items.is_empty() {
            p.empty { "No deliveries." }
        } @else {
            table {
                thead { tr {
                    th { "Id" } th { "Webhook" } th { "Event" } th { "State" } th { "Attempts" }
                    th { "Last" } th { "Written" } th {}
                } }
                tbody {
                    @for d in items {
                        tr {
                            td { (d.id) }
                            td { (d.webhook) }
                            td { span.mono { (d.event_id) } " " (d.event_type) }
                            td { span class={"badge st-" (badge(d.state))} { (d.state) } }
                            td { (d.attempts) }
                            td {
                                @if let Some(e) = &d.last_error { (e) }
                                @else if let Some(s) = d.last_status { "HTTP " (s) }
                            }
                            td { (time(&d.created_at)) }
                            td {
                                @if d.state != DeliveryState::Pending {
                                    form method="post" action={"/webhooks/deliveries/" (d.id) "/redeliver"} {
                                        (csrf_field(csrf))
                                        button type="submit" { "Send again" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if let Some(n) = next { a href={"/webhooks?" (older(n))} rel="next" { "Older →" } }
        }
    }
}

pub(super) async fn redeliver(
    State(c): State<Console>,
    Path(id): Path<String>,
    _checked: Post,
) -> PageResult {
    let id = crate::http::extract::delivery_id(&id)?;
    if !c.app.store.delivery_redeliver(id).await? {
        return Err(ApiError::NotFound(format!("no delivery {id} to send again")).into());
    }
    Ok(Redirect::to("/webhooks?state=pending").into_response())
}
