//! Who may open which console page or send which form: the console's side of
//! `http/access.rs`, over the same roles and the same audit trail. Pages that only read
//! are a viewer's; a form that changes something needs the role its API route needs,
//! and is refused (403) even when forged by hand, whatever the page showed.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Console, PageError, now};
use crate::http::ApiError;
use crate::http::access::{Rule, change, forbidden, read};
use crate::model::Role::{Admin, Operator, Viewer};

// The console's pages are GETs and its forms POSTs: `access`'s rules with the method
// implied.
const fn page(path: &'static str, role: crate::model::Role) -> Rule {
    read("GET", path, role)
}

const fn form(path: &'static str, role: crate::model::Role, action: &'static str) -> Rule {
    change("POST", path, role, action)
}

/// Every console route but sign-in, sign-out and the style sheet and script.
pub const RULES: &[Rule] = &[
    page("/", Viewer),
    page("/sessions/{session_id}", Viewer),
    form("/sessions/{session_id}/cancel", Operator, "session.cancel"),
    form("/sessions/{session_id}/retry", Operator, "session.retry"),
    page("/instances", Viewer),
    form("/instances", Admin, "instance.create"),
    page("/instances/new", Admin),
    page("/instances/{id}", Viewer),
    form("/instances/{id}", Admin, "instance.update"),
    page("/instances/{id}/edit", Admin),
    form("/instances/{id}/active", Admin, "instance.update"),
    form("/instances/{id}/sync", Operator, "instance.sync"),
    page("/leases", Viewer),
    page("/audit", Admin),
    page("/drift", Viewer),
    page("/webhooks", Admin),
    form(
        "/webhooks/deliveries/{id}/redeliver",
        Admin,
        "webhook.redeliver",
    ),
];

/// The routes anyone may reach: signing in needs no role, and signing out only a cookie.
pub const PUBLIC: &[&str] = &["/login", "/logout", "/console.css", "/console.js"];

/// Looks the visitor up once (handlers read it from the request), checks the route's
/// role, and audits a changing form. A request without a sign-in goes on to its
/// handler, which sends it to the sign-in page.
pub(super) async fn guard(State(c): State<Console>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if PUBLIC.contains(&path.as_str()) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let Some(rule) = crate::http::access::find(RULES, method.as_str(), &path) else {
        let e = ApiError::Forbidden(format!("no role is granted {method} {path}"));
        return PageError(e).into_response();
    };
    let visitor = match c.keys.visitor(req.headers(), now()).await {
        Ok(Some(v)) => v,
        Ok(None) => return next.run(req).await,
        Err(e) => return PageError::from(e).into_response(),
    };
    let who = visitor.principal.clone();
    req.extensions_mut().insert(visitor);
    let denied = (who.role < rule.role).then(|| forbidden(&who, rule.role, "this page"));
    let Some(action) = rule.action else {
        return match denied {
            Some(e) => PageError(e).into_response(),
            None => next.run(req).await,
        };
    };
    let render = |e: ApiError| PageError(e).into_response();
    let secrets: Vec<&str> = c.app.tokens.iter().map(|t| t.as_ref()).collect();
    let ctx = crate::http::access::Audited {
        store: &c.app.store,
        who: &who,
        action,
        secrets: &secrets,
    };
    crate::http::access::audited(ctx, denied, render, req, next)
        .await
        .unwrap_or_else(|e| PageError(e).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::access;

    #[test]
    fn each_console_form_needs_the_role_its_api_route_needs_and_records_the_same_action() {
        for form in RULES.iter().filter(|r| r.action.is_some()) {
            let api: Vec<&Rule> = access::RULES
                .iter()
                .filter(|r| r.action == form.action)
                .collect();
            assert!(!api.is_empty(), "{form:?} has no API twin");
            for r in api {
                assert_eq!(r.role, form.role, "{form:?} vs {r:?}");
            }
        }
    }

    #[test]
    fn pages_are_a_viewers_but_the_forms_to_change_instances_and_the_trail() {
        for page in RULES.iter().filter(|r| r.action.is_none()) {
            let admin = matches!(
                page.path,
                "/instances/new" | "/instances/{id}/edit" | "/audit" | "/webhooks"
            );
            let want = if admin { Admin } else { Viewer };
            assert_eq!(page.role, want, "{page:?}");
        }
    }
}
