//! Group commit: one writer task per process funnels the lease grants and finishes of all
//! its concurrent syncs into one short transaction at a time; a second task does the same
//! for lease renewals.
//!
//! Why batch: on SQLite every write transaction waits for the one write lock, so one
//! transaction per step per job from dozens of handlers in several processes spends its
//! time queueing for the lock (~500 syncs/s in a prototype). Batching what is pending
//! when the previous commit ends makes the batch grow exactly as fast as the lock is
//! contended. Each request in a batch is still decided row by row on its own token. On
//! PostgreSQL, where a round's cost is its round trips rather than a lock, a new round
//! also waits a moment for more requests (`gather`).
//!
//! Why renewals have their own task: a renewal keeps a lease alive, and a lease that
//! lapses makes its sync give up (the local deadline in `pipeline.rs`). A renewal queued
//! behind a round of large finishes (an account diff of 100,000 rows) could miss its
//! deadline although the database is healthy.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::*;

/// Upper bound on one batch: keeps each transaction short even under a burst.
const MAX_BATCH: usize = 256;

/// Upper bound on the accounts one round writes (past its first finish). A round holds
/// its finishes' accounts, the stored rows it diffs them against and the rows it writes:
/// 13 instances of 10,000 accounts made one statement of 130,000 rows (1-3 s) and workers
/// of 1.5-1.9 GB (docs/BENCHMARKS.md). The rest waits for the next round, in order.
const MAX_ROUND_ACCOUNTS: usize = 40_000;

/// How many of `ops` (at least one) the next round takes: all, unless their accounts
/// pass [`MAX_ROUND_ACCOUNTS`].
fn round_len(ops: &[Op]) -> usize {
    let (mut accounts, mut finishes) = (0, 0);
    for (i, op) in ops.iter().enumerate() {
        if let Op::Finish(r, _) = op {
            if let SyncResult::Completed(found) = &r.result {
                accounts += found.len();
            }
            if accounts > MAX_ROUND_ACCOUNTS && finishes > 0 {
                return i;
            }
            finishes += 1;
        }
    }
    ops.len()
}

/// A failed write as the pipeline sees it: the store's error, shared by every request of
/// the batch it failed.
pub type WriteError = Arc<StoreError>;

type Reply<T> = oneshot::Sender<Result<T, WriteError>>;

enum Op {
    Grant(GrantRequest, Reply<GrantOutcome>),
    Finish(FinishRequest, Reply<FinishOutcome>),
}

/// The handle to this process's write batcher: requests from many syncs go to the
/// database together, one transaction per round.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Op>,
    renew_tx: mpsc::UnboundedSender<(RenewRequest, Reply<RenewOutcome>)>,
}

fn stopped() -> WriteError {
    Arc::new(StoreError::Other("the writer has stopped".into()))
}

impl Writer {
    /// Starts the writer tasks. They end when every `Writer` clone is dropped and the
    /// pending requests are written.
    pub fn spawn(
        store: Arc<dyn PipelineWrites>,
        params: LeaseParams,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (renew_tx, renew_rx) = mpsc::unbounded_channel();
        let main = tokio::spawn(run(store.clone(), params.clone(), rx));
        let renewals = tokio::spawn(run_renewals(store, params, renew_rx));
        let handle = tokio::spawn(async move {
            let _ = main.await;
            let _ = renewals.await;
        });
        (Self { tx, renew_tx }, handle)
    }

