//! The `syncpool` command line (README.md, "Using it"). Parsing is clap's; this module turns
//! parsed flags into calls on the [`Store`] and the worker, and errors into exit codes:
//! 2 for bad usage or bad input (one line on stderr), 1 for a runtime failure.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::model::*;
use crate::settings::Settings;
use crate::store::{self, SessionFilter, Store, StoreError};
use crate::validate;

#[derive(Parser, Debug)]
#[command(
    name = "syncpool",
    version,
    about = "Keeps a fleet's database accounts in sync, on a database-backed queue"
)]
pub struct Cli {
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB
    #[arg(
        long,
        env = "SYNCPOOL_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://syncpool.db",
        global = true
    )]
    pub database_url: String,
    #[command(flatten)]
    pub timing: TimingArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Durations accept `30s`, `500ms`, `2m` or plain seconds.
#[derive(Args, Debug, Clone)]
pub struct TimingArgs {
    /// Lease time-to-live
    #[arg(long, env = "SYNCPOOL_LEASE_TTL", hide_env_values = true, default_value = "30s", value_parser = parse_duration, global = true)]
    pub lease_ttl: Duration,
    /// Lease renewal interval
    #[arg(long, env = "SYNCPOOL_LEASE_RENEW", hide_env_values = true, default_value = "10s", value_parser = parse_duration, global = true)]
    pub lease_renew: Duration,
    /// Longest one instance sync may take
    #[arg(long, env = "SYNCPOOL_SYNC_TIMEOUT", hide_env_values = true, default_value = "300s", value_parser = parse_duration, global = true)]
    pub sync_timeout: Duration,
    /// Attempts per instance, the first included
    #[arg(long, env = "SYNCPOOL_MAX_ATTEMPTS", hide_env_values = true, default_value_t = 3, value_parser = clap::value_parser!(i64).range(1..=100), global = true)]
    pub max_attempts: i64,
    /// First retry delay (doubles per attempt, with jitter)
    #[arg(long, env = "SYNCPOOL_RETRY_BACKOFF", hide_env_values = true, default_value = "2s", value_parser = parse_duration, global = true)]
    pub retry_backoff: Duration,
    /// How long a job may wait for an instance leased elsewhere
    #[arg(long, env = "SYNCPOOL_LOCK_WAIT_TIMEOUT", hide_env_values = true, default_value = "600s", value_parser = parse_duration, global = true)]
    pub lock_wait_timeout: Duration,
    /// Grace period for running syncs at shutdown
    #[arg(long, env = "SYNCPOOL_SHUTDOWN_GRACE", hide_env_values = true, default_value = "30s", value_parser = parse_duration, global = true)]
    pub shutdown_grace: Duration,
    /// Queue heartbeat; a worker silent for 3 heartbeats has its jobs taken over
    #[arg(long, env = "SYNCPOOL_QUEUE_HEARTBEAT", hide_env_values = true, default_value = "10s", value_parser = parse_duration, global = true)]
    pub queue_heartbeat: Duration,
    /// Time allowed to connect to an instance
    #[arg(long, env = "SYNCPOOL_CONNECT_TIMEOUT", hide_env_values = true, default_value = "10s", value_parser = parse_duration, global = true)]
    pub connect_timeout: Duration,
    /// Time allowed for one catalog query on an instance
    #[arg(long, env = "SYNCPOOL_STATEMENT_TIMEOUT", hide_env_values = true, default_value = "60s", value_parser = parse_duration, global = true)]
    pub statement_timeout: Duration,
    /// How often an idle worker polls for jobs
    #[arg(long, env = "SYNCPOOL_POLL_INTERVAL", hide_env_values = true, default_value = "200ms", value_parser = parse_duration, global = true)]
    pub poll_interval: Duration,
}

