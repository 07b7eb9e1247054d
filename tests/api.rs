//! The HTTP API, spawned in-process on port 0 against a fresh database (SQLite and
//! PostgreSQL alike), exercised over real HTTP.

use std::sync::Arc;

use serde_json::{Value, json};
use syncpool::http::{AppState, Site};
use syncpool::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::common::*;

pub(crate) struct App {
    pub addr: std::net::SocketAddr,
    pub store: Arc<dyn Store>,
    token: Option<String>,
    stop: CancellationToken,
    _db: TestDb,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) async fn spawn_app(backend: Backend, token: Option<&str>) -> App {
    spawn_app_with(backend, token, harness_site()).await
}

/// The harness's requests name the host `x` ([`App::request`]): the server is told it
/// is its own, as `--allowed-host x` would.
pub(crate) fn harness_site() -> Site {
    Site::new(&["x".to_string()], None).unwrap()
}

/// [`spawn_app`] with the host names and public URL `site` gives.
pub(crate) async fn spawn_app_with(backend: Backend, token: Option<&str>, site: Site) -> App {
    spawn_app_allowing(backend, token, site, "").await
}

/// [`spawn_app_with`] whose webhooks may name the hosts of `webhook_allow`.
pub(crate) async fn spawn_app_allowing(
    backend: Backend,
    token: Option<&str>,
    site: Site,
    webhook_allow: &str,
) -> App {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let stop = CancellationToken::new();
    let state = AppState {
        store: store.clone(),
        tokens: token.map(Arc::from).into_iter().collect(),
        site,
        webhook_allow: syncpool_workers::HostAllowList::parse(webhook_allow).unwrap(),
    };
    let (addr, _) = syncpool::http::serve(state, "127.0.0.1:0", stop.clone().cancelled_owned())
        .await
        .unwrap();
    App {
        addr,
        store,
        token: token.map(String::from),
        stop,
        _db: db,
    }
}

impl App {
    /// The app's database.
    pub(crate) fn db(&self) -> &TestDb {
        &self._db
    }

    /// One HTTP/1.1 request with `Connection: close`; returns the status and JSON body.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.raw(method, path, body, self.token.as_deref()).await
    }

    pub(crate) async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let headers = format!("Content-Type: application/json\r\n{auth}");
        let (status, _, body) = self
            .request(method, path, &headers, body.unwrap_or(""))
            .await;
        (status, body)
    }

    /// One HTTP/1.1 request with exactly the given header lines (each ending in CRLF);
    /// returns the status, the lower-cased head and the body (JSON, or a JSON string).
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &str,
    ) -> (u16, String, Value) {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let head = head.to_lowercase();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let payload = if head.contains("transfer-encoding: chunked") {
            dechunk(payload)
        } else {
            payload.to_string()
        };
        let body = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
        (status, head, body)
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(crate::common::Backend::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(crate::common::Backend::Postgres).await } )* }
    };
}

both!(
    every_route_answers_with_the_contracts_shapes,
    routes_need_the_bearer_token_when_one_is_set,
    bad_input_gets_a_4xx_naming_the_field_and_writes_nothing,
    two_replicas_fire_a_cron_slot_once_and_skip_while_the_last_one_runs,
    a_sessions_records_come_in_keyset_pages_filtered_by_status,
);

