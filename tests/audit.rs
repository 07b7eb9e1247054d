//! The audit trail (issue #23): every change through the API, the console and the CLI
//! is recorded with who, from where, what and how it ended; a change and its row commit
//! together or not at all; reads, filters, pages and retention.

use serde_json::{Value, json};

use crate::api::{App, spawn_app};
use crate::common::*;
use crate::roles::ADMIN;

on_both_databases!(
    every_changing_route_records_its_change_with_who_and_from_where,
    a_change_commits_with_its_audit_row_or_not_at_all,
    the_cli_records_its_changes_as_the_os_user_without_the_database_url,
);

/// The newest row of the trail.
async fn newest(app: &App) -> Value {
    let (st, v) = app
        .raw("GET", "/api/v1/audit?limit=1", None, Some(ADMIN))
        .await;
    assert_eq!(st, 200, "{v}");
    v["items"][0].clone()
}

async fn every_changing_route_records_its_change_with_who_and_from_where(b: Backend) {
    let app = crate::api::spawn_app_allowing(
        b,
        Some(ADMIN),
        crate::api::harness_site(),
        "hooks.example.com",
    )
    .await;
    let call = async |m: &str, path: &str, body: Option<Value>| {
        let body = body.map(|b| b.to_string());
        app.raw(m, path, body.as_deref(), Some(ADMIN)).await
    };
    let mut covered = std::collections::BTreeSet::new();
    // Each changing route once, as it succeeds: (method, route, path, body, action).
    let (st, inst) = call(
        "POST",
        "/api/v1/instances",
        Some(json!({"name": "audited", "kind": "simulated", "options": {"latency_ms": 60000}})),
    )
    .await;
    assert_eq!(st, 201, "{inst}");
    let id = inst["id"].as_i64().unwrap();
    // (method, route, path, body, action, kind of the first target)
    type Step<'a> = (&'a str, &'a str, String, Option<Value>, &'a str, &'a str);
    let mut steps: Vec<Step> = vec![
        (
            "PATCH",
            "/api/v1/instances/{id}",
            format!("/api/v1/instances/{id}"),
            Some(json!({"host": null, "active": true})),
            "instance.update",
            "instance",
        ),
        (
            "POST",
            "/api/v1/instances/{id}/sync",
            format!("/api/v1/instances/{id}/sync"),
            None,
            "instance.sync",
            "session",
        ),
        (
            "POST",
            "/api/v1/sessions",
            "/api/v1/sessions".into(),
            Some(json!({"instance_ids": [id]})),
            "session.create",
            "session",
        ),
    ];
    let first = newest(&app).await;
    assert_eq!(first["action"], "instance.create");
    assert_eq!(
        first["targets"][0],
        json!({"kind": "instance", "id": id.to_string(), "name": "audited"})
    );
    assert_eq!(first["fields"]["body"]["name"], "audited");
    covered.insert(("POST", "/api/v1/instances"));
    let mut session = String::new();
    for (m, route, path, body, action, kind) in steps.drain(..) {
        let (st, v) = call(m, &path, body).await;
        assert!(st < 300, "{m} {path}: {st} {v}");
        let e = newest(&app).await;
        assert_eq!(e["action"], action, "{e}");
        assert_eq!(e["outcome"], "ok", "{e}");
        assert!(e["detail"].is_null(), "written with the change: {e}");
        assert_eq!(e["targets"][0]["kind"], kind, "{e}");
        if let Some(s) = v["session_id"].as_str() {
            assert_eq!(e["targets"][0]["id"], s, "{e}");
            session = s.to_string();
        }
        covered.insert((m, route));
    }
    // Cancel (every session, so that retry has something to retry), retry, cleanup.
    let (st, v) = call("POST", &format!("/api/v1/sessions/{session}/cancel"), None).await;
    assert_eq!(st, 200, "{v}");
    let e = newest(&app).await;
    assert_eq!(
        (e["action"].as_str(), e["outcome"].as_str()),
        (Some("session.cancel"), Some("ok"))
    );
    assert!(e["detail"].is_null(), "{e}");
    covered.insert(("POST", "/api/v1/sessions/{session_id}/cancel"));
    let (st, v) = call("POST", &format!("/api/v1/sessions/{session}/retry"), None).await;
    assert_eq!(st, 202, "{v}");
    let e = newest(&app).await;
    assert_eq!(e["action"], "session.retry");
    assert_eq!(
        e["targets"][1],
        json!({"kind": "retried_session", "id": session})
    );
    covered.insert(("POST", "/api/v1/sessions/{session_id}/retry"));
    // A cancel that changes nothing (the session has finished) is recorded as such.
    let (st, _) = call("POST", &format!("/api/v1/sessions/{session}/cancel"), None).await;
    assert_eq!(st, 200);
    let e = newest(&app).await;
    assert_eq!(e["outcome"], "ok");
    assert_eq!(e["detail"], "nothing changed", "{e}");
    let (st, v) = call("POST", "/account-sync-optimized/sync-all", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(newest(&app).await["action"], "session.create");
    covered.insert(("POST", "/account-sync-optimized/sync-all"));
    for route in [
        "/api/v1/maintenance/cleanup",
        "/account-sync-optimized/cleanup",
    ] {
        let (st, v) = call("POST", route, Some(json!({"days": 7}))).await;
        assert_eq!(st, 200, "{v}");
        let e = newest(&app).await;
        assert_eq!(
            (e["action"].as_str(), e["outcome"].as_str()),
            (Some("cleanup"), Some("ok")),
            "{e}"
        );
        covered.insert(("POST", route));
    }
    let (st, v) = call(
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "n1", "role": "viewer"})),
    )
    .await;
    assert_eq!(st, 201);
    let e = newest(&app).await;
    assert_eq!(e["action"], "token.create");
    let token = v["token"].as_str().unwrap();
    assert!(
        !e.to_string().contains(&token[4..]),
        "the new token is not in the trail: {e}"
    );
    covered.insert(("POST", "/api/v1/tokens"));
    assert_eq!(call("DELETE", "/api/v1/tokens/n1", None).await.0, 204);
    assert_eq!(newest(&app).await["action"], "token.revoke");
    covered.insert(("DELETE", "/api/v1/tokens/{name}"));
    let (st, v) = call(
        "PUT",
        "/api/v1/limits/group:g1",
        Some(json!({"max_concurrent": 4})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let e = newest(&app).await;
    assert_eq!(
        (e["action"].as_str(), e["outcome"].as_str()),
        (Some("limit.set"), Some("ok"))
    );
    assert_eq!(e["targets"][0], json!({"kind": "limit", "id": "group:g1"}));
    assert_eq!(e["fields"]["body"]["max_concurrent"], 4);
    covered.insert(("PUT", "/api/v1/limits/{key}"));
    assert_eq!(call("DELETE", "/api/v1/limits/group:g1", None).await.0, 204);
    assert_eq!(newest(&app).await["action"], "limit.remove");
    covered.insert(("DELETE", "/api/v1/limits/{key}"));
    let policy = json!({"rules": [{"name": "r1", "deny": ["superuser"]}]});
    let (st, v) = call("PUT", "/api/v1/policy", Some(policy)).await;
    assert_eq!(st, 200, "{v}");
    let e = newest(&app).await;
    assert_eq!(
        (e["action"].as_str(), e["outcome"].as_str()),
        (Some("policy.set"), Some("ok"))
    );
    assert_eq!(e["targets"][0], json!({"kind": "policy", "id": "fleet"}));
    covered.insert(("PUT", "/api/v1/policy"));
    let hook = json!({"name": "h1", "url": "https://hooks.example.com/in",
        "secret_env": "SYNCPOOL_SECRET_HOOK", "events": ["session_finished"]});
    let (st, v) = call("POST", "/api/v1/webhooks", Some(hook)).await;
    assert_eq!(st, 201, "{v}");
    let e = newest(&app).await;
    assert_eq!(e["action"], "webhook.create");
    assert_eq!(e["targets"][0], json!({"kind": "webhook", "id": "h1"}));
    covered.insert(("POST", "/api/v1/webhooks"));
    // A delivery to send again: an event written while the webhook exists.
    crate::conformance::exec(
        app.store.as_ref(),
        "INSERT INTO events (event_id, type, data) VALUES ('evt_a', 'session_finished', '{}')",
        &[],
    )
    .await;
    crate::conformance::exec(
        app.store.as_ref(),
        "INSERT INTO webhook_deliveries (webhook_id, webhook, event_id, state) \
         SELECT id, name, 'evt_a', 'dead' FROM webhooks WHERE name = 'h1'",
        &[],
    )
    .await;
    let (_, page) = call("GET", "/api/v1/webhook-deliveries", None).await;
    let did = page["items"][0]["id"].as_i64().unwrap();
    let (st, v) = call(
        "POST",
        &format!("/api/v1/webhook-deliveries/{did}/redeliver"),
        None,
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(newest(&app).await["action"], "webhook.redeliver");
    covered.insert(("POST", "/api/v1/webhook-deliveries/{id}/redeliver"));
    assert_eq!(call("DELETE", "/api/v1/webhooks/h1", None).await.0, 204);
    assert_eq!(newest(&app).await["action"], "webhook.remove");
    covered.insert(("DELETE", "/api/v1/webhooks/{name}"));
    assert_eq!(
        call("DELETE", &format!("/api/v1/instances/{id}"), None)
            .await
            .0,
        204
    );
    let e = newest(&app).await;
    assert_eq!(e["action"], "instance.delete");
    assert_eq!(e["targets"][0]["name"], "audited");
    covered.insert(("DELETE", "/api/v1/instances/{id}"));
    // Every row so far: the env token, from the loopback client.
    let (_, all) = app
        .raw("GET", "/api/v1/audit?limit=1000", None, Some(ADMIN))
        .await;
    for e in all["items"].as_array().unwrap() {
        assert_eq!(e["actor"], "SYNCPOOL_API_TOKEN", "{e}");
        assert_eq!(e["client"], "127.0.0.1", "{e}");
    }
    // Every changing route of the document was exercised: a new one fails here until it
    // is.
    let (_, _, doc) = app.request("GET", "/api/v1/openapi.json", "", "").await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let m = method.to_uppercase();
            if m != "GET" {
                assert!(
                    covered.iter().any(|(cm, cp)| *cm == m && cp == path),
                    "{m} {path} changes something but this test does not check its audit row"
                );
            }
        }
    }
    // Refusals: bad input names the field in the detail; a missing thing; no row for a
    // read.
    let (st, _) = call(
        "POST",
        "/api/v1/instances",
        Some(json!({"name": "", "kind": "simulated"})),
    )
    .await;
    assert_eq!(st, 400);
    let e = newest(&app).await;
    assert_eq!(
        (e["action"].as_str(), e["outcome"].as_str()),
        (Some("instance.create"), Some("refused"))
    );
    assert!(e["detail"].as_str().unwrap().contains("name"), "{e}");
    assert_eq!(
        call("DELETE", "/api/v1/instances/424242", None).await.0,
        404
    );
    let e = newest(&app).await;
    assert_eq!(e["outcome"], "refused");
    assert_eq!(e["fields"]["path"], "/api/v1/instances/424242");
    let before = newest(&app).await["id"].clone();
    assert_eq!(call("GET", "/api/v1/sessions", None).await.0, 200);
    assert_eq!(newest(&app).await["id"], before, "reads are not audited");
    // Pages and filters.
    let (_, p1) = app
        .raw("GET", "/api/v1/audit?limit=2", None, Some(ADMIN))
        .await;
    let after = p1["next_after"].as_i64().unwrap();
    let (_, p2) = app
        .raw(
            "GET",
            &format!("/api/v1/audit?limit=2&after={after}"),
            None,
            Some(ADMIN),
        )
        .await;
    assert!(p2["items"][0]["id"].as_i64().unwrap() < after, "{p2}");
    let (_, none) = app
        .raw(
            "GET",
            "/api/v1/audit?actor=someone-else&since=1h",
            None,
            Some(ADMIN),
        )
        .await;
    assert_eq!(none["items"], json!([]));
    for (q, field) in [
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("after=0", "after"),
    ] {
        let (st, v) = app
            .raw("GET", &format!("/api/v1/audit?{q}"), None, Some(ADMIN))
            .await;
        assert_eq!(st, 400, "{q}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
}

/// Refuses, beneath syncpool, to write the `ok` row of a create and of a cancel.
async fn refuse_ok_rows(db: &TestDb) {
    let sql = if db.url.starts_with("sqlite:") {
        "CREATE TRIGGER refuse_ok BEFORE INSERT ON audit_log \
         WHEN NEW.outcome = 'ok' AND NEW.action IN ('instance.create', 'session.cancel') \
         BEGIN SELECT RAISE(ABORT, 'audit row refused'); END;"
    } else {
        "CREATE FUNCTION refuse_ok() RETURNS trigger AS $$ BEGIN \
         IF NEW.outcome = 'ok' AND NEW.action IN ('instance.create', 'session.cancel') THEN \
         RAISE EXCEPTION 'audit row refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse_ok BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_ok();"
    };
    sql_exec(db, sql).await;
}

async fn a_change_commits_with_its_audit_row_or_not_at_all(b: Backend) {
    let app = spawn_app(b, Some(ADMIN)).await;
    let inst = app
        .store
        .instance_insert(&simulated("kept", json!({"latency_ms": 60000})))
        .await
        .unwrap();
    let s = app
        .store
        .session_create(syncpool::model::SyncType::ManualSingle, Some(&[inst.id]))
        .await
        .unwrap();
    refuse_ok_rows(app.db()).await;
    // The create's row cannot be written, so the create is not committed either.
    let body = json!({"name": "lost", "kind": "simulated"}).to_string();
    let (st, v) = app
        .raw("POST", "/api/v1/instances", Some(&body), Some(ADMIN))
        .await;
    assert_eq!(st, 500, "{v}");
    assert!(
        app.store
            .instance_get_by_name("lost")
            .await
            .unwrap()
            .is_none()
    );
    let e = newest(&app).await;
    assert_eq!(
        (e["action"].as_str(), e["outcome"].as_str()),
        (Some("instance.create"), Some("failed")),
        "{e}"
    );
    // The same through the batch layer (a cancel is a pipeline-style write).
    let (st, v) = app
        .raw(
            "POST",
            &format!("/api/v1/sessions/{}/cancel", s.session_id),
            None,
            Some(ADMIN),
        )
        .await;
    assert_eq!(st, 500, "{v}");
    let after = app
        .store
        .session_summary(s.session_id)
        .await
        .unwrap()
        .unwrap();
    assert!(!after.cancel_requested && !after.is_finished(), "{after:?}");
    assert_eq!(newest(&app).await["outcome"], "failed");
}

async fn the_cli_records_its_changes_as_the_os_user_without_the_database_url(b: Backend) {
    let db = TestDb::new(b).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("--database-url")
            .arg(&db.url)
            .args(args)
            .env_remove("SYNCPOOL_DATABASE_URL")
            .env("USER", "alice")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["instances", "add", "--name", "c1", "--kind", "simulated"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = run(&["instances", "remove", "no-such"]);
    assert_eq!(code, 2);
    let (code, out, err) = run(&["audit", "--json", "--actor", "cli:alice", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v}");
    assert_eq!(items[0]["action"], "instance.delete");
    assert_eq!(items[0]["outcome"], "refused");
    assert!(
        items[0]["detail"].as_str().unwrap().contains("no-such"),
        "{v}"
    );
    assert_eq!(items[1]["action"], "instance.create");
    assert_eq!(items[1]["outcome"], "ok");
    assert_eq!(items[1]["targets"][0]["name"], "c1");
    assert!(
        items[1]["client"].as_str().unwrap().starts_with("local:"),
        "{v}"
    );
    assert!(
        !out.contains(&db.url),
        "the database URL is left out: {out}"
    );
    assert!(!out.contains("--database-url"), "{out}");
    // Pages, and one-line errors.
    let (_, out, _) = run(&["audit", "--json", "--limit", "1"]);
    let p1: Value = serde_json::from_str(&out).unwrap();
    let after = p1["next_after"].as_i64().unwrap().to_string();
    let (_, out, _) = run(&["audit", "--json", "--limit", "1", "--after", &after]);
    let p2: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p2["items"][0]["action"], "instance.create");
    for bad in [
        &["audit", "--since", "yesterday"][..],
        &["audit", "--limit", "0"],
        &["cleanup", "--audit-days", "-1"],
    ] {
        let (code, _, err) = run(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // Reads are not recorded; cleanup keeps the rows younger than --audit-days and
    // records itself.
    let (_, out, _) = run(&["audit"]);
    assert!(
        out.contains("cli:alice") && out.contains("instance.create"),
        "{out}"
    );
    let (code, out, err) = run(&["cleanup", "--audit-days", "0", "--json"]);
    assert_eq!(code, 0, "{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["audit_deleted"], 2, "{c}");
    let (_, out, _) = run(&["audit", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["action"], "cleanup");
}
