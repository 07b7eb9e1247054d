//! `syncpool demo`: the first thing a newcomer runs. Registers simulated instances on the
//! embedded SQLite default, syncs them all with in-process workers and prints a summary.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::show::each_record;
use super::wait::wait_for;
use super::{CliError, printable};
use crate::model::{InstanceKind, NewInstance, Record, Session, SyncType};
use crate::settings::Settings;
use crate::store::Store;
use crate::text::plural;

/// Every this-many demo instances, one always fails, so the demo shows retries and a
/// `completed_with_errors` session.
const FAIL_EVERY: u32 = 50;

/// `syncpool demo`: registers `instances` simulated instances, syncs them all with
/// in-process workers and prints a summary.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    settings: Settings,
    instances: u32,
    workers: u16,
) -> Result<(), CliError> {
    register(store.as_ref(), instances).await?;
    let on_purpose = match instances / FAIL_EVERY {
        0 => String::new(),
        n => format!(
            "; {n} of the simulated ones (every {FAIL_EVERY}th) fail on purpose, to show retries \
             and a completed_with_errors session: the WARN lines about them are expected"
        ),
    };
    eprintln!(
        "syncing every active instance, {} at a time{on_purpose}",
        16 * workers as usize
    );
    let (session, elapsed) = sync_all(&store, &settings, workers).await?;
    // A demo's few hundred records fit in memory; they are read in pages all the same.
    let mut records = Vec::new();
    each_record(store.as_ref(), session.session_id, |r| {
        records.push(r.clone());
        Ok(())
    })
    .await?;
    print_summary(&session, &records, elapsed);
    print_instances_and_hints(&session, &records);
    Ok(())
}

/// Registers the simulated instances not registered yet and the local database servers
/// found, and says on stderr what it registered.
async fn register(store: &dyn Store, instances: u32) -> Result<(), CliError> {
    let existing: std::collections::HashSet<String> = store
        .instance_list()
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect();
    let new: Vec<NewInstance> = (1..=instances)
        .map(|i| NewInstance {
            name: format!("demo-{i:05}"),
            kind: InstanceKind::Simulated,
            host: None,
            port: None,
            username: None,
            database: None,
            password_env: None,
            password_file: None,
            options: serde_json::json!({
                "latency_ms": 20, "jitter_ms": 30, "accounts": 20,
                "fail_rate": if i % FAIL_EVERY == 0 { 1.0 } else { 0.0 },
            }),
            active: true,
            group: None,
        })
        .filter(|n| !existing.contains(&n.name))
        .collect();
    let new_simulated = new.len();
    let mut new = new;
    let locals = local_servers(&existing).await;
    let new_local = locals.len();
    new.extend(locals);
    store.instance_insert_many(&new).await?;
    // A fresh database has no planner statistics yet (docs/APALIS.md, "Planner statistics").
    store.analyze().await?;
    eprintln!(
        "{}",
        registered_line(instances as usize, new_simulated, new_local)
    );
    Ok(())
}

