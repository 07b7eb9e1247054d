//! The `syncpool` command line (README.md, "Using it"). Parsing is clap's; this module turns
//! parsed flags into calls on the [`Store`] and the worker, and errors into exit codes:
//! 2 for bad usage or bad input (one line on stderr), 1 for a runtime failure.

mod args;
mod changes;
mod show;
mod text;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

pub use args::*;
pub(crate) use show::{each_record, seconds};
pub use text::printable;

use crate::model::*;
use crate::store::{self, SessionFilter, Store, StoreError};
use crate::validate;

/// How a command failed, which decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or bad input: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Something went wrong at run time: exit code 1.
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
    /// A waited-for session finished other than `completed`: its own exit code (3-5), so
    /// a script can tell a partial failure from a total one from a cancel.
    #[error("session {id} finished {status}")]
    Unsuccessful {
        /// The session.
        id: Uuid,
        /// How it ended.
        status: SessionStatus,
    },
    /// `--wait --timeout` ran out before the session finished: exit code 6, apart from
    /// the session outcomes. The session goes on.
    #[error(
        "session {id} is still {status} after --timeout {}; it goes on (`syncpool session {id}`)",
        show::seconds(waited.as_secs_f64())
    )]
    TimedOut {
        /// The session.
        id: Uuid,
        /// Where it was when the wait ended.
        status: SessionStatus,
        /// How long the wait was.
        waited: Duration,
    },
}

/// The exit code of a `--wait` whose `--timeout` ran out (README, "Exit codes").
pub const EXIT_TIMED_OUT: i32 = 6;

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        if e.is_bad_input() {
            CliError::Usage(e.to_string())
        } else {
            CliError::Runtime(e.into())
        }
    }
}

impl CliError {
    /// The process exit code this error ends with (see `--help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
            CliError::Unsuccessful { status, .. } => status.exit_code(),
            CliError::TimedOut { .. } => EXIT_TIMED_OUT,
        }
    }
}

type Out = Result<(), CliError>;

pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("our types always serialise")
    );
}

/// A session as the command line names it: its whole id, or the first 8 or more hex
/// digits of it (hyphens optional), as git takes a short commit id.
enum SessionRef {
    Full(Uuid),
    /// The lowest and highest ids that start with the prefix, and the prefix as typed.
    Prefix(Uuid, Uuid, String),
}

/// The fewest hex digits a short session id may have.
const MIN_PREFIX: usize = 8;

fn parse_session_id(s: &str) -> Result<SessionRef, CliError> {
    let s = s.trim();
    if let Ok(id) = Uuid::parse_str(s) {
        return Ok(SessionRef::Full(id));
    }
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if (MIN_PREFIX..32).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let hex = hex.to_ascii_lowercase();
        let pad = |fill: char| {
            let full: String = hex
                .chars()
                .chain(std::iter::repeat(fill))
                .take(32)
                .collect();
            Uuid::parse_str(&full).expect("32 hex digits")
        };
        return Ok(SessionRef::Prefix(pad('0'), pad('f'), s.to_string()));
    }
    Err(CliError::Usage(format!(
        "'{s}' is not a session id (a UUID, or its first {MIN_PREFIX} or more hex digits)"
    )))
}

/// The session a whole or short id names; a prefix that starts no session, or several,
/// is bad input (the candidates are named).
async fn resolve_session(store: &dyn Store, s: &str) -> Result<Uuid, CliError> {
    let (lo, hi, typed) = match parse_session_id(s)? {
        SessionRef::Full(id) => return Ok(id),
        SessionRef::Prefix(lo, hi, typed) => (lo, hi, typed),
    };
    const SHOWN: usize = 5;
    let found = store.session_ids_between(lo, hi, SHOWN as i64 + 1).await?;
    match found.as_slice() {
        [] => Err(CliError::Usage(format!("unknown session '{typed}'"))),
        [one] => Ok(*one),
        many => {
            let names: Vec<String> = many.iter().take(SHOWN).map(Uuid::to_string).collect();
            let more = if many.len() > SHOWN { ", ..." } else { "" };
            Err(CliError::Usage(format!(
                "'{typed}' is the start of {} sessions ({}{more}): give more of the id",
                if many.len() > SHOWN {
                    format!("more than {SHOWN}")
                } else {
                    many.len().to_string()
                },
                names.join(", ")
            )))
        }
    }
}

