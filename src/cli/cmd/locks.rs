//! `syncpool locks`, `syncpool queue` and `syncpool limits`: who holds each instance's
//! lease and which jobs wait for it, what the job queue holds, and the concurrency limits
//! with their slots.

use crate::cli::{CliError, LimitsCmd, print_json, printable};
use crate::model::{Lease, LeaseList, Limit, LimitList, QueueStats, ts};
use crate::store::Store;
use crate::text::{plural, seconds};
use crate::validate;

/// `syncpool locks`.
pub(crate) async fn locks(store: &dyn Store, json: bool) -> Result<(), CliError> {
    let items = store.locks_list().await?;
    if json {
        print_json(&LeaseList {
            total: items.len(),
            items,
        });
        return Ok(());
    }
    print_limits(&store.limits_list().await?);
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

/// `syncpool queue`: in syncpool's terms, what waits (due now or delayed to a later
/// time), what runs (instances under a live lease) and what finished in the last hour;
/// with `raw`, apalis' own states (`Pending`, `Queued`, `Running`, `Done`, ...), which
/// say more about apalis than about the syncs.
pub(crate) async fn queue(store: &dyn Store, json: bool, raw: bool) -> Result<(), CliError> {
    let q: QueueStats = store.queue_stats(None).await?;
    if json {
        print_json(&q);
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
    print_limits(&store.limits_list().await?);
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

/// The limits' slots, one line each (nothing when none is set).
fn print_limits(limits: &[Limit]) {
    for l in limits {
        println!(
            "limit    {:<40} {:>5} of {:<5} slots in use, {} waiting",
            l.key,
            l.in_use,
            l.max_concurrent,
            plural(l.waiting, "job")
        );
    }
}

/// `syncpool limits set|list|remove`.
pub(crate) async fn limits(store: &dyn Store, cmd: LimitsCmd) -> Result<(), CliError> {
    match cmd {
        LimitsCmd::Set {
            key,
            max_concurrent,
        } => {
            let key = validate::limit_key(&key)?;
            let l = store
                .limit_set(&key, validate::max_concurrent(max_concurrent)?)
                .await?;
            println!(
                "limit {}: at most {} at once ({} in use now)",
                l.key, l.max_concurrent, l.in_use
            );
        }
        LimitsCmd::List { json } => {
            let items = store.limits_list().await?;
            if json {
                print_json(&LimitList { items });
            } else if items.is_empty() {
                println!("no limits: `syncpool limits set group:NAME --max-concurrent N`");
            } else {
                print_limits(&items);
            }
        }
        LimitsCmd::Remove { key } => {
            let key = validate::limit_key(&key)?;
            if !store.limit_remove(&key).await? {
                return Err(CliError::Usage(format!("no limit on '{key}'")));
            }
            println!("removed the limit on {key}");
        }
    }
    Ok(())
}

/// Checks that need no database.
pub(crate) fn check_limits(cmd: &LimitsCmd) -> Result<(), CliError> {
    match cmd {
        LimitsCmd::Set {
            key,
            max_concurrent,
        } => {
            validate::limit_key(key)?;
            validate::max_concurrent(*max_concurrent)?;
        }
        LimitsCmd::Remove { key } => {
            validate::limit_key(key)?;
        }
        LimitsCmd::List { .. } => {}
    }
    Ok(())
}
