//! The fleet's policy and its drift (issue #24, parts 1 and 2), on both databases: a
//! policy is validated whole and stored with a version; every sync evaluates it in the
//! transaction that writes the inventory (fenced and replayed with it); a new policy is
//! evaluated against the current inventory; the CLI, the API and `/metrics` show it.

use std::time::Duration;

use serde_json::{Value, json};
use syncpool::model::{Account, DriftFilter, SyncType, ViolationState};
use syncpool::policy;
use syncpool::store::*;

use crate::api::spawn_app;
use crate::common::*;
use crate::conformance::{count, finish, grant, jobs_of, params, setup, token_of};

on_both_databases!(
    a_bad_policy_file_stores_nothing_and_names_the_rule_and_the_field,
    a_sync_opens_a_violation_and_a_later_sync_that_no_longer_finds_it_resolves_it,
    a_replayed_finish_opens_no_violation_twice,
    a_new_policy_judges_the_current_inventory_and_a_removed_rule_resolves_its_violations,
    policy_check_flags_without_storing_and_instances_never_synced_are_not_judged,
    the_api_sets_shows_and_pages_drift_with_errors_naming_the_field,
    the_console_lists_drift_and_marks_an_instance_with_open_violations,
    a_deleted_instances_violations_resolve_with_it,
);

const DENY_SUPERUSER: &str = "rules:\n  - name: approved-superusers\n    deny: [superuser]\n    except_accounts: [postgres]\n";

pub(crate) fn account(name: &str, superuser: bool) -> Account {
    Account {
        username: name.into(),
        host: String::new(),
        attributes: json!({"superuser": superuser, "can_login": true}),
        privileges: json!([]),
    }
}

/// One sync of every instance of a new session, each finding `found`.
pub(crate) async fn sync_all_finding(store: &dyn Store, found: Vec<Account>) -> uuid::Uuid {
    let session = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap()
        .session_id;
    let p = params(Duration::from_secs(30));
    for job in jobs_of(store, session).await {
        let t = token_of(
            &store
                .lease_grant_batch(&p, &[grant(&job, "w")])
                .await
                .unwrap()[0],
        );
        store
            .record_finish_batch(&[finish(&job, t, SyncResult::Completed(found.clone()))])
            .await
            .unwrap();
    }
    session
}

async fn open(store: &dyn Store) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = store
        .drift_list(&DriftFilter {
            state: Some(ViolationState::Open),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.instance, v.account, v.what))
        .collect();
    v.sort();
    v
}

async fn event_types(store: &dyn Store) -> Vec<String> {
    let n = count(store, "SELECT COUNT(*) FROM events").await;
    let mut out = vec![];
    for i in 0..n {
        out.push(
            crate::conformance::text_of(
                store,
                &format!("SELECT type FROM events ORDER BY id LIMIT 1 OFFSET {i}"),
                &[],
            )
            .await,
        );
    }
    out
}