impl TimingArgs {
    pub fn settings(&self) -> Result<Settings, CliError> {
        if self.lease_renew >= self.lease_ttl {
            return Err(CliError::Usage(
                "--lease-renew must be shorter than --lease-ttl".into(),
            ));
        }
        Ok(Settings {
            lease_ttl: self.lease_ttl,
            lease_renew: self.lease_renew,
            sync_timeout: self.sync_timeout,
            max_attempts: self.max_attempts,
            retry_backoff: self.retry_backoff,
            lock_wait_timeout: self.lock_wait_timeout,
            shutdown_grace: self.shutdown_grace,
            queue_heartbeat: self.queue_heartbeat,
            poll_interval: self.poll_interval,
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
            ..Settings::default()
        })
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}' has an unknown unit (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 30.0 * 86400.0 {
        return Err(format!("'{s}' must be positive and at most 30 days"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply migrations (safe when several processes start at once)
    Migrate,
    /// Manage the instance registry
    #[command(subcommand)]
    Instances(InstancesCmd),
    /// Start a session over all active instances
    SyncAll(SyncOpts),
    /// Start a manual session over the named instances
    Sync {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        opts: SyncOpts,
    },
    /// Run a worker process until SIGINT/SIGTERM
    Worker {
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
        concurrency: u16,
        /// Serve /metrics on this address (e.g. 127.0.0.1:9187)
        #[arg(long)]
        metrics_bind: Option<String>,
    },
    /// HTTP API and /metrics; optionally in-process workers and the scheduler
    Serve(ServeOpts),
    /// List sessions
    Sessions {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show one session with its records
    Session {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a session
    Cancel { id: String },
    /// Delete finished sessions older than N days, their records and jobs, and expired locks
    Cleanup {
        #[arg(long, default_value_t = 7, allow_negative_numbers = true)]
        days: i64,
        #[arg(long)]
        json: bool,
    },
    /// The synced accounts of one instance
    Accounts {
        name: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        include_deleted: bool,
    },
    /// Register simulated instances, sync them all with in-process workers, print a summary
    Demo {
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        instances: u32,
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SyncOpts {
    /// Wait until the session finishes
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServeOpts {
    /// Address to listen on; port 0 picks a free one (the bound address is logged)
    #[arg(
        long,
        env = "SYNCPOOL_BIND",
        hide_env_values = true,
        default_value = "127.0.0.1:8080"
    )]
    pub bind: String,
    /// Concurrency of an in-process worker (0: none)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub workers: u16,
    /// Cron expression for scheduled sessions over all active instances (e.g. "0 */6 * * *")
    #[arg(long, env = "SYNCPOOL_SCHEDULE", hide_env_values = true)]
    pub schedule: Option<String>,
    /// Cron expression for the daily cleanup
    #[arg(
        long,
        env = "SYNCPOOL_CLEANUP_SCHEDULE",
        hide_env_values = true,
        default_value = "0 3 * * *"
    )]
    pub cleanup_schedule: String,
    /// Days of finished sessions the scheduled cleanup keeps
    #[arg(
        long,
        env = "SYNCPOOL_RETENTION_DAYS",
        hide_env_values = true,
        default_value_t = 7
    )]
    pub retention_days: i64,
    /// Serve a non-loopback address without SYNCPOOL_API_TOKEN (bearer tokens,
    /// comma-separated for rotation); refused otherwise
    #[arg(long)]
    pub insecure_no_auth: bool,
}

#[derive(Subcommand, Debug)]
pub enum InstancesCmd {
    /// Register an instance; prints it as JSON
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<i64>,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        database: Option<String>,
        /// Environment variable of the worker that holds the password; must start with
        /// SYNCPOOL_SECRET_
        #[arg(long)]
        password_env: Option<String>,
        /// File in the worker's secrets folder (SYNCPOOL_SECRETS_DIR, default
        /// /run/secrets) that holds the password
        #[arg(long)]
        password_file: Option<String>,
        /// KEY=VALUE, repeatable
        #[arg(long = "option")]
        options: Vec<String>,
    },
    /// Register a JSON array of instances, all or nothing
    Import { file: PathBuf },
    /// List instances
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an instance
    Remove { name: String },
}

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
    Unsuccessful { id: Uuid, status: SessionStatus },
}

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
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
            CliError::Unsuccessful { status, .. } => status.exit_code(),
        }
    }
}

