//! The drift page: policy violations, open ones unless asked, by instance or rule, in
//! keyset pages like the API's; and the mark an instance's page shows for its own.

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};

use super::view::{self, time};
use super::{Console, PAGE, PageError, Visitor, html as page_html};
use crate::http::extract::Params;
use crate::model::{DriftFilter, Violation, ViolationState};
use crate::validate;

pub(super) async fn page(
    State(c): State<Console>,
    who: Visitor,
    q: Params,
) -> Result<Response, PageError> {
    let q = q.without_empty();
    let filter = validate::drift_filter(
        q.str("instance"),
        q.str("rule"),
        q.str("state"),
        PAGE,
        q.opt_int("after")?,
    )?;
    let items = c.app.store.drift_list(&filter).await?;
    let next = crate::model::next_after(&items, PAGE, |v| v.id);
    Ok(page_html(view::page(
        &who.frame("Drift", "drift", false),
        violations(&items, &filter, next),
    )))
}

fn violations(items: &[Violation], f: &DriftFilter, next: Option<i64>) -> Markup {
    let state = f.state.unwrap_or(ViolationState::Open);
    let query = |after: i64| {
        let mut pairs = vec![("after", after.to_string()), ("state", state.to_string())];
        pairs.extend(f.instance.clone().map(|i| ("instance", i)));
        pairs.extend(f.rule.clone().map(|r| ("rule", r)));
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    };
    html! {
        h1 { "Drift" }
        p.muted { "What the policy in force flags (" span.mono { "syncpool policy show" } "); a violation resolves when a sync no longer finds it." }
        form.filters method="get" action="/drift" {
            label { "Instance " input type="text" name="instance" value=[f.instance.as_deref()]; }
            label { "Rule " input type="text" name="rule" value=[f.rule.as_deref()]; }
            label { "State "
                select name="state" {
                    @for s in ViolationState::ALL {
                        option value=(s) selected[*s == state] { (s) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if items.is_empty() {
            p.empty { "No " (state) " violations." }
        } @else {
            table {
                thead { tr {
                    th { "Instance" } th { "Rule" } th { "Account" } th { "Reason" }
                    th { "Opened" } th { "Last seen" } th { "Resolved" }
                } }
                tbody {
                    @for v in items {
                        tr {
                            td { (v.instance) }
                            td.mono { (v.rule) }
                            td.mono { (v.account) }
                            td { span class={"badge st-" (if v.resolved_at.is_some() { "completed" } else { "failed" })} { (v.what) } " " (v.reason) }
                            td { (time(&v.opened_at)) }
                            td { (time(&v.last_seen_at)) }
                            td { @if let Some(r) = &v.resolved_at { (time(r)) } @else { "open" } }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if let Some(n) = next { a href={"/drift?" (query(n))} rel="next" { "Older →" } }
        }
    }
}

/// The mark on an instance's page: its open violations, linked to the drift page.
pub(super) async fn mark(c: &Console, instance: &str) -> Result<Markup, PageError> {
    let f = DriftFilter {
        instance: Some(instance.to_string()),
        state: Some(ViolationState::Open),
        limit: 100,
        ..Default::default()
    };
    let open = c.app.store.drift_list(&f).await?;
    let href = format!(
        "/drift?{}",
        serde_urlencoded::to_string([("instance", instance)]).unwrap_or_default()
    );
    Ok(html! {
        @if !open.is_empty() {
            p.drift {
                span.badge.st-failed { (open.len()) @if open.len() == 100 { "+" } " policy violation" @if open.len() != 1 { "s" } }
                " " a href=(href) { "see drift" }
            }
        }
    })
}
