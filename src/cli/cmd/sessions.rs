//! `syncpool sync`, `sync-all`, `retry`, `sessions`, `session` and `cancel`: a session is started,
//! waited for (`--wait`), listed, shown and cancelled here. A session is named on the
//! command line by its whole id or a short prefix of it, as git names a commit.

use uuid::Uuid;

use crate::cli::wait::wait_for;
use crate::cli::{CliError, Out, SyncOpts, print_json, printable, show};
use crate::model::{SessionCreated, SessionStatus, SyncType, ts};
use crate::store::{SessionFilter, Store};
use crate::text::plural;
use crate::validate;

/// A session as the command line names it: its whole id, or the first 8 or more hex
/// digits of it (hyphens optional), as git takes a short commit id.
pub(crate) enum SessionRef {
    Full(Uuid),
    /// The lowest and highest ids that start with the prefix, and the prefix as typed.
    Prefix(Uuid, Uuid, String),
}

/// The fewest hex digits a short session id may have.
const MIN_PREFIX: usize = 8;

pub(crate) fn parse_session_id(s: &str) -> Result<SessionRef, CliError> {
    let s = s.trim();
    if let Ok(id) = Uuid::parse_str(s) {
        return Ok(SessionRef::Full(id));
    }
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if (MIN_PREFIX..32).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let hex = hex.to_ascii_lowercase();
        let pad = |fill: char| {
            let full: String = hex
                .chars()
                .chain(std::iter::repeat(fill))
                .take(32)
                .collect();
            Uuid::parse_str(&full)
        };
        if let (Ok(lo), Ok(hi)) = (pad('0'), pad('f')) {
            return Ok(SessionRef::Prefix(lo, hi, s.to_string()));
        }
    }
    Err(CliError::Usage(format!(
        "'{s}' is not a session id (a UUID, or its first {MIN_PREFIX} or more hex digits)"
    )))
}

/// The session a whole or short id names; a prefix that starts no session, or several,
/// is bad input (the candidates are named).
async fn resolve_session(store: &dyn Store, s: &str) -> Result<Uuid, CliError> {
    let (lo, hi, typed) = match parse_session_id(s)? {
        SessionRef::Full(id) => return Ok(id),
        SessionRef::Prefix(lo, hi, typed) => (lo, hi, typed),
    };
    const SHOWN: usize = 5;
    let found = store.session_ids_between(lo, hi, SHOWN as i64 + 1).await?;
    match found.as_slice() {
        [] => Err(CliError::Usage(format!("unknown session '{typed}'"))),
        [one] => Ok(*one),
        many => {
            let names: Vec<String> = many.iter().take(SHOWN).map(Uuid::to_string).collect();
            let more = if many.len() > SHOWN { ", ..." } else { "" };
            Err(CliError::Usage(format!(
                "'{typed}' is the start of {} sessions ({}{more}): give more of the id",
                if many.len() > SHOWN {
                    format!("more than {SHOWN}")
                } else {
                    many.len().to_string()
                },
                names.join(", ")
            )))
        }
    }
}

/// The page of records `session` shows, checked as the API checks `/records`.
pub(crate) fn record_view(
    status: Option<&str>,
    limit: i64,
    after: Option<i64>,
    all: bool,
) -> Result<show::RecordView, CliError> {
    Ok(show::RecordView {
        status: status.map(validate::record_status).transpose()?,
        limit: validate::limit(limit)?,
        after: after.map(validate::after).transpose()?.unwrap_or(0),
        all,
    })
}

/// `syncpool sync-all`: a manual session over all active instances.
pub(crate) async fn sync_all(store: &dyn Store, opts: &SyncOpts) -> Out {
    start_session(store, SyncType::ManualBatch, None, opts).await
}

/// `syncpool sync NAME...`: a manual session over the named instances.
pub(crate) async fn sync(store: &dyn Store, names: &[String], opts: &SyncOpts) -> Out {
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        let inst = store
            .instance_get_by_name(name)
            .await?
            .ok_or_else(|| CliError::Usage(format!("unknown instance '{name}'")))?;
        ids.push(inst.id);
    }
    ids.sort_unstable();
    ids.dedup();
    start_session(store, SyncType::manual(ids.len()), Some(&ids), opts).await
}

