//! What the read-only commands print: a session with all its records (paged from the
//! database, so a session of 100,000 records never sits in memory whole), the leases
//! and the queue.

use std::io::Write;

use uuid::Uuid;

use super::{CliError, plural, printable};
use crate::model::{Lease, LeaseList, QueueStats, Record, Session, ts};
use crate::store::{RecordFilter, Store};

/// Records read per query while printing a session.
const PAGE: i64 = 1000;

/// Calls `each` with every record of the session, in id order, a page at a time.
pub(crate) async fn each_record(
    store: &dyn Store,
    id: Uuid,
    mut each: impl FnMut(&Record) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let mut after = 0;
    loop {
        let filter = RecordFilter {
            status: None,
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

/// Prints the session and all its records: as text, or as the JSON object scripts read
/// (the session's fields and `records`), written as the pages arrive.
pub(crate) async fn session(store: &dyn Store, s: &Session, json: bool) -> Result<(), CliError> {
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
    writeln!(
        out,
        "  {:<30} {:<9} {:>8} {:>8}  error",
        "instance", "status", "attempts", "accounts"
    )
    .map_err(io)?;
    each_record(store, s.session_id, |r| {
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
    })
    .await?;
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

/// `syncpool queue`.
pub(crate) async fn queue(store: &dyn Store, json: bool) -> Result<(), CliError> {
    let q: QueueStats = store.queue_stats(None).await?;
    if json {
        super::print_json(&q);
        return Ok(());
    }
    for (state, n) in &q.depth {
        println!("{:<8} {n:>9}", printable(state));
    }
    println!("pending: {} due, {} delayed", q.ready, q.delayed);
    match &q.oldest_pending {
        Some(o) => println!(
            "oldest pending: job {} due {} ({} ago, {})",
            printable(&o.job_id),
            ts::format(&o.run_at),
            seconds(o.waited_seconds),
            plural(o.attempts, "attempt")
        ),
        None => println!("oldest pending: none"),
    }
    Ok(())
}