/// The page of records `session` shows, checked as the API checks `/records`.
fn record_view(
    status: Option<&str>,
    limit: i64,
    after: Option<i64>,
    all: bool,
) -> Result<show::RecordView, CliError> {
    Ok(show::RecordView {
        status: status.map(validate::record_status).transpose()?,
        limit: validate::limit(limit)?,
        after: after.map(validate::after).transpose()?.unwrap_or(0),
        all,
    })
}

/// Only these commands create a missing database and apply migrations: the ones that set
/// one up (`migrate`, registering instances) or run against it for long (worker, serve,
/// demo). Every other command needs an existing, current database and says so otherwise.
fn creates_database(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Migrate
            | Command::Instances(InstancesCmd::Add(_) | InstancesCmd::Import { .. })
            | Command::Worker { .. }
            | Command::Serve(_)
            | Command::Demo { .. }
    )
}

/// Every check that needs no database, run before one is opened.
fn check_input(cmd: &Command) -> Result<(), CliError> {
    match cmd {
        Command::Session {
            id,
            status,
            limit,
            after,
            ..
        } => {
            parse_session_id(id)?;
            record_view(status.as_deref(), *limit, *after, false)?;
        }
        Command::Cancel { id } => {
            parse_session_id(id)?;
        }
        Command::Sessions { status, limit, .. } => {
            if let Some(s) = status {
                validate::session_status(s)?;
            }
            validate::limit(*limit)?;
        }
        Command::Cleanup {
            days, history_days, ..
        } => {
            validate::days(*days)?;
            validate::history_days(*history_days)?;
        }
        Command::Worker {
            metrics_bind,
            timing,
            ..
        } => {
            timing.settings()?;
            if let Some(addr) = metrics_bind {
                addr.parse::<std::net::SocketAddr>().map_err(|_| {
                    CliError::Usage(format!(
                        "--metrics-bind '{addr}' is not an address (try 127.0.0.1:9187)"
                    ))
                })?;
            }
        }
        Command::Demo { timing, .. } => {
            timing.settings()?;
        }
        Command::Serve(opts) => {
            serve_checks(opts)?;
        }
        Command::Instances(InstancesCmd::Add(args)) => {
            new_instance_from_args(args)?;
        }
        Command::Instances(InstancesCmd::Import { file }) => {
            read_import(file)?;
        }
        Command::Changes(a) => {
            changes::filter(a)?;
        }
        _ => {}
    }
    Ok(())
}

/// Opens the store and applies migrations (creating a missing SQLite file).
pub async fn open(url: &str) -> Result<Arc<dyn Store>, CliError> {
    let store = store::connect(url).await?;
    store
        .migrate()
        .await
        .map_err(|e| CliError::Runtime(anyhow::anyhow!(e).context("migrating the database")))?;
    Ok(store)
}

