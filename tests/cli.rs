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
    for (url, cause) in [
        (closed.as_str(), "Connection refused"),
        (missing.as_str(), "does not exist"),
    ] {
        let started = std::time::Instant::now();
        let (code, _, err) = cli(url, &["sessions"]);
        assert_eq!(code, 1, "{err}");
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
        kind: kind.into(),
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