async fn a_bad_policy_file_stores_nothing_and_names_the_rule_and_the_field(b: Backend) {
    let (db, store, _) = setup(b, 1).await;
    let bad = db.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "rules:\n  - name: ok\n    deny: [superuser]\n  - name: open-hosts\n    deny_accounts: ['*@%']\n    deny: [superusr]\n",
    )
    .unwrap();
    let (code, out, err) = cli(&db.url, &["policy", "set", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("rule 'open-hosts'")
            && err.contains("rules[1].deny[0]")
            && err.contains("superusr"),
        "{err}"
    );
    // A path that is not a file, or a file too large, is refused without reading it all.
    let (code, _, err) = cli(&db.url, &["policy", "set", "/dev/zero"]);
    assert_eq!(code, 2, "{err}");
    assert!(store.policy_get().await.unwrap().is_none());
    let (code, out, _) = cli(&db.url, &["policy", "show"]);
    assert_eq!(code, 0);
    assert!(out.contains("no policy"), "{out}");

    let good = db.dir.path().join("good.yaml");
    std::fs::write(&good, format!("# who may be a superuser\n{DENY_SUPERUSER}")).unwrap();
    for version in [1, 2] {
        let (code, out, err) = cli(&db.url, &["policy", "set", good.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("policy version {version} set (1 rule)")),
            "{out}"
        );
    }
    let (code, out, _) = cli(&db.url, &["policy", "show"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("# policy version 2, set by cli:"), "{out}");
    assert!(
        out.contains("# who may be a superuser"),
        "the file as given: {out}"
    );
    let (_, out, _) = cli(&db.url, &["policy", "show", "--json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["version"], 2);
    assert_eq!(shown["policy"]["rules"][0]["deny"], json!(["superuser"]));
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM audit_log WHERE action = 'policy.set' AND outcome = 'ok'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM audit_log WHERE action = 'policy.set' AND outcome = 'refused'"
        )
        .await,
        0,
        "input refused before the database opened is not in the trail (docs/SECURITY.md)"
    );
}

async fn a_sync_opens_a_violation_and_a_later_sync_that_no_longer_finds_it_resolves_it(b: Backend) {
    let (_db, store, _) = setup(b, 2).await;
    store
        .policy_set(&policy::parse(DENY_SUPERUSER).unwrap(), DENY_SUPERUSER)
        .await
        .unwrap();
    sync_all_finding(
        store.as_ref(),
        vec![account("postgres", true), account("app", true)],
    )
    .await;
    let want = vec![
        ("i0".to_string(), "app".to_string(), "superuser".to_string()),
        ("i1".to_string(), "app".to_string(), "superuser".to_string()),
    ];
    assert_eq!(
        open(store.as_ref()).await,
        want,
        "the exempt account is not flagged"
    );
    // Found again: still one row each, seen later.
    sync_all_finding(
        store.as_ref(),
        vec![account("postgres", true), account("app", true)],
    )
    .await;
    assert_eq!(open(store.as_ref()).await, want);
    assert_eq!(
        count(store.as_ref(), "SELECT COUNT(*) FROM policy_violations").await,
        2
    );
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM policy_violations WHERE last_seen_at > opened_at"
        )
        .await,
        2
    );
    sync_all_finding(
        store.as_ref(),
        vec![account("postgres", true), account("app", false)],
    )
    .await;
    assert!(open(store.as_ref()).await.is_empty());
    let resolved = store
        .drift_list(&DriftFilter {
            state: Some(ViolationState::Resolved),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resolved.len(), 2);
    assert!(
        resolved
            .iter()
            .all(|v| v.resolved_at.is_some() && v.reason == "holds superuser")
    );
    let types = event_types(store.as_ref()).await;
    let n = |t: &str| types.iter().filter(|x| *x == t).count();
    assert_eq!(
        (
            n("violation_opened"),
            n("violation_resolved"),
            n("session_finished")
        ),
        (2, 2, 3),
        "{types:?}"
    );
    // Each event has its own id, kept for every delivery.
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(DISTINCT event_id) FROM events"
        )
        .await,
        types.len() as i64
    );
}

async fn a_replayed_finish_opens_no_violation_twice(b: Backend) {
    let (_db, store, _) = setup(b, 1).await;
    store
        .policy_set(&policy::parse(DENY_SUPERUSER).unwrap(), DENY_SUPERUSER)
        .await
        .unwrap();
    let session = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap()
        .session_id;
    let p = params(Duration::from_secs(30));
    let job = jobs_of(store.as_ref(), session).await.remove(0);
    let t = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&job, "w")])
            .await
            .unwrap()[0],
    );
    let req = finish(&job, t, SyncResult::Completed(vec![account("app", true)]));
    store
        .record_finish_batch(std::slice::from_ref(&req))
        .await
        .unwrap();
    // The answer was lost; the worker sends the same finish again.
    store.record_finish_batch(&[req]).await.unwrap();
    assert_eq!(
        count(store.as_ref(), "SELECT COUNT(*) FROM policy_violations").await,
        1
    );
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM events WHERE type = 'violation_opened'"
        )
        .await,
        1
    );
    // A finish fenced out (its token is stale) writes no violation either.
    let session = store
        .session_create(SyncType::ManualSingle, None)
        .await
        .unwrap()
        .session_id;
    let job = jobs_of(store.as_ref(), session).await.remove(0);
    let _t = token_of(
        &store
            .lease_grant_batch(&p, &[grant(&job, "w")])
            .await
            .unwrap()[0],
    );
    let stale = finish(&job, t, SyncResult::Completed(vec![account("other", true)]));
    store.record_finish_batch(&[stale]).await.unwrap();
    assert_eq!(
        count(store.as_ref(), "SELECT COUNT(*) FROM policy_violations").await,
        1
    );
}

