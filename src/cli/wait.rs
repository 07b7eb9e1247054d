//! Waiting for a session to finish, as `sync --wait`, `sync-all --wait` and the demo do:
//! a progress bar on a terminal, and one line on stderr when no worker is there to run it.

use std::io::IsTerminal;
use std::time::Duration;

use uuid::Uuid;

use super::CliError;
use crate::model::Session;
use crate::store::Store;

/// How long a waiting command lets a session sit unclaimed before it says on stderr that
/// no worker runs.
pub(crate) const NO_WORKER_NOTICE: Duration = Duration::from_secs(10);

/// A worker is live when apalis has had its heartbeat this recently: three of the default
/// 10 s heartbeats, the point at which apalis itself hands a silent worker's jobs on.
const LIVE_WORKER_SECONDS: i64 = 30;

/// Polls a session until it is finished, or until `timeout` has passed (the session is
/// then returned unfinished), with a progress bar when stderr is a terminal. When no
/// record of the session has started after [`NO_WORKER_NOTICE`] and no worker is live,
/// it says so once on stderr, piped or not, and goes on waiting.
pub(crate) async fn wait_for(
    store: &dyn Store,
    id: Uuid,
    total: u64,
    progress: bool,
    timeout: Option<Duration>,
) -> Result<Session, CliError> {
    let started = std::time::Instant::now();
    let mut told = false;
    let bar = (progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            // A constant: if indicatif ever refused it, a plain bar still shows progress.
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    loop {
        // The summary only: polling every 200 ms must not read 100,000 records each time.
        let s = store
            .session_summary(id)
            .await?
            .ok_or_else(|| CliError::Usage(format!("unknown session '{id}'")))?;
        if let Some(bar) = &bar {
            bar.set_position(
                (s.successful_instances + s.failed_instances + s.cancelled_instances) as u64,
            );
            bar.set_message(format!("{} failed", s.failed_instances));
        }
        let waited = started.elapsed();
        if s.is_finished() || timeout.is_some_and(|t| waited >= t) {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(s);
        }
        if !told
            && waited >= NO_WORKER_NOTICE
            && s.started_at.is_none()
            && store.workers_live(LIVE_WORKER_SECONDS).await? == 0
        {
            told = true;
            let line = format!(
                "no worker has claimed a job in {} s; start one with `syncpool worker`",
                NO_WORKER_NOTICE.as_secs()
            );
            match &bar {
                Some(bar) => bar.suspend(|| eprintln!("{line}")),
                None => eprintln!("{line}"),
            }
        }
        let nap = Duration::from_millis(200);
        tokio::time::sleep(match timeout {
            Some(t) => nap
                .min(t.saturating_sub(waited))
                .max(Duration::from_millis(1)),
            None => nap,
        })
        .await;
    }
}
