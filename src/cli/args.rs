//! The command line's grammar: every command, flag and argument with its help text. What
//! they do is in `cmd/` (and `demo.rs`), dispatched from `mod.rs`. Help never prints an
//! environment value (`hide_env_values`): the database URL and tokens are secrets.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::CliError;
use crate::settings::Settings;

#[derive(Parser, Debug)]
#[command(
    name = "syncpool",
    version,
    about = "Keeps a fleet's database accounts in sync, on a database-backed queue",
    after_help = "Exit codes: 0 success; 1 runtime failure; 2 bad usage or input; \
                  sync --wait: 3 completed_with_errors, 4 failed, 5 cancelled, \
                  6 --timeout ran out (the session goes on)."
)]
/// The command line: a global database URL and one command.
pub struct Cli {
    /// syncpool's own database: sqlite://PATH or postgres://USER@HOST/DB (default
    /// sqlite://syncpool.db; created by `migrate`, `instances add`, `worker`, `serve`)
    #[arg(
        long,
        env = "SYNCPOOL_DATABASE_URL",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "sqlite://syncpool.db",
        value_name = "URL",
        global = true
    )]
    pub database_url: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The timings of the commands that run syncs (worker, serve, demo). Durations accept
/// `30s`, `500ms`, `2m`, `1h` or plain seconds.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Timings")]
pub struct TimingArgs {
    /// How long a lease on an instance lasts without renewal
    #[arg(long, env = "SYNCPOOL_LEASE_TTL", hide_env_values = true, default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub lease_ttl: Duration,
    /// How often a running sync renews its lease (shorter than --lease-ttl)
    #[arg(long, env = "SYNCPOOL_LEASE_RENEW", hide_env_values = true, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub lease_renew: Duration,
    /// Longest one instance sync may take
    #[arg(long, env = "SYNCPOOL_SYNC_TIMEOUT", hide_env_values = true, default_value = "300s", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub sync_timeout: Duration,
    /// Attempts per instance, the first included (1-100)
    #[arg(long, env = "SYNCPOOL_MAX_ATTEMPTS", hide_env_values = true, default_value_t = 3, value_parser = clap::value_parser!(i64).range(1..=100), allow_negative_numbers = true, value_name = "N")]
    pub max_attempts: i64,
    /// First retry delay (doubles per attempt, with jitter)
    #[arg(long, env = "SYNCPOOL_RETRY_BACKOFF", hide_env_values = true, default_value = "2s", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub retry_backoff: Duration,
    /// How long a job may wait for an instance leased by another session
    #[arg(long, env = "SYNCPOOL_LOCK_WAIT_TIMEOUT", hide_env_values = true, default_value = "600s", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub lock_wait_timeout: Duration,
    /// Grace period for running syncs at shutdown
    #[arg(long, env = "SYNCPOOL_SHUTDOWN_GRACE", hide_env_values = true, default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub shutdown_grace: Duration,
    /// Queue heartbeat; a worker silent for 3 heartbeats has its jobs taken over
    #[arg(long, env = "SYNCPOOL_QUEUE_HEARTBEAT", hide_env_values = true, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub queue_heartbeat: Duration,
    /// Time allowed to connect to an instance
    #[arg(long, env = "SYNCPOOL_CONNECT_TIMEOUT", hide_env_values = true, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// Time allowed for one catalog query on an instance
    #[arg(long, env = "SYNCPOOL_STATEMENT_TIMEOUT", hide_env_values = true, default_value = "60s", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub statement_timeout: Duration,
    /// How often an idle worker polls for jobs (on PostgreSQL, NOTIFY wakes it sooner)
    #[arg(long, env = "SYNCPOOL_POLL_INTERVAL", hide_env_values = true, default_value = "100ms", value_parser = parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub poll_interval: Duration,
    /// Most accounts one instance may return; more fails its record
    #[arg(long, env = "SYNCPOOL_MAX_ACCOUNTS", hide_env_values = true, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits", value_name = "N")]
    pub max_accounts: u64,
    /// Most bytes one account may take as read (name, attributes, privileges)
    #[arg(long, env = "SYNCPOOL_MAX_ACCOUNT_BYTES", hide_env_values = true, default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits", value_name = "BYTES")]
    pub max_account_bytes: u64,
    /// Most bytes one sync of an instance may read, all accounts together
    #[arg(long, env = "SYNCPOOL_MAX_SYNC_BYTES", hide_env_values = true, default_value_t = 536_870_912, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits", value_name = "BYTES")]
    pub max_sync_bytes: u64,
    /// The only hosts this worker connects to, comma-separated: names, *.domain, IP
    /// addresses, networks (10.0.0.0/8); others fail before any password is sent.
    /// Empty: any host
    #[arg(long, env = "SYNCPOOL_INSTANCE_HOSTS", hide_env_values = true, default_value = "", value_parser = syncpool_workers::HostAllowList::parse, help_heading = "Limits", value_name = "LIST")]
    pub instance_hosts: syncpool_workers::HostAllowList,
    /// Webhook deliveries.
    #[command(flatten)]
    pub webhooks: super::WebhookArgs,
}

