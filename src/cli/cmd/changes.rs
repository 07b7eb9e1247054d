//! `syncpool changes`: the account change history, as a table or as the API's JSON.

use crate::cli::{ChangesArgs, CliError, Out, print_json, printable};
use crate::model::{ChangePage, ts};
use crate::store::{ChangeFilter, Store};
use crate::validate;

/// The filter the arguments describe; every check needs no database.
pub(crate) fn filter(a: &ChangesArgs) -> Result<ChangeFilter, CliError> {
    if a.follow && a.after.is_some_and(|n| n < 0) {
        return Err(CliError::Usage("--after must be 0 or more".into()));
    }
    Ok(validate::change_filter(validate::ChangeQuery {
        instance: a.instance.as_deref(),
        since: a.since.as_deref(),
        kind: a.kind.as_deref(),
        sensitive: a.sensitive,
        limit: a.limit,
        // Following, --after is where to resume (0: from the oldest row kept).
        after: if a.follow { None } else { a.after },
        all: a.all,
    })?)
}

pub(crate) async fn run(store: &dyn Store, a: &ChangesArgs) -> Out {
    let f = filter(a)?;
    if let Some(name) = &f.instance {
        known_name(store, name).await?;
    }
    if a.follow {
        return follow(store, &f, a.after).await;
    }
    let page = ChangePage::new(store.changes_list(&f).await?, f.limit);
    if a.json {
        print_json(&page);
        return Ok(());
    }
    if page.items.is_empty() {
        let baselines = if f.without_baselines {
            " (baselines are left out: --all shows them)"
        } else {
            ""
        };
        println!("no account changes match{baselines}");
        return Ok(());
    }
    println!(
        "{:<27}  {:<16}  {:<24}  {:<8}  WHAT",
        "WHEN", "INSTANCE", "ACCOUNT", "KIND"
    );
    for c in &page.items {
        let who = if c.host.is_empty() {
            c.username.clone()
        } else {
            format!("{}@{}", c.username, c.host)
        };
        // A baseline recorded before baselines stopped being flagged still says nothing
        // was gained.
        let flags = if c.flags.is_empty() || c.kind == crate::model::ChangeKind::Baseline {
            String::new()
        } else {
            format!("  [SENSITIVE: {}]", printable(&c.flags.join(", ")))
        };
        println!(
            "{:<27}  {:<16}  {:<24}  {:<8}  {}{flags}",
            ts::format(&c.changed_at),
            printable(&c.instance_name),
            printable(&who),
            c.kind,
            // Grant texts hold database and role names from the source.
            printable(&crate::history::summary(c.kind, &c.detail))
        );
    }
    if let Some(next) = page.next_after {
        println!("more: --after {next}");
    }
    Ok(())
}

/// An instance name that `changes` may filter on: a registered instance, or one whose
/// history outlived it (history keeps the name it had then). Anything else is a typo,
/// exit 2, as `accounts` and `sync` say, not "no account changes match".
async fn known_name(store: &dyn Store, name: &str) -> Out {
    if store.instance_get_by_name(name).await?.is_some() {
        return Ok(());
    }
    let any = ChangeFilter {
        instance: Some(name.to_string()),
        limit: 1,
        ..Default::default()
    };
    if store.changes_list(&any).await?.is_empty() {
        return Err(CliError::Usage(format!("unknown instance '{name}'")));
    }
    Ok(())
}

/// `changes --follow --json`: history as NDJSON as it is written, in commit order, with
/// the listing's filters; every line carries its `id`, which `--after` resumes from.
async fn follow(store: &dyn Store, f: &ChangeFilter, from: Option<i64>) -> Out {
    use std::io::Write;
    let mut after = match from {
        Some(a) => a,
        None => store.stream_heads().await?.1,
    };
    loop {
        // A follower outlives a database restart: it says so and tries again.
        let rows = match store.changes_after(after, 500).await {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("warning: reading the history failed ({e}); retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
        };
        let caught_up = rows.len() < 500;
        let mut out = std::io::stdout().lock();
        for c in rows {
            after = c.id;
            let shown = f.instance.as_ref().is_none_or(|i| *i == c.instance_name)
                && f.kind.is_none_or(|k| k == c.kind)
                && (!f.sensitive_only || c.sensitive)
                && !(f.without_baselines && c.kind == crate::model::ChangeKind::Baseline);
            if shown {
                // A closed pipe (`| head`) ends the follower quietly; anything else is an error.
                match serde_json::to_writer(&mut out, &c) {
                    Ok(()) if writeln!(out).is_ok() => {}
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_io() => return Ok(()),
                    Err(e) => return Err(anyhow::anyhow!("printing a change: {e}").into()),
                }
            }
        }
        if out.flush().is_err() {
            return Ok(());
        }
        drop(out);
        if caught_up {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}
