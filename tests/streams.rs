//! The streams for a SIEM (issue #24, part 4), on both databases: `changes --follow
//! --json` prints history as NDJSON as it is written and resumes after an id;
//! `GET /api/v1/events` streams the outbox as Server-Sent Events and resumes after
//! `Last-Event-ID`; on PostgreSQL a row whose id committed late is never skipped.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use syncpool::store::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::spawn_app;
use crate::common::*;
use crate::policy::{account, sync_all_finding};

on_both_databases!(
    changes_follow_prints_history_as_it_is_written_and_resumes_after_an_id,
    the_event_stream_sends_every_event_and_resumes_after_last_event_id,
    a_follower_never_skips_a_row_whose_id_committed_late,
);

/// `changes --follow --json ARGS`, its lines read on a thread.
fn follower(db: &TestDb, args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<Value>) {
    let mut child = Command::new(bin())
        .args(["changes", "--follow", "--json", "--all"])
        .args(args)
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn take(rx: &std::sync::mpsc::Receiver<Value>, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("line {i} of {n} never came"))
        })
        .collect()
}

async fn changes_follow_prints_history_as_it_is_written_and_resumes_after_an_id(b: Backend) {
    let (db, store, _) = crate::conformance::setup(b, 2).await;
    // History written before the follower starts is not printed: it follows from now.
    sync_all_finding(store.as_ref(), vec![account("old", false)]).await;
    // "Now" is the last row no running transaction can precede; on PostgreSQL that waits
    // for every older transaction on the server (other tests run beside this one).
    let last =
        crate::conformance::count(store.as_ref(), "SELECT MAX(id) FROM account_changes").await;
    for _ in 0..100 {
        if store.stream_heads().await.unwrap().1 == last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut child, rx) = follower(&db, &[]);
    std::thread::sleep(Duration::from_millis(700));
    sync_all_finding(
        store.as_ref(),
        vec![account("old", false), account("app", true)],
    )
    .await;
    sync_all_finding(store.as_ref(), vec![account("app", true)]).await;
    let got = take(&rx, 4);
    signal(&child, "TERM");
    let _ = child.wait();
    let kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|c| (c["username"].as_str().unwrap(), c["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("app", "added"),
            ("app", "added"),
            ("old", "removed"),
            ("old", "removed")
        ]
    );
    let ids: Vec<i64> = got.iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(got[0]["flags"], json!(["superuser"]));
    // Resumed after the second row: the third and fourth, nothing twice.
    let (mut child, rx) = follower(&db, &["--after", &ids[1].to_string()]);
    let again = take(&rx, 2);
    signal(&child, "TERM");
    let _ = child.wait();
    let resumed: Vec<i64> = again.iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert_eq!(resumed, ids[2..]);
    // Filters apply: only this instance's.
    let (code, _, err) = cli(&db.url, &["changes", "--follow"]);
    assert_eq!(code, 2, "--follow needs --json: {err}");
}

/// Reads SSE events (`id`, `event`, `data`) from a raw HTTP/1.1 stream until `n` came.
async fn sse(
    addr: std::net::SocketAddr,
    headers: &str,
    path: &str,
    n: usize,
) -> Vec<(i64, String, Value)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // HTTP/1.0: the body comes as it is, not in chunks.
    let req =
        format!("GET {path} HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    let mut out = vec![];
    let mut head = true;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("events never came")
            .unwrap();
        assert!(read > 0, "the stream closed: {buf}");
        buf.push_str(&String::from_utf8_lossy(&chunk[..read]));
        if head {
            assert!(
                buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200"),
                "{buf}"
            );
            let Some(end) = buf.find("\r\n\r\n") else {
                continue;
            };
            buf.drain(..end + 4);
            head = false;
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let field = |name: &str| {
                block.lines().find_map(|l| {
                    l.strip_prefix(&format!("{name}:"))
                        .map(|v| v.trim().to_string())
                })
            };
            if let (Some(id), Some(kind), Some(data)) = (field("id"), field("event"), field("data"))
            {
                out.push((
                    id.parse().unwrap(),
                    kind,
                    serde_json::from_str(&data).unwrap(),
                ));
            }
        }
    }
    out
}

