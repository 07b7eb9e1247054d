//! `syncpool accounts NAME`: the synced accounts of one instance.

use crate::cli::{CliError, Out, print_json, printable};
use crate::model::ts;
use crate::store::Store;

/// `syncpool accounts NAME`: one line per account (`user@host  {attributes}`), or JSON.
pub(crate) async fn run(store: &dyn Store, name: &str, json: bool, include_deleted: bool) -> Out {
    let inst = store
        .instance_get_by_name(name)
        .await?
        .ok_or_else(|| CliError::Usage(format!("unknown instance '{name}'")))?;
    let accounts = store.accounts_list(inst.id, include_deleted).await?;
    if json {
        print_json(&accounts);
    } else if accounts.is_empty() {
        let name = printable(name);
        let any = !store.accounts_list(inst.id, true).await?.is_empty();
        if any {
            println!("'{name}' has no current accounts (--include-deleted lists the removed ones)");
        } else {
            println!("'{name}' has not been synced yet: run `syncpool sync {name}`");
        }
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
            // serde_json escapes C0 controls in the attributes but lets DEL, C1
            // controls and bidi overrides through.
            println!(
                "{}  {}{deleted}",
                printable(&who),
                printable(&a.attributes.to_string())
            );
        }
    }
    Ok(())
}
