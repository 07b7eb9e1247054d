//! The operator's views: `GET /api/v1/locks` and `/queue`, `syncpool locks|queue`,
//! `session ID --json` over many pages, and the console's HTML over real HTTP (sign-in,
//! CSRF, escaping, no secrets). The browser-driven tests are in `browser.rs`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api::{App, spawn_app};
use crate::common::*;

on_both_databases!(
    locks_show_who_holds_an_instance_and_which_jobs_wait_for_it,
    session_json_prints_every_record_of_a_session_larger_than_a_page,
    a_later_sessions_pages_hold_its_own_records_only,
    queue_counts_are_exact_unless_a_cap_is_asked_for,
    the_console_needs_a_sign_in_and_its_cookie_holds_no_token,
    console_forms_refuse_requests_without_the_csrf_token_or_from_another_site,
    console_pages_escape_what_instances_are_called_and_render_no_secret,
    console_changes_instances_and_starts_and_cancels_sessions,
);

/// Polls `f` until it returns Some, for at most `secs`.
async fn until<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn locks_show_who_holds_an_instance_and_which_jobs_wait_for_it(b: Backend) {
    let app = spawn_app(b, None).await;
    let slow = app
        .store
        .instance_insert(&simulated("slow-one", json!({"latency_ms": 60000})))
        .await
        .unwrap();
    let body = format!(r#"{{"instance_ids": [{}]}}"#, slow.id);
    let (_, first) = app.call("POST", "/api/v1/sessions", Some(&body)).await;
    let (mut worker, _) = worker(app.db(), "locks", &[]);
    let lease = until(30, "the slow sync's lease", async || {
        let (st, locks) = app.call("GET", "/api/v1/locks", None).await;
        assert_eq!(st, 200, "{locks}");
        locks["items"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(lease["instance_name"], "slow-one", "{lease}");
    assert_eq!(lease["session_id"], first["session_id"], "{lease}");
    assert_eq!(lease["expired"], false);
    assert!(lease["token"].as_i64().unwrap() >= 1);
    assert!(!text(&lease["holder"]).is_empty(), "{lease}");
    assert!(
        lease["expires_in_seconds"].as_f64().unwrap() > 0.0,
        "{lease}"
    );
    assert_eq!(lease["waiting_total"], 0);
    // A second session for the same instance waits for the lease.
    let (_, second) = app.call("POST", "/api/v1/sessions", Some(&body)).await;
    let waiting = until(30, "the waiter", async || {
        let (_, locks) = app.call("GET", "/api/v1/locks", None).await;
        let l = locks["items"][0].clone();
        (l["waiting_total"] == 1).then_some(l)
    })
    .await;
    assert_eq!(
        waiting["waiting"][0]["session_id"], second["session_id"],
        "{waiting}"
    );
    assert!(waiting["waiting"][0]["waited_seconds"].as_f64().unwrap() >= 0.0);
    let (st, queue) = app.call("GET", "/api/v1/queue", None).await;
    assert_eq!(st, 200, "{queue}");
    for state in ["Pending", "Queued", "Running", "Done", "Failed", "Killed"] {
        assert!(queue["depth"][state].is_i64(), "{state} in {queue}");
    }
    let pending = queue["depth"]["Pending"].as_i64().unwrap();
    assert_eq!(
        pending,
        queue["ready"].as_i64().unwrap() + queue["delayed"].as_i64().unwrap()
    );
    // The CLI prints the same views.
    let (code, out, err) = cli(&app.db().url, &["locks", "--json"]);
    assert_eq!(code, 0, "{err}");
    let cli_locks: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli_locks["items"][0]["token"], lease["token"]);
    let (code, out, _) = cli(&app.db().url, &["locks"]);
    assert_eq!(code, 0);
    assert!(out.contains("slow-one") && out.contains("1 job"), "{out}");
    let (code, out, _) = cli(&app.db().url, &["queue", "--json"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["depth"].is_object());
    // In syncpool's terms (issue 22, item 3; was apalis' states, now under --raw): the
    // waiting job, the running sync under its lease.
    let (code, out, _) = cli(&app.db().url, &["queue"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("waiting") && out.contains("running ") && out.contains("next:"),
        "{out}"
    );
    assert!(!out.contains("Pending"), "{out}");
    let (code, out, _) = cli(&app.db().url, &["queue", "--raw"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Pending") && out.contains("oldest pending"),
        "{out}"
    );
    // Cancelled, the sync stops at its next renewal and the lease goes away.
    for s in [&first, &second] {
        let sid = s["session_id"].as_str().unwrap();
        app.call("POST", &format!("/api/v1/sessions/{sid}/cancel"), None)
            .await;
    }
    worker.kill().ok();
    worker.wait().ok();
}

async fn session_json_prints_every_record_of_a_session_larger_than_a_page(b: Backend) {
    let app = spawn_app(b, None).await;
    let many: Vec<_> = (0..2345)
        .map(|i| simulated(&format!("many-{i:05}"), json!({})))
        .collect();
    app.store.instance_insert_many(&many).await.unwrap();
    let (_, created) = app
        .call("POST", "/api/v1/sessions", Some(r#"{"all": true}"#))
        .await;
    let sid = created["session_id"].as_str().unwrap();
    let (code, out, err) = cli(&app.db().url, &["session", sid, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["session_id"], sid);
    assert_eq!(v["total_instances"], 2345);
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 2345, "every record, across three pages");
    let ids: Vec<i64> = records.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in id order, none twice"
    );
    // As text, the first page (issue 22, item 5; it was every record), or every record
    // with --all.
    let (code, out, _) = cli(&app.db().url, &["session", sid]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().filter(|l| l.contains("many-")).count(), 50);
    let (code, out, _) = cli(&app.db().url, &["session", sid, "--all"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().filter(|l| l.contains("many-")).count(), 2345);
}

async fn a_later_sessions_pages_hold_its_own_records_only(b: Backend) {
    let app = spawn_app(b, None).await;
    let many: Vec<_> = (0..7)
        .map(|i| simulated(&format!("twice-{i}"), json!({})))
        .collect();
    app.store.instance_insert_many(&many).await.unwrap();
    let mut sessions = vec![];
    for _ in 0..3 {
        let (_, created) = app
            .call("POST", "/api/v1/sessions", Some(r#"{"all": true}"#))
            .await;
        sessions.push(text(&created["session_id"]).to_string());
    }
    let mut all_ids = vec![];
    for sid in &sessions {
        for status in ["", "&status=pending"] {
            let mut ids = vec![];
            let mut after = String::new();
            loop {
                let (st, page) = app
                    .call(
                        "GET",
                        &format!("/api/v1/sessions/{sid}/records?limit=3{status}{after}"),
                        None,
                    )
                    .await;
                assert_eq!(st, 200, "{page}");
                ids.extend(
                    page["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["id"].as_i64().unwrap()),
                );
                match page["next_after"].as_i64() {
                    Some(n) => after = format!("&after={n}"),
                    None => break,
                }
            }
            assert_eq!(ids.len(), 7, "{sid}{status}: {ids:?}");
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            if status.is_empty() {
                all_ids.extend(ids);
            }
        }
    }
    let mut unique = all_ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 21, "no record on two sessions' pages");
}

async fn queue_counts_are_exact_unless_a_cap_is_asked_for(b: Backend) {
    let app = spawn_app(b, None).await;
    let many: Vec<_> = (0..5)
        .map(|i| simulated(&format!("queued-{i}"), json!({})))
        .collect();
    app.store.instance_insert_many(&many).await.unwrap();
    app.call("POST", "/api/v1/sessions", Some(r#"{"all": true}"#))
        .await;
    let exact = app.store.queue_stats(None).await.unwrap();
    assert_eq!(exact.depth["Pending"], 5);
    assert_eq!((exact.ready, exact.delayed), (5, 0));
    assert_eq!(exact.counted_up_to, None);
    assert!(exact.oldest_pending.is_some());
    let capped = app.store.queue_stats(Some(2)).await.unwrap();
    assert_eq!(
        capped.depth["Pending"], 3,
        "one past the cap means more than it"
    );
    assert_eq!(capped.depth["Done"], 0);
    assert_eq!(capped.counted_up_to, Some(2));
    let (_, api) = app.call("GET", "/api/v1/queue", None).await;
    assert_eq!(api["depth"]["Pending"], 5, "the API counts exactly");
}

/// Signs in over HTTP; returns the `Cookie:` header line to send.
pub(crate) async fn sign_in(app: &App, token: &str) -> String {
    let (st, head, _) = app
        .request(
            "POST",
            "/login",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            &format!("token={token}&next=%2Finstances"),
        )
        .await;
    assert_eq!(st, 303, "{head}");
    assert!(head.contains("location: /instances"), "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie")
        .to_string();
    assert!(cookie.contains("httponly"), "{cookie}");
    assert!(cookie.contains("samesite=strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    format!("Cookie: {pair}\r\n")
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

pub(crate) async fn page(app: &App, path: &str, cookie: &str) -> (u16, String, String) {
    let (st, head, body) = app.request("GET", path, cookie, "").await;
    (st, head, text(&body).to_string())
}

/// The CSRF token of the first form on a page.
pub(crate) fn csrf_of(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token");
    html[at + 19..].split('"').next().unwrap().to_string()
}

async fn the_console_needs_a_sign_in_and_its_cookie_holds_no_token(b: Backend) {
    let token = "console-token-0123456789";
    let app = spawn_app(b, Some(token)).await;
    let (st, head, _) = page(&app, "/leases", "").await;
    assert_eq!(st, 303);
    assert!(head.contains("location: /login?next=%2fleases"), "{head}");
    let (st, _, html) = page(&app, "/login", "").await;
    assert_eq!(st, 200);
    assert!(html.contains(r#"type="password""#), "{html}");
    // A wrong token is refused, and the page says so.
    let (st, head, body) = app
        .request(
            "POST",
            "/login",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            "token=nope",
        )
        .await;
    assert_eq!(st, 401);
    assert!(!head.contains("set-cookie"), "{head}");
    assert!(text(&body).contains("not one of"), "{body}");
    let cookie = sign_in(&app, token).await;
    assert!(
        !cookie.contains(token),
        "the cookie never carries the token"
    );
    for path in ["/", "/instances", "/leases", "/instances/new"] {
        let (st, head, html) = page(&app, path, &cookie).await;
        assert_eq!(st, 200, "{path}: {head}");
        assert!(head.contains("content-security-policy"), "{head}");
        assert!(head.contains("x-frame-options: deny"), "{head}");
        assert!(!html.contains(token), "{path} renders the token");
    }
    // A forged or tampered cookie is a stranger.
    let forged = cookie.replace(".", "0.");
    let (st, _, _) = page(&app, "/", &forged).await;
    assert_eq!(st, 303);
    // The API still wants its bearer token: the cookie opens only the console.
    let (st, _, _) = app.request("GET", "/api/v1/sessions", &cookie, "").await;
    assert_eq!(st, 401);
    // Signing in never sends anyone to another site.
    let (_, head, _) = app
        .request(
            "POST",
            "/login",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            &format!("token={token}&next=%2F%2Fevil.example%2F"),
        )
        .await;
    assert!(
        head.contains("location: /\r")
            || head.contains("location: /\n")
            || head.ends_with("location: /"),
        "{head}"
    );
    // Signing out clears the cookie.
    let (_, _, html) = page(&app, "/", &cookie).await;
    let (st, head, _) = app
        .request(
            "POST",
            "/logout",
            &format!("{cookie}Content-Type: application/x-www-form-urlencoded\r\n"),
            &format!("csrf={}", csrf_of(&html)),
        )
        .await;
    assert_eq!(st, 303, "{head}");
    assert!(head.contains("max-age=0"), "{head}");
}

async fn console_forms_refuse_requests_without_the_csrf_token_or_from_another_site(b: Backend) {
    let token = "csrf-test-token-abcdef";
    let app = spawn_app(b, Some(token)).await;
    let cookie = sign_in(&app, token).await;
    let inst = app
        .store
        .instance_insert(&simulated("target", json!({})))
        .await
        .unwrap();
    let (_, _, html) = page(&app, &format!("/instances/{}", inst.id), &cookie).await;
    let csrf = csrf_of(&html);
    let form = format!("{cookie}Content-Type: application/x-www-form-urlencoded\r\n");
    let path = format!("/instances/{}/active", inst.id);
    // No token, a wrong one, or the right one from another site's page: 403, nothing changes.
    for (headers, body) in [
        (form.clone(), "active=false".to_string()),
        (form.clone(), "active=false&csrf=00ff".to_string()),
        (
            format!("{form}Origin: http://evil.example\r\n"),
            format!("active=false&csrf={csrf}"),
        ),
        (
            format!("{form}Sec-Fetch-Site: cross-site\r\n"),
            format!("active=false&csrf={csrf}"),
        ),
    ] {
        let (st, _, page) = app.request("POST", &path, &headers, &body).await;
        assert_eq!(st, 403, "{body}: {page}");
    }
    assert!(
        app.store
            .instance_get(inst.id)
            .await
            .unwrap()
            .unwrap()
            .active
    );
    // Another signed-in browser's token is not this one's.
    let other = sign_in(&app, token).await;
    let (_, _, other_html) = page(&app, "/", &other).await;
    assert_ne!(csrf_of(&other_html), csrf);
    let (st, _, _) = app
        .request(
            "POST",
            &path,
            &form,
            &format!("active=false&csrf={}", csrf_of(&other_html)),
        )
        .await;
    assert_eq!(st, 403);
    // The right token from this site: done, and redirected back to the instance.
    let (st, head, _) = app
        .request(
            "POST",
            &path,
            &format!("{form}Origin: http://x\r\n"),
            &format!("active=false&csrf={csrf}"),
        )
        .await;
    assert_eq!(st, 303, "{head}");
    assert!(
        !app.store
            .instance_get(inst.id)
            .await
            .unwrap()
            .unwrap()
            .active
    );
}

async fn console_pages_escape_what_instances_are_called_and_render_no_secret(b: Backend) {
    let app = spawn_app(b, None).await;
    let hostile = r#"<script>alert("x")</script>"#;
    let mut new = simulated(hostile, json!({}));
    new.password_env = None;
    let inst = app.store.instance_insert(&new).await.unwrap();
    let body = format!(r#"{{"instance_ids": [{}]}}"#, inst.id);
    let (_, created) = app.call("POST", "/api/v1/sessions", Some(&body)).await;
    let sid = text(&created["session_id"]).to_string();
    for path in [
        "/".to_string(),
        format!("/sessions/{sid}"),
        "/instances".into(),
        format!("/instances/{}", inst.id),
        format!("/instances/{}/edit", inst.id),
    ] {
        let (st, _, html) = page(&app, &path, "").await;
        assert_eq!(st, 200, "{path}");
        assert!(
            !html.contains("<script>alert"),
            "{path} renders markup from a name"
        );
        if path.contains("instances/") || path.contains("sessions/") {
            assert!(
                html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"),
                "{path}: {html}"
            );
        }
    }
    // Bad input on a page is a 4xx page naming the field, not a panic.
    let (st, _, html) = page(&app, "/?status=bogus", "").await;
    assert_eq!(st, 400);
    assert!(html.contains("status"), "{html}");
    let (st, _, _) = page(&app, "/sessions/not-a-uuid", "").await;
    assert_eq!(st, 400);
    let (st, _, _) = page(&app, "/instances/999999", "").await;
    assert_eq!(st, 404);
    let (st, _, _) = page(&app, &format!("/sessions/{sid}?after=-3"), "").await;
    assert_eq!(st, 400);
}

async fn console_changes_instances_and_starts_and_cancels_sessions(b: Backend) {
    let app = spawn_app(b, None).await;
    let (_, _, html) = page(&app, "/instances/new", "").await;
    let csrf = csrf_of(&html);
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    // A wrong field comes back as the form, naming it, with what was typed kept.
    let (st, _, body) = app
        .request(
            "POST",
            "/instances",
            form,
            &format!(
                "csrf={csrf}&name=pg-one&kind=postgres&host=&port=abc&options=%7B%7D&active=true"
            ),
        )
        .await;
    assert_eq!(st, 400);
    assert!(text(&body).contains("<strong>port</strong>"), "{body}");
    assert!(text(&body).contains(r#"value="pg-one""#), "{body}");
    assert!(
        app.store.instance_list().await.unwrap().is_empty(),
        "nothing half-written"
    );
    let (st, head, body) = app
        .request("POST", "/instances", form, &format!("csrf={csrf}&name=sim-one&kind=simulated&options=%7B%22latency_ms%22%3A5%7D&active=true"))
        .await;
    assert_eq!(st, 303, "{body}");
    let inst = app
        .store
        .instance_get_by_name("sim-one")
        .await
        .unwrap()
        .unwrap();
    assert!(
        head.contains(&format!("location: /instances/{}", inst.id)),
        "{head}"
    );
    assert_eq!(inst.options["latency_ms"], 5);
    // Edit: rename it.
    let (st, _, _) = app
        .request(
            "POST",
            &format!("/instances/{}", inst.id),
            form,
            &format!("csrf={csrf}&name=sim-renamed&kind=simulated&options=%7B%7D&active=true"),
        )
        .await;
    assert_eq!(st, 303);
    assert_eq!(
        app.store.instance_get(inst.id).await.unwrap().unwrap().name,
        "sim-renamed"
    );
    // A taken name is a form error, not a 500.
    app.store
        .instance_insert(&simulated("taken", json!({})))
        .await
        .unwrap();
    let (st, _, body) = app
        .request(
            "POST",
            &format!("/instances/{}", inst.id),
            form,
            &format!("csrf={csrf}&name=taken&kind=simulated&options=%7B%7D&active=true"),
        )
        .await;
    assert_eq!(st, 400, "{body}");
    // Sync now starts a session and shows it; cancel ends it.
    let (st, head, _) = app
        .request(
            "POST",
            &format!("/instances/{}/sync", inst.id),
            form,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(st, 303);
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    let sid = location.strip_prefix("/sessions/").unwrap().to_string();
    let (st, _, html) = page(&app, &location, "").await;
    assert_eq!(st, 200);
    assert!(
        html.contains("Cancel session") && html.contains("sim-renamed"),
        "{html}"
    );
    let (st, _, _) = app
        .request(
            "POST",
            &format!("{location}/cancel"),
            form,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(st, 303);
    let s = app
        .store
        .session_summary(sid.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.status.as_str(), "cancelled");
    let (_, _, html) = page(&app, &location, "").await;
    assert!(
        !html.contains("Cancel session"),
        "a finished session offers no cancel"
    );
    assert!(html.contains("cancelled"));
    // A finished session with a cancelled record offers a retry, which starts a session
    // naming it.
    assert!(html.contains("Retry failed and cancelled"), "{html}");
    let (st, head, _) = app
        .request(
            "POST",
            &format!("{location}/retry"),
            form,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(st, 303);
    let retried = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(retried, location);
    let (st, _, html) = page(&app, &retried, "").await;
    assert_eq!(st, 200);
    assert!(
        html.contains("Retry of") && html.contains(&sid[..8]) && html.contains("Cancel session"),
        "{html}"
    );
    // Without the CSRF token it is refused, and starts nothing.
    let before = app.store.session_list(&Default::default()).await.unwrap().1;
    let (st, _, _) = app
        .request("POST", &format!("{location}/retry"), form, "")
        .await;
    assert_eq!(st, 403);
    assert_eq!(
        app.store.session_list(&Default::default()).await.unwrap().1,
        before
    );
}

/// Issue #19: DNS rebinding, cross-site requests, sign-in redirects, sign-in hardening.
mod hardening {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use hmac::{Hmac, KeyInit, Mac};
    use serde_json::{Value, json};
    use syncpool::http::{AppState, Site};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use super::{csrf_of, page, sign_in};
    use crate::api::{App, harness_site, spawn_app, spawn_app_with};
    use crate::common::*;

    on_both_databases!(
        a_page_on_another_site_cannot_drive_a_tokenless_server,
        a_rebound_host_name_is_refused_and_an_allowed_one_is_served,
        sign_in_behind_a_proxy_that_rewrites_host_works_with_public_url,
        sign_in_never_redirects_off_site_and_never_answers_500,
        wrong_sign_ins_from_one_address_are_limited_and_another_address_still_signs_in,
        a_signed_out_cookie_is_refused_by_every_replica_and_replicas_share_forms,
        the_cookie_is_not_signed_with_the_token_itself,
    );

    /// One HTTP/1.1 request from the local address `from` (any 127.0.0.0/8 address
    /// reaches a server on 127.0.0.1); returns the status, the lower-cased head and the
    /// body.
    async fn send(
        addr: SocketAddr,
        from: &str,
        method: &str,
        path: &str,
        headers: &str,
        body: &str,
    ) -> (u16, String, String) {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
            .unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, head.to_lowercase(), payload.to_string())
    }

    fn location(head: &str) -> Option<&str> {
        head.lines()
            .find_map(|l| l.strip_prefix("location: "))
            .map(str::trim)
    }

    fn set_cookie(head: &str) -> Option<&str> {
        head.lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .map(str::trim)
    }

    const FORM: &str = "Content-Type: application/x-www-form-urlencoded\r\n";

    /// The same database kind again, for a second app in one test.
    fn again(b: &Backend) -> Backend {
        match b {
            Backend::Sqlite => Backend::Sqlite,
            Backend::Postgres => Backend::Postgres,
        }
    }

    /// Another `serve` over the database at `url`, as another replica would be.
    async fn replica(url: &str, tokens: Vec<Arc<str>>) -> (SocketAddr, CancellationToken) {
        let stop = CancellationToken::new();
        let state = AppState {
            store: syncpool::store::connect(url).await.unwrap(),
            tokens,
            webhook_allow: Default::default(),
            site: harness_site(),
        };
        let (addr, _) = syncpool::http::serve(state, "127.0.0.1:0", stop.clone().cancelled_owned())
            .await
            .unwrap();
        (addr, stop)
    }

    async fn sessions_total(app: &App) -> i64 {
        let (st, list) = app.call("GET", "/api/v1/sessions", None).await;
        assert_eq!(st, 200, "{list}");
        list["total"].as_i64().unwrap()
    }

    async fn a_page_on_another_site_cannot_drive_a_tokenless_server(b: Backend) {
        let app = spawn_app(b, None).await;
        let victim = app
            .store
            .instance_insert(&simulated("victim", json!({})))
            .await
            .unwrap();
        // A session that a cleanup which acted would delete: finished long ago.
        let old = app
            .store
            .session_create(syncpool::model::SyncType::ManualSingle, Some(&[victim.id]))
            .await
            .unwrap();
        app.store.session_cancel(old.session_id).await.unwrap();
        crate::conformance::exec(
            app.store.as_ref(),
            "UPDATE sync_sessions SET completed_at = '2000-01-01T00:00:00.000Z'",
            &[],
        )
        .await;
        let evil = "Origin: http://evil.example\r\n";
        let sync_now = format!("/api/v1/instances/{}/sync", victim.id);
        for path in [
            "/api/v1/maintenance/cleanup",
            "/account-sync-optimized/cleanup",
            "/account-sync-optimized/sync-all",
            "/api/v1/sessions",
            &sync_now,
        ] {
            // What a form or `fetch(..., {mode: "no-cors"})` on another site sends.
            for headers in [
                format!("Content-Type: text/plain\r\n{evil}"),
                "Content-Type: text/plain\r\nSec-Fetch-Site: cross-site\r\n".to_string(),
                format!("{FORM}Sec-Fetch-Site: same-site\r\n"),
                evil.to_string(),
                "Origin: null\r\n".to_string(),
            ] {
                let (st, _, err) = app.request("POST", path, &headers, "").await;
                assert_eq!(st, 403, "{path} {headers:?}: {err}");
                assert_eq!(err["error"]["code"], "forbidden", "{err}");
            }
        }
        let (st, _, err) = app
            .request(
                "DELETE",
                &format!("/api/v1/instances/{}", victim.id),
                evil,
                "",
            )
            .await;
        assert_eq!(st, 403, "{err}");
        // Without Origin, an empty body declared as text is still not JSON.
        for path in [
            "/api/v1/maintenance/cleanup",
            "/account-sync-optimized/cleanup",
        ] {
            let (st, _, err) = app
                .request("POST", path, "Content-Type: text/plain\r\n", "")
                .await;
            assert_eq!(st, 415, "{path}: {err}");
        }
        assert_eq!(sessions_total(&app).await, 1, "no session was started");
        assert!(app.store.instance_get(victim.id).await.unwrap().is_some());
        assert!(
            app.store
                .session_summary(old.session_id)
                .await
                .unwrap()
                .is_some(),
            "no cleanup ran"
        );
        // curl and the CLI send neither Origin nor Sec-Fetch-Site, and routes whose body
        // is optional or absent keep working for them.
        let (st, _, created) = app
            .request("POST", "/account-sync-optimized/sync-all", "", "")
            .await;
        assert_eq!(st, 200, "{created}");
        let (st, _, counts) = app
            .request("POST", "/api/v1/maintenance/cleanup", "", "")
            .await;
        assert_eq!(st, 200, "{counts}");
        assert_eq!(counts["sessions_deleted"], 1, "{counts}");
        // A route that needs a body takes no bodiless, typeless request either.
        for path in ["/api/v1/sessions", "/api/v1/instances"] {
            let (st, _, err) = app.request("POST", path, "", "").await;
            assert_eq!(st, 415, "{path}: {err}");
        }
        // This site's own page may (the console's forms are same-origin).
        let (st, _, _) = app
            .request(
                "POST",
                "/api/v1/maintenance/cleanup",
                "Content-Type: application/json\r\nOrigin: http://x\r\nSec-Fetch-Site: same-origin\r\n",
                "{}",
            )
            .await;
        assert_eq!(st, 200);
    }

    async fn a_rebound_host_name_is_refused_and_an_allowed_one_is_served(b: Backend) {
        let site = Site::new(&["x".into(), "syncpool.internal".into()], None).unwrap();
        let app = spawn_app_with(b, None, site).await;
        let inst = app
            .store
            .instance_insert(&simulated("target", json!({})))
            .await
            .unwrap();
        let (_, _, html) = page(&app, &format!("/instances/{}", inst.id), "").await;
        let csrf = csrf_of(&html);
        let port = app.addr.port();
        for path in ["/", "/api/v1/sessions", "/metrics", "/healthz"] {
            for host in [
                "rebind.evil.example".to_string(),
                format!("rebind.evil.example:{port}"),
                "internal".into(),
            ] {
                let (st, _, body) = send(
                    app.addr,
                    "127.0.0.1",
                    "GET",
                    path,
                    &format!("Host: {host}\r\n"),
                    "",
                )
                .await;
                assert_eq!(st, 421, "{path} Host {host}: {body}");
                let err: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(err["error"]["field"], "Host", "{err}");
            }
        }
        // The rebound page's form: its Origin matches its Host, so only the Host tells.
        let (st, _, _) = send(
            app.addr,
            "127.0.0.1",
            "POST",
            &format!("/instances/{}/active", inst.id),
            &format!(
                "Host: rebind.evil.example:{port}\r\nOrigin: http://rebind.evil.example:{port}\r\n{FORM}"
            ),
            &format!("active=false&csrf={csrf}"),
        )
        .await;
        assert_eq!(st, 421);
        let (st, _, _) = send(
            app.addr,
            "127.0.0.1",
            "POST",
            "/api/v1/maintenance/cleanup",
            &format!(
                "Host: rebind.evil.example:{port}\r\nOrigin: http://rebind.evil.example:{port}\r\nContent-Type: application/json\r\n"
            ),
            "{}",
        )
        .await;
        assert_eq!(st, 421);
        assert!(
            app.store
                .instance_get(inst.id)
                .await
                .unwrap()
                .unwrap()
                .active
        );
        // Its own names: the bound address, loopback, localhost, --allowed-host.
        for host in [
            format!("127.0.0.1:{port}"),
            "127.0.0.1".into(),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            "syncpool.internal".into(),
            format!("SyncPool.Internal:{port}"),
        ] {
            for path in ["/", "/api/v1/sessions", "/metrics", "/readyz"] {
                let (st, _, body) = send(
                    app.addr,
                    "127.0.0.1",
                    "GET",
                    path,
                    &format!("Host: {host}\r\n"),
                    "",
                )
                .await;
                assert_eq!(st, 200, "{path} Host {host}: {body}");
            }
        }
        let (st, head, _) = send(
            app.addr,
            "127.0.0.1",
            "POST",
            &format!("/instances/{}/active", inst.id),
            &format!("Host: syncpool.internal\r\nOrigin: http://syncpool.internal\r\n{FORM}"),
            &format!("active=false&csrf={csrf}"),
        )
        .await;
        assert_eq!(st, 303, "{head}");
        assert!(
            !app.store
                .instance_get(inst.id)
                .await
                .unwrap()
                .unwrap()
                .active
        );
    }

    async fn sign_in_behind_a_proxy_that_rewrites_host_works_with_public_url(b: Backend) {
        let token = "proxy-token-0123456789";
        // The proxy forwards https://public.example to http://internal:8080.
        let proxied = |url: Option<&str>| Site::new(&["internal".into()], url).unwrap();
        let login = |next: &str| format!("token={token}&next={next}");
        let headers = format!(
            "Host: internal:8080\r\nOrigin: https://public.example\r\nSec-Fetch-Site: same-origin\r\nX-Forwarded-Proto: https\r\n{FORM}"
        );
        // Without --public-url the browser's Origin is not this server's: refused, and
        // the page says why instead of blaming the token.
        let plain = spawn_app_with(again(&b), Some(token), proxied(None)).await;
        let (st, head, html) = send(
            plain.addr,
            "127.0.0.1",
            "POST",
            "/login",
            &headers,
            &login("%2Finstances"),
        )
        .await;
        assert_eq!(st, 403, "{head}");
        assert!(set_cookie(&head).is_none(), "{head}");
        assert!(!html.contains("not one of"), "{html}");
        assert!(html.contains("--public-url"), "{html}");
        drop(plain);

        let app = spawn_app_with(b, Some(token), proxied(Some("https://public.example"))).await;
        let (st, head, _) = send(
            app.addr,
            "127.0.0.1",
            "POST",
            "/login",
            &headers,
            &login("%2Finstances"),
        )
        .await;
        assert_eq!(st, 303, "{head}");
        assert_eq!(location(&head), Some("/instances"));
        let cookie = set_cookie(&head).unwrap();
        assert!(cookie.contains("; secure"), "{cookie}");
        let cookie = format!("Cookie: {}\r\n", cookie.split(';').next().unwrap());
        let (st, _, html) = send(
            app.addr,
            "127.0.0.1",
            "GET",
            "/",
            &format!("Host: internal:8080\r\n{cookie}"),
            "",
        )
        .await;
        assert_eq!(st, 200);
        // The console's forms work through the proxy too, and another origin still not.
        let csrf = csrf_of(&html);
        let (st, _, _) = send(
            app.addr,
            "127.0.0.1",
            "POST",
            "/logout",
            &format!("{cookie}Host: internal:8080\r\nOrigin: https://evil.example\r\n{FORM}"),
            &format!("csrf={csrf}"),
        )
        .await;
        assert_eq!(st, 403);
        let (st, head, _) = send(
            app.addr,
            "127.0.0.1",
            "POST",
            "/logout",
            &format!("{cookie}{headers}"),
            &format!("csrf={csrf}"),
        )
        .await;
        assert_eq!(st, 303, "{head}");
        // A proxy that keeps the public Host works as well.
        let (st, head, _) = send(
            app.addr,
            "127.0.0.1",
            "POST",
            "/login",
            &format!("Host: public.example\r\nOrigin: https://public.example\r\n{FORM}"),
            &login("%2F"),
        )
        .await;
        assert_eq!(st, 303, "{head}");
    }

    async fn sign_in_never_redirects_off_site_and_never_answers_500(b: Backend) {
        let token = "redirect-token-0123456789";
        let app = spawn_app(again(&b), Some(token)).await;
        let open = spawn_app(b, None).await;
        let hostile = [
            "%2F%09%2Fevil.example%2Fphish",
            "/%09/evil.example/x",
            "%2F%0A",
            "/%0D%0ASet-Cookie:%20x=1",
            "%2F%2Fevil.example%2F",
            "/%5Cevil.example",
            "%2F%5C%5Cevil.example",
            "/%20/evil.example",
            "%2F%00",
            "https%3A%2F%2Fevil.example",
            "/%E2%80%AE/x",
        ];
        for next in hostile {
            let (st, head, _) = app
                .request(
                    "POST",
                    "/login",
                    FORM,
                    &format!("token={token}&next={next}"),
                )
                .await;
            assert_eq!(st, 303, "{next}: {head}");
            assert_eq!(location(&head), Some("/"), "{next}: {head}");
            // The form shown for a wrong token carries no hostile next either.
            let (st, _, page) = app
                .request("POST", "/login", FORM, &format!("token=wrong&next={next}"))
                .await;
            assert_eq!(st, 401, "{next}");
            assert!(
                page.as_str().unwrap().contains(r#"name="next" value="/""#),
                "{next}: {page}"
            );
            // An open console redirects at once: to this site only.
            let (st, head, _) = open
                .request("GET", &format!("/login?next={next}"), "", "")
                .await;
            assert_eq!(st, 303, "{next}: {head}");
            assert_eq!(location(&head), Some("/"), "{next}: {head}");
        }
        for next in ["/instances/3", "/sessions/abc?status=failed&after=12"] {
            let encoded = next
                .replace('/', "%2F")
                .replace('?', "%3F")
                .replace('&', "%26");
            let (st, head, _) = app
                .request(
                    "POST",
                    "/login",
                    FORM,
                    &format!("token={token}&next={encoded}"),
                )
                .await;
            assert_eq!(st, 303);
            assert_eq!(location(&head), Some(next), "{head}");
        }
    }

    async fn wrong_sign_ins_from_one_address_are_limited_and_another_address_still_signs_in(
        b: Backend,
    ) {
        let token = "limited-token-0123456789";
        let app = spawn_app(b, Some(token)).await;
        let attempt = async |from: &str, token: &str| {
            send(
                app.addr,
                from,
                "POST",
                "/login",
                &format!("Host: x\r\n{FORM}"),
                &format!("token={token}"),
            )
            .await
        };
        for i in 0..10 {
            let (st, head, _) = attempt("127.0.0.2", &format!("guess-{i}")).await;
            assert_eq!(st, 401, "guess {i}: {head}");
        }
        let (st, head, html) = attempt("127.0.0.2", "guess-10").await;
        assert_eq!(st, 429, "{head}");
        let retry: u64 = head
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .expect("Retry-After")
            .trim()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(html.contains("Too many"), "{html}");
        // The right token from the limited address waits too: else the answer would
        // still tell which guess was right.
        let (st, head, _) = attempt("127.0.0.2", token).await;
        assert_eq!(st, 429);
        assert!(set_cookie(&head).is_none());
        // Another address is not affected.
        let (st, head, _) = attempt("127.0.0.3", token).await;
        assert_eq!(st, 303, "{head}");
        assert!(set_cookie(&head).is_some());
    }

    async fn a_signed_out_cookie_is_refused_by_every_replica_and_replicas_share_forms(b: Backend) {
        let token = "replica-token-0123456789";
        let app = spawn_app(b, Some(token)).await;
        let (other, stop_other) = replica(&app.db().url, vec![Arc::from(token)]).await;
        let get = async |addr: SocketAddr, cookie: &str| {
            send(
                addr,
                "127.0.0.1",
                "GET",
                "/",
                &format!("Host: x\r\n{cookie}"),
                "",
            )
            .await
        };
        let cookie = sign_in(&app, token).await;
        let kept = sign_in(&app, token).await;
        assert_eq!(
            get(other, &cookie).await.0,
            200,
            "a replica accepts the cookie"
        );
        let (_, _, html) = page(&app, "/", &cookie).await;
        // Signed out on the replica.
        let (st, head, _) = send(
            other,
            "127.0.0.1",
            "POST",
            "/logout",
            &format!("Host: x\r\n{cookie}{FORM}"),
            &format!("csrf={}", csrf_of(&html)),
        )
        .await;
        assert_eq!(st, 303, "{head}");
        // The cookie, kept by whoever copied it, is refused everywhere.
        for addr in [app.addr, other] {
            let (st, head, _) = get(addr, &cookie).await;
            assert_eq!(st, 303, "{head}");
            assert!(location(&head).unwrap().starts_with("/login"), "{head}");
        }
        let (st, _, _) = page(&app, "/", &cookie).await;
        assert_eq!(st, 303);
        // Another sign-in of the same operator is not signed out with it.
        assert_eq!(get(app.addr, &kept).await.0, 200);
        assert_eq!(get(other, &kept).await.0, 200);
        stop_other.cancel();

        // Without a token, replicas still accept each other's forms: the CSRF key is the
        // stored secret's, not a random one per process.
        let open_a = replica(&app.db().url, vec![]).await;
        let (open_b, stop_b) = replica(&app.db().url, vec![]).await;
        let inst = app
            .store
            .instance_insert(&simulated("shared", json!({})))
            .await
            .unwrap();
        let (_, _, html) = send(
            open_a.0,
            "127.0.0.1",
            "GET",
            &format!("/instances/{}", inst.id),
            "Host: x\r\n",
            "",
        )
        .await;
        let (st, head, _) = send(
            open_b,
            "127.0.0.1",
            "POST",
            &format!("/instances/{}/active", inst.id),
            &format!("Host: x\r\n{FORM}"),
            &format!("active=false&csrf={}", csrf_of(&html)),
        )
        .await;
        assert_eq!(st, 303, "{head}");
        assert!(
            !app.store
                .instance_get(inst.id)
                .await
                .unwrap()
                .unwrap()
                .active
        );
        open_a.1.cancel();
        stop_b.cancel();
    }

    async fn the_cookie_is_not_signed_with_the_token_itself(b: Backend) {
        let token = "offline-token-0123456789";
        let app = spawn_app(b, Some(token)).await;
        let cookie = sign_in(&app, token).await;
        let value = cookie
            .trim()
            .strip_prefix("Cookie: syncpool_console=")
            .unwrap();
        // `expiry.nonce.holder.signature`, the MAC over the first three.
        let mut parts = value.splitn(4, '.');
        let (expiry, nonce, holder, sig) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        // What anyone holding the cookie could compute for each guess of the token.
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).unwrap();
        for p in ["session", expiry, nonce, holder] {
            m.update(p.as_bytes());
            m.update(b"\x1f");
        }
        let guess: String = m
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(guess.len(), sig.len(), "the same MAC, keyed otherwise");
        assert_ne!(
            guess, sig,
            "a cookie must not verify under the token as key"
        );
        assert_eq!(page(&app, "/", &cookie).await.0, 200);
    }
}