async fn a_new_policy_judges_the_current_inventory_and_a_removed_rule_resolves_its_violations(
    b: Backend,
) {
    let (_db, store, _) = setup(b, 3).await;
    sync_all_finding(
        store.as_ref(),
        vec![account("app", true), account("monitor", false)],
    )
    .await;
    assert!(
        open(store.as_ref()).await.is_empty(),
        "no policy, no violation"
    );
    let o = store
        .policy_set(&policy::parse(DENY_SUPERUSER).unwrap(), DENY_SUPERUSER)
        .await
        .unwrap();
    assert_eq!((o.version, o.opened, o.resolved, o.open), (1, 3, 0, 3));
    let text = "rules:\n  - name: monitoring\n    require_accounts: [monitor, backup]\n";
    let o = store
        .policy_set(&policy::parse(text).unwrap(), text)
        .await
        .unwrap();
    assert_eq!((o.version, o.opened, o.resolved, o.open), (2, 3, 3, 3));
    let now = open(store.as_ref()).await;
    assert!(
        now.iter()
            .all(|(_, a, w)| a == "backup" && w == "missing_account"),
        "{now:?}"
    );
    // An empty policy resolves everything.
    let o = store
        .policy_set(&policy::parse("rules: []").unwrap(), "rules: []")
        .await
        .unwrap();
    assert_eq!((o.version, o.resolved, o.open), (3, 3, 0));
}

