//! Group commit: one writer task per process funnels the lease grants, renewals and
//! finishes of all its concurrent syncs into one short transaction per kind at a time.
//!
//! Why: on SQLite every write transaction waits for the one write lock, so one
//! transaction per step per job from dozens of handlers in several processes spends its
//! time queueing for the lock (~500 syncs/s in a prototype). Batching what is pending
//! when the previous commit ends makes the batch grow exactly as fast as the lock is
//! contended. Each request in a batch is still decided row by row on its own token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::*;

/// Upper bound on one batch: keeps each transaction short even under a burst.
const MAX_BATCH: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Op {
    Grant(GrantRequest, Reply<GrantOutcome>),
    Renew(RenewRequest, Reply<RenewOutcome>),
    Finish(FinishRequest, Reply<FinishOutcome>),
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Op>,
}

impl Writer {
    /// Starts the writer task. It ends when every `Writer` clone is dropped and the
    /// pending requests are written.
    pub fn spawn(
        store: Arc<dyn Store>,
        params: LeaseParams,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(run(store, params, rx));
        (Self { tx }, handle)
    }

    pub async fn grant(&self, req: GrantRequest) -> Result<GrantOutcome, String> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Grant(req, tx), rx).await
    }
    pub async fn renew(&self, req: RenewRequest) -> Result<RenewOutcome, String> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Renew(req, tx), rx).await
    }
    pub async fn finish(&self, req: FinishRequest) -> Result<FinishOutcome, String> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Finish(req, tx), rx).await
    }

    async fn send<T>(&self, op: Op, rx: oneshot::Receiver<Result<T, String>>) -> Result<T, String> {
        self.tx
            .send(op)
            .map_err(|_| "the writer has stopped".to_string())?;
        rx.await
            .map_err(|_| "the writer dropped the request".to_string())?
    }
}

async fn run(store: Arc<dyn Store>, params: LeaseParams, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let mut grants = (vec![], vec![]);
        let mut renews = (vec![], vec![]);
        let mut finishes = (vec![], vec![]);
        for op in ops.drain(..) {
            match op {
                Op::Grant(r, tx) => (grants.0.push(r), grants.1.push(tx)),
                Op::Renew(r, tx) => (renews.0.push(r), renews.1.push(tx)),
                Op::Finish(r, tx) => (finishes.0.push(r), finishes.1.push(tx)),
            };
        }
        // Finishes first: they release leases that grants in the same round may want.
        if store.combines_rounds() {
            // All or nothing: on failure nothing was written, so each kind is retried alone.
            match store
                .pipeline_round(&params, &finishes.0, &renews.0, &grants.0)
                .await
            {
                Ok((f, r, g)) => {
                    reply(finishes.1, f);
                    reply(renews.1, r);
                    reply(grants.1, g);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "group commit round failed; committing each kind alone")
                }
            }
        }
        if !finishes.0.is_empty() {
            let reqs = finishes.0;
            commit(&reqs, finishes.1, |batch| {
                let store = store.clone();
                let params = params.clone();
                async move { store.record_finish_batch(&params, &batch).await }
            })
            .await;
        }
        if !renews.0.is_empty() {
            let reqs = renews.0;
            commit(&reqs, renews.1, |batch| {
                let store = store.clone();
                let params = params.clone();
                async move { store.lease_renew_batch(&params, &batch).await }
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

fn reply<T>(txs: Vec<Reply<T>>, outcomes: Vec<T>) {
    for (tx, o) in txs.into_iter().zip(outcomes) {
        let _ = tx.send(Ok(o));
    }
}

/// Commits one batch. A transient failure (busy, deadlock, dropped connection) is retried
/// a few times; if the batch still fails, each request is tried alone so that one bad
/// request cannot fail its neighbours.
async fn commit<R, T, F, Fut>(reqs: &[R], replies: Vec<Reply<T>>, exec: F)
where
    R: Clone,
    F: Fn(Vec<R>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut last_err = String::new();
    for attempt in 0..3u32 {
        match exec(reqs.to_vec()).await {
            Ok(outcomes) => {
                for (tx, o) in replies.into_iter().zip(outcomes) {
                    let _ = tx.send(Ok(o));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = reqs.len(), attempt, "group commit failed; retrying");
                last_err = e.to_string();
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
    if reqs.len() == 1 {
        for tx in replies {
            let _ = tx.send(Err(last_err.clone()));
        }
        return;
    }
    for (req, tx) in reqs.iter().zip(replies) {
        let result = match exec(vec![req.clone()]).await {
            Ok(mut o) if o.len() == 1 => Ok(o.remove(0)),
            Ok(_) => Err("the store answered a different number of outcomes".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let _ = tx.send(result);
    }
}