/// Runs one parsed command line to its end.
pub async fn run(cli: Cli) -> Out {
    // Long-running commands catch SIGTERM from the start (see `shutdown_signal`); the
    // others keep the default action, so that a signal still ends them.
    let shutdown = match cli.command {
        Command::Worker { .. } | Command::Serve(_) => Some(shutdown_signal()?),
        _ => None,
    };
    // Only the long-running arms below wait on it; for any other command it never fires.
    let shutdown = async move {
        match shutdown {
            Some(signal) => signal.await,
            None => std::future::pending().await,
        }
    };
    // Input that needs no database is checked first: rejected input creates nothing.
    check_input(&cli.command)?;
    // What `migrate` is about to do, so that it can say what it did.
    let mut pending = None;
    let store = if let Command::Migrate = cli.command {
        let store = store::connect(&cli.database_url).await?;
        pending = store.migrations_pending().await?;
        store
            .migrate()
            .await
            .map_err(|e| CliError::Runtime(anyhow::anyhow!(e).context("migrating the database")))?;
        store
    } else if creates_database(&cli.command) {
        open(&cli.database_url).await?
    } else {
        store::connect_existing(&cli.database_url).await?
    };
    match cli.command {
        Command::Migrate => {
            match pending {
                Some(0) => println!("the database is up to date: no migration to apply"),
                Some(n) => println!("applied {}", plural(n as i64, "migration")),
                None => println!("created syncpool's tables"),
            }
            Ok(())
        }
        Command::Instances(cmd) => instances(store.as_ref(), cmd).await,
        Command::SyncAll(opts) => {
            start_session(store.as_ref(), SyncType::ManualBatch, None, &opts).await
        }
        Command::Sync { names, opts } => {
            let mut ids = Vec::with_capacity(names.len());
            for name in &names {
                let inst = store
                    .instance_get_by_name(name)
                    .await?
                    .ok_or_else(|| CliError::Usage(format!("unknown instance '{name}'")))?;
                ids.push(inst.id);
            }
            ids.sort_unstable();
            ids.dedup();
            let kind = if ids.len() == 1 {
                SyncType::ManualSingle
            } else {
                SyncType::ManualBatch
            };
            start_session(store.as_ref(), kind, Some(&ids), &opts).await
        }
        Command::Worker {
            concurrency,
            metrics_bind,
            timing,
        } => {
            let settings = timing.settings()?;
            if let Some(addr) = metrics_bind {
                crate::http::serve_metrics(store.clone(), &addr).await?;
            }
            let worker_id = crate::worker::new_worker_id();
            tracing::info!(worker_id, concurrency, "worker started");
            crate::worker::run(store, settings, concurrency as usize, worker_id, shutdown)
                .await
                .map_err(CliError::Runtime)
        }
        Command::Serve(opts) => serve(store, opts, shutdown).await,
        Command::Sessions {
            status,
            limit,
            json,
        } => {
            let filter = SessionFilter {
                status: status
                    .as_deref()
                    .map(validate::session_status)
                    .transpose()?,
                limit: validate::limit(limit)?,
                offset: 0,
                sync_type: None,
            };
            let (items, total) = store.session_list(&filter).await?;
            if json {
                // The API's list shape, so one parser serves both.
                print_json(&serde_json::json!({ "items": items, "total": total }));
            } else if items.is_empty() {
                if total > 0 || filter.status.is_some() {
                    println!("no sessions match");
                } else {
                    println!("no sessions yet: start one with `syncpool sync-all`");
                }
            } else {
                println!(
                    "{:<36}  {:<13}  {:<21}  {:>6}  {:>6}  {:>6}  created_at",
                    "session_id", "sync_type", "status", "total", "ok", "failed"
                );
                for s in items {
                    println!(
                        "{:<36}  {:<13}  {:<21}  {:>6}  {:>6}  {:>6}  {}",
                        s.session_id,
                        printable(&s.sync_type),
                        s.status,
                        s.total_instances,
                        s.successful_instances,
                        s.failed_instances,
                        ts::format(&s.created_at)
                    );
                }
            }
            Ok(())
        }
        Command::Session {
            id,
            status,
            limit,
            after,
            all,
            json,
        } => {
            let view = record_view(status.as_deref(), limit, after, all)?;
            let id = resolve_session(store.as_ref(), &id).await?;
            let session = store
                .session_summary(id)
                .await?
                .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
            show::session(store.as_ref(), &session, json, view).await
        }
        Command::Locks { json } => show::locks(store.as_ref(), json).await,
        Command::Queue { json, raw } => show::queue(store.as_ref(), json, raw).await,
        Command::Cancel { id } => {
            let id = resolve_session(store.as_ref(), &id).await?;
            let cancelled = store
                .session_cancel(id)
                .await?
                .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
            let s = cancelled.session;
            println!(
                "session {} is {}{}",
                s.session_id,
                s.status,
                if s.is_finished() { "" } else { " (cancelling)" }
            );
            Ok(())
        }
        Command::Cleanup {
            days,
            history_days,
            json,
        } => {
            let counts = store
                .cleanup(validate::days(days)?, validate::history_days(history_days)?)
                .await?;
            if json {
                print_json(&counts);
            } else {
                println!(
                    "deleted {} sessions, {} records, {} jobs, {} locks, {} account changes",
                    counts.sessions_deleted,
                    counts.records_deleted,
                    counts.jobs_deleted,
                    counts.locks_deleted,
                    counts.changes_deleted
                );
            }
            Ok(())
        }
        Command::Changes(a) => changes::run(store.as_ref(), &a).await,
        Command::Accounts {
            name,
            json,
            include_deleted,
        } => {
            let inst = store
                .instance_get_by_name(&name)
                .await?
                .ok_or_else(|| CliError::Usage(format!("unknown instance '{name}'")))?;
            let accounts = store.accounts_list(inst.id, include_deleted).await?;
            if json {
                print_json(&accounts);
            } else if accounts.is_empty() {
                let name = printable(&name);
                let any = !store.accounts_list(inst.id, true).await?.is_empty();
                if any {
                    println!(
                        "'{name}' has no current accounts (--include-deleted lists the removed ones)"
                    );
                } else {
                    println!("'{name}' has not been synced yet: run `syncpool sync {name}`");
                }
            } else {
                for a in accounts {
                    let deleted = a
                        .deleted_at
                        .map(|d| format!("  (deleted {})", ts::format(&d)))
                        .unwrap_or_default();
                    let who = if a.host.is_empty() {
                        a.username
                    } else {
                        format!("{}@{}", a.username, a.host)
                    };
                    // serde_json escapes C0 controls in the attributes but lets DEL, C1
                    // controls and bidi overrides through.
                    println!(
                        "{}  {}{deleted}",
                        printable(&who),
                        printable(&a.attributes.to_string())
                    );
                }
            }
            Ok(())
        }
        Command::Demo {
            instances,
            workers,
            timing,
        } => crate::demo::run(store, timing.settings()?, instances, workers).await,
    }
}