async fn start_session(
    store: &dyn Store,
    kind: SyncType,
    ids: Option<&[i64]>,
    opts: &SyncOpts,
) -> Out {
    let created = store.session_create(kind, ids).await?;
    report(store, created, kind, opts).await
}

/// `syncpool retry ID`: a new session over what failed or was cancelled in that one.
pub(crate) async fn retry(store: &dyn Store, id: &str, opts: &SyncOpts) -> Out {
    let id = resolve_session(store, id).await?;
    let created = store
        .session_retry(id)
        .await?
        .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
    // The store chose the type by the same rule.
    let kind = SyncType::manual(usize::try_from(created.total_instances).unwrap_or(0));
    report(store, created, kind, opts).await
}

/// Says a session started, or with `--wait` waits for it: the exit code tells how it
/// ended.
async fn report(
    store: &dyn Store,
    created: SessionCreated,
    kind: SyncType,
    opts: &SyncOpts,
) -> Out {
    if !opts.wait {
        if opts.json {
            let mut out = serde_json::json!({
                "session_id": created.session_id,
                "sync_type": kind,
                "status": created.status,
                "total_instances": created.total_instances,
            });
            if let Some(old) = created.retry_of {
                out["retry_of"] = serde_json::json!(old);
            }
            print_json(&out);
        } else {
            println!(
                "session {} started over {}{}",
                created.session_id,
                plural(created.total_instances, "instance"),
                created
                    .retry_of
                    .map(|old| format!(" (retrying {old})"))
                    .unwrap_or_default()
            );
        }
        return Ok(());
    }
    let session = wait_for(
        store,
        created.session_id,
        created.total_instances as u64,
        !opts.json,
        opts.timeout,
    )
    .await?;
    show::session(store, &session, opts.json, show::RecordView::FIRST_PAGE).await?;
    match session.status {
        SessionStatus::Completed => Ok(()),
        status if !session.is_finished() => Err(CliError::TimedOut {
            id: session.session_id,
            status,
            waited: opts.timeout.unwrap_or_default(),
        }),
        status => Err(CliError::Unsuccessful {
            id: session.session_id,
            status,
        }),
    }
}

/// `syncpool sessions`: the newest sessions, as a table or as the API's list.
pub(crate) async fn list(store: &dyn Store, status: Option<&str>, limit: i64, json: bool) -> Out {
    let filter = SessionFilter {
        status: status.map(validate::session_status).transpose()?,
        limit: validate::limit(limit)?,
        offset: 0,
        sync_type: None,
    };
    let (items, total) = store.session_list(&filter).await?;
    if json {
        // The API's list shape, so one parser serves both.
        print_json(&serde_json::json!({ "items": items, "total": total }));
    } else if items.is_empty() {
        if total > 0 || filter.status.is_some() {
            println!("no sessions match");
        } else {
            println!("no sessions yet: start one with `syncpool sync-all`");
        }
    } else {
        println!(
            "{:<36}  {:<13}  {:<21}  {:>6}  {:>6}  {:>6}  created_at",
            "session_id", "sync_type", "status", "total", "ok", "failed"
        );
        for s in items {
            println!(
                "{:<36}  {:<13}  {:<21}  {:>6}  {:>6}  {:>6}  {}",
                s.session_id,
                printable(s.sync_type.as_str()),
                s.status,
                s.total_instances,
                s.successful_instances,
                s.failed_instances,
                ts::format(&s.created_at)
            );
        }
    }
    Ok(())
}

/// `syncpool session ID`: one session, its summary and a page of its records (`view`),
/// or all of it as JSON.
pub(crate) async fn session(
    store: &dyn Store,
    id: &str,
    view: show::RecordView,
    json: bool,
) -> Out {
    let id = resolve_session(store, id).await?;
    let session = store
        .session_summary(id)
        .await?
        .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
    show::session(store, &session, json, view).await
}

/// `syncpool cancel ID`.
pub(crate) async fn cancel(store: &dyn Store, id: &str) -> Out {
    let id = resolve_session(store, id).await?;
    let cancelled = store
        .session_cancel(id)
        .await?
        .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
    let s = cancelled.session;
    println!(
        "session {} is {}{}",
        s.session_id,
        s.status,
        if s.is_finished() { "" } else { " (cancelling)" }
    );
    Ok(())
}
