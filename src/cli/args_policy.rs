//! The grammar of `policy` and `drift` (the fleet's declared state and what breaks it),
//! beside `args.rs` to keep each file short.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// The `policy` subcommands.
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate a policy file (YAML or JSON) whole and make it the fleet's policy: a new
    /// version, evaluated at once against every instance's current accounts and at
    /// every sync after. An error names the rule and the field; nothing is stored
    Set {
        /// The policy file (docs/POLICY.md), at most 256 KiB
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// The policy in force, as it was given, with its version
    Show {
        /// Print {"version", "created_by", "created_at", "policy", "source"} as JSON
        #[arg(long)]
        json: bool,
    },
    /// What a policy file would flag against today's inventory; stores nothing
    Check {
        /// The policy file
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print {"items": [...]} as JSON
        #[arg(long)]
        json: bool,
    },
}

impl PolicyCmd {
    /// The file a subcommand reads, if any.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            PolicyCmd::Set { file } | PolicyCmd::Check { file, .. } => Some(file),
            PolicyCmd::Show { .. } => None,
        }
    }
}

/// The arguments of `drift`.
#[derive(Args, Debug)]
pub struct DriftArgs {
    /// Only this instance's violations
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Only this rule's
    #[arg(long, value_name = "RULE")]
    pub rule: Option<String>,
    /// Resolved violations instead of open ones
    #[arg(long, conflicts_with = "all")]
    pub resolved: bool,
    /// Open and resolved alike
    #[arg(long)]
    pub all: bool,
    /// How many to list (1-1000)
    #[arg(
        long,
        default_value_t = 50,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub limit: i64,
    /// Only violations older than this id (the `next_after` of the previous page)
    #[arg(long, allow_negative_numbers = true, value_name = "ID")]
    pub after: Option<i64>,
    /// Print {"items": [...], "next_after": ID|null} as JSON, as the API does
    #[arg(long)]
    pub json: bool,
}

/// How a process delivers webhooks (worker, `serve --workers`, demo) and which hosts
/// webhooks may name (`serve` refuses others when they are added).
#[derive(Args, Debug, Clone)]
pub struct WebhookArgs {
    /// The only hosts webhooks may name, comma-separated: names, *.domain, IP
    /// addresses, networks. Empty (the default): no webhook is added or delivered here
    #[arg(long, env = "SYNCPOOL_WEBHOOK_ALLOW", hide_env_values = true, default_value = "", value_parser = syncpool_workers::HostAllowList::parse, help_heading = "Webhooks", value_name = "LIST")]
    pub webhook_allow: syncpool_workers::HostAllowList,
    /// Time allowed for one delivery attempt
    #[arg(long, default_value = "10s", value_parser = super::parse_duration, help_heading = "Webhooks", value_name = "DURATION")]
    pub webhook_timeout: std::time::Duration,
    /// Delay after a first failed attempt; doubles per attempt, at most an hour
    #[arg(long, default_value = "5s", value_parser = super::parse_duration, help_heading = "Webhooks", value_name = "DURATION")]
    pub webhook_backoff: std::time::Duration,
    /// How long a delivery is retried before it is dead (a day by default)
    #[arg(long, default_value = "24h", value_parser = super::parse_duration, help_heading = "Webhooks", value_name = "DURATION")]
    pub webhook_retry_for: std::time::Duration,
}

/// The `webhooks` subcommands.
#[derive(Subcommand, Debug)]
pub enum WebhooksCmd {
    /// Send events to a URL, signed as the Standard Webhooks specification says. Its host
    /// must be in --webhook-allow here and in the delivering workers'
    Add {
        /// Unique; 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'
        #[arg(value_name = "NAME")]
        name: String,
        /// Where to post events (http:// or https://)
        #[arg(long, value_name = "URL")]
        url: String,
        /// The SYNCPOOL_SECRET_* variable of the workers' environment that holds the
        /// signing secret (whsec_ and base64); the secret is never stored
        #[arg(long, value_name = "VAR")]
        secret_env: String,
        /// Comma-separated event types: violation_opened, violation_resolved,
        /// sensitive_change, session_finished
        #[arg(long, value_name = "TYPES", value_delimiter = ',')]
        events: Vec<String>,
        /// The hosts webhooks may name (as the workers' --webhook-allow)
        #[arg(long, env = "SYNCPOOL_WEBHOOK_ALLOW", hide_env_values = true, default_value = "", value_parser = syncpool_workers::HostAllowList::parse, value_name = "LIST")]
        webhook_allow: syncpool_workers::HostAllowList,
    },
    /// List webhooks
    List {
        /// Print {"items": [...]} as JSON, as the API does
        #[arg(long)]
        json: bool,
    },
    /// Remove a webhook; its pending deliveries are dead
    Remove {
        /// Its name
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Deliveries, newest first: each event's attempts and where they stand
    Deliveries {
        /// Only this webhook's
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// Only pending, delivered or dead ones
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// How many to list (1-1000)
        #[arg(
            long,
            default_value_t = 50,
            allow_negative_numbers = true,
            value_name = "N"
        )]
        limit: i64,
        /// Only deliveries older than this id (the `next_after` of the previous page)
        #[arg(long, allow_negative_numbers = true, value_name = "ID")]
        after: Option<i64>,
        /// Print {"items": [...], "next_after": ID|null} as JSON, as the API does
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again (a dead one, say): pending and due now, retried for
    /// another --webhook-retry-for
    Redeliver {
        /// The delivery's id (`webhooks deliveries`)
        #[arg(value_name = "ID", allow_negative_numbers = true)]
        id: i64,
    },
}