type Out = Result<(), CliError>;

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("our types always serialise")
    );
}

fn parse_session_id(s: &str) -> Result<Uuid, CliError> {
    Uuid::parse_str(s.trim())
        .map_err(|_| CliError::Usage(format!("'{s}' is not a session id (a UUID)")))
}

/// Opens the store and applies migrations, so that every command works on a fresh file.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, CliError> {
    let store = store::connect(url).await?;
    store
        .migrate()
        .await
        .map_err(|e| CliError::Runtime(anyhow::anyhow!(e).context("migrating the database")))?;
    Ok(store)
}

pub async fn run(cli: Cli) -> Out {
    let settings = cli.timing.settings()?;
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
    let store = open(&cli.database_url).await?;
    match cli.command {
        Command::Migrate => {
            println!("migrations applied");
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
        } => {
            if let Some(addr) = metrics_bind {
                crate::http::serve_metrics(store.clone(), &addr).await?;
            }
            let worker_id = crate::worker::new_worker_id();
            tracing::info!(worker_id, concurrency, "worker started");
            crate::worker::run(store, settings, concurrency as usize, worker_id, shutdown)
                .await
                .map_err(CliError::Runtime)
        }
        Command::Serve(opts) => serve(store, settings, opts, shutdown).await,
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
            };
            let (items, total) = store.session_list(&filter).await?;
            if json {
                // The API's list shape, so one parser serves both.
                print_json(&serde_json::json!({ "items": items, "total": total }));
            } else {
                println!(
                    "{:<36}  {:<13}  {:<21}  {:>6}  {:>6}  {:>6}  created_at",
                    "session_id", "sync_type", "status", "total", "ok", "failed"
                );
                for s in items {
                    println!(
                        "{:<36}  {:<13}  {:<21}  {:>6}  {:>6}  {:>6}  {}",
                        s.session_id,
                        s.sync_type,
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
        Command::Session { id, json } => {
            let id = parse_session_id(&id)?;
            let detail = store
                .session_get(id)
                .await?
                .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
            print_session(&detail, json);
            Ok(())
        }
        Command::Cancel { id } => {
            let id = parse_session_id(&id)?;
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
        Command::Cleanup { days, json } => {
            let counts = store.cleanup(validate::days(days)?).await?;
            if json {
                print_json(&counts);
            } else {
                println!(
                    "deleted {} sessions, {} records, {} jobs, {} locks",
                    counts.sessions_deleted,
                    counts.records_deleted,
                    counts.jobs_deleted,
                    counts.locks_deleted
                );
            }
            Ok(())
        }
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
                    println!("{who}  {}{deleted}", a.attributes);
                }
            }
            Ok(())
        }
        Command::Demo { instances, workers } => {
            crate::demo::run(store, settings, instances, workers).await
        }
    }
}

async fn instances(store: &dyn Store, cmd: InstancesCmd) -> Out {
    match cmd {
        InstancesCmd::Add {
            name,
            kind,
            host,
            port,
            username,
            database,
            password_env,
            password_file,
            options,
        } => {
            let new = validate::new_instance(NewInstance {
                name,
                kind,
                host,
                port,
                username,
                database,
                password_env,
                password_file,
                options: validate::option_pairs(&options)?,
                active: true,
            })?;
            print_json(&store.instance_insert(&new).await?);
            Ok(())
        }
        InstancesCmd::Import { file } => {
            let text = std::fs::read_to_string(&file)
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
            let n = store.instance_insert_many(&valid).await?;
            println!("{n}");
            Ok(())
        }
        InstancesCmd::List { json } => {
            let list = store.instance_list().await?;
            if json {
                print_json(&list);
            } else {
                for i in list {
                    let addr = match (&i.host, i.port) {
                        (Some(h), Some(p)) => format!("{h}:{p}"),
                        (Some(h), None) => h.clone(),
                        _ => "-".into(),
                    };
                    println!(
                        "{:<6} {:<30} {:<10} {:<24} {}",
                        i.id,
                        i.name,
                        i.kind,
                        addr,
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
            println!("removed {name}");
            Ok(())
        }
    }
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
                "total_instances": created.total_instances,
            }));
        } else {
            println!(
                "session {} started over {} instances",
                created.session_id, created.total_instances
            );
        }
        return Ok(());
    }
    let detail = wait_for(
        store,
        created.session_id,
        created.total_instances as u64,
        !opts.json,
    )
    .await?;
    print_session(&detail, opts.json);
    match detail.session.status {
        SessionStatus::Completed => Ok(()),
        status => Err(CliError::Unsuccessful {
            id: detail.session.session_id,
            status,
        }),
    }
}

