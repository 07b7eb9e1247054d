//! The HTTP details producers and tools depend on: media types, auth challenges, JSON
//! errors on every path, explicit session requests, bounded inputs and error texts.

use serde_json::json;

use crate::api::spawn_app;
use crate::common::*;

on_both_databases!(
    a_body_that_is_not_json_gets_415_and_writes_nothing,
    unknown_routes_wrong_methods_and_missing_tokens_get_json_errors_and_a_bearer_challenge,
    a_session_names_its_instances_or_asks_for_all_and_is_never_empty_or_scheduled,
    long_strings_and_many_unknown_ids_are_refused_with_short_messages,
    schemathesis_with_every_check_finds_no_difference_between_the_document_and_the_server,
);

async fn a_body_that_is_not_json_gets_415_and_writes_nothing(b: Backend) {
    let app = spawn_app(b, None).await;
    let body = r#"{"name":"a","kind":"simulated"}"#;
    for ct in [
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "",
    ] {
        let (status, _, err) = app.request("POST", "/api/v1/instances", ct, body).await;
        assert_eq!(status, 415, "{ct:?}: {err}");
        assert_eq!(err["error"]["code"], "unsupported_media_type", "{err}");
    }
    assert!(app.store.instance_list().await.unwrap().is_empty());
    let (status, _, _) = app
        .request(
            "POST",
            "/api/v1/instances",
            "Content-Type: application/json; charset=utf-8\r\n",
            body,
        )
        .await;
    assert_eq!(status, 201);
}

async fn unknown_routes_wrong_methods_and_missing_tokens_get_json_errors_and_a_bearer_challenge(
    b: Backend,
) {
    let app = spawn_app(b, Some("s3cr3t-s3cr3t-s3cr3t")).await;
    let auth = "Authorization: Bearer s3cr3t-s3cr3t-s3cr3t\r\n";
    let (status, _, body) = app.request("GET", "/api/v1/nope", auth, "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, head, body) = app.request("DELETE", "/api/v1/sessions", auth, "").await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert!(
        head.contains("allow:"),
        "405 lists the allowed methods: {head}"
    );
    let (status, head, body) = app.request("GET", "/api/v1/sessions", "", "").await;
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _, _) = app
        .request(
            "GET",
            "/api/v1/sessions",
            "Authorization: bEaReR s3cr3t-s3cr3t-s3cr3t\r\n",
            "",
        )
        .await;
    assert_eq!(status, 200, "the scheme is case-insensitive");
    let (status, _, doc) = app.request("GET", "/api/v1/openapi.json", "", "").await;
    assert_eq!(status, 200, "tools read the document without the token");
    assert!(doc["openapi"].is_string());
}

