//! `syncpool tokens` and `syncpool audit`: who may use the API and the console, and
//! what everyone changed.

use crate::cli::{AuditArgs, CliError, Out, TokensCmd, print_json, printable};
use crate::model::{AuditFilter, AuditPage, TokenCreated, ts};
use crate::store::Store;
use crate::validate;

/// Checks that need no database.
pub(crate) fn check(cmd: &TokensCmd) -> Out {
    match cmd {
        TokensCmd::Create { name, role, .. } => {
            validate::token_name(name)?;
            validate::role(role)?;
        }
        TokensCmd::Revoke { name } => {
            validate::token_name(name)?;
        }
        TokensCmd::List { .. } => {}
    }
    Ok(())
}

pub(crate) async fn tokens(store: &dyn Store, cmd: TokensCmd) -> Out {
    match cmd {
        TokensCmd::Create { name, role, json } => {
            let (name, role) = (validate::token_name(&name)?, validate::role(&role)?);
            let token = crate::tokens::generate();
            let info = store
                .token_insert(&name, role, &crate::tokens::hash(&token))
                .await?;
            if json {
                print_json(&TokenCreated {
                    name: info.name,
                    role: info.role,
                    token,
                });
            } else {
                // The token on stdout alone, the words on stderr: `$(syncpool tokens
                // create ...)` captures just the token.
                eprintln!(
                    "created token '{}' ({}); it is shown this once, syncpool keeps only its hash:",
                    info.name, info.role
                );
                println!("{token}");
            }
        }
        TokensCmd::List { json } => {
            let items = store.tokens_list().await?;
            if json {
                print_json(&serde_json::json!({ "items": items }));
            } else if items.is_empty() {
                println!("no tokens (serve accepts SYNCPOOL_API_TOKEN, or is open on loopback)");
            } else {
                println!("{:<24}  {:<8}  {:<27}  REVOKED", "NAME", "ROLE", "CREATED");
                for t in items {
                    println!(
                        "{:<24}  {:<8}  {:<27}  {}",
                        t.name,
                        t.role,
                        ts::format(&t.created_at),
                        t.revoked_at.as_ref().map(ts::format).unwrap_or_default()
                    );
                }
            }
        }
        TokensCmd::Revoke { name } => {
            let name = validate::token_name(&name)?;
            if !store.token_revoke(&name).await? {
                return Err(CliError::Usage(format!("no working token named '{name}'")));
            }
            println!("revoked token '{name}'");
        }
    }
    Ok(())
}

/// The filter the arguments describe; every check needs no database.
pub(crate) fn audit_filter(a: &AuditArgs) -> Result<AuditFilter, CliError> {
    Ok(validate::audit_filter(
        a.since.as_deref(),
        a.actor.as_deref(),
        a.limit,
        a.after,
    )?)
}

pub(crate) async fn audit(store: &dyn Store, a: &AuditArgs) -> Out {
    let f = audit_filter(a)?;
    let page = AuditPage::new(store.audit_list(&f).await?, f.limit);
    if a.json {
        print_json(&page);
        return Ok(());
    }
    if page.items.is_empty() {
        println!("nothing in the audit trail matches");
        return Ok(());
    }
    println!(
        "{:<27}  {:<20}  {:<16}  {:<16}  {:<8}  ON",
        "WHEN", "WHO", "FROM", "ACTION", "OUTCOME"
    );
    for e in &page.items {
        let on: Vec<String> = e
            .targets
            .iter()
            .take(5)
            .map(|t| format!("{} {}", t.kind, t.name.as_deref().unwrap_or(&t.id)))
            .collect();
        let more = e.targets.len().saturating_sub(5);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let detail = e
            .detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        println!(
            "{:<27}  {:<20}  {:<16}  {:<16}  {:<8}  {}{more}{}",
            ts::format(&e.at),
            printable(&e.actor),
            printable(&e.client),
            e.action,
            e.outcome,
            printable(&on.join(", ")),
            printable(&detail)
        );
    }
    if let Some(next) = page.next_after {
        println!("more: --after {next}");
    }
    Ok(())
}