    /// Asks for an instance's lease (in the next round).
    pub async fn grant(&self, req: GrantRequest) -> Result<GrantOutcome, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Op::Grant(req, tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
    /// Extends a held lease (in the next round).
    pub async fn renew(&self, req: RenewRequest) -> Result<RenewOutcome, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.renew_tx.send((req, tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
    /// Writes a sync's outcome, fenced by its token (in the next round).
    pub async fn finish(&self, req: FinishRequest) -> Result<FinishOutcome, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Op::Finish(req, tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn run(
    store: Arc<dyn PipelineWrites>,
    params: LeaseParams,
    mut rx: mpsc::UnboundedReceiver<Op>,
) {
    let window = store.round_window();
    let mut ops = Vec::with_capacity(MAX_BATCH);
    // What the last round left for this one; taken before anything newer.
    let mut carried: Vec<Op> = vec![];
    loop {
        if carried.is_empty() {
            if rx.recv_many(&mut ops, MAX_BATCH).await == 0 {
                return;
            }
            gather(&mut rx, &mut ops, window).await;
        } else {
            ops.append(&mut carried);
            while ops.len() < MAX_BATCH {
                let Ok(op) = rx.try_recv() else { break };
                ops.push(op);
            }
        }
        carried = ops.split_off(round_len(&ops));
        let mut grants = (vec![], vec![]);
        let mut finishes = (vec![], vec![]);
        for op in ops.drain(..) {
            match op {
                Op::Grant(r, tx) => (grants.0.push(r), grants.1.push(tx)),
                Op::Finish(r, tx) => (finishes.0.push(r), finishes.1.push(tx)),
            };
        }
        // Finishes first: they release leases that grants in the same round may want. (A
        // finish carried to the next round by the account cap releases its lease after
        // this round's grants: such a grant finds the instance busy and waits its turn.)
        // On failure each kind is retried alone: whatever the round committed replays
        // as a no-op (request ids, tokens).
        match store
            .pipeline_round(&params, &finishes.0, &[], &grants.0)
            .await
        {
            Ok((f, _, g)) => {
                reply(finishes.1, f);
                reply(grants.1, g);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "group commit round failed; committing each kind alone")
            }
        }
        if !finishes.0.is_empty() {
            let reqs = finishes.0;
            commit(&reqs, finishes.1, |batch| {
                let store = store.clone();
                async move { store.record_finish_batch(&batch).await }
            })
            .await;
        }
        if !grants.0.is_empty() {
            let reqs = grants.0;
            commit(&reqs, grants.1, |batch| {
                let store = store.clone();
                let params = params.clone();
                async move { store.lease_grant_batch(&params, &batch).await }
            })
            .await;
        }
    }
}

/// Waits up to `window` for more requests to join a round that has its first. A round
/// costs about the same number of statements whatever its size; under load, a wait of a
/// millisecond or two (tokio's timer rounds up to the next millisecond) makes rounds
/// several times larger and each request cheaper.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Op>, ops: &mut Vec<Op>, window: Duration) {
    if window.is_zero() {
        return;
    }
    let until = tokio::time::Instant::now() + window;
    while ops.len() < MAX_BATCH {
        let room = MAX_BATCH - ops.len();
        match tokio::time::timeout_at(until, rx.recv_many(ops, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn run_renewals(
    store: Arc<dyn PipelineWrites>,
    params: LeaseParams,
    mut rx: mpsc::UnboundedReceiver<(RenewRequest, Reply<RenewOutcome>)>,
) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let (reqs, replies): (Vec<_>, Vec<_>) = ops.drain(..).unzip();
        commit(&reqs, replies, |batch| {
            let store = store.clone();
            let params = params.clone();
            async move { store.lease_renew_batch(&params, &batch).await }
        })
        .await;
    }
}

fn reply<T>(txs: Vec<Reply<T>>, outcomes: Vec<T>) {
    for (tx, o) in txs.into_iter().zip(outcomes) {
        let _ = tx.send(Ok(o));
    }
}

/// Commits one batch. A transient failure (busy, deadlock, dropped connection) is retried
/// a few times; if the batch still fails, each request is tried alone so that one bad
/// request cannot fail its neighbours. Every step is idempotent under retry (request ids,
/// tokens), so a retry after a commit whose outcome was lost does no harm.
async fn commit<R, T, F, Fut>(reqs: &[R], replies: Vec<Reply<T>>, exec: F)
where
    R: Clone,
    F: Fn(Vec<R>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut last_err: Option<WriteError> = None;
    for attempt in 0..3u32 {
        match exec(reqs.to_vec()).await {
            Ok(outcomes) => {
                reply(replies, outcomes);
                return;
            }
            Err(e) => {
                let transient = e.is_transient();
                tracing::warn!(error = %e, batch = reqs.len(), attempt, transient, "group commit failed");
                last_err = Some(Arc::new(e));
                if !transient {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
    let last_err = last_err.unwrap_or_else(stopped);
    if reqs.len() == 1 {
        for tx in replies {
            let _ = tx.send(Err(last_err.clone()));
        }
        return;
    }
    for (req, tx) in reqs.iter().zip(replies) {
        let result = match exec(vec![req.clone()]).await {
            Ok(mut o) if o.len() == 1 => Ok(o.remove(0)),
            Ok(_) => Err(Arc::new(StoreError::Other(
                "the store answered a different number of outcomes".into(),
            ))),
            Err(e) => Err(Arc::new(e)),
        };
        let _ = tx.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(accounts: usize) -> Op {
        let account = syncpool_workers::Account {
            username: "u".into(),
            host: String::new(),
            attributes: serde_json::json!({}),
            privileges: serde_json::json!([]),
        };
        let req = FinishRequest {
            request_id: String::new(),
            job_id: String::new(),
            record_id: 1,
            instance_id: 1,
            session_id: uuid::Uuid::nil(),
            token: 1,
            result: SyncResult::Completed(vec![account; accounts]),
        };
        Op::Finish(req, oneshot::channel().0)
    }

    fn grant() -> Op {
        let req = GrantRequest {
            request_id: String::new(),
            job_id: String::new(),
            payload: crate::queue::JobPayload {
                session_id: uuid::Uuid::nil(),
                record_id: 1,
                instance_id: 1,
                attempt: 1,
                waiting_since_ms: None,
            },
            owner: "w".into(),
        };
        Op::Grant(req, oneshot::channel().0)
    }

    // Real time with wide margins (tokio's paused clock needs a feature only for this).
    #[tokio::test]
    async fn a_round_waits_its_window_for_requests_that_follow_its_first() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(grant()).ok();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            late.send(grant()).ok();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            late.send(grant()).ok();
        });
        let mut ops = vec![];
        rx.recv_many(&mut ops, MAX_BATCH).await;
        gather(&mut rx, &mut ops, Duration::from_millis(500)).await;
        assert_eq!(
            ops.len(),
            2,
            "the request 10 ms later joins, the one 1.5 s later does not"
        );
        rx.recv_many(&mut ops, MAX_BATCH).await;
        assert_eq!(ops.len(), 3, "it is left for the next round");
    }

    #[tokio::test]
    async fn a_full_round_goes_without_waiting_out_its_window() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..=MAX_BATCH {
            tx.send(grant()).ok();
        }
        let mut ops = vec![];
        rx.recv_many(&mut ops, 1).await;
        let t0 = tokio::time::Instant::now();
        gather(&mut rx, &mut ops, Duration::from_secs(60)).await;
        assert_eq!(ops.len(), MAX_BATCH, "a round takes at most a full batch");
        assert!(t0.elapsed() < Duration::from_secs(30), "and goes at once");
    }

    #[test]
    fn a_round_stops_before_the_finish_that_passes_the_account_cap() {
        assert_eq!(round_len(&[finish(30_000), finish(30_000), finish(5)]), 1);
        assert_eq!(round_len(&[grant(), finish(20_000), finish(20_000)]), 3);
        assert_eq!(round_len(&[finish(20_000), grant(), finish(20_001)]), 2);
    }

    #[test]
    fn a_finish_over_the_cap_goes_alone_and_grants_never_count() {
        assert_eq!(round_len(&[finish(100_000), finish(1)]), 1);
        assert_eq!(round_len(&[grant(), finish(100_000), grant()]), 3);
        assert_eq!(round_len(&[grant(), finish(100_000), finish(1)]), 2);
        assert_eq!(round_len(&[finish(100_000)]), 1);
        let grants: Vec<Op> = (0..MAX_BATCH).map(|_| grant()).collect();
        assert_eq!(round_len(&grants), MAX_BATCH);
    }
}
