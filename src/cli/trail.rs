//! The command line's side of the audit trail: a command that changes something runs
//! inside an audit scope (`crate::audit`) as `cli:USER` from `local:HOST`, so its change
//! is recorded in the change's transaction, and a refusal or failure afterwards.
//!
//! The user is the operating system's, as the environment names it: whoever can run
//! the CLI against the database can write the database directly too, so this records
//! who did something, it does not stop anyone pretending.

use super::{CliError, Command, InstancesCmd, LimitsCmd, PolicyCmd, TokensCmd, WebhooksCmd};
use crate::model::{AuditOutcome, NewAuditEvent};
use crate::store::Store;

/// The trail's name for what `cmd` changes; None for a command that only reads, or only
/// sets up (`migrate`) or runs (`worker`, `serve`). No wildcard: a new command must be
/// placed here.
pub(crate) fn action(cmd: &Command) -> Option<&'static str> {
    match cmd {
        Command::Instances(InstancesCmd::Add(_)) => Some("instance.create"),
        Command::Instances(InstancesCmd::Import { .. }) => Some("instance.import"),
        Command::Instances(InstancesCmd::Remove { .. }) => Some("instance.delete"),
        Command::Instances(InstancesCmd::List { .. }) => None,
        Command::SyncAll(_) | Command::Sync { .. } => Some("session.create"),
        Command::Retry { .. } => Some("session.retry"),
        Command::Cancel { .. } => Some("session.cancel"),
        Command::Cleanup { .. } => Some("cleanup"),
        Command::Tokens(TokensCmd::Create { .. }) => Some("token.create"),
        Command::Tokens(TokensCmd::Revoke { .. }) => Some("token.revoke"),
        Command::Tokens(TokensCmd::List { .. }) => None,
        Command::Limits(LimitsCmd::Set { .. }) => Some("limit.set"),
        Command::Limits(LimitsCmd::Remove { .. }) => Some("limit.remove"),
        Command::Limits(LimitsCmd::List { .. }) => None,
        Command::Policy(PolicyCmd::Set { .. }) => Some("policy.set"),
        Command::Policy(PolicyCmd::Show { .. } | PolicyCmd::Check { .. }) => None,
        Command::Drift(_) => None,
        Command::Webhooks(WebhooksCmd::Add { .. }) => Some("webhook.create"),
        Command::Webhooks(WebhooksCmd::Remove { .. }) => Some("webhook.remove"),
        Command::Webhooks(WebhooksCmd::Redeliver { .. }) => Some("webhook.redeliver"),
        Command::Webhooks(WebhooksCmd::List { .. } | WebhooksCmd::Deliveries { .. }) => None,
        // Registers simulated instances (and syncs them): a change like `instances import`.
        Command::Demo { .. } => Some("demo"),
        Command::Migrate
        | Command::Worker { .. }
        | Command::Serve(_)
        | Command::Sessions { .. }
        | Command::Session { .. }
        | Command::Locks { .. }
        | Command::Queue { .. }
        | Command::Changes(_)
        | Command::Accounts { .. }
        | Command::Audit(_) => None,
    }
}

/// The row a command starts with: who, from where, and its arguments (the database
/// URL left out: it may hold a password).
pub(crate) fn event(action: &str) -> NewAuditEvent {
    let mut args = Vec::new();
    let mut skip = false;
    // Lossy: a path argument need not be UTF-8 (`std::env::args` would panic on one).
    for a in std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
    {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--database-url" {
            skip = true;
            continue;
        }
        if a.starts_with("--database-url=") {
            continue;
        }
        args.push(a);
    }
    NewAuditEvent {
        actor: format!("cli:{}", os_user()),
        client: crate::audit::local_client(),
        action: action.into(),
        targets: vec![],
        fields: crate::audit::scrub(serde_json::json!({ "args": args }), &[]),
        outcome: AuditOutcome::Refused,
        detail: None,
    }
}

fn os_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .or_else(|| {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(format!("uid {}", uid.split_whitespace().next()?))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Records how a command that wrote no row of its own ended: refused (exit 2), failed,
/// or done without a change (a cancel of a finished session).
pub(crate) async fn close(
    store: &dyn Store,
    scope: &crate::audit::Scope,
    result: &Result<(), CliError>,
) {
    if scope.written() {
        return;
    }
    let (outcome, detail) = match result {
        Ok(()) => (AuditOutcome::Ok, "nothing changed".to_string()),
        Err(e @ CliError::Usage(_)) => (
            AuditOutcome::Refused,
            crate::audit::scrub_text(&e.to_string(), &[]),
        ),
        // A session that finished badly was started, and its start recorded.
        Err(e @ (CliError::Unsuccessful { .. } | CliError::TimedOut { .. })) => {
            (AuditOutcome::Ok, e.to_string())
        }
        // The chain may name the database's address with its password: scrubbed.
        Err(e) => (
            AuditOutcome::Failed,
            crate::audit::scrub_text(&format!("{e:#}"), &[]),
        ),
    };
    if let Err(e) = store
        .audit_insert(&scope.closing(outcome, Some(detail)))
        .await
    {
        tracing::warn!(error = %e, "could not record this command in the audit trail");
    }
}
