//! What the read-only commands print: a session with all its records (paged from the
//! database, so a session of 100,000 records never sits in memory whole), the leases
//! and the queue.

use std::io::Write;

use uuid::Uuid;

use super::{CliError, plural, printable};
use crate::model::{Lease, LeaseList, QueueStats, Record, RecordPage, RecordStatus, Session, ts};
use crate::store::{RecordFilter, Store};

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
    let io = |e: std::io::Error| CliError::Runtime(e.into());
    if json {
        // The session's own pretty object, reopened to append the records.
        let head = serde_json::to_string_pretty(s).map_err(|e| CliError::Runtime(e.into()))?;
        let head = head.strip_suffix("\n}").unwrap_or(&head);
        write!(out, "{head},\n  \"records\": [").map_err(io)?;
        let mut first = true;
        each_record(store, s.session_id, |r| {
            let text = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
            let sep = if std::mem::take(&mut first) { "" } else { "," };
            write!(out, "{sep}\n    {}", text.replace('\n', "\n    "))
        })
        .await?;
        let close = if first { "]\n}" } else { "\n  ]\n}" };
        writeln!(out, "{close}").map_err(io)?;
        return out.flush().map_err(io);
    }
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
        printable(&s.sync_type),
        s.status,
        plural(s.total_instances, "instance"),
        s.successful_instances,
        s.failed_instances,
        s.cancelled_instances,
        s.duration_seconds
            .map(|d| format!("{d:.3}s"))
            .unwrap_or_else(|| "-".into()),
    )
    .map_err(io)?;
    if s.total_instances == 0 {
        return out.flush().map_err(io);
    }
    let row = |out: &mut dyn Write, r: &Record| {
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
    };
    let header = |out: &mut dyn Write| {
        writeln!(
            out,
            "  {:<30} {:<9} {:>8} {:>8}  error",
            "instance", "status", "attempts", "accounts"
        )
    };
    let none = |out: &mut dyn Write| match view.status {
        Some(st) => writeln!(out, "  no {st} records"),
        None => writeln!(out, "  no records after {}", view.after),
    };
    if view.all {
        let mut shown = 0;
        each_record_in(store, s.session_id, view.status, |r| {
            if shown == 0 {
                header(&mut out)?;
            }
            shown += 1;
            row(&mut out, r)
        })
        .await?;
        if shown == 0 {
            none(&mut out).map_err(io)?;
        }
        return out.flush().map_err(io);
    }
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
        none(&mut out).map_err(io)?;
    } else {
        header(&mut out).map_err(io)?;
        for r in &page.items {
            row(&mut out, r).map_err(io)?;
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
        .map_err(io)?;
    }
    out.flush().map_err(io)
}

/// `syncpool locks`.
pub(crate) async fn locks(store: &dyn Store, json: bool) -> Result<(), CliError> {
    let items = store.locks_list().await?;
    if json {
        super::print_json(&LeaseList {
            total: items.len(),
            items,
        });
        return Ok(());
    }
    if items.is_empty() {
        println!("no instance is leased");
        return Ok(());
    }
    println!(
        "{:<30} {:<36} {:>8} {:>9} {:>11}  waiting",
        "instance", "holder", "token", "age", "expires in"
    );
    for l in &items {
        println!(
            "{:<30} {:<36} {:>8} {:>9} {:>11}  {}",
            printable(&l.instance_name),
            printable(&l.holder),
            l.token,
            seconds(l.age_seconds),
            expiry(l),
            waiting(l)
        );
    }
    Ok(())
}

fn expiry(l: &Lease) -> String {
    if l.expired {
        format!("lapsed {}", seconds(-l.expires_in_seconds))
    } else {
        seconds(l.expires_in_seconds)
    }
}

fn waiting(l: &Lease) -> String {
    match l.waiting.first() {
        None => "-".into(),
        Some(w) => format!(
            "{} (longest {})",
            plural(l.waiting_total, "job"),
            seconds(w.waited_seconds)
        ),
    }
}

/// `12.3s`, `4m05s`, `2h03m`: short and readable at a glance.
pub(crate) fn seconds(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// `syncpool queue`: in syncpool's terms, what waits (due now or delayed to a later
/// time), what runs (instances under a live lease) and what finished in the last hour;
/// with `raw`, apalis' own states (`Pending`, `Queued`, `Running`, `Done`, ...), which
/// say more about apalis than about the syncs.
pub(crate) async fn queue(store: &dyn Store, json: bool, raw: bool) -> Result<(), CliError> {
    let q: QueueStats = store.queue_stats(None).await?;
    if json {
        super::print_json(&q);
        return Ok(());
    }
    if raw {
        queue_raw(&q);
        return Ok(());
    }
    let count = |state: &str| q.depth.get(state).copied().unwrap_or(0);
    let running = store.fleet_gauges().await?.locks_held;
    let done = store.records_finished_since(3600).await?;
    let claimed = count("Queued");
    let claimed = if claimed > 0 {
        format!(", {claimed} fetched by a worker, not started")
    } else {
        String::new()
    };
    println!(
        "waiting  {:>7}  ({} due now, {} delayed to a later time: retries and instances \
         leased by another session{claimed})",
        q.ready + q.delayed + count("Queued"),
        q.ready,
        q.delayed
    );
    println!("running  {running:>7}  (instances under a live lease: `syncpool locks`)");
    println!("done     {done:>7}  (records finished in the last hour)");
    match &q.oldest_pending {
        Some(o) => println!(
            "next:    job {} due {} ({}, {})",
            printable(&o.job_id),
            due(o),
            ts::format(&o.run_at),
            plural(o.attempts, "attempt")
        ),
        None => println!("next:    nothing waits"),
    }
    Ok(())
}

/// `syncpool queue --raw`: apalis' states as apalis counts them.
fn queue_raw(q: &QueueStats) {
    for (state, n) in &q.depth {
        println!("{:<8} {n:>9}", printable(state));
    }
    println!("pending: {} due, {} delayed", q.ready, q.delayed);
    match &q.oldest_pending {
        Some(o) => println!(
            "oldest pending: job {} due {} ({}, {})",
            printable(&o.job_id),
            ts::format(&o.run_at),
            due(o),
            plural(o.attempts, "attempt")
        ),
        None => println!("oldest pending: none"),
    }
}

/// `4.2s ago`, or `in 3.0s` for a job due later (apalis' wait is 0 for those).
fn due(o: &crate::model::OldestJob) -> String {
    let now = chrono::Utc::now();
    if o.run_at > now {
        format!(
            "in {}",
            seconds((o.run_at - now).num_milliseconds() as f64 / 1000.0)
        )
    } else {
        format!("{} ago", seconds(o.waited_seconds))
    }
}