impl TimingArgs {
    /// The pipeline settings these flags describe, checked against each other
    /// (a renewal shorter than the lease, a grace shorter than the timeout).
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
            max_accounts: usize::try_from(self.max_accounts).unwrap_or(usize::MAX),
            max_row_bytes: usize::try_from(self.max_account_bytes).unwrap_or(usize::MAX),
            max_sync_bytes: usize::try_from(self.max_sync_bytes).unwrap_or(usize::MAX),
            instance_hosts: self.instance_hosts.clone(),
            webhooks: crate::webhooks::DeliverySettings {
                allow: self.webhooks.webhook_allow.clone(),
                timeout: self.webhooks.webhook_timeout,
                backoff: self.webhooks.webhook_backoff,
                retry_for: self.webhooks.webhook_retry_for,
                poll: self.poll_interval.max(Duration::from_millis(100)),
            },
            ..Settings::default()
        })
    }
}

/// Reads `30s`, `500ms`, `2m`, `1h` or plain seconds; positive and at most 30 days.
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

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the database if missing and apply migrations (safe when several processes
    /// start at once)
    Migrate,
    /// Manage the instance registry
    #[command(subcommand)]
    Instances(InstancesCmd),
    /// Start a manual session over all active instances
    SyncAll(SyncOpts),
    /// Start a manual session over the named instances
    Sync {
        /// Names of registered instances (one: manual_single; several: manual_batch)
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// How it reports.
        #[command(flatten)]
        opts: SyncOpts,
    },
    /// Start a session over the instances whose records in a finished session failed or
    /// were cancelled
    Retry {
        /// The session to retry (its id, or a unique prefix of at least 8 characters)
        #[arg(value_name = "SESSION")]
        id: String,
        /// How it reports.
        #[command(flatten)]
        opts: SyncOpts,
    },
    /// Run a worker process until SIGINT/SIGTERM
    Worker {
        /// Instances this process syncs at once (1-1024)
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024), allow_negative_numbers = true, value_name = "N")]
        concurrency: u16,
        /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9187)
        #[arg(long, value_name = "ADDR")]
        metrics_bind: Option<String>,
        /// Pipeline timings.
        #[command(flatten)]
        timing: TimingArgs,
    },
    /// Serve the operator console (at /), the HTTP API, /metrics, /healthz and /readyz;
    /// optionally in-process workers and the scheduler
    #[command(
        after_help = "Environment: SYNCPOOL_API_TOKEN=TOKEN[,TOKEN...] requires \
                      `Authorization: Bearer TOKEN` on every route but /metrics, /healthz, \
                      /readyz and /api/v1/openapi.json (several tokens, for rotation); the \
                      console asks for one of them at sign-in; each is at least 16 characters. \
                      Without it, only a loopback --bind is served unless --insecure-no-auth."
    )]
    Serve(ServeOpts),
    /// List sessions, newest first
    Sessions {
        /// Only sessions in this status: pending, running, completed,
        /// completed_with_errors, failed, cancelled
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// How many to list (1-1000)
        #[arg(
            long,
            default_value_t = 20,
            allow_negative_numbers = true,
            value_name = "N"
        )]
        limit: i64,
        /// Print {"items": [...], "total": N} as JSON
        #[arg(long)]
        json: bool,
    },
    /// Account change history, newest first: who gained or lost what, and when
    Changes(ChangesArgs),
    /// Show one session: its summary and a page of its records
    Session {
        /// The session's id (a UUID, as `sync` and `sessions` print it), or its first 8 or
        /// more hex digits when no other session starts with them
        #[arg(value_name = "ID")]
        id: String,
        /// Only records in this status: pending, running, completed, failed, cancelled
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Records on the page (1-1000)
        #[arg(
            long,
            default_value_t = 50,
            allow_negative_numbers = true,
            value_name = "N"
        )]
        limit: i64,
        /// Only records after this one (the `--after` that `more:` prints)
        #[arg(long, allow_negative_numbers = true, value_name = "RECORD")]
        after: Option<i64>,
        /// Every record, not one page
        #[arg(long, conflicts_with_all = ["limit", "after"])]
        all: bool,
        /// Print the session and all its records as JSON (takes no paging flags)
        #[arg(long, conflicts_with_all = ["status", "limit", "after", "all"])]
        json: bool,
    },
    /// Cancel a session: pending records end at once, running ones at their next renewal
    Cancel {
        /// The session's id (a UUID), or its first 8 or more hex digits
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Who holds each instance's lease (holder, fencing token, age, expiry) and which jobs
    /// wait for it
    Locks {
        /// Print {"items": [...], "total": N} as JSON, as GET /api/v1/locks does
        #[arg(long)]
        json: bool,
    },
    /// The job queue in syncpool's terms: jobs waiting (due or delayed), instances
    /// running, records done in the last hour, the next job due
    Queue {
        /// Print it as JSON, as GET /api/v1/queue does (apalis' states)
        #[arg(long)]
        json: bool,
        /// Print apalis' own states (Pending, Queued, Running, Done, Failed, Killed)
        #[arg(long, conflicts_with = "json")]
        raw: bool,
    },
    /// Delete finished sessions older than N days, their records and jobs, and expired
    /// locks
    Cleanup {
        /// Age in days of the newest finished session to delete (0-36500)
        #[arg(
            long,
            default_value_t = 7,
            allow_negative_numbers = true,
            value_name = "N"
        )]
        days: i64,
        /// Age in days of the newest account change history to delete (0-36500); kept
        /// apart from sessions because audits look back further
        #[arg(
            long,
            default_value_t = 365,
            allow_negative_numbers = true,
            value_name = "N"
        )]
        history_days: i64,
        /// Age in days of the newest audit trail rows to delete (0-36500)
        #[arg(
            long,
            default_value_t = 365,
            allow_negative_numbers = true,
            value_name = "N"
        )]
        audit_days: i64,
        /// Print what was deleted as JSON
        #[arg(long)]
        json: bool,
    },
    /// API tokens with a role, for `serve`'s API and console
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Concurrency limits per group or host: how many syncs run at once under each
    #[command(subcommand)]
    Limits(LimitsCmd),
    /// The audit trail: every change made through the API, the console or the CLI,
    /// newest first
    Audit(AuditArgs),
    /// The fleet's policy: rules on the accounts every instance may have (docs/POLICY.md)
    #[command(subcommand)]
    Policy(super::PolicyCmd),
    /// Policy violations found by syncs (drift), newest first: open ones unless asked
    Drift(super::DriftArgs),
    /// Webhooks: events (violations, sensitive changes, finished sessions) posted to
    /// URLs, signed, retried for a day (docs/WEBHOOKS.md)
    #[command(subcommand)]
    Webhooks(super::WebhooksCmd),
    /// The synced accounts of one instance
    Accounts {
        /// The instance's name
        #[arg(value_name = "NAME")]
        name: String,
        /// Print the accounts as JSON
        #[arg(long)]
        json: bool,
        /// Also list accounts that have disappeared from the instance
        #[arg(long)]
        include_deleted: bool,
    },
    /// Register simulated instances, sync them all with in-process workers, print a
    /// summary
    Demo {
        /// Simulated instances to register and sync (1-100000)
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000), allow_negative_numbers = true, value_name = "N")]
        instances: u32,
        /// In-process worker slots, 16 concurrent syncs each (1-64)
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), allow_negative_numbers = true, value_name = "N")]
        workers: u16,
        /// Pipeline timings.
        #[command(flatten)]
        timing: TimingArgs,
    },
}