/// Polls a session until it is finished, with a progress bar when stderr is a terminal.
pub async fn wait_for(
    store: &dyn Store,
    id: Uuid,
    total: u64,
    progress: bool,
) -> Result<SessionDetail, CliError> {
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
        let detail = store
            .session_get(id)
            .await?
            .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
        let s = &detail.session;
        if let Some(bar) = &bar {
            bar.set_position(
                (s.successful_instances + s.failed_instances + s.cancelled_instances) as u64,
            );
            bar.set_message(format!("{} failed", s.failed_instances));
        }
        if s.is_finished() {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(detail);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_session(d: &SessionDetail, json: bool) {
    if json {
        print_json(d);
        return;
    }
    let s = &d.session;
    println!(
        "session {}  {}  {}  total {}  ok {}  failed {}  cancelled {}  duration {}  success rate {}",
        s.session_id,
        s.sync_type,
        s.status,
        s.total_instances,
        s.successful_instances,
        s.failed_instances,
        s.cancelled_instances,
        s.duration_seconds
            .map(|d| format!("{d:.3}s"))
            .unwrap_or_else(|| "-".into()),
        s.success_rate
            .map(|r| format!("{:.1}%", r * 100.0))
            .unwrap_or_else(|| "-".into()),
    );
    for r in &d.records {
        println!(
            "  {:<30} {:<9} attempts {} accounts {}{}",
            r.instance_name,
            r.status,
            r.attempts,
            r.accounts_total
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            r.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
}

/// Resolves on SIGINT or SIGTERM.
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

async fn serve(
    store: Arc<dyn Store>,
    settings: Settings,
    opts: ServeOpts,
    shutdown: impl std::future::Future<Output = ()>,
) -> Out {
    use crate::scheduler::{self, Job, Schedule};
    let ServeOpts {
        bind,
        workers,
        schedule,
        cleanup_schedule,
        retention_days,
        insecure_no_auth,
    } = opts;
    let bind = bind.as_str();
    let mut schedules = vec![Schedule {
        name: "cleanup",
        cron: scheduler::parse(&cleanup_schedule).map_err(CliError::Usage)?,
        job: Job::Cleanup {
            days: validate::days(retention_days)?,
        },
    }];
    if let Some(expr) = schedule.filter(|s| !s.trim().is_empty()) {
        schedules.push(Schedule {
            name: "sync",
            cron: scheduler::parse(&expr).map_err(CliError::Usage)?,
            job: Job::Sync,
        });
    }
    let tokens = api_tokens()?;
    if tokens.is_empty() && !insecure_no_auth && !is_loopback(bind) {
        return Err(CliError::Usage(format!(
            "refusing to serve on {bind} without SYNCPOOL_API_TOKEN: anyone who can reach it could \
             register instances and start syncs with the workers' credentials; set a token, bind a \
             loopback address, or pass --insecure-no-auth"
        )));
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let state = crate::http::AppState {
        store: store.clone(),
        tokens,
    };
    let (_, server) = crate::http::serve(state, bind, stop.clone().cancelled_owned())
        .await
        .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let sched = tokio::spawn(scheduler::run(store.clone(), schedules, stop.clone()));
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
    Ok(tokens)
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
