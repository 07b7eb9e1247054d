//! Roles (issue #23): named tokens with a role, stored as hashes, checked on every API
//! route (walked from the OpenAPI document, so a new route cannot skip it) and every
//! console page and form, revoked at once for the API and the console.

use serde_json::{Value, json};

use crate::api::{App, spawn_app};
use crate::common::*;

on_both_databases!(
    every_documented_route_is_refused_below_its_role_and_served_from_it,
    a_revoked_token_stops_at_once_for_the_api_and_the_console,
    tokens_are_stored_only_as_their_hashes,
    the_console_hides_what_a_role_cannot_do_and_refuses_it_when_forged,
    a_server_with_a_stored_token_is_closed_and_stays_closed,
);

pub(crate) const ADMIN: &str = "admin-env-token-0123456789";

/// Creates a token of `role` over the API (as the env admin); returns the token.
pub(crate) async fn token(app: &App, name: &str, role: &str) -> String {
    let body = json!({"name": name, "role": role}).to_string();
    let (st, v) = app
        .raw("POST", "/api/v1/tokens", Some(&body), Some(ADMIN))
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["name"], name);
    assert_eq!(v["role"], role);
    v["token"].as_str().unwrap().to_string()
}

const RANK: [&str; 3] = ["viewer", "operator", "admin"];

fn rank(role: &str) -> usize {
    RANK.iter().position(|r| *r == role).unwrap()
}

/// The roles the issue gives, stated apart from the server's table: a viewer reads
/// (but not tokens or the trail), an operator also starts, cancels and retries
/// sessions, an admin does the rest.
fn role_the_issue_gives(method: &str, path: &str) -> &'static str {
    match (method, path) {
        (
            "GET",
            "/api/v1/tokens" | "/api/v1/audit" | "/api/v1/webhooks" | "/api/v1/webhook-deliveries",
        ) => "admin",
        ("GET", _) => "viewer",
        (
            "POST",
            "/api/v1/sessions"
            | "/api/v1/sessions/{session_id}/cancel"
            | "/api/v1/sessions/{session_id}/retry"
            | "/api/v1/instances/{id}/sync"
            | "/account-sync-optimized/sync-all",
        ) => "operator",
        _ => "admin",
    }
}

/// A path of the document's template with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{session_id}", "00000000-0000-4000-8000-000000000000")
        .replace("{id}", "999999")
        .replace("{name}", "nobody")
}

