//! `webhooks add|list|remove|deliveries|redeliver`.

use crate::cli::{CliError, WebhooksCmd, print_json};
use crate::model::{DeliveryPage, NewWebhook, WebhookList};
use crate::store::Store;
use crate::validate;

/// The webhook an `add` describes, checked (no database needed).
fn new_webhook(
    name: &str,
    url: &str,
    secret_env: &str,
    events: &[String],
    allow: &syncpool_workers::HostAllowList,
) -> Result<NewWebhook, CliError> {
    let events = events
        .iter()
        .map(|e| e.trim().parse().map_err(CliError::Usage))
        .collect::<Result<Vec<_>, _>>()?;
    let new = NewWebhook {
        name: name.into(),
        url: url.into(),
        secret_env: secret_env.into(),
        events,
    };
    Ok(validate::webhook(new, allow)?)
}

/// Checks that need no database.
pub(crate) fn check(cmd: &WebhooksCmd) -> Result<(), CliError> {
    match cmd {
        WebhooksCmd::Add {
            name,
            url,
            secret_env,
            events,
            webhook_allow,
        } => {
            new_webhook(name, url, secret_env, events, webhook_allow)?;
        }
        WebhooksCmd::Deliveries {
            name,
            state,
            limit,
            after,
            ..
        } => {
            validate::delivery_filter(name.as_deref(), state.as_deref(), *limit, *after)?;
        }
        WebhooksCmd::Redeliver { id } => {
            validate::after(*id).map_err(|_| CliError::Usage(format!("no delivery {id}")))?;
        }
        _ => {}
    }
    Ok(())
}

pub(crate) async fn run(store: &dyn Store, cmd: WebhooksCmd) -> Result<(), CliError> {
    match cmd {
        WebhooksCmd::Add {
            name,
            url,
            secret_env,
            events,
            webhook_allow,
        } => {
            let new = new_webhook(&name, &url, &secret_env, &events, &webhook_allow)?;
            let w = store.webhook_add(&new).await?;
            let events: Vec<&str> = w.events.iter().map(|e| e.as_str()).collect();
            println!(
                "webhook {} added: {} -> {}",
                w.name,
                events.join(","),
                w.url
            );
        }
        WebhooksCmd::List { json } => {
            let items = store.webhook_list().await?;
            if json {
                print_json(&WebhookList { items });
            } else if items.is_empty() {
                println!(
                    "no webhooks: `syncpool webhooks add NAME --url URL --secret-env VAR --events TYPES`"
                );
            } else {
                println!("{:<20} {:<48} {:<28} EVENTS", "NAME", "URL", "SECRET_ENV");
                for w in &items {
                    let events: Vec<&str> = w.events.iter().map(|e| e.as_str()).collect();
                    println!(
                        "{:<20} {:<48} {:<28} {}",
                        w.name,
                        w.url,
                        w.secret_env,
                        events.join(",")
                    );
                }
            }
        }
        WebhooksCmd::Remove { name } => {
            let name = validate::token_name(&name)?;
            if !store.webhook_remove(&name).await? {
                return Err(CliError::Usage(format!("no webhook named '{name}'")));
            }
            println!("removed webhook {name}");
        }
        WebhooksCmd::Deliveries {
            name,
            state,
            limit,
            after,
            json,
        } => {
            let f = validate::delivery_filter(name.as_deref(), state.as_deref(), limit, after)?;
            let page = DeliveryPage::new(store.deliveries_list(&f).await?, f.limit);
            if json {
                print_json(&page);
                return Ok(());
            }
            if page.items.is_empty() {
                println!("no deliveries");
                return Ok(());
            }
            println!(
                "{:<6} {:<16} {:<32} {:<18} {:<10} {:>8}  LAST",
                "ID", "WEBHOOK", "EVENT", "TYPE", "STATE", "ATTEMPTS"
            );
            for d in &page.items {
                let last = match (d.last_status, &d.last_error) {
                    (_, Some(e)) => e.clone(),
                    (Some(s), None) => format!("HTTP {s}"),
                    (None, None) => "-".into(),
                };
                println!(
                    "{:<6} {:<16} {:<32} {:<18} {:<10} {:>8}  {}",
                    d.id, d.webhook, d.event_id, d.event_type, d.state, d.attempts, last
                );
            }
            if let Some(id) = page.next_after {
                println!("more: syncpool webhooks deliveries --after {id}");
            }
        }
        WebhooksCmd::Redeliver { id } => {
            if !store.delivery_redeliver(id).await? {
                return Err(CliError::Usage(format!(
                    "no delivery {id} to send again (or its webhook was removed)"
                )));
            }
            println!("delivery {id} is pending again");
        }
    }
    Ok(())
}