async fn instances(store: &dyn Store, cmd: InstancesCmd) -> Out {
    match cmd {
        InstancesCmd::Add(args) => {
            let json = args.json;
            let new = new_instance_from_args(&args)?;
            let inst = store.instance_insert(&new).await?;
            if json {
                print_json(&inst);
            } else {
                println!(
                    "registered {} ({}, id {})",
                    printable(&inst.name),
                    printable(&inst.kind),
                    inst.id
                );
            }
            Ok(())
        }
        InstancesCmd::Import { file } => {
            let valid = read_import(&file)?;
            let n = store.instance_insert_many(&valid).await?;
            println!(
                "registered {} from {}",
                plural(n as i64, "instance"),
                printable(&file.display().to_string())
            );
            Ok(())
        }
        InstancesCmd::List { json } => {
            let list = store.instance_list().await?;
            if json {
                print_json(&list);
            } else if list.is_empty() {
                println!("no instances registered: add one with `syncpool instances add`");
            } else {
                println!(
                    "{:<6} {:<30} {:<10} {:<24} state",
                    "id", "name", "kind", "address"
                );
                for i in list {
                    let addr = match (&i.host, i.port) {
                        (Some(h), Some(p)) => format!("{h}:{p}"),
                        (Some(h), None) => h.clone(),
                        _ => "-".into(),
                    };
                    println!(
                        "{:<6} {:<30} {:<10} {:<24} {}",
                        i.id,
                        printable(&i.name),
                        printable(&i.kind),
                        printable(&addr),
                        if i.active { "active" } else { "inactive" }
                    );
                }
            }
            Ok(())
        }
        InstancesCmd::Remove { name } => {
            let inst = store
                .instance_get_by_name(&name)
                .await?
                .ok_or_else(|| CliError::Usage(format!("unknown instance '{name}'")))?;
            store.instance_delete(inst.id).await?;
            println!("removed {}", printable(&name));
            Ok(())
        }
    }
}

/// The validated instance that `instances add` describes.
fn new_instance_from_args(a: &AddArgs) -> Result<NewInstance, CliError> {
    Ok(validate::new_instance(NewInstance {
        name: a.name.clone(),
        kind: a.kind.clone(),
        host: a.host.clone(),
        port: a.port,
        username: a.username.clone(),
        database: a.database.clone(),
        password_env: a.password_env.clone(),
        password_file: a.password_file.clone(),
        options: validate::option_pairs(&a.options)?,
        active: true,
    })?)
}

/// Reads and validates an import file, all of it, before anything is written.
fn read_import(file: &std::path::Path) -> Result<Vec<NewInstance>, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let list: Vec<NewInstance> = serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{} is not a JSON array of instances: {e}",
            file.display()
        ))
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut valid = Vec::with_capacity(list.len());
    for (i, n) in list.into_iter().enumerate() {
        let n = validate::new_instance(n)
            .map_err(|e| CliError::Usage(format!("instance #{}: {e}", i + 1)))?;
        if !seen.insert(n.name.clone()) {
            return Err(CliError::Usage(format!(
                "instance #{}: the name '{}' appears twice in the file",
                i + 1,
                n.name
            )));
        }
        valid.push(n);
    }
    Ok(valid)
}