/// How `sync`, `sync-all` and `retry` report.
#[derive(Args, Debug, Clone)]
pub struct SyncOpts {
    /// Wait until the session finishes; the exit code tells how it ended
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after this long (30s, 10m, 1h) and exit 6; the session
    /// goes on
    #[arg(long, requires = "wait", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Print JSON: the session id and status, or with --wait the whole session
    #[arg(long)]
    pub json: bool,
}

/// The options of `serve`.
#[derive(Args, Debug)]
pub struct ServeOpts {
    /// Address to listen on; port 0 picks a free one (the bound address is logged)
    #[arg(
        long,
        env = "SYNCPOOL_BIND",
        hide_env_values = true,
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub bind: String,
    /// Concurrency of an in-process worker (0: none)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1024), allow_negative_numbers = true, value_name = "N")]
    pub workers: u16,
    /// Cron expression for scheduled sessions over all active instances (e.g. "0 */6 * * *")
    #[arg(
        long,
        env = "SYNCPOOL_SCHEDULE",
        hide_env_values = true,
        value_name = "CRON"
    )]
    pub schedule: Option<String>,
    /// Cron expression for the daily cleanup
    #[arg(
        long,
        env = "SYNCPOOL_CLEANUP_SCHEDULE",
        hide_env_values = true,
        default_value = "0 3 * * *",
        value_name = "CRON"
    )]
    pub cleanup_schedule: String,
    /// Days of finished sessions the scheduled cleanup keeps (0-36500)
    #[arg(
        long,
        env = "SYNCPOOL_RETENTION_DAYS",
        hide_env_values = true,
        default_value_t = 7,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub retention_days: i64,
    /// Days of account change history the scheduled cleanup keeps (0-36500)
    #[arg(
        long,
        env = "SYNCPOOL_HISTORY_DAYS",
        hide_env_values = true,
        default_value_t = 365,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub history_days: i64,
    /// Days of audit trail the daily cleanup keeps
    #[arg(
        long,
        env = "SYNCPOOL_AUDIT_DAYS",
        hide_env_values = true,
        default_value_t = 365,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub audit_days: i64,
    /// Serve a non-loopback address without SYNCPOOL_API_TOKEN (bearer tokens,
    /// comma-separated for rotation); refused otherwise
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Another host name this server answers to (repeatable; env: comma-separated).
    /// A request whose Host is none of these, the bound address, localhost or a loopback
    /// address is refused (421)
    #[arg(
        long = "allowed-host",
        env = "SYNCPOOL_ALLOWED_HOSTS",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub allowed_hosts: Vec<String>,
    /// The URL browsers use to reach the console through a reverse proxy (e.g.
    /// https://syncpool.example.com): its origin counts as this server's own, its host
    /// as an allowed host, and https makes the sign-in cookie Secure
    #[arg(
        long,
        env = "SYNCPOOL_PUBLIC_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub public_url: Option<String>,
    /// Timings of the in-process worker.
    #[command(flatten)]
    pub timing: TimingArgs,
}

