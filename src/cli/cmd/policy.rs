//! `policy set|show|check` and `drift`.

use std::io::Read;
use std::path::Path;

use serde::Serialize;

use crate::cli::{CliError, DriftArgs, PolicyCmd, print_json};
use crate::model::{DriftFilter, Finding, Policy, Violation, ViolationState};
use crate::store::Store;
use crate::{policy, validate};

/// Reads and checks a policy file. Bounded: a path naming a device or a huge file is
/// refused after [`policy::MAX_BYTES`], not read to the end.
pub(crate) fn read(file: &Path) -> Result<(Policy, String), CliError> {
    let cannot =
        |e: std::io::Error| CliError::Usage(format!("cannot read {}: {e}", file.display()));
    let f = std::fs::File::open(file).map_err(cannot)?;
    let mut bytes = vec![];
    f.take(policy::MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| CliError::Usage(format!("{} is not UTF-8 text", file.display())))?;
    let parsed =
        policy::parse(&text).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    Ok((parsed, text))
}

#[derive(Serialize)]
struct Items<T> {
    items: Vec<T>,
}

#[derive(Serialize)]
struct Page {
    items: Vec<Violation>,
    next_after: Option<i64>,
}

pub(crate) async fn run(store: &dyn Store, cmd: PolicyCmd) -> Result<(), CliError> {
    match cmd {
        PolicyCmd::Set { file } => {
            let (parsed, text) = read(&file)?;
            let o = store.policy_set(&parsed, &text).await?;
            println!(
                "policy version {} set ({}): {} violation{} opened, {} resolved, {} open",
                o.version,
                crate::text::plural(parsed.rules.len() as i64, "rule"),
                o.opened,
                if o.opened == 1 { "" } else { "s" },
                o.resolved,
                o.open
            );
        }
        PolicyCmd::Show { json } => match store.policy_get().await? {
            None if json => println!("null"),
            None => println!("no policy: `syncpool policy set FILE` (docs/POLICY.md)"),
            Some(p) if json => print_json(&p),
            Some(p) => {
                println!(
                    "# policy version {}, set by {} at {}",
                    p.version,
                    p.created_by,
                    p.created_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
                print!("{}", p.source);
                if !p.source.ends_with('\n') {
                    println!();
                }
            }
        },
        PolicyCmd::Check { file, json } => {
            let (parsed, _) = read(&file)?;
            let items = store.policy_check(&parsed).await?;
            if json {
                print_json(&Items { items });
            } else {
                print_findings(&items);
            }
        }
    }
    Ok(())
}

fn print_findings(items: &[Finding]) {
    if items.is_empty() {
        println!("nothing flagged");
        return;
    }
    println!("{:<24} {:<24} {:<32} REASON", "INSTANCE", "RULE", "ACCOUNT");
    for f in items {
        println!(
            "{:<24} {:<24} {:<32} {}",
            f.instance, f.rule, f.account, f.reason
        );
    }
    println!("{}", crate::text::plural(items.len() as i64, "violation"));
}

/// The listing's filter from the flags.
pub(crate) fn filter(a: &DriftArgs) -> Result<DriftFilter, CliError> {
    let state = match (a.resolved, a.all) {
        (true, _) => ViolationState::Resolved,
        (_, true) => ViolationState::All,
        _ => ViolationState::Open,
    };
    Ok(validate::drift_filter(
        a.name.as_deref(),
        a.rule.as_deref(),
        Some(state.as_str()),
        a.limit,
        a.after,
    )?)
}

pub(crate) async fn drift(store: &dyn Store, a: &DriftArgs) -> Result<(), CliError> {
    let f = filter(a)?;
    let items = store.drift_list(&f).await?;
    let next_after = (items.len() as i64 == f.limit)
        .then(|| items.last().map(|v| v.id))
        .flatten();
    if a.json {
        print_json(&Page { items, next_after });
        return Ok(());
    }
    if items.is_empty() {
        let which = match (a.resolved, a.all) {
            (true, _) => "no resolved violations",
            (_, true) => "no violations",
            _ => "no open violations",
        };
        println!("{which}");
        return Ok(());
    }
    println!(
        "{:<6} {:<20} {:<20} {:<28} {:<20} {:<20} REASON",
        "ID", "INSTANCE", "RULE", "ACCOUNT", "OPENED", "RESOLVED"
    );
    for v in &items {
        let resolved = v
            .resolved_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<6} {:<20} {:<20} {:<28} {:<20} {:<20} {}",
            v.id,
            v.instance,
            v.rule,
            v.account,
            v.opened_at.format("%Y-%m-%d %H:%M:%S"),
            resolved,
            v.reason
        );
    }
    if let Some(id) = next_after {
        println!("more: syncpool drift --after {id}");
    }
    Ok(())
}