async fn start_session(
    store: &dyn Store,
    kind: SyncType,
    ids: Option<&[i64]>,
    opts: &SyncOpts,
) -> Out {
    let created = store.session_create(kind, ids).await?;
    if !opts.wait {
        if opts.json {
            print_json(&serde_json::json!({
                "session_id": created.session_id,
                "sync_type": kind,
                "status": created.status,
                "total_instances": created.total_instances,
            }));
        } else {
            println!(
                "session {} started over {}",
                created.session_id,
                plural(created.total_instances, "instance")
            );
        }
        return Ok(());
    }
    let session = wait_for(
        store,
        created.session_id,
        created.total_instances as u64,
        !opts.json,
        opts.timeout,
    )
    .await?;
    show::session(store, &session, opts.json, show::RecordView::FIRST_PAGE).await?;
    match session.status {
        SessionStatus::Completed => Ok(()),
        status if !session.is_finished() => Err(CliError::TimedOut {
            id: session.session_id,
            status,
            waited: opts.timeout.unwrap_or_default(),
        }),
        status => Err(CliError::Unsuccessful {
            id: session.session_id,
            status,
        }),
    }
}

/// How long a waiting command lets a session sit unclaimed before it says on stderr that
/// no worker runs.
pub const NO_WORKER_NOTICE: Duration = Duration::from_secs(10);

/// A worker is live when apalis has had its heartbeat this recently: three of the default
/// 10 s heartbeats, the point at which apalis itself hands a silent worker's jobs on.
const LIVE_WORKER_SECONDS: i64 = 30;

/// Polls a session until it is finished, or until `timeout` has passed (the session is
/// then returned unfinished), with a progress bar when stderr is a terminal. When no
/// record of the session has started after [`NO_WORKER_NOTICE`] and no worker is live,
/// it says so once on stderr, piped or not, and goes on waiting.
pub async fn wait_for(
    store: &dyn Store,
    id: Uuid,
    total: u64,
    progress: bool,
    timeout: Option<Duration>,
) -> Result<Session, CliError> {
    let started = std::time::Instant::now();
    let mut told = false;
    let bar = (progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .expect("a valid template"),
        );
        bar
    });
    loop {
        // The summary only: polling every 200 ms must not read 100,000 records each time.
        let s = store
            .session_summary(id)
            .await?
            .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
        if let Some(bar) = &bar {
            bar.set_position(
                (s.successful_instances + s.failed_instances + s.cancelled_instances) as u64,
            );
            bar.set_message(format!("{} failed", s.failed_instances));
        }
        let waited = started.elapsed();
        if s.is_finished() || timeout.is_some_and(|t| waited >= t) {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(s);
        }
        if !told
            && waited >= NO_WORKER_NOTICE
            && s.started_at.is_none()
            && store.workers_live(LIVE_WORKER_SECONDS).await? == 0
        {
            told = true;
            let line = format!(
                "no worker has claimed a job in {} s; start one with `syncpool worker`",
                NO_WORKER_NOTICE.as_secs()
            );
            match &bar {
                Some(bar) => bar.suspend(|| eprintln!("{line}")),
                None => eprintln!("{line}"),
            }
        }
        let nap = Duration::from_millis(200);
        tokio::time::sleep(match timeout {
            Some(t) => nap
                .min(t.saturating_sub(waited))
                .max(Duration::from_millis(1)),
            None => nap,
        })
        .await;
    }
}

