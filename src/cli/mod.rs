//! The `syncpool` command line (README.md, "Using it"). Parsing is clap's; this module turns
//! parsed flags into calls on the [`Store`] and the worker, and errors into exit codes:
//! 2 for bad usage or bad input (one line on stderr), 1 for a runtime failure.
//!
//! Where things are: `args.rs`, the grammar and help of every command; `cmd/`, what each
//! command does, one file per command or family of commands; `demo.rs`, `syncpool demo`;
//! `show.rs`, how a session prints; `wait.rs`, waiting for a session (`--wait`);
//! `text.rs`, text from the database made safe for a terminal. This file holds the error
//! type and exit codes, the checks that need no database, and [`run`], which opens the
//! database and hands each command to its file.

mod args;
mod args_policy;
mod cmd;
mod demo;
mod show;
mod text;
mod trail;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

pub use args::*;
pub use args_policy::*;
pub use text::printable;

use crate::model::SessionStatus;
use crate::store::{self, Store, StoreError};
use crate::validate;
use cmd::{
    access, accounts, changes, instances, locks, maintenance, policy, serve, sessions, webhooks,
    worker,
};

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
        crate::text::seconds(waited.as_secs_f64())
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

/// What a command ends with.
pub(crate) type Out = Result<(), CliError>;

pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("our types always serialise")
    );
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
            sessions::parse_session_id(id)?;
            sessions::record_view(status.as_deref(), *limit, *after, false)?;
        }
        Command::Cancel { id } => {
            sessions::parse_session_id(id)?;
        }
        Command::Sessions { status, limit, .. } => {
            if let Some(s) = status {
                validate::session_status(s)?;
            }
            validate::limit(*limit)?;
        }
        Command::Cleanup {
            days,
            history_days,
            audit_days,
            ..
        } => {
            validate::days(*days)?;
            validate::history_days(*history_days)?;
            validate::audit_days(*audit_days)?;
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
            serve::serve_checks(opts)?;
        }
        Command::Instances(InstancesCmd::Add(args)) => {
            instances::new_instance_from_args(args)?;
        }
        Command::Instances(InstancesCmd::Import { file }) => {
            instances::read_import(file)?;
        }
        Command::Changes(a) => {
            changes::filter(a)?;
        }
        Command::Tokens(t) => access::check(t)?,
        Command::Limits(l) => locks::check_limits(l)?,
        Command::Audit(a) => {
            access::audit_filter(a)?;
        }
        Command::Policy(p) => {
            if let Some(file) = p.file() {
                policy::read(file)?;
            }
        }
        Command::Drift(a) => {
            policy::filter(a)?;
        }
        Command::Webhooks(w) => webhooks::check(w)?,
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
    if let Command::Migrate = cli.command {
        // `migrate` opens the database itself, so that it can say what it applied.
        return maintenance::migrate(&cli.database_url).await;
    }
    if let Command::Serve(opts) = &cli.command {
        serve::check_public_bind(&cli.database_url, opts).await?;
    }
    let store = if creates_database(&cli.command) {
        open(&cli.database_url).await?
    } else {
        store::connect_existing(&cli.database_url).await?
    };
    let Some(action) = trail::action(&cli.command) else {
        return dispatch(store, cli.command, shutdown).await;
    };
    let (result, scope) = crate::audit::run(
        trail::event(action),
        dispatch(store.clone(), cli.command, shutdown),
    )
    .await;
    trail::close(store.as_ref(), &scope, &result).await;
    result
}

/// Hands one command to its file, over an open store.
async fn dispatch(
    store: Arc<dyn Store>,
    command: Command,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Out {
    match command {
        Command::Migrate => unreachable!("`migrate` has returned above"),
        Command::Instances(command) => instances::run(store.as_ref(), command).await,
        Command::SyncAll(opts) => sessions::sync_all(store.as_ref(), &opts).await,
        Command::Sync { names, opts } => sessions::sync(store.as_ref(), &names, &opts).await,
        Command::Retry { id, opts } => sessions::retry(store.as_ref(), &id, &opts).await,
        Command::Worker {
            concurrency,
            metrics_bind,
            timing,
        } => worker::run(store, concurrency, metrics_bind, &timing, shutdown).await,
        Command::Serve(opts) => serve::run(store, opts, shutdown).await,
        Command::Sessions {
            status,
            limit,
            json,
        } => sessions::list(store.as_ref(), status.as_deref(), limit, json).await,
        Command::Session {
            id,
            status,
            limit,
            after,
            all,
            json,
        } => {
            let view = sessions::record_view(status.as_deref(), limit, after, all)?;
            sessions::session(store.as_ref(), &id, view, json).await
        }
        Command::Locks { json } => locks::locks(store.as_ref(), json).await,
        Command::Queue { json, raw } => locks::queue(store.as_ref(), json, raw).await,
        Command::Cancel { id } => sessions::cancel(store.as_ref(), &id).await,
        Command::Cleanup {
            days,
            history_days,
            audit_days,
            json,
        } => maintenance::cleanup(store.as_ref(), days, history_days, audit_days, json).await,
        Command::Changes(a) => changes::run(store.as_ref(), &a).await,
        Command::Accounts {
            name,
            json,
            include_deleted,
        } => accounts::run(store.as_ref(), &name, json, include_deleted).await,
        Command::Tokens(t) => access::tokens(store.as_ref(), t).await,
        Command::Limits(l) => locks::limits(store.as_ref(), l).await,
        Command::Audit(a) => access::audit(store.as_ref(), &a).await,
        Command::Policy(p) => policy::run(store.as_ref(), p).await,
        Command::Drift(a) => policy::drift(store.as_ref(), &a).await,
        Command::Webhooks(w) => webhooks::run(store.as_ref(), w).await,
        Command::Demo {
            instances,
            workers,
            timing,
        } => demo::run(store, timing.settings()?, instances, workers).await,
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