async fn policy_check_flags_without_storing_and_instances_never_synced_are_not_judged(b: Backend) {
    let (db, store, _) = setup(b, 2).await;
    sync_all_finding(store.as_ref(), vec![account("app", true)]).await;
    store
        .instance_insert(&simulated("never-synced", json!({})))
        .await
        .unwrap();
    let file = db.dir.path().join("p.yaml");
    std::fs::write(
        &file,
        format!("{DENY_SUPERUSER}  - name: monitoring\n    require_accounts: [monitor]\n"),
    )
    .unwrap();
    let (code, out, err) = cli(
        &db.url,
        &["policy", "check", file.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let found: Value = serde_json::from_str(&out).unwrap();
    let items = found["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{out}");
    assert!(
        items.iter().all(|f| f["instance"] != "never-synced"),
        "{out}"
    );
    assert_eq!(
        count(store.as_ref(), "SELECT COUNT(*) FROM policy_violations").await,
        0
    );
    assert!(store.policy_get().await.unwrap().is_none());
    let (code, out, _) = cli(&db.url, &["policy", "check", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("holds superuser") && out.contains("4 violations"),
        "{out}"
    );
}

async fn the_api_sets_shows_and_pages_drift_with_errors_naming_the_field(b: Backend) {
    let app = spawn_app(b, Some("t0ken-t0ken-t0ken-t0ken")).await;
    let (status, _) = app.call("GET", "/api/v1/policy", None).await;
    assert_eq!(status, 404);
    let bad = json!({"rules": [{"name": "r", "deny": ["superusr"]}]}).to_string();
    let (status, body) = app.call("PUT", "/api/v1/policy", Some(&bad)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "rules[0].deny[0]", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("rule 'r': rules[0].deny[0]: unknown attribute 'superusr'"),
        "{body}"
    );
    let twice =
        json!({"rules": [{"name": "r", "deny": ["super"]}, {"name": "r", "deny": ["super"]}]})
            .to_string();
    assert_eq!(app.call("PUT", "/api/v1/policy", Some(&twice)).await.0, 409);
    let (status, ..) = app
        .request(
            "PUT",
            "/api/v1/policy",
            "Content-Type: text/plain\r\nAuthorization: Bearer t0ken-t0ken-t0ken-t0ken\r\n",
            DENY_SUPERUSER,
        )
        .await;
    assert_eq!(status, 415);
    assert!(
        app.store.policy_get().await.unwrap().is_none(),
        "nothing stored"
    );
    let (status, _, body) = app
        .request(
            "PUT",
            "/api/v1/policy",
            "Content-Type: application/yaml\r\nAuthorization: Bearer t0ken-t0ken-t0ken-t0ken\r\n",
            DENY_SUPERUSER,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    let (status, body) = app.call("GET", "/api/v1/policy", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["source"], DENY_SUPERUSER);

    for i in 0..3 {
        app.store
            .instance_insert(&simulated(&format!("s{i}"), json!({})))
            .await
            .unwrap();
    }
    sync_all_finding(app.store.as_ref(), vec![account("app", true)]).await;
    let (status, page) = app.call("GET", "/api/v1/drift?limit=2", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_i64().unwrap();
    let (_, rest) = app
        .call("GET", &format!("/api/v1/drift?limit=2&after={after}"), None)
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_after"].is_null());
    let (_, one) = app
        .call(
            "GET",
            "/api/v1/drift?instance=s1&rule=approved-superusers",
            None,
        )
        .await;
    assert_eq!(one["items"][0]["account"], "app");
    assert_eq!(one["items"][0]["instance"], "s1");
    let (status, body) = app.call("GET", "/api/v1/drift?state=gone", None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "state");
    let (_, none) = app.call("GET", "/api/v1/drift?state=resolved", None).await;
    assert!(none["items"].as_array().unwrap().is_empty());
    let metrics = http_get(&app.addr.to_string(), "/metrics");
    assert!(
        metrics.contains("syncpool_policy_violations{rule=\"approved-superusers\"} 3"),
        "{metrics}"
    );
}

async fn the_console_lists_drift_and_marks_an_instance_with_open_violations(b: Backend) {
    let app = spawn_app(b, Some("t0ken-t0ken-t0ken-t0ken")).await;
    let id = app
        .store
        .instance_insert(&simulated("db<1>", json!({})))
        .await
        .unwrap()
        .id;
    app.store
        .instance_insert(&simulated("clean", json!({})))
        .await
        .unwrap();
    app.store
        .policy_set(&policy::parse(DENY_SUPERUSER).unwrap(), DENY_SUPERUSER)
        .await
        .unwrap();
    sync_all_finding(app.store.as_ref(), vec![account("app", true)]).await;
    let cookie = crate::console::sign_in(&app, "t0ken-t0ken-t0ken-t0ken").await;
    let (status, _, html) = crate::console::page(&app, "/drift", &cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("approved-superusers") && html.contains("holds superuser"),
        "{html}"
    );
    assert!(
        html.contains("db&lt;1&gt;") && !html.contains("db<1>"),
        "escaped"
    );
    let (_, _, html) = crate::console::page(&app, "/drift?instance=clean", &cookie).await;
    assert!(
        html.contains("approved-superusers"),
        "clean has its violation too: {html}"
    );
    let (_, _, html) = crate::console::page(&app, "/drift?state=resolved", &cookie).await;
    assert!(html.contains("No resolved violations."), "{html}");
    let (_, _, html) = crate::console::page(&app, &format!("/instances/{id}"), &cookie).await;
    assert!(
        html.contains("1 policy violation") && html.contains("/drift?instance=db%3C1%3E"),
        "{html}"
    );
    let (status, _, _) = crate::console::page(&app, "/drift?state=bogus", &cookie).await;
    assert_eq!(status, 400);
}

async fn a_deleted_instances_violations_resolve_with_it(b: Backend) {
    let (_db, store, ids) = setup(b, 2).await;
    store
        .policy_set(&policy::parse(DENY_SUPERUSER).unwrap(), DENY_SUPERUSER)
        .await
        .unwrap();
    sync_all_finding(store.as_ref(), vec![account("app", true)]).await;
    assert_eq!(open(store.as_ref()).await.len(), 2);
    assert!(store.instance_delete(ids[0]).await.unwrap());
    let left = open(store.as_ref()).await;
    assert_eq!(
        left,
        vec![("i1".to_string(), "app".to_string(), "superuser".to_string())]
    );
    assert_eq!(
        count(
            store.as_ref(),
            "SELECT COUNT(*) FROM events WHERE type = 'violation_resolved'"
        )
        .await,
        1,
        "its receivers hear that it ended"
    );
    // The metric counts only what is still open.
    let by_rule = store.violations_by_rule().await.unwrap();
    assert_eq!(by_rule, vec![("approved-superusers".to_string(), 1)]);
}