async fn a_session_names_its_instances_or_asks_for_all_and_is_never_empty_or_scheduled(b: Backend) {
    let app = spawn_app(b, None).await;
    let post = |body: &'static str| app.call("POST", "/api/v1/sessions", Some(body));
    // No instance registered yet: "all" is refused, not "completed" over nothing.
    let (status, err) = post(r#"{"all": true}"#).await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no active instance")
    );
    let (status, legacy) = app
        .call("POST", "/account-sync-optimized/sync-all", None)
        .await;
    assert_eq!(status, 409, "{legacy}");
    let (_, inst) = app
        .call(
            "POST",
            "/api/v1/instances",
            Some(r#"{"name":"a","kind":"simulated"}"#),
        )
        .await;
    let id = inst["id"].as_i64().unwrap();
    for (body, field) in [
        ("", "instance_ids"),
        ("{}", "instance_ids"),
        (r#"{"all": false}"#, "instance_ids"),
        (r#"{"all": true, "instance_ids": [1]}"#, "all"),
        (r#"{"instance_ids": [0]}"#, "instance_ids"),
        (r#"{"instance_ids": [-3]}"#, "instance_ids"),
        (r#"{"all": true, "sync_type": "scheduled"}"#, "sync_type"),
    ] {
        let (status, err) = app.call("POST", "/api/v1/sessions", Some(body)).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    let (_, sessions) = app.call("GET", "/api/v1/sessions", None).await;
    assert_eq!(sessions["total"], 0, "nothing was started: {sessions}");
    let (status, created) = post(r#"{"all": true}"#).await;
    assert_eq!(
        (status, created["total_instances"].as_i64()),
        (202, Some(1)),
        "{created}"
    );
    let body = json!({"instance_ids": [id]}).to_string();
    let (status, created) = app.call("POST", "/api/v1/sessions", Some(&body)).await;
    assert_eq!(status, 202, "{created}");
    let id = created["session_id"].as_str().unwrap();
    let (_, session) = app
        .call("GET", &format!("/api/v1/sessions/{id}"), None)
        .await;
    assert_eq!(session["sync_type"], "manual_single", "{session}");
}

async fn long_strings_and_many_unknown_ids_are_refused_with_short_messages(b: Backend) {
    let app = spawn_app(b, None).await;
    let huge = "h".repeat(900 * 1024);
    for (field, body) in [
        (
            "host",
            json!({"name": "a", "kind": "postgres", "host": huge}),
        ),
        (
            "host",
            json!({"name": "a", "kind": "postgres", "host": "db .example"}),
        ),
        (
            "username",
            json!({"name": "a", "kind": "simulated", "username": "u".repeat(129)}),
        ),
        (
            "database",
            json!({"name": "a", "kind": "simulated", "database": "d".repeat(129)}),
        ),
        (
            "options",
            json!({"name": "a", "kind": "postgres", "host": "h", "options": {"role_lik": "x"}}),
        ),
        (
            "options",
            json!({"name": "a", "kind": "mysql", "host": "h", "options": {"ssl_mode": "sometimes"}}),
        ),
    ] {
        let (status, err) = app
            .call("POST", "/api/v1/instances", Some(&body.to_string()))
            .await;
        assert_eq!(status, 400, "{field}: {err}");
        assert_eq!(err["error"]["field"], field, "{err}");
        assert!(err.to_string().len() < 500, "a short message: {err}");
    }
    assert!(app.store.instance_list().await.unwrap().is_empty());
    let ids: Vec<i64> = (1_000_000..1_100_000).collect();
    let body = json!({ "instance_ids": ids }).to_string();
    let (status, err) = app.call("POST", "/api/v1/sessions", Some(&body)).await;
    // Well formed, but the instances it names do not exist: 404 naming the field.
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["error"]["field"], "instance_ids", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.len() < 200, "{} bytes: {message}", message.len());
    assert!(message.contains("100000 in all"), "{message}");
}

/// The served document is valid OpenAPI (every response described, operation ids unique),
/// as `openapi-spec-validator` judges it; `scripts/test.sh` installs the validator into
/// `target/pyenv`.
#[tokio::test]
async fn the_served_openapi_document_passes_openapi_spec_validator() {
    let app = spawn_app(Backend::Sqlite, Some("t0ken-t0ken-t0ken-t0ken")).await;
    let (status, _, doc) = app.request("GET", "/api/v1/openapi.json", "", "").await;
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let validator = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/pyenv/bin/openapi-spec-validator");
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} is required (scripts/test.sh installs it): {e}",
                validator.display()
            )
        });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The document promises what the server does, both ways: schemathesis (`--checks all`:
/// no 5xx, schema-valid requests accepted, invalid ones refused, responses as documented,
/// stateful sequences) over every operation, with the bearer token, bounded and seeded so
/// that a run takes about a minute and fails the same way twice. `scripts/test.sh`
/// installs it into `target/pyenv`.
async fn schemathesis_with_every_check_finds_no_difference_between_the_document_and_the_server(
    b: Backend,
) {
    // With a webhook host, so that the document's webhook URLs can be generated (without
    // one, the document says no URL is taken, and schemathesis cannot make a valid body).
    let app = crate::api::spawn_app_allowing(
        b,
        Some("t0ken-t0ken-t0ken-t0ken"),
        crate::api::harness_site(),
        "hooks.example.com, *.hooks.example.org",
    )
    .await;
    // Some instances to find, so that not every id is a 404.
    for name in ["sim-a", "sim-b"] {
        let body = json!({"name": name, "kind": "simulated"}).to_string();
        assert_eq!(
            app.call("POST", "/api/v1/instances", Some(&body)).await.0,
            201
        );
    }
    let st = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/st");
    let report = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(&st)
        .args(["run", &format!("http://{}/api/v1/openapi.json", app.addr)])
        .args([
            "--checks",
            "all",
            "--max-examples",
            "15",
            "--seed",
            "20261126",
        ])
        .args(["--workers", "1", "--request-timeout", "30", "--no-color"])
        .args(["-H", "Authorization: Bearer t0ken-t0ken-t0ken-t0ken"])
        .current_dir(report.path())
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} is required (scripts/test.sh installs it): {e}",
                st.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found differences:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A run that tested nothing would also exit 0.
    assert!(stdout.contains("passed"), "{stdout}");
}
