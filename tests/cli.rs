//! Bad CLI input: exit code 2, one line on stderr, and the database unchanged.

use syncpool::model::NewInstance;

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
            sync_type: None,
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
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("registered 2 instances from"), "{out}");
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

/// `cd /tmp/x && syncpool sessions` used to leave an empty, migrated `syncpool.db`
/// behind. Only the commands that set a database up may create one.
#[tokio::test]
async fn read_commands_and_rejected_input_never_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("new.db").display());
    let bad_import = dir.path().join("bad.json");
    std::fs::write(&bad_import, "[{\"name\": \"x\", \"kind\": \"oracle\"}]").unwrap();
    let uuid = "6f1c1f7e-0000-4000-8000-000000000000";
    let commands: Vec<Vec<&str>> = vec![
        vec!["sessions"],
        vec!["sessions", "--json"],
        vec!["session", uuid],
        vec!["session", "not-a-uuid"],
        vec!["cancel", uuid],
        vec!["accounts", "db1"],
        vec!["instances", "list"],
        vec!["instances", "remove", "db1"],
        vec!["cleanup", "--days", "7"],
        vec!["sync", "db1"],
        vec!["sync-all"],
        vec!["instances", "add", "--name", "x", "--kind", "oracle"],
        vec!["instances", "import", bad_import.to_str().unwrap()],
        vec!["worker", "--metrics-bind", "nonsense"],
    ];
    for args in &commands {
        let (code, out, err) = cli(&url, args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "bad.json")
            .collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }
    let (_, _, err) = cli(&url, &["sessions"]);
    assert!(
        err.contains("no database at") && err.contains("syncpool migrate"),
        "says how to create it: {err}"
    );
    // Once created, the same read works.
    let (code, _, err) = cli(&url, &["migrate"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&url, &["sessions", "--json"]);
    assert_eq!(
        (code, out.contains("\"total\": 0")),
        (0, true),
        "{out}{err}"
    );
}

/// A database that is not there is a quick, one-line error with the real cause, printed
/// once; bad URLs and addresses are bad input (exit 2), like every other.
#[tokio::test]
async fn connection_errors_are_quick_name_the_cause_once_and_bad_urls_exit_2() {
    let closed = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    let missing = format!(
        "postgres://postgres@127.0.0.1:5432/syncpool_t_missing_{}",
        uuid::Uuid::new_v4().simple()
    );
    // A missing database is bad input with advice, as a missing SQLite file is (issue
    // 22, item 6; it exited 1 with the server's "does not exist" before).
    for (url, cause, exit) in [
        (closed.as_str(), "Connection refused", 1),
        (missing.as_str(), "create it with `syncpool migrate`", 2),
    ] {
        let started = std::time::Instant::now();
        let (code, _, err) = cli(url, &["sessions"]);
        assert_eq!(code, exit, "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{err}"
        );
        assert_eq!(err.matches(cause).count(), 1, "the cause, once: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains("at line"), "no server source lines: {err}");
        assert!(!err.contains("timed out"), "{err}");
    }
    assert_rejected(
        cli("mysql://x/y", &["sessions"]),
        "unsupported database URL",
    );
    assert_rejected(
        cli(
            "sqlite://unused.db",
            &["worker", "--metrics-bind", "nonsense"],
        ),
        "--metrics-bind",
    );
}

/// Every command, flag and argument says what it is for; the timing flags appear only on
/// the commands that run syncs.
#[test]
fn every_command_flag_and_argument_has_help_and_timings_appear_only_where_used() {
    use clap::CommandFactory;
    fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>, timed: &mut Vec<String>) {
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
            if id == "lease_ttl" {
                timed.push(path.to_string());
            }
        }
        for sub in c.get_subcommands().filter(|s| s.get_name() != "help") {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {} (about)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing, timed);
        }
    }
    let (mut missing, mut timed) = (vec![], vec![]);
    walk(
        &syncpool::cli::Cli::command(),
        "syncpool",
        &mut missing,
        &mut timed,
    );
    assert!(missing.is_empty(), "no help text: {missing:?}");
    timed.sort();
    assert_eq!(
        timed,
        ["syncpool demo", "syncpool serve", "syncpool worker"],
        "timing flags belong to the commands that sync"
    );

    let help = |args: &[&str]| cli("sqlite://unused-help.db", args).1;
    assert!(help(&["serve", "--help"]).contains("SYNCPOOL_API_TOKEN"));
    assert!(help(&["instances", "import", "--help"]).contains("JSON array of instances"));
    let sessions = help(&["sessions", "--help"]);
    assert!(sessions.contains("completed_with_errors"), "{sessions}");
    assert!(
        !help(&["sync", "--help"]).contains("--lease-ttl"),
        "no timing flags where they do nothing"
    );
    let (code, _, err) = cli("sqlite://unused-help.db", &["worker", "--lease-ttl", "-5"]);
    assert_eq!(code, 2);
    assert!(err.contains("must be positive"), "{err}");
    assert!(!std::path::Path::new("unused-help.db").exists());
}

