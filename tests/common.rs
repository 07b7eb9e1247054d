//! Test fixtures: a fresh database per test (a temp SQLite file, or a new PostgreSQL
//! database that is dropped afterwards), and helpers to run the built binary.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use syncpool::model::NewInstance;
use syncpool::store::{self, Store};

/// Where the PostgreSQL tests connect. A missing server fails them: they never skip.
pub fn pg_admin_url() -> String {
    std::env::var("SYNCPOOL_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("syncpool.db").display());
                TestDb {
                    url,
                    dir,
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("syncpool_t_{}", uuid::Uuid::new_v4().simple());
                let admin = pg_admin_url();
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL at {admin} is required for this test: {e}")
                    });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin
                    .rsplit_once('/')
                    .map(|(b, _)| b.to_string())
                    .unwrap_or(admin);
                TestDb {
                    url: format!("{base}/{name}"),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// A SQLite database at `file` (inside `dir`, which lives as long as the result).
    pub fn sqlite_at(dir: tempfile::TempDir, file: &std::path::Path) -> TestDb {
        TestDb {
            url: format!("sqlite://{}", file.display()),
            dir,
            pg_name: None,
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        let s = store::connect(&self.url).await.expect("connect");
        s.migrate().await.expect("migrate");
        s
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Leave no test database behind. Drop is sync, so a small runtime of its own.
        if let Some(name) = self.pg_name.take() {
            let admin = pg_admin_url();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut c) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                    {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                })
            })
            .join();
        }
    }
}

pub fn simulated(name: &str, options: serde_json::Value) -> NewInstance {
    NewInstance {
        name: name.into(),
        kind: syncpool::model::InstanceKind::Simulated,
        host: None,
        port: None,
        username: None,
        database: None,
        password_env: None,
        password_file: None,
        options,
        active: true,
        group: None,
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syncpool"))
}

/// Runs the CLI to completion: (exit code, stdout, stderr).
pub fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("SYNCPOOL_DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run syncpool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `syncpool worker` with test-friendly timings; its stderr goes to a file.
pub fn worker(db: &TestDb, tag: &str, extra: &[&str]) -> (Child, PathBuf) {
    worker_at(db, &db.url, tag, extra, &[])
}

/// Like [`worker`], with another database URL (a proxy's) and extra environment.
pub fn worker_at(
    db: &TestDb,
    url: &str,
    tag: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Child, PathBuf) {
    let log = db.dir.path().join(format!("worker-{tag}.log"));
    let child = Command::new(bin())
        .args(["worker", "--poll-interval", "100ms"])
        .args(extra)
        .env("SYNCPOOL_DATABASE_URL", url)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn,syncpool=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn worker");
    (child, log)
}

/// Whether the tests run as root (then private servers run as their service user).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{sig} failed");
}

/// Fetches a worker's /metrics with a bare HTTP/1.0 request.
pub fn scrape(addr: &str) -> String {
    http_get(addr, "/metrics")
}

/// A bare HTTP/1.0 GET; returns the whole response, status line included.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One read of an instance as the simulated source's trace saw it (see
/// `SYNCPOOL_SIMULATED_TRACE`): the start times of its steps, and its end.
#[derive(Debug, Clone)]
pub struct TracedRead {
    pub instance: String,
    pub pid: u32,
    pub steps: Vec<u128>,
    pub end: Option<u128>,
}

pub fn read_trace(path: &std::path::Path) -> Vec<TracedRead> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut reads: std::collections::HashMap<String, TracedRead> = Default::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [instance, sync, pid, what, ns] = f[..] else {
            continue;
        };
        let ns: u128 = ns.parse().unwrap_or(0);
        let r = reads.entry(sync.to_string()).or_insert_with(|| TracedRead {
            instance: instance.to_string(),
            pid: pid.parse().unwrap_or(0),
            steps: vec![],
            end: None,
        });
        match what {
            "s" => r.steps.push(ns),
            _ => r.end = Some(ns),
        }
    }
    reads.into_values().collect()
}

/// The observer's verdict: two reads of one instance overlap when a step of one started
/// between the first and the last step start of the other. Step starts, not the end, are
/// the evidence of progress: a paused process starts no step while it is paused, so a
/// read frozen by SIGSTOP and abandoned on resume does not count as reading meanwhile;
/// a read that went on after another began does.
pub fn overlapping_reads(reads: &[TracedRead]) -> Vec<(TracedRead, TracedRead)> {
    let mut by_instance: std::collections::HashMap<&str, Vec<&TracedRead>> = Default::default();
    for r in reads.iter().filter(|r| !r.steps.is_empty()) {
        by_instance.entry(&r.instance).or_default().push(r);
    }
    let mut out = vec![];
    for list in by_instance.values() {
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                let span = |r: &TracedRead| (r.steps[0], *r.steps.last().unwrap());
                let inside = |x: &TracedRead, y: &TracedRead| {
                    let (lo, hi) = span(y);
                    x.steps.iter().any(|&t| t >= lo && t <= hi)
                };
                if inside(a, b) || inside(b, a) {
                    out.push(((*a).clone(), (*b).clone()));
                }
            }
        }
    }
    out
}

/// Instantiates each named `async fn name(b: Backend)` once per database, as the tests
/// `sqlite::name` and `postgres::name` of the calling module.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(crate::common::Backend::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(crate::common::Backend::Postgres).await } )* }
    };
}
pub(crate) use on_both_databases;

/// The first column, as text, of every row `sql` returns from the test's database
/// (for checks of what is stored, beneath the store).
pub async fn sql_texts(db: &TestDb, sql: &str) -> Vec<String> {
    let q = sqlx::AssertSqlSafe(sql.to_string());
    match db.url.starts_with("sqlite:") {
        true => {
            sqlx::query_scalar(q)
                .fetch_all(&sqlite_pool(db).await)
                .await
        }
        false => sqlx::query_scalar(q).fetch_all(&pg_pool(db).await).await,
    }
    .unwrap()
}

/// Runs `sql` (several statements) on the test's database.
pub async fn sql_exec(db: &TestDb, sql: &str) {
    let q = sqlx::AssertSqlSafe(sql.to_string());
    match db.url.starts_with("sqlite:") {
        true => sqlx::raw_sql(q)
            .execute(&sqlite_pool(db).await)
            .await
            .map(|_| ()),
        false => sqlx::raw_sql(q)
            .execute(&pg_pool(db).await)
            .await
            .map(|_| ()),
    }
    .unwrap()
}

async fn sqlite_pool(db: &TestDb) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&db.url).await.unwrap()
}

async fn pg_pool(db: &TestDb) -> sqlx::PgPool {
    sqlx::PgPool::connect(&db.url).await.unwrap()
}
