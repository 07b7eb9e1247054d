//! What every scenario needs: a fresh database, instances, worker processes, their CPU
//! and memory, and a wait for a session to end. The bench is a harness, so it reads the
//! database directly where the product has no call for it (a session's status, jobs done).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use syncpool::model::NewInstance;
use syncpool::store::{DbPool, Store};

/// A database made for one measurement, dropped (PostgreSQL) or deleted (SQLite) after.
pub struct Db {
    pub url: String,
    pub store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

/// The PostgreSQL server the bench makes its databases on.
pub fn pg_admin() -> String {
    std::env::var("SYNCPOOL_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh, empty database on `admin`'s server; its URL.
pub async fn pg_create(admin: &str, name: &str) -> anyhow::Result<String> {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut c)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await?;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    Ok(format!("{base}/{name}"))
}

pub async fn pg_drop(admin: &str, name: &str) -> anyhow::Result<()> {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut c)
    .await?;
    Ok(())
}

impl Db {
    /// A migrated syncpool database with `n` simulated instances of these options.
    pub async fn with_instances(
        backend: &'static str,
        n: usize,
        options: serde_json::Value,
    ) -> anyhow::Result<Self> {
        Self::with_groups(backend, n, options, 0).await
    }

    /// [`Db::with_instances`], the instances spread over `groups` groups `g00`, `g01`,
    /// ... (none when 0).
    pub async fn with_groups(
        backend: &'static str,
        n: usize,
        options: serde_json::Value,
        groups: usize,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (url, pg) = if backend == "sqlite" {
            (
                format!("sqlite://{}", dir.path().join("bench.db").display()),
                None,
            )
        } else {
            let admin = pg_admin();
            let name = format!("syncpool_bench_{}", std::process::id());
            (pg_create(&admin, &name).await?, Some((admin, name)))
        };
        let store = syncpool::store::connect(&url).await?;
        store.migrate().await?;
        let instances: Vec<NewInstance> = (0..n)
            .map(|i| NewInstance {
                name: format!("bench-{i:06}"),
                kind: syncpool::model::InstanceKind::Simulated,
                host: None,
                port: None,
                username: None,
                database: None,
                password_env: None,
                password_file: None,
                options: options.clone(),
                active: true,
                group: (groups > 0).then(|| format!("g{:02}", i % groups)),
            })
            .collect();
        for chunk in instances.chunks(10_000) {
            store.instance_insert_many(chunk).await?;
        }
        store.analyze().await?;
        Ok(Self {
            url,
            store,
            _dir: dir,
            pg,
        })
    }

    /// The status of a session, read directly (no records loaded).
    pub async fn session_status(&self, id: uuid::Uuid) -> anyhow::Result<(String, i64)> {
        let q = "SELECT status, successful_instances FROM sync_sessions WHERE session_id = ";
        Ok(match self.store.pool() {
            DbPool::Sqlite(p) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{q}?1")))
                    .bind(id.to_string())
                    .fetch_one(&p)
                    .await?
            }
            DbPool::Postgres(p) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{q}$1")))
                    .bind(id)
                    .fetch_one(&p)
                    .await?
            }
        })
    }

    /// One count, by a query that is the same text on both databases.
    pub async fn count(&self, sql: &'static str) -> anyhow::Result<i64> {
        Ok(match self.store.pool() {
            DbPool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(&p).await?,
            DbPool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(&p).await?,
        })
    }

    /// Waits until the session has ended; its successful instances.
    pub async fn wait_finished(&self, id: uuid::Uuid, limit: Duration) -> anyhow::Result<i64> {
        let t = Instant::now();
        loop {
            let (status, ok) = self.session_status(id).await?;
            if !matches!(status.as_str(), "pending" | "running") {
                return Ok(ok);
            }
            anyhow::ensure!(
                t.elapsed() < limit,
                "session {id} still {status} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn close(self) -> anyhow::Result<()> {
        drop(self.store);
        if let Some((admin, name)) = &self.pg {
            pg_drop(admin, name).await?;
        }
        Ok(())
    }
}

/// The `syncpool` binary beside this bench's.
pub fn syncpool_bin() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("syncpool"))
        .ok_or_else(|| anyhow::anyhow!("no target dir above {}", exe.display()))
}

/// `procs` worker processes of concurrency `conc`.
pub fn spawn_workers(url: &str, procs: usize, conc: usize) -> anyhow::Result<Vec<Child>> {
    let bin = syncpool_bin()?;
    let mut children = vec![];
    for _ in 0..procs {
        let spawned = Command::new(&bin)
            .args(["worker", "--concurrency", &conc.to_string()])
            .env("SYNCPOOL_DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn();
        match spawned {
            Ok(c) => children.push(c),
            Err(e) => {
                stop(children);
                return Err(anyhow::anyhow!("spawning {}: {e}", bin.display()));
            }
        }
    }
    Ok(children)
}

/// Stops processes with SIGTERM (their graceful shutdown) and waits for them.
pub fn stop(children: Vec<Child>) {
    for c in &children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for mut c in children {
        let _ = c.wait();
    }
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// Total CPU seconds of several processes.
pub fn cpu_total(children: &[Child]) -> f64 {
    children.iter().map(|c| cpu_secs(c.id())).sum()
}

/// A process's peak resident memory so far, in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Median, min and max of some figures.
pub fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// The p-th percentile (0-100) of some durations, in ms.
pub fn percentile_ms(v: &[Duration], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

/// One HTTP/1.1 GET on a fresh connection: the status code and the body's length.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, usize)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, buf.len()))
}

/// A free loopback port (bound and released; good enough for a bench).
pub fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}
