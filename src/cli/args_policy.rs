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
