//! The audit trail's page (admins only, `guard.rs`): newest first, by actor or time,
//! in keyset pages like the API's.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};

use super::view::{self, time};
use super::{Console, PAGE, PageError, Visitor, html as page_html};
use crate::http::extract::Params;
use crate::model::AuditEvent;
use crate::validate;

pub(super) async fn page(
    State(c): State<Console>,
    who: Visitor,
    q: Params,
) -> Result<Response, PageError> {
    let q = q.without_empty();
    let filter = validate::audit_filter(q.str("since"), q.str("actor"), PAGE, q.opt_int("after")?)?;
    let items = c.app.store.audit_list(&filter).await?;
    let next = crate::model::next_after(&items, PAGE, |e| e.id);
    let body = events(&items, filter.actor.as_deref(), q.str("since"), next);
    Ok(page_html(view::page(
        &who.frame("Audit trail", "audit", false),
        body,
    )))
}

fn events(
    items: &[AuditEvent],
    actor: Option<&str>,
    since: Option<&str>,
    next: Option<i64>,
) -> Markup {
    let query = |after: i64| {
        let mut pairs = vec![("after", after.to_string())];
        pairs.extend(actor.map(|a| ("actor", a.to_string())));
        pairs.extend(since.map(|s| ("since", s.to_string())));
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    };
    html! {
        h1 { "Audit trail" }
        form.filters method="get" action="/audit" {
            label { "Actor " input type="text" name="actor" value=[actor] placeholder="token name or cli:USER"; }
            label { "Since " input type="text" name="since" value=[since] placeholder="24h, 7d or a time"; }
            button type="submit" { "Filter" }
        }
        @if items.is_empty() {
            p.empty { "Nothing recorded." }
        } @else {
            table {
                thead { tr {
                    th { "When" } th { "Who" } th { "From" } th { "Action" } th { "On" }
                    th { "Outcome" } th { "Fields" }
                } }
                tbody {
                    @for e in items {
                        tr {
                            td { (time(&e.at)) }
                            td { (e.actor) }
                            td.mono { (e.client) }
                            td.mono { (e.action) }
                            td {
                                @for t in &e.targets {
                                    div { (t.kind) " " span.mono { (t.name.as_deref().unwrap_or(&t.id)) } }
                                }
                            }
                            td {
                                span class={"badge st-" (outcome_class(e))} { (e.outcome) }
                                @if let Some(d) = &e.detail { " " span.muted { (d) } }
                            }
                            td.mono { (e.fields["body"].to_string()) }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if let Some(n) = next { a href={"/audit?" (query(n))} rel="next" { "Older →" } }
        }
    }
}

/// A badge class the style sheet colours: an ok change reads as completed.
fn outcome_class(e: &AuditEvent) -> &'static str {
    match e.outcome {
        crate::model::AuditOutcome::Ok => "completed",
        crate::model::AuditOutcome::Refused => "cancelled",
        crate::model::AuditOutcome::Failed => "failed",
    }
}