/// The `instances` subcommands.
#[derive(Subcommand, Debug)]
pub enum InstancesCmd {
    /// Register an instance
    Add(Box<AddArgs>),
    /// Register a JSON array of instances, all or nothing
    #[command(
        after_help = "FILE holds a JSON array of instances, each as `instances add` \
                            takes it:\n  [{\"name\": \"db1\", \"kind\": \"postgres\", \"host\": \
                            \"db1.internal\", \"port\": 5432,\n    \"username\": \"syncpool\", \
                            \"password_env\": \"SYNCPOOL_SECRET_DB1\",\n    \"options\": \
                            {\"ssl_mode\": \"verify-full\"}},\n   {\"name\": \"sim1\", \"kind\": \
                            \"simulated\", \"options\": {\"latency_ms\": 50}}]"
    )]
    Import {
        /// Path of the JSON file (format below)
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// List instances
    List {
        /// Print the instances as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove an instance (its sessions' records keep its name)
    Remove {
        /// The instance's name
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// `instances add`: one instance, as its flags describe it.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Print the registered instance as JSON
    #[arg(long)]
    pub json: bool,
    /// Unique name (1-200 printable characters)
    #[arg(long)]
    pub name: String,
    /// Kind of instance: postgres, mysql or simulated
    #[arg(long)]
    pub kind: String,
    /// Host name or address (postgres, mysql)
    #[arg(long)]
    pub host: Option<String>,
    /// TCP port (default 5432 for postgres, 3306 for mysql)
    #[arg(long, allow_negative_numbers = true)]
    pub port: Option<i64>,
    /// Login user (default postgres / root)
    #[arg(long)]
    pub username: Option<String>,
    /// Database to connect to (postgres: default postgres)
    #[arg(long)]
    pub database: Option<String>,
    /// Environment variable of the worker that holds the password; must start with
    /// SYNCPOOL_SECRET_
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// File in the worker's secrets folder (SYNCPOOL_SECRETS_DIR, default
    /// /run/secrets) that holds the password
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<String>,
    /// KEY=VALUE, repeatable. postgres: role_like, exclude_system_roles, ssl_mode,
    /// ssl_root_cert; mysql: user_like, ssl_mode, ssl_root_cert; simulated:
    /// latency_ms, jitter_ms, fail_rate, accounts, panic_rate
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// A group for concurrency limits (`limits set group:NAME`)
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
}

/// The arguments of `changes`.
#[derive(Args, Debug)]
pub struct ChangesArgs {
    /// Only this instance (by the name it had when the change was recorded)
    #[arg(value_name = "NAME")]
    pub instance: Option<String>,
    /// Only changes since a time (RFC 3339, e.g. 2026-11-25T00:00:00Z) or for a duration
    /// back from now (30m, 24h, 7d)
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Only changes of this kind: baseline, added, removed, changed (without it,
    /// baselines, what an instance held when its history began, are left out)
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Every kind, baselines included
    #[arg(long, conflicts_with = "kind")]
    pub all: bool,
    /// Only privilege-sensitive changes (superuser, CREATEROLE, BYPASSRLS, REPLICATION,
    /// ALL PRIVILEGES ON *.*, SUPER, grant option, unlock)
    #[arg(long)]
    pub sensitive: bool,
    /// How many to list (1-1000)
    #[arg(
        long,
        default_value_t = 50,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub limit: i64,
    /// Only changes older than this id (the `next_after` of the previous page); with
    /// --follow, the changes after this one (resume where a follower stopped)
    #[arg(long, allow_negative_numbers = true, value_name = "ID")]
    pub after: Option<i64>,
    /// Print {"items": [...], "next_after": ID|null} as JSON, as the API does
    #[arg(long)]
    pub json: bool,
    /// Keep printing changes as they are written, one JSON object per line (NDJSON),
    /// oldest first, until interrupted; from now, or after --after
    #[arg(long, requires = "json", conflicts_with_all = ["since", "limit"])]
    pub follow: bool,
}

/// The `tokens` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Create a token and print it, this once (syncpool keeps only its hash)
    Create {
        /// Its name, which the audit trail records (A-Z, a-z, 0-9, '.', '_', '-')
        #[arg(value_name = "NAME")]
        name: String,
        /// viewer (reads), operator (also starts, cancels and retries sessions) or admin
        /// (also changes instances, limits and tokens, and runs cleanup)
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// Print {"name", "role", "token"} as JSON
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never the tokens themselves)
    List {
        /// Print the tokens as JSON
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it stops working at once, for the API and the console
    Revoke {
        /// The token's name
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// The arguments of `audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only rows since a time (RFC 3339) or for a duration back from now (30m, 24h, 7d)
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Only this actor: a token's name, SYNCPOOL_API_TOKEN, anonymous, or cli:USER
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
    /// How many to list (1-1000)
    #[arg(
        long,
        default_value_t = 50,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub limit: i64,
    /// Only rows older than this id (the `next_after` of the previous page)
    #[arg(long, allow_negative_numbers = true, value_name = "ID")]
    pub after: Option<i64>,
    /// Print {"items": [...], "next_after": ID|null} as JSON, as the API does
    #[arg(long)]
    pub json: bool,
}

/// The `limits` subcommands.
#[derive(Subcommand, Debug)]
pub enum LimitsCmd {
    /// Set a limit: at most N syncs at once of the instances of a group (group:NAME) or
    /// on a host (host:HOST); both apply to an instance that has both. Takes effect at
    /// the next grant; lowering it stops no running sync
    Set {
        /// group:NAME or host:HOST
        #[arg(value_name = "KEY")]
        key: String,
        /// Most syncs under the key at once (1-100000)
        #[arg(long, allow_negative_numbers = true, value_name = "N")]
        max_concurrent: i64,
    },
    /// List limits with their slots in use and their waiting jobs
    List {
        /// Print {"items": [...]} as JSON, as the API does
        #[arg(long)]
        json: bool,
    },
    /// Remove a limit
    Remove {
        /// group:NAME or host:HOST
        #[arg(value_name = "KEY")]
        key: String,
    },
}