/// Starts a session over every active instance and runs an in-process worker until it
/// has finished; returns the session and the seconds the wait took.
async fn sync_all(
    store: &Arc<dyn Store>,
    settings: &Settings,
    workers: u16,
) -> Result<(Session, f64), CliError> {
    let stop = CancellationToken::new();
    // One in-process worker with all the slots: one set of log lines, not one per slot.
    let handles = {
        let (store, settings, stop) = (store.clone(), settings.clone(), stop.clone());
        let id = crate::worker::new_worker_id();
        vec![tokio::spawn(async move {
            crate::worker::run(store, settings, 16 * workers as usize, id, async move {
                stop.cancelled().await
            })
            .await
        })]
    };
    let started = Instant::now();
    let created = store.session_create(SyncType::ManualBatch, None).await?;
    let session = wait_for(
        store.as_ref(),
        created.session_id,
        created.total_instances as u64,
        true,
        None,
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    for h in handles {
        h.await
            .map_err(|e| CliError::Runtime(e.into()))?
            .map_err(CliError::Runtime)?;
    }
    Ok((session, elapsed))
}

/// The session's outcome in figures: counts, duration, success rate, lock waits,
/// throughput and the time the retries took.
fn print_summary(s: &Session, records: &[Record], elapsed: f64) {
    let mut waits: Vec<i64> = records.iter().filter_map(|r| r.lock_wait_ms).collect();
    waits.sort_unstable();
    let pct = |p: f64| {
        waits
            .get(((waits.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    println!();
    println!("session        {}", s.session_id);
    println!("status         {}", s.status);
    println!(
        "instances      {} ({} completed, {} failed, {} cancelled)",
        s.total_instances, s.successful_instances, s.failed_instances, s.cancelled_instances
    );
    println!(
        "duration       {:.2} s",
        s.duration_seconds.unwrap_or(elapsed)
    );
    println!(
        "success rate   {:.1} %",
        s.success_rate.unwrap_or(0.0) * 100.0
    );
    println!("lock wait      p50 {} ms, p99 {} ms", pct(0.5), pct(0.99));
    // Failed instances wait out their retry backoff (seconds) after everything else is
    // done: throughput is what the first attempts achieved, the retries are shown apart.
    let start = s.started_at.unwrap_or(s.created_at);
    let first: Vec<_> = records.iter().filter(|r| r.attempts <= 1).collect();
    let first_end = first
        .iter()
        .filter_map(|r| r.completed_at)
        .max()
        .unwrap_or(start);
    let first_secs = ((first_end - start).num_milliseconds() as f64 / 1000.0).max(1e-3);
    let total_secs = s.duration_seconds.unwrap_or(elapsed);
    println!(
        "throughput     {:.0} instances/s ({} first attempts in {first_secs:.2} s)",
        first.len() as f64 / first_secs,
        first.len()
    );
    if total_secs > first_secs + 0.01 {
        println!(
            "retries        {:.2} s more for {} (backoff --retry-backoff)",
            total_secs - first_secs,
            plural((records.len() - first.len()) as i64, "retried instance")
        );
    }
}

/// A few failed instances with their errors, the local servers' outcomes, and the
/// commands to look further.
fn print_instances_and_hints(s: &Session, records: &[Record]) {
    let failed: Vec<_> = records
        .iter()
        .filter(|r| r.status.as_str() == "failed")
        .take(3)
        .collect();
    for r in failed {
        println!(
            "failed         {} after {} attempts: {}",
            printable(&r.instance_name),
            r.attempts,
            printable(r.error.as_deref().unwrap_or(""))
        );
    }
    let me = invocation();
    for r in records
        .iter()
        .filter(|r| r.instance_name.starts_with("local-"))
    {
        // A local server's error text is the server's own words.
        let name = printable(&r.instance_name);
        println!(
            "real instance  {name}: {} ({} accounts{}); see `{me} accounts {name}`",
            r.status,
            r.accounts_total.unwrap_or(0),
            r.error
                .as_deref()
                .map(|e| format!(", {}", printable(e)))
                .unwrap_or_default(),
        );
    }
    println!(
        "\nnext: `{me} sessions`, `{me} session {}`, `{me} accounts demo-00001`",
        s.session_id
    );
}

/// What the demo registered: the simulated instances new this run (of those asked for),
/// and the local servers found.
fn registered_line(asked: usize, new_simulated: usize, new_local: usize) -> String {
    let simulated = match new_simulated {
        0 => format!("the {asked} simulated instances were already registered"),
        n if n == asked => format!("registered {asked} simulated instances"),
        n => format!(
            "registered {n} new simulated instances ({} were already there)",
            asked - n
        ),
    };
    match new_local {
        0 => simulated,
        n => format!(
            "{simulated} and {}",
            plural(n as i64, "local database server")
        ),
    }
}

/// The PostgreSQL and MariaDB on this machine, when they answer on their usual ports, so
/// that the demo also shows real accounts. They are registered once, without passwords
/// (loopback trust / an empty root password, as on a developer machine).
async fn local_servers(existing: &std::collections::HashSet<String>) -> Vec<NewInstance> {
    let mut out = vec![];
    for (name, kind, port, user, database) in [
        (
            "local-postgres",
            InstanceKind::Postgres,
            5432,
            "postgres",
            Some("postgres"),
        ),
        ("local-mariadb", InstanceKind::Mysql, 3306, "root", None),
    ] {
        let reachable = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if reachable && !existing.contains(name) {
            out.push(NewInstance {
                name: name.into(),
                kind,
                host: Some("127.0.0.1".into()),
                port: Some(port.into()),
                username: Some(user.into()),
                database: database.map(Into::into),
                password_env: None,
                password_file: None,
                options: serde_json::json!({}),
                active: true,
                group: None,
            });
        }
    }
    out
}

/// How to call this binary again from the current folder: `syncpool` when that is what
/// PATH finds, else its path (after `cargo run`, `target/debug/syncpool`).
fn invocation() -> String {
    let Ok(me) = std::env::current_exe() else {
        return "syncpool".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::canonicalize(dir.join("syncpool")).ok().as_deref()
                == std::fs::canonicalize(&me).ok().as_deref()
        })
    });
    if on_path {
        return "syncpool".into();
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    me.strip_prefix(&cwd)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| me.display().to_string())
}