async fn a_sessions_records_come_in_keyset_pages_filtered_by_status(b: Backend) {
    let app = spawn_app(b, None).await;
    for i in 0..5 {
        app.store
            .instance_insert(&simulated(&format!("page-{i}"), json!({})))
            .await
            .unwrap();
    }
    let (st, created) = app
        .call("POST", "/api/v1/sessions", Some(r#"{"all": true}"#))
        .await;
    assert_eq!(st, 202, "{created}");
    let sid = created["session_id"].as_str().unwrap().to_string();
    let records = |q: String| {
        let (app, sid) = (&app, sid.clone());
        async move {
            app.call("GET", &format!("/api/v1/sessions/{sid}/records{q}"), None)
                .await
        }
    };
    // The summary carries the totals, not the records.
    let (st, summary) = app
        .call("GET", &format!("/api/v1/sessions/{sid}"), None)
        .await;
    assert_eq!((st, summary["total_instances"].as_i64()), (200, Some(5)));
    assert!(summary.get("records").is_none(), "{summary}");
    // Pages of 2 in id order, each starting after the last id of the previous one.
    let mut seen = vec![];
    let mut after = String::new();
    loop {
        let (st, page) = records(format!("?limit=2{after}")).await;
        assert_eq!(st, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|r| r["id"].as_i64().unwrap()));
        match page["next_after"].as_i64() {
            Some(next) => {
                assert_eq!(Some(next), seen.last().copied(), "{page}");
                after = format!("&after={next}");
            }
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        (seen.len(), &seen),
        (5, &sorted),
        "every record once, in id order"
    );
    let (_, pending) = records("?status=pending".into()).await;
    assert_eq!(pending["items"].as_array().unwrap().len(), 5, "{pending}");
    assert_eq!(
        pending["next_after"],
        Value::Null,
        "a page short of the limit is the last"
    );
    let (st, _) = app
        .call("POST", &format!("/api/v1/sessions/{sid}/cancel"), None)
        .await;
    assert_eq!(st, 200);
    let (_, cancelled) = records("?status=cancelled&limit=1000".into()).await;
    assert_eq!(
        cancelled["items"].as_array().unwrap().len(),
        5,
        "{cancelled}"
    );
    let (_, pending) = records("?status=pending".into()).await;
    assert_eq!(pending["items"], json!([]), "{pending}");
    // The legacy route keeps its shape, paged: a first page and where the next starts.
    let (st, legacy) = app
        .call(
            "GET",
            &format!("/account-sync-optimized/sync-details-batch?session_id={sid}&limit=2"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{legacy}");
    assert_eq!(legacy["data"]["records"].as_array().unwrap().len(), 2);
    assert_eq!(legacy["data"]["next_after"].as_i64(), Some(seen[1]));
    assert_eq!(legacy["data"]["instance_statistics"]["cancelled"], 5);
    assert_eq!(legacy["data"]["instance_statistics"]["total"], 5);
    // Bad paging is a 400 naming the field; an unknown session is a 404.
    for (q, field) in [
        ("?status=done", "status"),
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?after=0", "after"),
        ("?after=x", "after"),
    ] {
        let (st, e) = records(q.into()).await;
        assert_eq!(
            (st, e["error"]["field"].as_str()),
            (400, Some(field)),
            "{q}: {e}"
        );
    }
    let (st, _) = app
        .call(
            "GET",
            "/api/v1/sessions/00000000-0000-4000-8000-000000000000/records",
            None,
        )
        .await;
    assert_eq!(st, 404);
}

async fn every_route_answers_with_the_contracts_shapes(b: Backend) {
    let app = spawn_app(b, None).await;
    assert_eq!(app.call("GET", "/healthz", None).await.0, 200);
    assert_eq!(app.call("GET", "/readyz", None).await.0, 200);
    let (st, inst) = app
        .call(
            "POST",
            "/api/v1/instances",
            Some(r#"{"name":"a","kind":"simulated","options":{"latency_ms":0}}"#),
        )
        .await;
    assert_eq!(st, 201, "{inst}");
    let id = inst["id"].as_i64().unwrap();
    app.call(
        "POST",
        "/api/v1/instances",
        Some(r#"{"name":"b","kind":"simulated","active":false}"#),
    )
    .await;
    let (st, list) = app.call("GET", "/api/v1/instances", None).await;
    assert_eq!((st, list["total"].as_i64()), (200, Some(2)));
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"].is_i64())
    );
    let (st, got) = app
        .call("GET", &format!("/api/v1/instances/{id}"), None)
        .await;
    assert_eq!((st, got["name"].as_str()), (200, Some("a")));
    let (st, patched) = app
        .call(
            "PATCH",
            &format!("/api/v1/instances/{id}"),
            Some(r#"{"host":"db1","options":{"latency_ms":1}}"#),
        )
        .await;
    assert_eq!(
        (st, patched["host"].as_str()),
        (200, Some("db1")),
        "{patched}"
    );

    let (st, created) = app
        .call("POST", "/api/v1/sessions", Some(r#"{"all": true}"#))
        .await;
    assert_eq!(st, 202);
    assert_eq!(created["total_instances"], 1, "only active instances");
    assert_eq!(created["status"], "pending");
    let sid = created["session_id"].as_str().unwrap().to_string();
    let (st, single) = app
        .call("POST", &format!("/api/v1/instances/{id}/sync"), None)
        .await;
    assert_eq!(st, 202);
    let (st, d) = app
        .call(
            "GET",
            &format!(
                "/api/v1/sessions/{}",
                single["session_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!((st, d["sync_type"].as_str()), (200, Some("manual_single")));
    for key in [
        "duration_seconds",
        "success_rate",
        "total_instances",
        "successful_instances",
    ] {
        assert!(d.get(key).is_some(), "session lacks {key}: {d}");
    }
    let (st, page) = app
        .call(
            "GET",
            &format!(
                "/api/v1/sessions/{}/records",
                single["session_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(st, 200, "{page}");
    let r = &page["items"][0];
    for key in [
        "instance_id",
        "instance_name",
        "status",
        "attempts",
        "worker_id",
        "lock_wait_ms",
        "started_at",
        "completed_at",
        "accounts_total",
        "error",
    ] {
        assert!(r.get(key).is_some(), "record lacks {key}: {r}");
    }
    let (st, l) = app
        .call(
            "GET",
            "/api/v1/sessions?status=pending&limit=10&offset=0",
            None,
        )
        .await;
    assert_eq!((st, l["total"].as_i64()), (200, Some(2)));
    let (st, c) = app
        .call("POST", &format!("/api/v1/sessions/{sid}/cancel"), None)
        .await;
    assert_eq!((st, c["status"].as_str()), (200, Some("cancelled")), "{c}");
    let (st, acc) = app
        .call(
            "GET",
            &format!("/api/v1/instances/{id}/accounts?include_deleted=true"),
            None,
        )
        .await;
    assert_eq!((st, acc["total"].as_i64()), (200, Some(0)));
    let (st, legacy) = app
        .call("POST", "/account-sync-optimized/sync-all", None)
        .await;
    assert_eq!((st, legacy["success"].as_bool()), (200, Some(true)));
    let lsid = legacy["session_id"].as_str().unwrap();
    let (st, det) = app
        .call(
            "GET",
            &format!("/account-sync-optimized/sync-details-batch?session_id={lsid}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{det}");
    assert_eq!(det["data"]["instance_statistics"]["total"], 1);
    assert!(
        det["data"].get("success_rate").is_some() && det["data"].get("duration_seconds").is_some()
    );
    let (st, clean) = app
        .call(
            "POST",
            "/account-sync-optimized/cleanup",
            Some(r#"{"days": 7}"#),
        )
        .await;
    assert_eq!((st, clean["success"].as_bool()), (200, Some(true)));
    let (st, counts) = app
        .call(
            "POST",
            "/api/v1/maintenance/cleanup",
            Some(r#"{"days": 0}"#),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        counts["sessions_deleted"], 1,
        "the cancelled session: {counts}"
    );
    let (st, metrics) = app.call("GET", "/metrics", None).await;
    assert_eq!(st, 200);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("syncpool_jobs{state=\"pending\"}")
    );
    let (st, _) = app
        .call("DELETE", &format!("/api/v1/instances/{id}"), None)
        .await;
    assert_eq!(st, 204);
    assert_eq!(
        app.call("GET", &format!("/api/v1/instances/{id}"), None)
            .await
            .0,
        404
    );
}

async fn routes_need_the_bearer_token_when_one_is_set(b: Backend) {
    let app = spawn_app(b, Some("s3cr3t-token-0123")).await;
    for path in [
        "/api/v1/sessions",
        "/api/v1/instances",
        "/account-sync-optimized/sync-details-batch?session_id=x",
    ] {
        let (st, body) = app.raw("GET", path, None, None).await;
        assert_eq!(st, 401, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(
            app.raw("GET", path, None, Some("s3cr3t-tokeN-0123"))
                .await
                .0,
            401,
            "{path}"
        );
        assert!(
            !body.to_string().contains("s3cr3t"),
            "the token is never echoed"
        );
    }
    assert_eq!(
        app.raw("POST", "/api/v1/sessions", Some("{}"), None)
            .await
            .0,
        401
    );
    assert_eq!(app.call("GET", "/api/v1/sessions", None).await.0, 200);
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(app.raw("GET", open, None, None).await.0, 200, "{open}");
    }
}

async fn bad_input_gets_a_4xx_naming_the_field_and_writes_nothing(b: Backend) {
    let app = spawn_app(b, None).await;
    app.call(
        "POST",
        "/api/v1/instances",
        Some(r#"{"name":"a","kind":"simulated"}"#),
    )
    .await;
    let before = app.store.fleet_gauges().await.unwrap();
    let big = format!(
        r#"{{"name":"{}","kind":"simulated"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    // (method, path, body, expected status, field the error names)
    type Case<'a> = (&'a str, String, Option<String>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/sessions".into(),
            Some("{".into()),
            400,
            None,
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(r#"{"instance_ids":"all"}"#.into()),
            400,
            Some("instance_ids"),
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(r#"{"instance_ids":[1,"2"]}"#.into()),
            400,
            Some("instance_ids[1]"),
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(r#"{"instance_ids":[]}"#.into()),
            400,
            Some("instance_ids"),
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(r#"{"instance_ids":[424242]}"#.into()),
            // Well formed, naming what does not exist: 404 naming the field.
            404,
            Some("instance_ids"),
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(r#"{"sync_type":"hourly"}"#.into()),
            400,
            Some("sync_type"),
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(r#"{"force":true}"#.into()),
            400,
            Some("force"),
        ),
        (
            "POST",
            "/api/v1/instances".into(),
            Some(r#"{"name":"b","kind":"oracle"}"#.into()),
            400,
            Some("kind"),
        ),
        (
            "POST",
            "/api/v1/instances".into(),
            Some(r#"{"name":"b","kind":"simulated","password":"pw"}"#.into()),
            400,
            Some("password"),
        ),
        (
            "POST",
            "/api/v1/instances".into(),
            Some(r#"{"name":"b","kind":"postgres","host":"h","port":0}"#.into()),
            400,
            Some("port"),
        ),
        (
            "POST",
            "/api/v1/instances".into(),
            Some(r#"{"name":"a","kind":"simulated"}"#.into()),
            409,
            None,
        ),
        ("POST", "/api/v1/instances".into(), Some(big), 413, None),
        (
            "POST",
            "/api/v1/instances".into(),
            Some(r#"{"name":" padded","kind":"simulated"}"#.into()),
            400,
            Some("name"),
        ),
        (
            "POST",
            "/api/v1/instances".into(),
            Some(r#"{"name":"c","kind":"simulated","options":{"latency_ms":"10"}}"#.into()),
            400,
            Some("options"),
        ),
        (
            "PATCH",
            "/api/v1/instances/1".into(),
            Some(r#"{"options":{"role_like":"app_%"}}"#.into()),
            409,
            Some("options"),
        ),
        (
            "PATCH",
            "/api/v1/instances/1".into(),
            Some(r#"{"port":0}"#.into()),
            400,
            Some("port"),
        ),
        (
            "POST",
            "/api/v1/maintenance/cleanup".into(),
            Some("[30]".into()),
            400,
            None,
        ),
        (
            "GET",
            "/api/v1/sessions/{00000000-0000-0000-0000-000000000000}".into(),
            None,
            400,
            Some("session_id"),
        ),
        ("GET", "/api/v1/instances/+1".into(), None, 400, Some("id")),
        (
            "GET",
            "/api/v1/instances/1/accounts?include_deleted=1".into(),
            None,
            400,
            Some("include_deleted"),
        ),
        (
            "PATCH",
            "/api/v1/instances/1".into(),
            Some(r#"{"colour":"red"}"#.into()),
            400,
            Some("colour"),
        ),
        (
            "PATCH",
            "/api/v1/instances/1".into(),
            Some(r#"{"active":"yes"}"#.into()),
            400,
            Some("active"),
        ),
        ("GET", "/api/v1/instances/abc".into(), None, 400, Some("id")),
        ("GET", "/api/v1/instances/999".into(), None, 404, None),
        (
            "GET",
            "/api/v1/sessions/not-a-uuid".into(),
            None,
            400,
            Some("session_id"),
        ),
        (
            "GET",
            "/api/v1/sessions/00000000-0000-0000-0000-000000000000".into(),
            None,
            404,
            None,
        ),
        (
            "POST",
            "/api/v1/sessions/00000000-0000-0000-0000-000000000000/cancel".into(),
            None,
            404,
            None,
        ),
        (
            "GET",
            "/api/v1/sessions?limit=-1".into(),
            None,
            400,
            Some("limit"),
        ),
        (
            "GET",
            "/api/v1/sessions?limit=1000000".into(),
            None,
            400,
            Some("limit"),
        ),
        (
            "GET",
            "/api/v1/sessions?limit=ten".into(),
            None,
            400,
            Some("limit"),
        ),
        (
            "GET",
            "/api/v1/sessions?status=weird".into(),
            None,
            400,
            Some("status"),
        ),
        (
            "POST",
            "/api/v1/maintenance/cleanup".into(),
            Some(r#"{"days":-1}"#.into()),
            400,
            Some("days"),
        ),
        (
            "POST",
            "/api/v1/maintenance/cleanup".into(),
            Some(r#"{"days":99999999}"#.into()),
            400,
            Some("days"),
        ),
        (
            "POST",
            "/api/v1/maintenance/cleanup".into(),
            Some(r#"{"days":"7"}"#.into()),
            400,
            Some("days"),
        ),
        (
            "POST",
            "/account-sync-optimized/cleanup".into(),
            Some(r#"{"days":-5}"#.into()),
            400,
            Some("days"),
        ),
        (
            "GET",
            "/account-sync-optimized/sync-details-batch".into(),
            None,
            400,
            Some("session_id"),
        ),
        (
            "GET",
            "/account-sync-optimized/sync-details-batch?session_id=zzz".into(),
            None,
            400,
            Some("session_id"),
        ),
    ];
    for (method, path, body, status, field) in cases {
        let (st, resp) = app.call(method, &path, body.as_deref()).await;
        assert_eq!(st, status, "{method} {path}: {resp}");
        assert!(
            resp["error"]["code"].is_string() && resp["error"]["message"].is_string(),
            "{method} {path}: {resp}"
        );
        if let Some(f) = field {
            assert_eq!(resp["error"]["field"], json!(f), "{method} {path}: {resp}");
        }
    }
    let after = app.store.fleet_gauges().await.unwrap();
    assert_eq!(
        (before.jobs_pending, after.jobs_pending),
        (0, 0),
        "no rejected request enqueued anything"
    );
    assert_eq!(app.store.instance_list().await.unwrap().len(), 1);
    let (_, sessions) = app
        .store
        .session_list(&syncpool::store::SessionFilter {
            status: None,
            limit: 10,
            offset: 0,
            sync_type: None,
        })
        .await
        .unwrap();
    assert_eq!(sessions, 0);
}

async fn two_replicas_fire_a_cron_slot_once_and_skip_while_the_last_one_runs(b: Backend) {
    use syncpool::scheduler::{self, Fired, Job, Schedule};
    let db = TestDb::new(b).await;
    let a = db.store().await;
    let b2 = db.store().await;
    a.instance_insert(&simulated("i", json!({}))).await.unwrap();
    let sched = Schedule {
        name: "sync",
        cron: scheduler::parse("0 */6 * * *").unwrap(),
        job: Job::Sync,
    };
    let slot = chrono::Utc::now();
    let (x, y) = tokio::join!(
        scheduler::fire(a.as_ref(), &sched, slot),
        scheduler::fire(b2.as_ref(), &sched, slot)
    );
    let fired = [x.unwrap(), y.unwrap()];
    assert_eq!(
        fired
            .iter()
            .filter(|f| matches!(f, Fired::Started(_)))
            .count(),
        1,
        "{fired:?}"
    );
    assert_eq!(
        fired.iter().filter(|f| **f == Fired::Taken).count(),
        1,
        "{fired:?}"
    );
    // The next slot comes while that scheduled session is still pending: skipped.
    let next = slot + chrono::Duration::hours(6);
    assert_eq!(
        scheduler::fire(b2.as_ref(), &sched, next).await.unwrap(),
        Fired::Skipped
    );
    let (_, n) = a
        .session_list(&syncpool::store::SessionFilter {
            status: None,
            limit: 10,
            offset: 0,
            sync_type: None,
        })
        .await
        .unwrap();
    assert_eq!(n, 1, "one session for two replicas and two slots");
    assert!(scheduler::parse("every tuesday").is_err());
}

/// A small validator for the OpenAPI 3.1 schema subset utoipa emits: `$ref`, `allOf`,
/// `oneOf`/`anyOf`, `type` (also as a list, for nullable), `required`, `properties`,
/// `items`, `enum`.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return validate(doc, &doc["components"]["schemas"][name], v, at, errs);
    }
    if let Some(all) = schema["allOf"].as_array() {
        all.iter().for_each(|s| validate(doc, s, v, at, errs));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(any) = schema[key].as_array() {
            let ok = any.iter().any(|s| {
                let mut e = vec![];
                validate(doc, s, v, at, &mut e);
                e.is_empty()
            });
            if !ok {
                errs.push(format!("{at}: matches none of {key}"));
            }
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => true,
        });
        if !ok {
            errs.push(format!("{at}: {v} is not {types:?}"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        errs.push(format!("{at}: {v} not in {allowed:?}"));
    }
    if let (Some(obj), Some(required)) = (v.as_object(), schema["required"].as_array()) {
        for r in required.iter().filter_map(Value::as_str) {
            if !obj.contains_key(r) {
                errs.push(format!("{at}: missing required '{r}'"));
            }
        }
    }
    if let (Some(obj), Some(props)) = (v.as_object(), schema["properties"].as_object()) {
        for (k, s) in props {
            if let Some(x) = obj.get(k) {
                validate(doc, s, x, &format!("{at}.{k}"), errs);
            }
        }
    }
    if let (Some(arr), Some(items)) = (v.as_array(), schema.get("items")) {
        for (i, x) in arr.iter().enumerate() {
            validate(doc, items, x, &format!("{at}[{i}]"), errs);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_match_the_generated_openapi_document() {
    let app = spawn_app(Backend::Sqlite, None).await;
    let (st, doc) = app.call("GET", "/api/v1/openapi.json", None).await;
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let (_, inst) = app
        .call(
            "POST",
            "/api/v1/instances",
            Some(r#"{"name":"a","kind":"simulated"}"#),
        )
        .await;
    let id = inst["id"].as_i64().unwrap();
    let (_, created) = app
        .call("POST", "/api/v1/sessions", Some(r#"{"all": true}"#))
        .await;
    let sid = created["session_id"].as_str().unwrap().to_string();
    let calls: Vec<(&str, String, &str, Option<&str>)> = vec![
        (
            "POST",
            "/api/v1/instances".into(),
            "/api/v1/instances",
            Some(r#"{"name":"b","kind":"simulated","port":5}"#),
        ),
        (
            "POST",
            "/api/v1/instances".into(),
            "/api/v1/instances",
            Some(r#"{"name":"b","kind":"simulated"}"#),
        ),
        (
            "POST",
            "/api/v1/instances".into(),
            "/api/v1/instances",
            Some(r#"{"name":"c","kind":"nope"}"#),
        ),
        ("GET", "/api/v1/instances".into(), "/api/v1/instances", None),
        (
            "GET",
            format!("/api/v1/instances/{id}"),
            "/api/v1/instances/{id}",
            None,
        ),
        (
            "GET",
            "/api/v1/instances/77".into(),
            "/api/v1/instances/{id}",
            None,
        ),
        (
            "PATCH",
            format!("/api/v1/instances/{id}"),
            "/api/v1/instances/{id}",
            Some(r#"{"host":"h"}"#),
        ),
        (
            "POST",
            format!("/api/v1/instances/{id}/sync"),
            "/api/v1/instances/{id}/sync",
            None,
        ),
        (
            "GET",
            format!("/api/v1/instances/{id}/accounts"),
            "/api/v1/instances/{id}/accounts",
            None,
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            "/api/v1/sessions",
            Some(r#"{"instance_ids":[1]}"#),
        ),
        (
            "GET",
            "/api/v1/sessions?limit=5".into(),
            "/api/v1/sessions",
            None,
        ),
        (
            "GET",
            format!("/api/v1/sessions/{sid}"),
            "/api/v1/sessions/{session_id}",
            None,
        ),
        (
            "GET",
            format!("/api/v1/sessions/{sid}/records?limit=1"),
            "/api/v1/sessions/{session_id}/records",
            None,
        ),
        (
            "POST",
            format!("/api/v1/sessions/{sid}/cancel"),
            "/api/v1/sessions/{session_id}/cancel",
            None,
        ),
        (
            "POST",
            format!("/api/v1/sessions/{sid}/retry"),
            "/api/v1/sessions/{session_id}/retry",
            None,
        ),
        (
            "POST",
            "/api/v1/maintenance/cleanup".into(),
            "/api/v1/maintenance/cleanup",
            Some(r#"{"days":1}"#),
        ),
        ("GET", "/healthz".into(), "/healthz", None),
        ("GET", "/readyz".into(), "/readyz", None),
        (
            "POST",
            "/account-sync-optimized/sync-all".into(),
            "/account-sync-optimized/sync-all",
            None,
        ),
        (
            "GET",
            format!("/account-sync-optimized/sync-details-batch?session_id={sid}"),
            "/account-sync-optimized/sync-details-batch",
            None,
        ),
        (
            "POST",
            "/account-sync-optimized/cleanup".into(),
            "/account-sync-optimized/cleanup",
            Some(r#"{"days":7}"#),
        ),
    ];
    let mut errs = vec![];
    for (method, path, template, body) in calls {
        let (st, v) = app.call(method, &path, body).await;
        let op = &doc["paths"][template][method.to_lowercase()];
        assert!(
            op.is_object(),
            "{method} {template} is not in the OpenAPI document"
        );
        let resp = &op["responses"][st.to_string()];
        assert!(
            resp.is_object(),
            "{method} {path} answered {st}, which the document does not list: {v}"
        );
        let schema = &resp["content"]["application/json"]["schema"];
        if schema.is_object() {
            validate(
                &doc,
                schema,
                &v,
                &format!("{method} {path} -> {st}"),
                &mut errs,
            );
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    // The validator itself must be able to fail: a wrong type and a missing field.
    let (_, mut detail) = app
        .call("GET", &format!("/api/v1/sessions/{sid}"), None)
        .await;
    detail["total_instances"] = json!("many");
    detail.as_object_mut().unwrap().remove("status");
    let schema = &doc["paths"]["/api/v1/sessions/{session_id}"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    let mut bad = vec![];
    validate(&doc, schema, &detail, "broken", &mut bad);
    assert_eq!(bad.len(), 2, "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_database_is_migrated() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = syncpool::store::connect(&db.url).await.unwrap();
    let stop = CancellationToken::new();
    let (addr, _) = syncpool::http::serve(
        AppState {
            store: store.clone(),
            tokens: vec![],
            webhook_allow: Default::default(),
            site: harness_site(),
        },
        "127.0.0.1:0",
        stop.clone().cancelled_owned(),
    )
    .await
    .unwrap();
    let app = App {
        addr,
        store: store.clone(),
        token: None,
        stop,
        _db: db,
    };
    let (st, body) = app.call("GET", "/readyz", None).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (503, Some("not_ready"))
    );
    assert_eq!(
        app.call("GET", "/healthz", None).await.0,
        200,
        "liveness does not depend on the database"
    );
    store.migrate().await.unwrap();
    assert_eq!(app.call("GET", "/readyz", None).await.0, 200);
}