/// Human output reads right and `--json` has the API's shapes.
#[tokio::test]
async fn cli_output_has_headers_plurals_progress_and_api_shaped_json() {
    let db = TestDb::new(Backend::Sqlite).await;
    let url = db.url.clone();
    let (code, out, err) = cli(
        &url,
        &["instances", "add", "--name", "one", "--kind", "simulated"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("registered one (simulated, id "), "{out}");
    let (code, out, err) = cli(
        &url,
        &[
            "instances",
            "add",
            "--name",
            "two",
            "--kind",
            "simulated",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let two: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(two["name"], "two");
    let file = db.dir.path().join("more.json");
    std::fs::write(
        &file,
        r#"[{"name": "three", "kind": "simulated"}, {"name": "four", "kind": "simulated"}]"#,
    )
    .unwrap();
    let (_, out, _) = cli(&url, &["instances", "import", file.to_str().unwrap()]);
    assert!(out.starts_with("registered 2 instances from"), "{out}");
    let (_, out, _) = cli(&url, &["instances", "list"]);
    assert!(
        out.lines().next().unwrap().contains("name"),
        "a header: {out}"
    );
    let (_, out, _) = cli(&url, &["accounts", "one"]);
    assert!(out.contains("has not been synced yet"), "{out}");

    let (_, out, _) = cli(&url, &["sync", "one"]);
    assert!(out.contains("started over 1 instance\n"), "{out}");
    let (_, out, _) = cli(&url, &["sync", "two", "three", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["sync_type"], "manual_batch");
    assert_eq!(created["total_instances"], 2);
    // No worker runs: the session is pending; it shows progress, not a 0% success rate.
    let id = created["session_id"].as_str().unwrap();
    let (_, out, _) = cli(&url, &["session", id]);
    assert!(out.contains("progress 0/2"), "{out}");
    assert!(!out.contains("success rate"), "{out}");
    assert!(
        out.contains("instance") && out.contains("attempts"),
        "a header: {out}"
    );
}

/// The README's first command, as a new user runs it: one shutdown line, a throughput
/// that is not diluted by retry backoff, hints that work without the binary on PATH,
/// and nothing left behind that `.gitignore` does not cover.
#[test]
fn the_demo_prints_hints_that_work_and_leaves_only_ignored_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["demo", "--instances", "20", "--retry-backoff", "100ms"])
        .current_dir(dir.path())
        .env_remove("SYNCPOOL_DATABASE_URL")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.matches("shutting down").count() <= 1, "{stderr}");
    assert!(stdout.contains("first attempts in"), "{stdout}");
    let hint = stdout
        .lines()
        .find_map(|l| l.strip_prefix("next: `"))
        .and_then(|l| {
            l.strip_suffix(" sessions`, ")
                .or_else(|| l.split(" sessions`").next())
        })
        .unwrap_or_else(|| panic!("no hint: {stdout}"))
        .to_string();
    let again = std::process::Command::new(&hint)
        .arg("sessions")
        .current_dir(dir.path())
        .env_remove("SYNCPOOL_DATABASE_URL")
        .output()
        .unwrap_or_else(|e| panic!("the hint `{hint}` does not run: {e}"));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let ignored = std::fs::read_to_string(".gitignore").unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let covered = ignored.lines().any(|p| {
            p.strip_prefix('*')
                .is_some_and(|suffix| name.ends_with(suffix))
                || p == name
        });
        assert!(covered, "{name} is not covered by .gitignore");
    }
}

/// What a hostile name carries: set the window title, ring the bell, clear the screen.
const ATTACK: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J";
/// How the CLI shows it.
const SHOWN: &str = "\\x1b]0;pwned\\x07\\x1b[2J";

/// Fails when `text` holds anything a terminal would act on or reorder: a control
/// character other than the line breaks between lines, or a bidi control.
fn assert_inert(what: &str, text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what} prints {bad:?} raw: {}",
        text.escape_debug()
    );
}

