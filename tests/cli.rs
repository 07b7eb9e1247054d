//! Bad CLI input: exit code 2, one line on stderr, and the database unchanged.

use crate::common::*;

/// A fingerprint of everything a command could have written.
async fn snapshot(db: &TestDb) -> Vec<i64> {
    let store = db.store().await;
    let g = store.fleet_gauges().await.unwrap();
    let (_, sessions) = store
        .session_list(&syncpool::store::SessionFilter {
            status: None,
            limit: 1000,
            offset: 0,
        })
        .await
        .unwrap();
    vec![
        store.instance_list().await.unwrap().len() as i64,
        sessions,
        g.jobs_pending,
        g.jobs_running,
        g.locks_held,
    ]
}

fn assert_rejected((code, stdout, stderr): (i32, String, String), needle: &str) {
    assert_eq!(code, 2, "exit code; stdout={stdout} stderr={stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() <= 3, "a short message, not a trace: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr should mention {needle:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn bad_cli_input_exits_2_with_a_clear_message_and_changes_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let url = db.url.clone();
    let (code, _, err) = cli(
        &url,
        &["instances", "add", "--name", "ok", "--kind", "simulated"],
    );
    assert_eq!(code, 0, "{err}");
    let before = snapshot(&db).await;

    assert_rejected(
        cli(
            &url,
            &["instances", "add", "--name", "x", "--kind", "oracle"],
        ),
        "unknown kind 'oracle'",
    );
    assert_rejected(
        cli(
            &url,
            &["instances", "add", "--name", "ok", "--kind", "simulated"],
        ),
        "already exists",
    );
    assert_rejected(
        cli(
            &url,
            &[
                "instances",
                "add",
                "--name",
                "p",
                "--kind",
                "postgres",
                "--host",
                "h",
                "--port",
                "70000",
            ],
        ),
        "port",
    );
    assert_rejected(
        cli(
            &url,
            &[
                "instances",
                "add",
                "--name",
                "q",
                "--kind",
                "simulated",
                "--option",
                "fail_rate=2",
            ],
        ),
        "fail_rate",
    );
    assert_rejected(
        cli(
            &url,
            &[
                "instances",
                "add",
                "--name",
                "r",
                "--kind",
                "postgres",
                "--host",
                "h",
                "--password-env",
                "hunter2!",
            ],
        ),
        "password_env",
    );
    // Bounded options: an instance cannot make a worker build millions of accounts or
    // sleep for days.
    for (option, field) in [
        ("accounts=100001", "accounts"),
        ("latency_ms=3600001", "latency_ms"),
        ("panic_rate=1.5", "panic_rate"),
    ] {
        assert_rejected(
            cli(
                &url,
                &[
                    "instances",
                    "add",
                    "--name",
                    "big",
                    "--kind",
                    "simulated",
                    "--option",
                    option,
                ],
            ),
            field,
        );
    }
    assert_rejected(
        cli(&url, &["sync", "ok", "nope"]),
        "unknown instance 'nope'",
    );
    assert_rejected(cli(&url, &["session", "not-a-uuid"]), "not a session id");
    assert_rejected(
        cli(&url, &["session", "00000000-0000-0000-0000-000000000000"]),
        "unknown session",
    );
    assert_rejected(
        cli(&url, &["cancel", "00000000-0000-0000-0000-000000000000"]),
        "unknown session",
    );
    assert_rejected(cli(&url, &["accounts", "nope"]), "unknown instance 'nope'");
    assert_rejected(cli(&url, &["cleanup", "--days", "-1"]), "days");
    assert_rejected(
        cli(&url, &["sessions", "--status", "weird"]),
        "unknown status",
    );
    assert_rejected(
        cli(&url, &["instances", "remove", "nope"]),
        "unknown instance",
    );
    assert_rejected(cli(&url, &["frobnicate"]), "frobnicate");
    assert_rejected(
        cli(
            &url,
            &["worker", "--lease-ttl", "5s", "--lease-renew", "10s"],
        ),
        "--lease-renew",
    );

    let dir = db.dir.path();
    let malformed = dir.join("bad.json");
    std::fs::write(&malformed, "[{\"name\": \"a\", \"kind\": ").unwrap();
    assert_rejected(
        cli(&url, &["instances", "import", malformed.to_str().unwrap()]),
        "not a JSON array",
    );
    let dup = dir.join("dup.json");
    std::fs::write(
        &dup,
        r#"[{"name": "n1", "kind": "simulated"}, {"name": "ok", "kind": "simulated"}]"#,
    )
    .unwrap();
    assert_rejected(
        cli(&url, &["instances", "import", dup.to_str().unwrap()]),
        "already exists",
    );
    let badkind = dir.join("kind.json");
    std::fs::write(
        &badkind,
        r#"[{"name": "n1", "kind": "simulated"}, {"name": "n2", "kind": "db2"}]"#,
    )
    .unwrap();
    assert_rejected(
        cli(&url, &["instances", "import", badkind.to_str().unwrap()]),
        "unknown kind 'db2'",
    );
    assert_rejected(
        cli(
            &url,
            &[
                "instances",
                "import",
                dir.join("missing.json").to_str().unwrap(),
            ],
        ),
        "cannot read",
    );

    assert_eq!(
        snapshot(&db).await,
        before,
        "a rejected command writes nothing"
    );

    let good = dir.join("good.json");
    std::fs::write(&good, r#"[{"name": "n1", "kind": "simulated", "options": {"latency_ms": 0}}, {"name": "n2", "kind": "simulated"}]"#).unwrap();
    let (code, out, err) = cli(&url, &["instances", "import", good.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "2"), "{err}");
    let (code, out, _) = cli(&url, &["sync-all", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total_instances"], 3);
}

/// Scripts branch on `--wait`'s exit code: each terminal status has its own (README,
/// "Exit codes"), and the session is printed whatever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_wait_exits_with_a_code_for_each_way_a_session_can_end() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    for inst in [
        simulated("ok", serde_json::json!({})),
        simulated("broken", serde_json::json!({"fail_rate": 1.0})),
        simulated("slow", serde_json::json!({"latency_ms": 600_000})),
    ] {
        store.instance_insert(&inst).await.unwrap();
    }
    let (mut w, _) = worker(&db, "w", &["--max-attempts", "1"]);
    let outcome = |names: &[&str]| {
        let mut args = vec!["sync"];
        args.extend(names);
        args.extend(["--wait", "--json"]);
        let (code, out, err) = cli(&db.url, &args);
        let session: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
        (code, session["status"].as_str().unwrap().to_string(), err)
    };
    let (code, status, err) = outcome(&["ok"]);
    assert_eq!((code, status.as_str()), (0, "completed"), "{err}");
    let (code, status, err) = outcome(&["broken"]);
    assert_eq!((code, status.as_str()), (4, "failed"), "{err}");
    assert!(err.contains("failed"), "stderr says why: {err}");
    let (code, status, err) = outcome(&["ok", "broken"]);
    assert_eq!(
        (code, status.as_str()),
        (3, "completed_with_errors"),
        "{err}"
    );

    let waiter = std::process::Command::new(bin())
        .args(["sync", "slow", "--wait", "--json"])
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = loop {
        let (_, out, _) = cli(&db.url, &["sessions", "--status", "running", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if let Some(id) = v["items"][0]["session_id"].as_str() {
            break id.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (code, _, err) = cli(&db.url, &["cancel", &id]);
    assert_eq!(code, 0, "{err}");
    let out = waiter.wait_with_output().unwrap();
    let session: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(session["status"], "cancelled");
    assert_eq!(out.status.code(), Some(5));
    signal(&w, "TERM");
    w.wait().unwrap();
}