/// `1 instance`, `2 instances`.
pub(crate) fn plural(n: i64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives while a worker is still
/// connecting and migrating must end it cleanly (exit 0), not by the default action.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, CliError>
{
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| {
            CliError::Runtime(anyhow::anyhow!(e).context(format!("installing a {name} handler")))
        })
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// The schedules, the API tokens and the site `serve` runs with.
type ServeSetup = (
    Vec<crate::scheduler::Schedule>,
    Vec<Arc<str>>,
    crate::http::Site,
);

/// What `serve` needs decided before it starts: the schedules (cron expressions parsed),
/// the API tokens (and whether serving without one is allowed) and the host names and
/// public URL it calls its own. Pure, so that `check_input` can run it before any
/// database is opened.
fn serve_checks(opts: &ServeOpts) -> Result<ServeSetup, CliError> {
    use crate::scheduler::{self, Job, Schedule};
    let mut schedules = vec![Schedule {
        name: "cleanup",
        cron: scheduler::parse(&opts.cleanup_schedule).map_err(CliError::Usage)?,
        job: Job::Cleanup {
            days: validate::days(opts.retention_days)?,
            history_days: validate::history_days(opts.history_days)?,
        },
    }];
    if let Some(expr) = opts.schedule.as_deref().filter(|s| !s.trim().is_empty()) {
        schedules.push(Schedule {
            name: "sync",
            cron: scheduler::parse(expr).map_err(CliError::Usage)?,
            job: Job::Sync,
        });
    }
    opts.timing.settings()?;
    let bind = opts.bind.as_str();
    if !has_port(bind) {
        return Err(CliError::Usage(format!(
            "--bind '{bind}' has no port: give HOST:PORT (e.g. 127.0.0.1:8080; port 0 picks a \
             free one)"
        )));
    }
    let tokens = api_tokens()?;
    if tokens.is_empty() && !opts.insecure_no_auth && !is_loopback(bind) {
        return Err(CliError::Usage(format!(
            "refusing to serve on {bind} without SYNCPOOL_API_TOKEN: anyone who can reach it could \
             register instances and start syncs with the workers' credentials; set a token, bind a \
             loopback address, or pass --insecure-no-auth"
        )));
    }
    let site = crate::http::Site::new(&opts.allowed_hosts, opts.public_url.as_deref())
        .map_err(CliError::Usage)?;
    Ok((schedules, tokens, site))
}

async fn serve(
    store: Arc<dyn Store>,
    opts: ServeOpts,
    shutdown: impl std::future::Future<Output = ()>,
) -> Out {
    let (schedules, tokens, site) = serve_checks(&opts)?;
    let settings = opts.timing.settings()?;
    let (bind, workers) = (opts.bind.as_str(), opts.workers);
    let stop = tokio_util::sync::CancellationToken::new();
    let state = crate::http::AppState {
        store: store.clone(),
        tokens,
        site,
    };
    let auth = if state.tokens.is_empty() {
        "no token required (SYNCPOOL_API_TOKEN unset)"
    } else {
        "every route but /metrics, /healthz, /readyz and /api/v1/openapi.json needs a token"
    };
    let (addr, server) = crate::http::serve(state, bind, stop.clone().cancelled_owned())
        .await
        .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    tracing::info!("console at http://{addr}/, API at http://{addr}/api/v1/; {auth}");
    let sched = tokio::spawn(crate::scheduler::run(
        store.clone(),
        schedules,
        stop.clone(),
    ));
    let worker = (workers > 0).then(|| {
        let id = crate::worker::new_worker_id();
        tokio::spawn(crate::worker::run(
            store.clone(),
            settings,
            workers as usize,
            id,
            stop.clone().cancelled_owned(),
        ))
    });
    shutdown.await;
    stop.cancel();
    let _ = sched.await;
    if let Some(w) = worker {
        w.await
            .map_err(|e| CliError::Runtime(e.into()))?
            .map_err(CliError::Runtime)?;
    }
    server
        .await
        .map_err(|e| CliError::Runtime(e.into()))?
        .map_err(|e| CliError::Runtime(e.into()))?;
    Ok(())
}

/// The bearer tokens of `SYNCPOOL_API_TOKEN`: comma-separated, so that a new token can be
/// added before the old one is removed.
fn api_tokens() -> Result<Vec<Arc<str>>, CliError> {
    let raw = std::env::var("SYNCPOOL_API_TOKEN").unwrap_or_default();
    let tokens: Vec<Arc<str>> = raw
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Arc::from)
        .collect();
    if tokens.iter().any(|t| t.len() > crate::http::MAX_TOKEN_LEN) {
        return Err(CliError::Usage(format!(
            "SYNCPOOL_API_TOKEN: each token must be at most {} bytes",
            crate::http::MAX_TOKEN_LEN
        )));
    }
    // A short token falls to guessing (the console limits wrong sign-ins per address,
    // the API does not).
    if tokens
        .iter()
        .any(|t| t.chars().count() < crate::http::MIN_TOKEN_LEN)
    {
        return Err(CliError::Usage(format!(
            "SYNCPOOL_API_TOKEN: each token must be at least {} characters",
            crate::http::MIN_TOKEN_LEN
        )));
    }
    Ok(tokens)
}

/// Whether `bind` ends with a port: `HOST:PORT`, `IP:PORT` or `[IPv6]:PORT`.
fn has_port(bind: &str) -> bool {
    if bind.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match bind.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok()
                && (!host.contains(':') || host.starts_with('['))
        }
        None => false,
    }
}

/// True when every address `bind` resolves to is a loopback one.
fn is_loopback(bind: &str) -> bool {
    use std::net::ToSocketAddrs;
    bind.to_socket_addrs()
        .map(|addrs| {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        })
        .unwrap_or(false)
}