async fn every_documented_route_is_refused_below_its_role_and_served_from_it(b: Backend) {
    let app = spawn_app(b, Some(ADMIN)).await;
    let mut tokens = vec![];
    for role in RANK {
        tokens.push((role, token(&app, &format!("t-{role}"), role).await));
    }
    let (_, _, doc) = app.request("GET", "/api/v1/openapi.json", "", "").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let open = op["security"] == json!([{}]);
            let Some(needed) = op["x-required-role"].as_str() else {
                assert!(
                    open,
                    "{method} {path} needs a token but names no role (access::RULES)"
                );
                continue;
            };
            let m = method.to_uppercase();
            assert_eq!(needed, role_the_issue_gives(&m, path), "{m} {path}");
            let url = concrete(path);
            let body = matches!(m.as_str(), "POST" | "PATCH" | "PUT").then_some("{}");
            // No token, or an unknown one: 401 whatever the route.
            for t in [None, Some("spt_not-a-token-at-all-0000000000")] {
                let (st, v) = app.raw(&m, &url, body, t).await;
                assert_eq!(st, 401, "{m} {path} with {t:?}: {v}");
            }
            for (role, t) in &tokens {
                let (st, v) = app.raw(&m, &url, body, Some(t)).await;
                if rank(role) < rank(needed) {
                    assert_eq!(st, 403, "{m} {path} as {role}: {v}");
                    let msg = v["error"]["message"].as_str().unwrap();
                    assert!(msg.contains(&format!("needs the {needed} role")), "{msg}");
                } else {
                    assert!(st != 401 && st != 403, "{m} {path} as {role}: {st} {v}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 24, "only {checked} operations walked");
    // The env token is an admin, named so in the trail.
    let (st, v) = app.raw("GET", "/api/v1/audit", None, Some(ADMIN)).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "t-viewer" && e["outcome"] == "refused"),
        "the viewer's refusals are in the trail: {v}"
    );
}

async fn a_revoked_token_stops_at_once_for_the_api_and_the_console(b: Backend) {
    let app = spawn_app(b, Some(ADMIN)).await;
    let op = token(&app, "ops-bot", "operator").await;
    assert_eq!(
        app.raw("GET", "/api/v1/sessions", None, Some(&op)).await.0,
        200
    );
    let cookie = crate::console::sign_in(&app, &op).await;
    assert_eq!(crate::console::page(&app, "/", &cookie).await.0, 200);
    let (st, v) = app
        .raw("DELETE", "/api/v1/tokens/ops-bot", None, Some(ADMIN))
        .await;
    assert_eq!(st, 204, "{v}");
    assert_eq!(
        app.raw("GET", "/api/v1/sessions", None, Some(&op)).await.0,
        401
    );
    let (st, head, _) = crate::console::page(&app, "/", &cookie).await;
    assert_eq!(st, 303, "the console cookie is signed out too: {head}");
    assert!(head.contains("location: /login"), "{head}");
    // Revoking again is a 404; the list shows when it was revoked.
    let (st, _) = app
        .raw("DELETE", "/api/v1/tokens/ops-bot", None, Some(ADMIN))
        .await;
    assert_eq!(st, 404);
    let (_, list) = app.raw("GET", "/api/v1/tokens", None, Some(ADMIN)).await;
    let t = &list["items"][0];
    assert_eq!(t["name"], "ops-bot");
    assert!(t["revoked_at"].is_string(), "{list}");
    // The name may be given to a new token, whose cookie the old token's cannot be.
    let again = token(&app, "ops-bot", "viewer").await;
    assert_ne!(again, op);
    assert_eq!(
        app.raw("GET", "/api/v1/sessions", None, Some(&op)).await.0,
        401
    );
    assert_eq!(crate::console::page(&app, "/", &cookie).await.0, 303);
    assert_eq!(
        app.raw("GET", "/api/v1/sessions", None, Some(&again))
            .await
            .0,
        200
    );
}

async fn tokens_are_stored_only_as_their_hashes(b: Backend) {
    let app = spawn_app(b, Some(ADMIN)).await;
    let t = token(&app, "hash-check", "viewer").await;
    assert!(t.starts_with("spt_") && t.len() > 60, "{t}");
    let rows = crate::common::sql_texts(
        app.db(),
        "SELECT name || '|' || role || '|' || token_hash FROM api_tokens",
    )
    .await;
    assert_eq!(rows.len(), 1);
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(t.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(rows[0], format!("hash-check|viewer|{want}"));
    assert!(!rows[0].contains(&t[4..]), "the token itself is not stored");
    // Listing never shows it either.
    let (_, list) = app.raw("GET", "/api/v1/tokens", None, Some(ADMIN)).await;
    assert!(!list.to_string().contains(&t[4..]), "{list}");
    // Names that would pass for someone else in the trail, and unknown roles, are 400s.
    for (body, field) in [
        (
            json!({"name": "SYNCPOOL_API_TOKEN", "role": "admin"}),
            "name",
        ),
        (json!({"name": "anonymous", "role": "viewer"}), "name"),
        (json!({"name": "a b", "role": "viewer"}), "name"),
        (json!({"name": "ok", "role": "root"}), "role"),
    ] {
        let (st, v) = app
            .raw(
                "POST",
                "/api/v1/tokens",
                Some(&body.to_string()),
                Some(ADMIN),
            )
            .await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let body = json!({"name": "hash-check", "role": "admin"}).to_string();
    let (st, v) = app
        .raw("POST", "/api/v1/tokens", Some(&body), Some(ADMIN))
        .await;
    assert_eq!(st, 409, "a working token's name is taken: {v}");
}

async fn the_console_hides_what_a_role_cannot_do_and_refuses_it_when_forged(b: Backend) {
    use crate::console::{csrf_of, page, sign_in};
    let app = spawn_app(b, Some(ADMIN)).await;
    let inst = app
        .store
        .instance_insert(&simulated("sim-roles", json!({"latency_ms": 60000})))
        .await
        .unwrap();
    let s = app
        .store
        .session_create(syncpool::model::SyncType::ManualSingle, Some(&[inst.id]))
        .await
        .unwrap();
    let viewer = sign_in(&app, &token(&app, "look", "viewer").await).await;
    let operator = sign_in(&app, &token(&app, "run", "operator").await).await;
    let session = format!("/sessions/{}", s.session_id);
    let instance = format!("/instances/{}", inst.id);
    let (_, _, html) = page(&app, &session, &viewer).await;
    assert!(!html.contains("Cancel session"), "a viewer sees no cancel");
    let (_, _, html) = page(&app, &session, &operator).await;
    assert!(html.contains("Cancel session"), "an operator does");
    let (_, _, html) = page(&app, &instance, &viewer).await;
    assert!(
        !html.contains("Sync now") && !html.contains("Deactivate"),
        "{html}"
    );
    let (_, _, html) = page(&app, &instance, &operator).await;
    assert!(
        html.contains("Sync now") && !html.contains("Deactivate"),
        "{html}"
    );
    let (_, _, html) = page(&app, "/instances", &operator).await;
    assert!(!html.contains("Add instance"), "only an admin adds");
    assert!(
        !html.contains(r#"href="/audit""#),
        "only an admin reads the trail"
    );
    for path in ["/instances/new", &format!("{instance}/edit"), "/audit"] {
        let (st, _, html) = page(&app, path, &operator).await;
        assert_eq!(st, 403, "{path}: {html}");
        assert!(html.contains("needs the admin role"), "{html}");
    }
    // A viewer forging the sync form (with its own valid CSRF token): refused, nothing
    // started, and the attempt is in the trail.
    let (_, _, html) = page(&app, "/", &viewer).await;
    let csrf = csrf_of(&html);
    let before = app.store.session_list(&Default::default()).await.unwrap().1;
    let (st, _, body) = app
        .request(
            "POST",
            &format!("{instance}/sync"),
            &format!("{viewer}Content-Type: application/x-www-form-urlencoded\r\n"),
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(
        app.store.session_list(&Default::default()).await.unwrap().1,
        before,
        "no session was started"
    );
    let (_, trail) = app.raw("GET", "/api/v1/audit", None, Some(ADMIN)).await;
    let e = &trail["items"][0];
    assert_eq!(e["actor"], "look");
    assert_eq!(e["action"], "instance.sync");
    assert_eq!(e["outcome"], "refused");
    assert!(
        !e["fields"].to_string().contains(&csrf),
        "no CSRF token in the trail"
    );
    // Every form a role may not send, forged with that role's own CSRF token: 403, and
    // nothing changes (the instance keeps its name and stays active; the session runs).
    let forms = [
        (format!("{session}/cancel"), "operator", ""),
        (format!("{instance}/sync"), "operator", ""),
        (
            "/instances".to_string(),
            "admin",
            "name=forged&kind=simulated&options=%7B%7D&active=true",
        ),
        (
            instance.clone(),
            "admin",
            "name=renamed&kind=simulated&options=%7B%7D&active=true",
        ),
        (format!("{instance}/active"), "admin", "active=false"),
    ];
    for (cookie, role) in [(&viewer, "viewer"), (&operator, "operator")] {
        let (_, _, html) = page(&app, "/", cookie).await;
        let csrf = csrf_of(&html);
        for (path, needed, body) in &forms {
            if rank(role) >= rank(needed) {
                continue;
            }
            let (st, _, page_body) = app
                .request(
                    "POST",
                    path,
                    &format!("{cookie}Content-Type: application/x-www-form-urlencoded\r\n"),
                    &format!("csrf={csrf}&{body}"),
                )
                .await;
            assert_eq!(st, 403, "{role} POST {path}: {page_body}");
        }
    }
    let still = app.store.instance_get(inst.id).await.unwrap().unwrap();
    assert_eq!((still.name.as_str(), still.active), ("sim-roles", true));
    assert!(
        app.store
            .instance_get_by_name("forged")
            .await
            .unwrap()
            .is_none()
    );
    let (_, trail) = app
        .raw("GET", "/api/v1/audit?actor=run", None, Some(ADMIN))
        .await;
    let refused = &trail["items"][0];
    assert_eq!(refused["outcome"], "refused");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("needs the admin role"),
        "the console's refusal is in the trail with its reason: {refused}"
    );
    // The operator's own form works, and its row is written with the change.
    let (_, _, html) = page(&app, &instance, &operator).await;
    let (st, head, _) = app
        .request(
            "POST",
            &format!("{instance}/sync"),
            &format!("{operator}Content-Type: application/x-www-form-urlencoded\r\n"),
            &format!("csrf={}", csrf_of(&html)),
        )
        .await;
    assert_eq!(st, 303, "{head}");
    let (_, trail) = app
        .raw("GET", "/api/v1/audit?actor=run", None, Some(ADMIN))
        .await;
    let e = &trail["items"][0];
    assert_eq!(
        (e["action"].as_str(), e["outcome"].as_str()),
        (Some("instance.sync"), Some("ok"))
    );
    assert!(e["detail"].is_null(), "{e}");
    assert_eq!(e["targets"][0]["kind"], "session");
    // An admin sees the trail's tab and every form.
    let admin = sign_in(&app, ADMIN).await;
    let (_, _, html) = page(&app, &instance, &admin).await;
    assert!(
        html.contains(r#"href="/audit""#) && html.contains("Deactivate"),
        "{html}"
    );
    assert_eq!(page(&app, "/audit", &admin).await.0, 200);
    let _ = app.store.session_cancel(s.session_id).await;
}

async fn a_server_with_a_stored_token_is_closed_and_stays_closed(b: Backend) {
    let app = spawn_app(b, None).await;
    // Open (loopback, no token anywhere): everyone is an admin called anonymous.
    assert_eq!(app.raw("GET", "/api/v1/sessions", None, None).await.0, 200);
    let body = json!({"name": "first", "role": "admin"}).to_string();
    let (st, v) = app.raw("POST", "/api/v1/tokens", Some(&body), None).await;
    assert_eq!(st, 201, "{v}");
    let t = v["token"].as_str().unwrap().to_string();
    assert_eq!(app.raw("GET", "/api/v1/sessions", None, None).await.0, 401);
    let (st, trail) = app.raw("GET", "/api/v1/audit", None, Some(&t)).await;
    assert_eq!(st, 200);
    assert_eq!(trail["items"][0]["actor"], "anonymous");
    assert_eq!(trail["items"][0]["action"], "token.create");
    // Revoking the only token does not reopen the server.
    let (st, _) = app
        .raw("DELETE", "/api/v1/tokens/first", None, Some(&t))
        .await;
    assert_eq!(st, 204);
    assert_eq!(app.raw("GET", "/api/v1/sessions", None, None).await.0, 401);
    assert_eq!(
        app.raw("GET", "/api/v1/sessions", None, Some(&t)).await.0,
        401
    );
    let (st, head, _) = app.request("GET", "/", "", "").await;
    assert_eq!(st, 303, "the console wants a sign-in too: {head}");
}

#[test]
fn tokens_are_created_listed_and_revoked_from_the_cli_with_one_line_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new(Backend::Sqlite));
    assert_eq!(cli(&db.url, &["migrate"]).0, 0);
    let (code, out, err) = cli(&db.url, &["tokens", "create", "ci", "--role", "operator"]);
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    assert!(
        token.starts_with("spt_") && !token.contains(' '),
        "stdout is the token alone: {out}"
    );
    assert!(err.contains("shown this once"), "{err}");
    let (code, out, _) = cli(&db.url, &["tokens", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("ci") && out.contains("operator") && !out.contains(&token[4..]),
        "{out}"
    );
    for args in [
        &["tokens", "create", "x", "--role", "root"][..],
        &["tokens", "create", "a/b", "--role", "viewer"],
        &["tokens", "revoke", "nobody"],
        &["tokens", "create", "ci", "--role", "viewer"],
    ] {
        let (code, _, err) = cli(&db.url, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
    let (code, out, _) = cli(&db.url, &["tokens", "revoke", "ci"]);
    assert_eq!(code, 0);
    assert!(out.contains("revoked"), "{out}");
    let (_, json, _) = cli(&db.url, &["tokens", "list", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert!(v["items"][0]["revoked_at"].is_string(), "{v}");
}