/// MariaDB users and a worker process that outlive no test, even a failed one.
struct Cleanup {
    users: Vec<String>,
    worker: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut w) = self.worker.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        for u in &self.users {
            let _ = std::process::Command::new("mariadb")
                .args(["-h", "127.0.0.1", "-uroot", "-e"])
                .arg(format!("DROP USER IF EXISTS '{u}'@'%'"))
                .output();
        }
    }
}

/// A real MariaDB user named with terminal escapes (and one with a right-to-left
/// override) is synced, and a real PostgreSQL answers an instance whose login role holds
/// them with an error that quotes it raw. Every text output (`sync --wait`, `session`,
/// `accounts`, `changes`, `instances list`, `sessions`, an error line) shows them
/// escaped, while `--json` keeps the exact names and texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_a_source_never_reach_the_terminal() {
    let t = format!("sp{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let evil = format!("{t}_{ATTACK}");
    let reversed = format!("{t}_\u{202e}gpj.exe");
    let evil_db = format!("{t}_\u{1b}[31mdb");
    let mut cleanup = Cleanup {
        users: vec![evil.clone(), reversed.clone()],
        worker: None,
    };
    crate::sources::maria(&format!(
        "CREATE USER '{evil}'@'%'; CREATE USER '{reversed}'@'%';"
    ));
    let db = TestDb::new(Backend::Sqlite).await;
    let url = db.url.clone();
    let store = db.store().await;
    let source = |name: &str, kind: &str, port: i64, user: &str, options| NewInstance {
        kind: kind.parse().unwrap(),
        host: Some("127.0.0.1".into()),
        port: Some(port),
        username: Some(user.into()),
        database: (kind == "postgres").then(|| "postgres".into()),
        ..simulated(name, options)
    };
    let user_like = serde_json::json!({"user_like": format!("{t}_%")});
    store
        .instance_insert(&source("maria", "mysql", 3306, "root", user_like))
        .await
        .unwrap();
    // The store takes what it is given: rows written before validation existed, or by
    // hand, may hold controls that `instances add` refuses today.
    let pg_name = format!("pg{ATTACK}");
    let pg = source(&pg_name, "postgres", 5432, &evil, serde_json::json!({}));
    store.instance_insert(&pg).await.unwrap();
    cleanup.worker = Some(
        worker(
            &db,
            "escapes",
            &["--max-attempts", "1", "--retry-backoff", "100ms"],
        )
        .0,
    );

    let (code, out, err) = cli(&url, &["sync-all", "--wait"]);
    assert_ne!(code, 0, "the PostgreSQL login fails: {out}{err}");
    assert_inert("sync --wait", &out);
    assert_inert("sync --wait's stderr", &err);
    let id = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no session id: {out}"))
        .to_string();
    let (code, out, err) = cli(&url, &["session", &id]);
    assert_eq!(code, 0, "{err}");
    assert_inert("session", &out);
    assert!(out.contains(&format!("pg{SHOWN}")), "{out}");
    assert!(
        out.contains(&format!("role \"{t}_{SHOWN}\" does not exist")),
        "the server's error, escaped: {out}"
    );
    let (_, out, _) = cli(&url, &["session", &id, "--json"]);
    let session: serde_json::Value = serde_json::from_str(&out).unwrap();
    let failed = session["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance_name"] == pg_name.as_str())
        .unwrap_or_else(|| panic!("{session}"));
    assert!(
        failed["error"].as_str().unwrap().contains(&evil),
        "--json keeps the server's exact text: {failed}"
    );

    // A grant on a database whose name holds a control, for a `changed` row's summary.
    crate::sources::maria(&format!("GRANT SELECT ON `{evil_db}`.* TO '{evil}'@'%';"));
    let (code, out, err) = cli(&url, &["sync", "maria", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_inert("sync maria --wait", &out);
    if let Some(mut w) = cleanup.worker.take() {
        signal(&w, "TERM");
        w.wait().unwrap();
    }

    let (code, out, err) = cli(&url, &["accounts", "maria"]);
    assert_eq!(code, 0, "{err}");
    assert_inert("accounts", &out);
    assert!(out.contains(&format!("{t}_{SHOWN}@%  {{")), "{out}");
    assert!(out.contains(&format!("{t}_\\u{{202e}}gpj.exe@%")), "{out}");
    let (_, out, _) = cli(&url, &["accounts", "maria", "--json"]);
    let accounts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = accounts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["username"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&evil.as_str()) && names.contains(&reversed.as_str()),
        "--json keeps the exact names: {names:?}"
    );

    let (code, out, err) = cli(&url, &["changes", "maria"]);
    assert_eq!(code, 0, "{err}");
    assert_inert("changes", &out);
    assert!(out.contains(&format!("{t}_{SHOWN}@%")), "{out}");
    assert!(
        out.contains(&format!("+SELECT on database {t}_\\x1b[31mdb")),
        "the grant's database name, escaped: {out}"
    );
    let (_, out, _) = cli(&url, &["changes", "maria", "--json"]);
    let changes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        changes["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["username"] == evil.as_str() && c["kind"] == "changed"),
        "{changes}"
    );

    let (_, out, _) = cli(&url, &["instances", "list"]);
    assert_inert("instances list", &out);
    assert!(out.contains(&format!("pg{SHOWN}")), "{out}");
    let (_, out, _) = cli(&url, &["sessions"]);
    assert_inert("sessions", &out);
    let (_, out, _) = cli(&url, &["accounts", &pg_name]);
    assert_inert("accounts of a failed instance", &out);
    assert!(
        out.contains(&format!("'pg{SHOWN}' has not been synced")),
        "{out}"
    );
    let (code, _, err) = cli(&url, &["accounts", &format!("nope{ATTACK}")]);
    assert_eq!(code, 2);
    assert_inert("an error line", &err);
    assert!(
        err.contains(&format!("unknown instance 'nope{SHOWN}'")),
        "{err}"
    );
}