async fn the_event_stream_sends_every_event_and_resumes_after_last_event_id(b: Backend) {
    let app = spawn_app(b, Some("t0ken-t0ken-t0ken-t0ken")).await;
    let auth = "Authorization: Bearer t0ken-t0ken-t0ken-t0ken\r\n";
    for i in 0..2 {
        app.store
            .instance_insert(&simulated(&format!("s{i}"), json!({})))
            .await
            .unwrap();
    }
    let text = "rules:\n  - name: no-superusers\n    deny: [superuser]\n";
    app.store
        .policy_set(&syncpool::policy::parse(text).unwrap(), text)
        .await
        .unwrap();
    sync_all_finding(app.store.as_ref(), vec![account("app", true)]).await;
    // Two violations opened and a session finished: all three from the start.
    let all = sse(app.addr, auth, "/api/v1/events?after=0", 3).await;
    let kinds: Vec<&str> = all.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["violation_opened", "violation_opened", "session_finished"]
    );
    assert_eq!(all[0].2["data"]["rule"], "no-superusers");
    assert_eq!(all[2].2["type"], "session_finished");
    // Resumed after the first: the other two, then a new one as it is written.
    let resume = format!("{auth}Last-Event-ID: {}\r\n", all[0].0);
    let store = app.store.clone();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        sync_all_finding(store.as_ref(), vec![account("app", false)]).await;
    });
    let next = sse(app.addr, &resume, "/api/v1/events", 5).await;
    later.await.unwrap();
    let ids: Vec<i64> = next.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids[..2], [all[1].0, all[2].0]);
    let kinds: Vec<&str> = next[2..].iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "violation_resolved",
            "violation_resolved",
            "session_finished"
        ]
    );
    // Without a token: 401, as every route; a bad Last-Event-ID: 400 naming it.
    let (status, _, _) = app.request("GET", "/api/v1/events", "", "").await;
    assert_eq!(status, 401);
    let (status, _, body) = app
        .request(
            "GET",
            "/api/v1/events",
            &format!("{auth}Last-Event-ID: x\r\n"),
            "",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "Last-Event-ID");
}

async fn a_follower_never_skips_a_row_whose_id_committed_late(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let insert = |id: &str| {
        format!(
            "INSERT INTO events (event_id, type, data) VALUES ('{id}', 'session_finished', '{{}}')"
        )
    };
    let DbPool::Postgres(pool) = store.pool() else {
        // SQLite's writes are serial: ids commit in order, nothing to skip.
        crate::conformance::exec(store.as_ref(), &insert("evt_a"), &[]).await;
        assert_eq!(store.events_after(0, 10).await.unwrap().len(), 1);
        return;
    };
    // A transaction takes an id and holds it; a later one commits the next id first.
    let mut slow = pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(insert("evt_slow")))
        .execute(&mut *slow)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(insert("evt_fast")))
        .execute(&pool)
        .await
        .unwrap();
    let seen = store.events_after(0, 10).await.unwrap();
    assert!(seen.is_empty(), "evt_fast before evt_slow ended: {seen:?}");
    // A follower starting now starts before both: evt_slow may still commit.
    assert_eq!(store.stream_heads().await.unwrap().0, 0);
    slow.commit().await.unwrap();
    // Both, in commit order, once every transaction older than them (on the whole
    // server: other tests run beside this one) has ended.
    let mut seen: Vec<String> = vec![];
    for _ in 0..100 {
        seen = store
            .events_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, ["evt_slow", "evt_fast"]);
    // Resuming after the first one found gives the other, once.
    let first = store.events_after(0, 1).await.unwrap()[0].seq;
    let rest: Vec<String> = store
        .events_after(first, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(rest, ["evt_fast"]);
}

/// `serve` stops on SIGTERM with a stream open: the stream ends, the server exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_on_sigterm_with_an_event_stream_open() {
    let db = TestDb::new(Backend::Sqlite).await;
    db.store().await;
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut serve = Command::new(bin())
        .args(["serve", "--bind", &addr.to_string()])
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let req = format!("GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut head = [0u8; 64];
            let n = s.read(&mut head).await.unwrap();
            assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
            conn = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _open = conn.expect("serve never answered");
    signal(&serve, "TERM");
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = serve.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "serve waited for the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
