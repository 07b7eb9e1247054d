//! `syncpool serve`: the operator console, the HTTP API, `/metrics`, the scheduler and
//! optionally an in-process worker, until SIGINT/SIGTERM. Every check of its flags and of
//! `SYNCPOOL_API_TOKEN` needs no database and runs before one is opened, but one: whether
//! a public address may be served without the variable (it may, once tokens are stored).

use std::sync::Arc;

use crate::cli::{CliError, Out, ServeOpts};
use crate::store::Store;
use crate::validate;

/// The schedules, the API tokens and the site `serve` runs with.
pub(crate) type ServeSetup = (
    Vec<crate::scheduler::Schedule>,
    Vec<Arc<str>>,
    crate::http::Site,
);

/// What `serve` needs decided before it starts: the schedules (cron expressions parsed),
/// the API tokens and the host names and
/// public URL it calls its own. Pure, so that `check_input` can run it before any
/// database is opened.
pub(crate) fn serve_checks(opts: &ServeOpts) -> Result<ServeSetup, CliError> {
    use crate::scheduler::{self, Job, Schedule};
    let mut schedules = vec![Schedule {
        name: "cleanup",
        cron: scheduler::parse(&opts.cleanup_schedule).map_err(CliError::Usage)?,
        job: Job::Cleanup {
            days: validate::days(opts.retention_days)?,
            history_days: validate::history_days(opts.history_days)?,
            audit_days: validate::audit_days(opts.audit_days)?,
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
    let site = crate::http::Site::new(&opts.allowed_hosts, opts.public_url.as_deref())
        .map_err(CliError::Usage)?;
    Ok((schedules, tokens, site))
}

/// Refuses to serve a public address with no token at all: not in `SYNCPOOL_API_TOKEN`,
/// not stored (`syncpool tokens create`), and no `--insecure-no-auth`. Stored tokens close
/// the server as the variable does. Run before the database is opened, so that a refused
/// `serve` creates nothing: only an existing database can hold tokens.
pub(crate) async fn check_public_bind(database_url: &str, opts: &ServeOpts) -> Out {
    let bind = opts.bind.as_str();
    if !api_tokens()?.is_empty() || opts.insecure_no_auth || is_loopback(bind) {
        return Ok(());
    }
    let stored = match crate::store::connect_existing(database_url).await {
        Ok(store) => store.tokens_exist().await.unwrap_or(false),
        Err(_) => false,
    };
    if stored {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "refusing to serve on {bind} without SYNCPOOL_API_TOKEN or a stored token: anyone \
         who can reach it could register instances and start syncs with the workers' \
         credentials; set a token (or create one with `syncpool tokens create NAME --role \
         admin`), bind a loopback address, or pass --insecure-no-auth"
    )))
}

/// `syncpool serve`: runs until `shutdown` resolves, then stops everything and waits for
/// the scheduler, the in-process worker and the server to end, in that order.
pub(crate) async fn run(
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
        webhook_allow: opts.timing.webhooks.webhook_allow.clone(),
    };
    let auth = if state.tokens.is_empty() && !store.tokens_exist().await? {
        "no token required (SYNCPOOL_API_TOKEN unset, no stored token)"
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