/// The columns of a table: each cell's start and end, split on runs of spaces.
fn cells(line: &str) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let mut start = None;
    for (i, c) in line.char_indices().chain([(line.len(), ' ')]) {
        match (c == ' ', start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Fails unless every cell of every row starts where its header starts (left-aligned
/// columns) or ends where it ends (right-aligned ones). Only the first cells are
/// compared when the last column holds text with spaces (an error).
fn assert_columns_line_up(what: &str, header: &str, rows: &[&str]) {
    let head = cells(header);
    assert!(!rows.is_empty(), "{what}: no rows");
    for row in rows {
        let got = cells(row);
        for (i, (h, r)) in head.iter().zip(&got).enumerate() {
            assert!(
                h.0 == r.0 || h.1 == r.1,
                "{what}: column {i} of\n{row}\nis not under\n{header}"
            );
        }
    }
}

/// Item 1 of issue 22: the status enums ignored the width a table gave them, so every
/// column after a status shifted by the status's length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_of_sessions_and_session_lines_up_whatever_the_status() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    for inst in [
        simulated("ok", serde_json::json!({})),
        simulated("broken", serde_json::json!({"fail_rate": 1.0})),
    ] {
        store.instance_insert(&inst).await.unwrap();
    }
    let (mut w, _) = worker(&db, "align", &["--max-attempts", "1"]);
    let (code, _, err) = cli(&db.url, &["sync", "ok", "--wait"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&db.url, &["sync", "ok", "broken", "--wait"]);
    assert_eq!(code, 3, "completed_with_errors: {out}{err}");
    let mixed = out.split_whitespace().nth(1).unwrap().to_string();
    signal(&w, "TERM");
    w.wait().unwrap();
    let (code, _, err) = cli(&db.url, &["sync", "ok"]);
    assert_eq!(code, 0, "a pending session too: {err}");

    let (code, out, err) = cli(&db.url, &["sessions"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(out.contains("completed_with_errors"), "{out}");
    assert!(out.contains(" completed "), "{out}");
    assert!(out.contains(" pending "), "{out}");
    assert_columns_line_up("sessions", lines[0], &lines[1..]);

    let (code, out, err) = cli(&db.url, &["session", &mixed]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.trim_start().starts_with("instance"))
        .unwrap_or_else(|| panic!("no table header: {out}"));
    let rows: Vec<&str> = lines[head + 1..]
        .iter()
        .copied()
        .filter(|l| l.starts_with("  "))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter().any(|r| r.contains(" failed "))
            && rows.iter().any(|r| r.contains(" completed ")),
        "{out}"
    );
    assert_columns_line_up("session", lines[head], &rows);

    let (_, out, _) = cli(&db.url, &["instances", "list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_columns_line_up("instances list", lines[0], &lines[1..]);
}

/// Item 7: an instance name that names nothing is bad input (exit 2) for every command
/// that takes one, `changes` included; a registered instance without history is not.
#[tokio::test]
async fn an_unknown_instance_name_exits_2_everywhere_changes_included() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("known", serde_json::json!({})))
        .await
        .unwrap();
    for args in [
        vec!["changes", "nosuch"],
        vec!["changes", "nosuch", "--json"],
        vec!["accounts", "nosuch"],
        vec!["sync", "nosuch"],
        vec!["instances", "remove", "nosuch"],
    ] {
        let (code, out, err) = cli(&db.url, &args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("unknown instance 'nosuch'"), "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}: nothing on stdout");
    }
    let (code, out, err) = cli(&db.url, &["changes", "known"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no account changes match"), "{out}");
}

/// Item 6: each error names what it is about: the SQLite file and its missing folder,
/// the PostgreSQL server that refused, a missing PostgreSQL database (bad input, exit 2,
/// with the same advice as a missing SQLite file, and `migrate` creates it), and a
/// `--bind` without a port.
#[tokio::test]
async fn errors_name_the_path_the_server_the_database_and_the_missing_port() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-such-folder").join("syncpool.db");
    let url = format!("sqlite://{}", nowhere.display());
    for args in [vec!["migrate"], vec!["sessions"], vec!["instances", "list"]] {
        let (code, _, err) = cli(&url, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(&nowhere.display().to_string())
                && err.contains("no-such-folder does not exist"),
            "{args:?} names the file and its missing folder: {err}"
        );
        assert!(!err.contains("unable to open database file"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(!dir.path().join("no-such-folder").exists());

    let port = free_port();
    let closed = format!("postgres://postgres@127.0.0.1:{port}/x");
    let (code, _, err) = cli(&closed, &["sessions"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("Connection refused"),
        "names the server that refused: {err}"
    );

    // A database the server lacks: exit 2 and how to create it, as for SQLite; then
    // `migrate` creates it.
    let db = TestDb::new(Backend::Postgres).await;
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_admin_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let (code, out, err) = cli(&db.url, &["sessions"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("no database '{name}'"))
            && err.contains("127.0.0.1:5432")
            && err.contains("create it with `syncpool migrate`"),
        "{err}"
    );
    let (code, out, err) = cli(&db.url, &["migrate"]);
    assert_eq!(code, 0, "migrate creates the database: {out}{err}");
    let (code, out, err) = cli(&db.url, &["sessions", "--json"]);
    assert_eq!(
        (code, out.contains("\"total\": 0")),
        (0, true),
        "{out}{err}"
    );

    for bind in ["localhost", "127.0.0.1", "::1"] {
        let (code, _, err) = cli("sqlite://unused-bind.db", &["serve", "--bind", bind]);
        assert_eq!(code, 2, "{bind}: {err}");
        assert!(err.contains("has no port"), "{bind}: {err}");
        assert!(!err.contains("SYNCPOOL_API_TOKEN"), "{bind}: {err}");
    }
    assert!(!std::path::Path::new("unused-bind.db").exists());
}

/// Item 2: `--wait` with no worker running says so once on stderr after 10 s, piped as
/// it is here, and keeps waiting; `--timeout` ends the wait with its own exit code (6),
/// the session printed as it stands.
#[tokio::test]
async fn waiting_without_a_worker_says_so_once_and_timeout_exits_6() {
    let db = TestDb::new(Backend::Sqlite).await;
    db.store()
        .await
        .instance_insert(&simulated("lonely", serde_json::json!({})))
        .await
        .unwrap();
    let (code, _, err) = cli(&db.url, &["sync-all", "--timeout", "5s"]);
    assert_eq!(code, 2, "--timeout needs --wait: {err}");

    let started = std::time::Instant::now();
    let (code, out, err) = cli(&db.url, &["sync-all", "--wait", "--timeout", "12s"]);
    let took = started.elapsed();
    assert_eq!(code, 6, "{out}{err}");
    assert!(
        took >= std::time::Duration::from_secs(12) && took < std::time::Duration::from_secs(20),
        "{took:?}"
    );
    assert_eq!(
        err.matches("no worker has claimed a job in 10 s; start one with `syncpool worker`")
            .count(),
        1,
        "once: {err}"
    );
    assert!(err.contains("after --timeout 12.0s"), "{err}");
    assert!(
        out.contains("progress 0/1"),
        "the session as it stands: {out}"
    );

    // With --json the session is still printed, whole, on stdout.
    let (code, out, err) = cli(
        &db.url,
        &["sync", "lonely", "--wait", "--timeout", "1s", "--json"],
    );
    assert_eq!(code, 6, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!(v["status"], "pending");
    assert!(!err.contains("no worker"), "not before 10 s: {err}");
}

/// Item 5: `session ID` shows the summary and one page of records, as the API pages
/// them (`--status`, `--limit`, `--after`), or every record with `--all`; `--json` keeps
/// every record.
#[tokio::test]
async fn session_shows_a_page_of_records_with_status_limit_after_and_all() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let many: Vec<NewInstance> = (0..60)
        .map(|i| simulated(&format!("i{i:02}"), serde_json::json!({})))
        .collect();
    store.instance_insert_many(&many).await.unwrap();
    let (code, out, err) = cli(&db.url, &["sync-all", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["session_id"].as_str().unwrap().to_string();
    let rows = |out: &str| {
        out.lines()
            .filter(|l| l.starts_with("  i") && !l.starts_with("  instance"))
            .count()
    };

    let (code, out, err) = cli(&db.url, &["session", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("60 instances"), "the summary: {out}");
    assert_eq!(rows(&out), 50, "the first page: {out}");
    let more = out
        .lines()
        .find_map(|l| l.strip_prefix("more: `"))
        .unwrap_or_else(|| panic!("no next page: {out}"));
    let after = more
        .split("--after ")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .unwrap()
        .to_string();
    let (code, out, err) = cli(&db.url, &["session", &id, "--after", &after]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rows(&out), 10, "{out}");
    assert!(out.contains("  i59 ") && !out.contains("  i00 "), "{out}");
    assert!(!out.contains("more:"), "the last page: {out}");

    let (_, out, _) = cli(&db.url, &["session", &id, "--limit", "5"]);
    assert_eq!(rows(&out), 5, "{out}");
    let (_, out, _) = cli(&db.url, &["session", &id, "--all"]);
    assert_eq!(rows(&out), 60, "{out}");
    assert!(!out.contains("more:"), "{out}");
    let (_, out, _) = cli(
        &db.url,
        &["session", &id, "--status", "pending", "--limit", "3"],
    );
    assert_eq!(rows(&out), 3, "{out}");
    assert!(out.contains("--status pending --after"), "{out}");
    let (code, out, err) = cli(&db.url, &["session", &id, "--status", "failed"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no failed records"), "{out}");
    assert!(out.contains("60 instances"), "{out}");

    let (code, out, _) = cli(&db.url, &["session", &id, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["records"].as_array().unwrap().len(),
        60,
        "--json is whole"
    );

    for (args, needle) in [
        (vec!["--status", "weird"], "unknown status"),
        (vec!["--limit", "0"], "limit"),
        (vec!["--after", "0"], "after"),
        (vec!["--all", "--limit", "5"], "--limit"),
        (vec!["--json", "--status", "failed"], "--status"),
    ] {
        let mut full = vec!["session", id.as_str()];
        full.extend(&args);
        assert_rejected(cli(&db.url, &full), needle);
    }
}

/// Item 8: a session may be named by the first 8 or more hex digits of its id, as git
/// takes a short commit id; a prefix that several sessions share is refused, naming them.
#[tokio::test]
async fn a_unique_prefix_of_8_hex_digits_names_a_session_and_an_ambiguous_one_is_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("one", serde_json::json!({})))
        .await
        .unwrap();
    let mut ids = vec![];
    for _ in 0..3 {
        let (code, out, err) = cli(&db.url, &["sync", "one", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        ids.push(v["session_id"].as_str().unwrap().to_string());
    }
    // Two sessions made to share their first 12 hex digits.
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let (a, b) = (
        "abcdef01-2345-4000-8000-000000000001",
        "abcdef01-2345-4000-8000-100000000002",
    );
    for (old, new) in [(&ids[0], a), (&ids[1], b)] {
        sqlx::query("UPDATE sync_sessions SET session_id = ?1 WHERE session_id = ?2")
            .bind(new)
            .bind(old)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    let short = &ids[2][..8];
    let (code, out, err) = cli(&db.url, &["session", short]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("session {}", ids[2])), "{out}");
    let (code, out, err) = cli(&db.url, &["session", &ids[2][..13].to_uppercase()]);
    assert_eq!(code, 0, "hyphen and case as typed: {err}");
    assert!(out.starts_with(&format!("session {}", ids[2])), "{out}");

    for prefix in ["abcdef01", "abcdef01-2345", "ABCDEF012345"] {
        let (code, out, err) = cli(&db.url, &["session", prefix]);
        assert_eq!(code, 2, "{prefix}: {out}{err}");
        assert!(
            err.contains(a) && err.contains(b),
            "names the candidates: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let (code, out, err) = cli(&db.url, &["session", "abcdef01-2345-4000-8000-0"]);
    assert_eq!(code, 0, "a longer prefix is unique: {err}");
    assert!(out.starts_with(&format!("session {a}")), "{out}");
    let (code, _, err) = cli(&db.url, &["cancel", "abcdef01"]);
    assert_eq!(code, 2, "cancel refuses an ambiguous prefix: {err}");
    let (code, out, err) = cli(&db.url, &["cancel", short]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&ids[2]), "{out}");

    assert_rejected(
        cli(&db.url, &["session", "abcdef0"]),
        "8 or more hex digits",
    );
    assert_rejected(
        cli(&db.url, &["session", "0000000000"]),
        "unknown session '0000000000'",
    );
    assert_rejected(cli(&db.url, &["session", "zzzzzzzzzz"]), "not a session id");
}

/// Item 9: a new fleet's history begins with baselines, which say what each account
/// held, not what changed: `changes` leaves them out unless asked (`--kind baseline`,
/// `--all`), the API alike, and a baseline is never flagged sensitive (the simulated
/// source's first account is a superuser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_leave_baselines_out_by_default_and_never_flag_one_sensitive() {
    let db = TestDb::new(Backend::Sqlite).await;
    db.store()
        .await
        .instance_insert(&simulated("fresh", serde_json::json!({"accounts": 3})))
        .await
        .unwrap();
    let (mut w, _) = worker(&db, "baseline", &[]);
    let (code, out, err) = cli(&db.url, &["sync", "fresh", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    signal(&w, "TERM");
    w.wait().unwrap();

    let (code, out, err) = cli(&db.url, &["changes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("no account changes match") && out.contains("--all"),
        "{out}"
    );
    let (_, out, _) = cli(&db.url, &["changes", "fresh", "--json"]);
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");

    for args in [
        vec!["changes", "--all"],
        vec!["changes", "fresh", "--kind", "baseline"],
    ] {
        let (code, out, err) = cli(&db.url, &args);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.matches("baseline").count(), 3, "{args:?}: {out}");
        assert!(!out.contains("SENSITIVE"), "{args:?}: {out}");
    }
    let (_, out, _) = cli(&db.url, &["changes", "--all", "--json"]);
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{page}");
    assert!(
        items
            .iter()
            .any(|c| c["detail"]["attributes"]["superuser"] == true),
        "a superuser's baseline: {page}"
    );
    for c in items {
        assert_eq!(c["sensitive"], false, "{c}");
        assert_eq!(c["flags"], serde_json::json!([]), "{c}");
    }
    let (_, out, _) = cli(&db.url, &["changes", "--sensitive", "--all", "--json"]);
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    assert_rejected(
        cli(&db.url, &["changes", "--all", "--kind", "added"]),
        "--kind",
    );
}

/// Item 3: `queue` speaks of syncs, not of apalis' states: what waits (due now or
/// delayed), what runs (under a lease) and what finished in the last hour; a job due
/// later is "due in", never "0.0s ago"; apalis' states stay under `--raw`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_shows_waiting_running_and_done_in_syncpools_terms_and_raw_shows_apalis() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    store
        .instance_insert(&simulated("quick", serde_json::json!({})))
        .await
        .unwrap();
    let (mut w, _) = worker(&db, "queue", &[]);
    let (code, _, err) = cli(&db.url, &["sync", "quick", "--wait"]);
    assert_eq!(code, 0, "{err}");
    signal(&w, "TERM");
    w.wait().unwrap();
    let (code, _, err) = cli(&db.url, &["sync", "quick"]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = cli(&db.url, &["queue"]);
    assert_eq!(code, 0, "{err}");
    let line = |word: &str| {
        out.lines()
            .find(|l| l.starts_with(word))
            .unwrap_or_else(|| panic!("no {word} line: {out}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(line("waiting"), "1", "{out}");
    assert!(out.contains("1 due now"), "{out}");
    assert_eq!(line("running"), "0", "{out}");
    assert_eq!(line("done"), "1", "the first sync: {out}");
    assert!(out.contains("next:") && out.contains(" ago"), "{out}");
    for apalis in ["Pending", "Queued", "Done", "Killed"] {
        assert!(!out.contains(apalis), "{apalis}: {out}");
    }
    let (code, out, err) = cli(&db.url, &["queue", "--raw"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Pending") && out.contains("oldest pending"),
        "{out}"
    );

    // A job due later says when.
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE Jobs SET run_at = unixepoch() + 600 WHERE status = 'Pending'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (_, out, _) = cli(&db.url, &["queue"]);
    assert!(
        out.contains("1 delayed") && out.contains("due in 9m"),
        "{out}"
    );
    assert!(!out.contains("0.0s ago"), "{out}");
    let (_, out, _) = cli(&db.url, &["queue", "--raw"]);
    assert!(out.contains("(in 9m"), "{out}");
}

/// Item 4: the demo says what it registered (none the second time) and, before any
/// worker logs, that some instances fail on purpose.
#[test]
fn the_demo_counts_what_it_registered_and_says_first_which_failures_are_intended() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = std::process::Command::new(bin())
            .args(["demo", "--instances", "50", "--retry-backoff", "100ms"])
            .current_dir(dir.path())
            .env_remove("SYNCPOOL_DATABASE_URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    let first = run();
    assert!(
        first.contains("registered 50 simulated instances"),
        "{first}"
    );
    let intended = first
        .find("fail on purpose")
        .unwrap_or_else(|| panic!("{first}"));
    if let Some(warn) = first.find("WARN") {
        assert!(intended < warn, "said before the first warning: {first}");
    }
    assert!(first.contains("1 of the simulated ones"), "{first}");
    let second = run();
    assert!(
        second.contains("the 50 simulated instances were already registered"),
        "{second}"
    );
    assert!(!second.contains("new)"), "{second}");
}

/// Item 10: messages say what happened: `migrate` whether it applied anything, an empty
/// list says so in a sentence, `cleanup` names what it deleted as its JSON does.
#[tokio::test]
async fn migrate_empty_lists_and_cleanup_say_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let (code, out, err) = cli(&url, &["migrate"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "created syncpool's tables");
    let (_, out, _) = cli(&url, &["migrate"]);
    assert_eq!(
        out.trim(),
        "the database is up to date: no migration to apply"
    );
    let (_, out, _) = cli(&url, &["sessions"]);
    assert!(out.starts_with("no sessions yet"), "{out}");
    let (_, out, _) = cli(&url, &["sessions", "--status", "failed"]);
    assert!(out.starts_with("no sessions match"), "{out}");
    let (_, out, _) = cli(&url, &["instances", "list"]);
    assert!(out.starts_with("no instances registered"), "{out}");
    let (_, out, _) = cli(&url, &["locks"]);
    assert!(out.starts_with("no instance is leased"), "{out}");
    let (_, out, _) = cli(&url, &["cleanup"]);
    assert!(out.contains("0 account changes"), "{out}");
    let (_, out, _) = cli(&url, &["cleanup", "--json"]);
    assert!(out.contains("changes_deleted"), "{out}");
}

/// Item 9, the API's side: `GET /api/v1/changes` leaves baselines out as `changes` does,
/// and shows them with `kind=baseline` or `all=true`, never flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_leaves_baselines_out_by_default_as_the_cli_does() {
    let app = crate::api::spawn_app(Backend::Sqlite, None).await;
    app.store
        .instance_insert(&simulated("fresh", serde_json::json!({"accounts": 2})))
        .await
        .unwrap();
    let (mut w, _) = worker(app.db(), "api-baseline", &[]);
    let (code, out, err) = cli(&app.db().url, &["sync", "fresh", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    signal(&w, "TERM");
    w.wait().unwrap();
    let count = |v: &serde_json::Value| v["items"].as_array().map(Vec::len);
    let (st, page) = app.call("GET", "/api/v1/changes", None).await;
    assert_eq!((st, count(&page)), (200, Some(0)), "{page}");
    for query in ["all=true", "kind=baseline", "instance=fresh&all=true"] {
        let (st, page) = app
            .call("GET", &format!("/api/v1/changes?{query}"), None)
            .await;
        assert_eq!((st, count(&page)), (200, Some(2)), "{query}: {page}");
        for c in page["items"].as_array().unwrap() {
            assert_eq!(
                (c["kind"].as_str(), c["sensitive"].as_bool()),
                (Some("baseline"), Some(false)),
                "{c}"
            );
        }
    }
    let (st, _) = app.call("GET", "/api/v1/changes?all=maybe", None).await;
    assert_eq!(st, 400);
}

/// Item 10: `serve` says where the console is and whether a token is required.
#[tokio::test]
async fn serve_logs_where_the_console_is_and_whether_a_token_is_required() {
    use std::io::BufRead;
    let db = TestDb::new(Backend::Sqlite).await;
    for (token, says) in [
        (None, "no token required"),
        (Some("a-long-enough-token-1234"), "needs a token"),
    ] {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", "--bind", "127.0.0.1:0"])
            .env("SYNCPOOL_DATABASE_URL", &db.url)
            .env("RUST_LOG", "warn,syncpool=info")
            .stderr(std::process::Stdio::piped());
        match token {
            Some(t) => cmd.env("SYNCPOOL_API_TOKEN", t),
            None => cmd.env_remove("SYNCPOOL_API_TOKEN"),
        };
        let mut child = cmd.spawn().unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let line = stderr
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("console at"))
            .unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            line.contains("console at http://127.0.0.1:") && line.contains(says),
            "{token:?}: {line}"
        );
    }
}
