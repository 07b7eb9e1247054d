//! How a session prints: its summary and its records (paged from the database, so a
//! session of 100,000 records never sits in memory whole), as a table or as JSON. Used
//! by `session`, `sync --wait` and the demo.

use std::io::Write;

use uuid::Uuid;

use super::{CliError, printable};
use crate::model::{Record, RecordPage, RecordStatus, Session};
use crate::store::{RecordFilter, Store};
use crate::text::plural;

/// Records read per query while printing a session.
const PAGE: i64 = 1000;

/// Calls `each` with every record of the session, in id order, a page at a time.
pub(crate) async fn each_record(
    store: &dyn Store,
    id: Uuid,
    each: impl FnMut(&Record) -> std::io::Result<()>,
) -> Result<(), CliError> {
    each_record_in(store, id, None, each).await
}

/// [`each_record`], of one status only when `status` is given.
async fn each_record_in(
    store: &dyn Store,
    id: Uuid,
    status: Option<RecordStatus>,
    mut each: impl FnMut(&Record) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let mut after = 0;
    loop {
        let filter = RecordFilter {
            status,
            limit: PAGE,
            after,
        };
        let (_, page) = store
            .session_records(id, &filter)
            .await?
            .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
        for r in &page {
            each(r).map_err(|e| CliError::Runtime(e.into()))?;
        }
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => after = last.id,
            _ => return Ok(()),
        }
    }
}

/// Which of a session's records the text output shows: one page (as the API's
/// `/records` serves it) or, with `all`, every one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordView {
    /// Only records in this status.
    pub status: Option<RecordStatus>,
    /// Records on the page.
    pub limit: i64,
    /// Only records with a larger id (0: from the first).
    pub after: i64,
    /// Every record (of `status`), not one page.
    pub all: bool,
}

impl RecordView {
    /// The first page of 50, as the API's default.
    pub const FIRST_PAGE: RecordView = RecordView {
        status: None,
        limit: 50,
        after: 0,
        all: false,
    };
}

/// Prints the session: as text, its summary and one page of its records (`view`), or as
/// the JSON object scripts read (the session's fields and all its `records`), written as
/// the pages arrive.
pub(crate) async fn session(
    store: &dyn Store,
    s: &Session,
    json: bool,
    view: RecordView,
) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        session_json(store, s, &mut out).await?;
    } else {
        summary(&mut out, s).map_err(io_error)?;
        if s.total_instances != 0 {
            if view.all {
                every_record(store, s, view, &mut out).await?;
            } else {
                one_page(store, s, view, &mut out).await?;
            }
        }
    }
    out.flush().map_err(io_error)
}

fn io_error(e: std::io::Error) -> CliError {
    CliError::Runtime(e.into())
}

/// `session --json`: the session's fields, then all its `records`, page after page.
async fn session_json(store: &dyn Store, s: &Session, out: &mut dyn Write) -> Result<(), CliError> {
    // The session's own pretty object, reopened to append the records.
    let head = serde_json::to_string_pretty(s).map_err(|e| CliError::Runtime(e.into()))?;
    let head = head.strip_suffix("\n}").unwrap_or(&head);
    write!(out, "{head},\n  \"records\": [").map_err(io_error)?;
    let mut first = true;
    each_record(store, s.session_id, |r| {
        let text = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
        let sep = if std::mem::take(&mut first) { "" } else { "," };
        write!(out, "{sep}\n    {}", text.replace('\n', "\n    "))
    })
    .await?;
    let close = if first { "]\n}" } else { "\n  ]\n}" };
    writeln!(out, "{close}").map_err(io_error)
}

/// The session's summary lines: kind, status, counts, duration, and the success rate or,
/// while it runs, how far it is.
fn summary(out: &mut dyn Write, s: &Session) -> std::io::Result<()> {
    let done = s.successful_instances + s.failed_instances + s.cancelled_instances;
    // A running session has no success rate yet: show how far it is instead.
    let outcome = if s.is_finished() {
        format!(
            "success rate {}",
            s.success_rate
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|| "-".into())
        )
    } else {
        format!(
            "progress {done}/{} ({:.0}%)",
            s.total_instances,
            100.0 * done as f64 / s.total_instances.max(1) as f64
        )
    };
    writeln!(
        out,
        "session {}  {}  {}\n  {}: {} ok, {} failed, {} cancelled; duration {}; {outcome}",
        s.session_id,
        printable(s.sync_type.as_str()),
        s.status,
        plural(s.total_instances, "instance"),
        s.successful_instances,
        s.failed_instances,
        s.cancelled_instances,
        s.duration_seconds
            .map(|d| format!("{d:.3}s"))
            .unwrap_or_else(|| "-".into()),
    )
}

/// One record's row in the table under the summary.
fn row(out: &mut dyn Write, r: &Record) -> std::io::Result<()> {
    writeln!(
        out,
        "  {:<30} {:<9} {:>8} {:>8}  {}",
        printable(&r.instance_name),
        r.status,
        r.attempts,
        r.accounts_total
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
        printable(r.error.as_deref().unwrap_or(""))
    )
}

/// The table's header.
fn header(out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "  {:<30} {:<9} {:>8} {:>8}  error",
        "instance", "status", "attempts", "accounts"
    )
}

/// What stands in for the table when `view` finds no record.
fn none(out: &mut dyn Write, view: RecordView) -> std::io::Result<()> {
    match view.status {
        Some(st) => writeln!(out, "  no {st} records"),
        None => writeln!(out, "  no records after {}", view.after),
    }
}

/// `session --all`: every record (of `view.status`), read a page at a time.
async fn every_record(
    store: &dyn Store,
    s: &Session,
    view: RecordView,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut shown = 0;
    each_record_in(store, s.session_id, view.status, |r| {
        if shown == 0 {
            header(&mut *out)?;
        }
        shown += 1;
        row(&mut *out, r)
    })
    .await?;
    if shown == 0 {
        none(out, view).map_err(io_error)?;
    }
    Ok(())
}

/// One page of records, as the API's `/records` serves it, and how to ask for the next.
async fn one_page(
    store: &dyn Store,
    s: &Session,
    view: RecordView,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let filter = RecordFilter {
        status: view.status,
        limit: view.limit,
        after: view.after,
    };
    let (_, items) = store
        .session_records(s.session_id, &filter)
        .await?
        .ok_or_else(|| CliError::Usage(format!("unknown session '{}'", s.session_id)))?;
    let page = RecordPage::new(items, view.limit);
    if page.items.is_empty() {
        none(out, view).map_err(io_error)?;
    } else {
        header(out).map_err(io_error)?;
        for r in &page.items {
            row(out, r).map_err(io_error)?;
        }
    }
    if let Some(next) = page.next_after {
        let status = view
            .status
            .map(|st| format!(" --status {st}"))
            .unwrap_or_default();
        writeln!(
            out,
            "more: `syncpool session {}{status} --after {next}` (or --all)",
            s.session_id
        )
        .map_err(io_error)?;
    }
    Ok(())
}
