//! `syncpool changes`: the account change history, as a table or as the API's JSON.

use super::{CliError, Out, print_json, printable};
use crate::model::{ChangePage, ts};
use crate::store::{ChangeFilter, Store};
use crate::validate;

/// The filter the arguments describe; every check needs no database.
pub(super) fn filter(a: &super::ChangesArgs) -> Result<ChangeFilter, CliError> {
    Ok(validate::change_filter(validate::ChangeQuery {
        instance: a.instance.as_deref(),
        since: a.since.as_deref(),
        kind: a.kind.as_deref(),
        sensitive: a.sensitive,
        limit: a.limit,
        after: a.after,
    })?)
}

pub(super) async fn run(store: &dyn Store, a: &super::ChangesArgs) -> Out {
    let f = filter(a)?;
    let page = ChangePage::new(store.changes_list(&f).await?, f.limit);
    if a.json {
        print_json(&page);
        return Ok(());
    }
    if page.items.is_empty() {
        println!("no account changes match");
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
        let flags = if c.flags.is_empty() {
            String::new()
        } else {
            format!("  [SENSITIVE: {}]", printable(&c.flags.join(", ")))
        };
        println!(
            "{:<27}  {:<16}  {:<24}  {:<8}  {}{flags}",
            ts::format(&c.changed_at),
            printable(&c.instance_name),
            printable(&who),
            printable(&c.kind),
            // Grant texts hold database and role names from the source.
            printable(&crate::history::summary(&c.kind, &c.detail))
        );
    }
    if let Some(next) = page.next_after {
        println!("more: --after {next}");
    }
    Ok(())
}
