//! The store written once: [`SqlStore`] over a [`Backend`], which is one database's SQL
//! text and the few operations that really differ (the pipeline's write transactions,
//! migrations, a session's cancel). Everything else, the inventory, the session reads,
//! the operator's reads, cleanup, the scheduler's slots, loops and decides here once,
//! in the manner of River's maintenance services above its drivers.

mod access;
mod admin;
mod events;

pub(crate) use access::audit_insert_query;
mod inventory;
mod limits;
mod operator;
mod policy;
pub(crate) mod rows;
mod sessions;
mod webhooks;

use async_trait::async_trait;
use sqlx::Pool;
use uuid::Uuid;

use super::batch::{self, Batch};
use super::sql::{Arg, Fetch, Q};
use super::*;

/// The SQL text that differs between the databases, one field per statement or
/// fragment. Where the text is the same it is written once, in this folder.
pub(crate) struct Queries {
    /// How a write transaction starts (SQLite: take the write lock at once).
    pub begin_write: &'static str,
    /// How a read of several statements from one snapshot starts.
    pub begin_snapshot: &'static str,
    /// The current time, as stored.
    pub now: &'static str,
    /// The time a day ago, as stored.
    pub day_ago: &'static str,
    /// The type a time parameter is cast to where it may be NULL.
    pub time_type: &'static str,
    /// Counts (as `n`) whether syncpool's migrations table exists.
    pub migrations_table: &'static str,
    /// Refreshes planner statistics.
    pub analyze: &'static str,
    /// apalis' jobs table.
    pub jobs: &'static str,
    /// Unlimited, for a `LIMIT $n` bound to [`Queries::no_limit`]'s value.
    pub no_limit: Option<i64>,
    /// Records finished in the last `$1` seconds (as `n`).
    pub records_finished_since: &'static str,
    /// Workers of queue `$1` seen in the last `$2` seconds (as `n`).
    pub workers_live: &'static str,
    /// Deletes up to 1,000 of queue `$1`'s done and killed jobs finished before `$2`.
    pub jobs_delete_done: &'static str,
    /// Kills job `$1` with the result `$2` (JSON text).
    pub job_kill: &'static str,
    /// Puts the jobs locked by the workers in list `$1` back to pending.
    pub jobs_handback: &'static str,
    /// `INSERT INTO sync_instance_records` for session row `$1` and the rows of
    /// [`Backend::record_rows`].
    pub records_insert: &'static str,
    /// Enqueues one job per record of session row `$4` (`$1` its public id, `$2` the
    /// queue, `$3` max attempts).
    pub jobs_insert: &'static str,
    /// The oldest unfinished session's age in seconds (as `age`).
    pub oldest_session_age: &'static str,
    /// The condition on a record `r` the rescuer acts on (running, no live lease).
    pub unleased_running: &'static str,
    /// Queue `$1`'s due (`ready`) and delayed pending jobs, each counted up to `$2`.
    pub queue_due: &'static str,
    /// Queue `$1`'s job due longest: `id`, `run_at`, `attempts`, `waited`.
    pub queue_oldest: &'static str,
    /// The console's instance page: instances after id `$1`, `$2` of them, with
    /// `last_status`, `last_sync_at` and `account_count`.
    pub instance_overview: &'static str,
    /// What a claim's inner SELECT ends with so that two claimers skip each other's
    /// rows (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite's writes are serial: nothing).
    pub skip_locked: &'static str,
    /// Up to `$2` rows of table `{t}` that follow row id `$1` in commit order, for a
    /// follower: on SQLite, ids commit in order; on PostgreSQL only rows whose writing
    /// transaction is older than every running one are taken, in (transaction, id)
    /// order, so a row whose id committed late is never skipped. `{t}` is `events` or
    /// `account_changes`, `{cols}` the columns.
    pub follow_after: &'static str,
    /// The row of table `{t}` a follower that starts now resumes after (as `n`): the
    /// last in [`Queries::follow_after`]'s order that no running transaction can precede.
    pub follow_head: &'static str,
}

/// One database, as the written-once logic above it sees it.
#[async_trait]
pub(crate) trait Backend: Fetch + Sized {
    /// What the store keeps beside its pool (SQLite: the writer thread and the file).
    type Local: Send + Sync + 'static;
    /// `sqlite` or `postgres`.
    const KIND: &'static str;
    /// Its SQL text.
    const SQL: Queries;
    /// The pool, for the apalis backend of the same database.
    fn db_pool(pool: &Pool<Self>) -> DbPool;
    /// syncpool's migrations for this database.
    fn migrator() -> sqlx::migrate::Migrator;
    /// True when `e` says a table does not exist.
    fn is_undefined_table(e: &sqlx::Error) -> bool;
    /// The arguments after the session row of [`Queries::records_insert`].
    fn record_rows(ids: Vec<i64>, names: Vec<String>, job_ids: Vec<String>) -> Vec<Arg>;
    /// A page of a session's records: session row `$1`, after id `$2`, `$3` of them.
    fn records_page(status: Option<RecordStatus>) -> String;
    /// Seconds from `expr` until now, as a float.
    fn seconds_since(expr: &str) -> String;
    /// Seconds from now until `expr`, as a float.
    fn seconds_until(expr: &str) -> String;

    /// Applies syncpool's and apalis' migrations, one process at a time.
    async fn migrate(s: &SqlStore<Self>) -> Result<()>;
    /// Runs `f` in one write transaction, committed if it returns `Ok`.
    async fn write<T: Send + 'static>(s: &SqlStore<Self>, f: Batch<T>) -> Result<T>;
    /// Whether a pipeline round's finishes, renewals and grants share one transaction
    /// (SQLite: one write-lock acquisition instead of three) or take one each
    /// (PostgreSQL: one kind per transaction keeps its lock order).
    const ONE_TRANSACTION_PER_ROUND: bool;
    /// See [`PipelineWrites::round_window`].
    const ROUND_WINDOW: std::time::Duration;
}

/// The [`Store`] on one database: `SqlStore<Sqlite>` ([`super::sqlite::SqliteStore`]) or
/// `SqlStore<Postgres>` ([`super::postgres::PgStore`]).
pub(crate) struct SqlStore<D: Backend> {
    pub(crate) pool: Pool<D>,
    pub(crate) local: D::Local,
}

impl<D: Backend> SqlStore<D> {
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, D>> {
        Ok(self.pool.begin_with(D::SQL.begin_write).await?)
    }
    pub(crate) async fn snapshot(&self) -> Result<sqlx::Transaction<'static, D>> {
        Ok(self.pool.begin_with(D::SQL.begin_snapshot).await?)
    }
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(d)) if d.is_unique_violation())
}

/// Counts with `SELECT ... AS n`.
async fn count<'c, D: Fetch>(e: impl Into<sql::Ex<'c, D>>, q: Q) -> Result<i64> {
    D::get(&D::one(e, q).await?, "n")
}

#[async_trait]
impl<D: Backend> AdminStore for SqlStore<D> {
    fn pool(&self) -> DbPool {
        D::db_pool(&self.pool)
    }
    fn kind(&self) -> &'static str {
        D::KIND
    }
    async fn migrate(&self) -> Result<()> {
        D::migrate(self).await
    }
    async fn ready(&self) -> Result<bool> {
        admin::ready(self).await
    }
    async fn analyze(&self) -> Result<()> {
        D::run(&self.pool, Q::new(D::SQL.analyze)).await?;
        Ok(())
    }
    async fn cleanup(
        &self,
        days: i64,
        history_days: i64,
        audit_days: i64,
    ) -> Result<CleanupCounts> {
        admin::cleanup(self, days, history_days, audit_days).await
    }
    async fn migrations_pending(&self) -> Result<Option<usize>> {
        admin::migrations_pending(self).await
    }
    async fn schedule_slot_claim(
        &self,
        name: &str,
        slot: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        let q = Q::new(SLOT_CLAIM).bind(name).bind(slot);
        Ok(D::run(&self.pool, q).await? == 1)
    }
    async fn schedule_sync_fire(
        &self,
        name: &str,
        slot: chrono::DateTime<chrono::Utc>,
    ) -> Result<SlotFired> {
        admin::schedule_fire(self, name, slot).await
    }
    async fn secret_get_or_insert(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        admin::secret_get_or_insert(self, name, candidate).await
    }
    async fn console_nonce_revoke(
        &self,
        nonce: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let q = Q::new(
            "INSERT INTO console_revoked_nonces (nonce, expires_at) VALUES ($1, $2) \
             ON CONFLICT (nonce) DO NOTHING",
        );
        let mut tx = self.begin().await?;
        D::run(&mut tx, q.bind(nonce).bind(expires_at)).await?;
        tx.commit().await?;
        Ok(())
    }
    async fn console_nonce_revoked(&self, nonce: &str) -> Result<bool> {
        let q = Q::new("SELECT COUNT(*) AS n FROM console_revoked_nonces WHERE nonce = $1");
        Ok(count(&self.pool, q.bind(nonce)).await? > 0)
    }
}

#[async_trait]
impl<D: Backend> AccessStore for SqlStore<D> {
    async fn token_insert(&self, name: &str, role: Role, token_hash: &str) -> Result<TokenInfo> {
        access::token_insert(self, name, role, token_hash).await
    }
    async fn token_by_hash(&self, token_hash: &str) -> Result<Option<Principal>> {
        access::token_by_hash(self, token_hash).await
    }
    async fn token_hash_of(&self, name: &str) -> Result<Option<(Role, String)>> {
        access::token_hash_of(self, name).await
    }
    async fn tokens_list(&self) -> Result<Vec<TokenInfo>> {
        access::tokens_list(self).await
    }
    async fn token_revoke(&self, name: &str) -> Result<bool> {
        access::token_revoke(self, name).await
    }
    async fn tokens_exist(&self) -> Result<bool> {
        access::tokens_exist(self).await
    }
    async fn audit_insert(&self, row: &NewAuditEvent) -> Result<()> {
        access::audit_insert(self, row).await
    }
    async fn audit_list(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        access::audit_list(self, filter).await
    }
}

#[async_trait]
impl<D: Backend> LimitStore for SqlStore<D> {
    async fn limit_set(&self, key: &str, max_concurrent: i64) -> Result<Limit> {
        limits::set(self, key, max_concurrent).await
    }
    async fn limit_remove(&self, key: &str) -> Result<bool> {
        limits::remove(self, key).await
    }
    async fn limits_list(&self) -> Result<Vec<Limit>> {
        limits::list(self).await
    }
}

#[async_trait]
impl<D: Backend> InventoryStore for SqlStore<D> {
    async fn instance_insert(&self, new: &NewInstance) -> Result<Instance> {
        inventory::insert(self, new).await
    }
    async fn instance_insert_many(&self, new: &[NewInstance]) -> Result<u64> {
        inventory::insert_many(self, new).await
    }
    async fn instance_list(&self) -> Result<Vec<Instance>> {
        inventory::list(self).await
    }
    async fn instance_get(&self, id: i64) -> Result<Option<Instance>> {
        inventory::get(self, id).await
    }
    async fn instance_get_by_name(&self, name: &str) -> Result<Option<Instance>> {
        inventory::get_by_name(self, name).await
    }
    async fn instance_delete(&self, id: i64) -> Result<bool> {
        inventory::delete(self, id).await
    }
    async fn instance_update(&self, id: i64, new: &NewInstance) -> Result<Instance> {
        inventory::update(self, id, new).await
    }
    async fn accounts_list(
        &self,
        instance_id: i64,
        include_deleted: bool,
    ) -> Result<Vec<StoredAccount>> {
        inventory::accounts(self, instance_id, include_deleted).await
    }
    async fn changes_list(&self, filter: &ChangeFilter) -> Result<Vec<AccountChange>> {
        inventory::changes(self, filter).await
    }
}

#[async_trait]
impl<D: Backend> SessionStore for SqlStore<D> {
    async fn session_create(
        &self,
        sync_type: SyncType,
        instance_ids: Option<&[i64]>,
    ) -> Result<SessionCreated> {
        let mut tx = self.begin().await?;
        let created = sessions::insert(&mut tx, sync_type, instance_ids).await?;
        let audit = access::InTx::new(vec![AuditTarget::new("session", created.session_id)]);
        audit.write::<D>(&mut tx).await?;
        tx.commit().await?;
        audit.committed();
        Ok(created)
    }
    async fn session_get(&self, session_id: Uuid) -> Result<Option<SessionDetail>> {
        sessions::get(self, session_id).await
    }
    async fn session_summary(&self, session_id: Uuid) -> Result<Option<Session>> {
        sessions::summary(self, session_id).await
    }
    async fn session_record_counts(&self, session_id: Uuid) -> Result<Vec<(RecordStatus, i64)>> {
        sessions::record_counts(self, session_id).await
    }
    async fn session_records(
        &self,
        session_id: Uuid,
        filter: &RecordFilter,
    ) -> Result<Option<(Session, Vec<Record>)>> {
        sessions::records(self, session_id, filter).await
    }
    async fn session_list(&self, filter: &SessionFilter) -> Result<(Vec<Session>, i64)> {
        sessions::list(self, filter).await
    }
    async fn session_ids_between(&self, lo: Uuid, hi: Uuid, limit: i64) -> Result<Vec<Uuid>> {
        sessions::ids_between(self, lo, hi, limit).await
    }
    async fn session_cancel(&self, session_id: Uuid) -> Result<Option<Cancelled>> {
        let audit = access::InTx::new(vec![AuditTarget::new("session", session_id)]);
        let row = audit.row();
        let f = batch::batch(move |ops| {
            Box::pin(async move { batch::cancel_by_id(ops, session_id, row.as_ref()).await })
        });
        let Some((audited, finished)) = D::write(self, f).await? else {
            return Ok(None);
        };
        if audited {
            audit.committed();
        }
        let session = self.session_get(session_id).await?.map(|d| d.session);
        Ok(session.map(|session| Cancelled { session, finished }))
    }
    async fn session_retry(&self, session_id: Uuid) -> Result<Option<SessionCreated>> {
        sessions::retry(self, session_id).await
    }
}

#[async_trait]
impl<D: Backend> OperatorReads for SqlStore<D> {
    async fn locks_list(&self) -> Result<Vec<crate::model::Lease>> {
        operator::locks(self).await
    }
    async fn records_finished_since(&self, seconds: i64) -> Result<i64> {
        count(
            &self.pool,
            Q::new(D::SQL.records_finished_since).bind(seconds),
        )
        .await
    }
    async fn workers_live(&self, within_seconds: i64) -> Result<i64> {
        let q = Q::new(D::SQL.workers_live)
            .bind(crate::queue::QUEUE)
            .bind(within_seconds);
        count(&self.pool, q).await
    }
    async fn queue_stats(&self, cap: Option<i64>) -> Result<crate::model::QueueStats> {
        operator::queue_stats(self, cap).await
    }
    async fn instance_overview(
        &self,
        limit: i64,
        after: i64,
    ) -> Result<Vec<crate::model::InstanceOverview>> {
        operator::overview(self, limit, after).await
    }
    async fn instance_syncs(
        &self,
        instance_id: i64,
        limit: i64,
    ) -> Result<Vec<crate::model::InstanceSync>> {
        operator::syncs(self, instance_id, limit).await
    }
    async fn fleet_gauges(&self) -> Result<FleetGauges> {
        operator::gauges(self).await
    }
}

#[async_trait]
impl<D: Backend> PipelineWrites for SqlStore<D> {
    async fn lease_grant_batch(
        &self,
        params: &LeaseParams,
        reqs: &[GrantRequest],
    ) -> Result<Vec<GrantOutcome>> {
        D::write(self, grants(params, reqs)).await
    }
    async fn lease_renew_batch(
        &self,
        params: &LeaseParams,
        reqs: &[RenewRequest],
    ) -> Result<Vec<RenewOutcome>> {
        D::write(self, renewals(params, reqs)).await
    }
    async fn record_finish_batch(&self, reqs: &[FinishRequest]) -> Result<Vec<FinishOutcome>> {
        D::write(self, finishes(reqs)).await
    }
    fn round_window(&self) -> std::time::Duration {
        D::ROUND_WINDOW
    }
    async fn pipeline_round(
        &self,
        params: &LeaseParams,
        fin: &[FinishRequest],
        ren: &[RenewRequest],
        gra: &[GrantRequest],
    ) -> Result<(Vec<FinishOutcome>, Vec<RenewOutcome>, Vec<GrantOutcome>)> {
        if !D::ONE_TRANSACTION_PER_ROUND {
            // An empty kind costs no transaction.
            let f = match fin.is_empty() {
                true => vec![],
                false => D::write(self, finishes(fin)).await?,
            };
            let r = match ren.is_empty() {
                true => vec![],
                false => D::write(self, renewals(params, ren)).await?,
            };
            let g = match gra.is_empty() {
                true => vec![],
                false => D::write(self, grants(params, gra)).await?,
            };
            return Ok((f, r, g));
        }
        let (f, r, g) = (finishes(fin), renewals(params, ren), grants(params, gra));
        let round = batch::batch(move |ops| {
            Box::pin(async move {
                Ok((
                    f(&mut *ops).await?,
                    r(&mut *ops).await?,
                    g(&mut *ops).await?,
                ))
            })
        });
        D::write(self, round).await
    }
    async fn records_rescue(&self, params: &LeaseParams, limit: i64) -> Result<RescueOutcome> {
        let p = params.clone();
        let f =
            batch::batch(move |ops| Box::pin(async move { batch::rescue(ops, &p, limit).await }));
        D::write(self, f).await
    }
    async fn job_kill(&self, job_id: &str, reason: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let result = serde_json::json!({ "Err": reason }).to_string();
        D::run(&mut tx, Q::new(D::SQL.job_kill).bind(job_id).bind(result)).await?;
        tx.commit().await?;
        Ok(())
    }
    async fn jobs_handback(&self, worker_names: &[String]) -> Result<u64> {
        let mut tx = self.begin().await?;
        let q = Q::new(D::SQL.jobs_handback).bind(Arg::Texts(worker_names.to_vec()));
        let n = D::run(&mut tx, q).await?;
        tx.commit().await?;
        Ok(n)
    }
}

const SLOT_CLAIM: &str =
    "INSERT INTO schedule_slots (name, slot) VALUES ($1, $2) ON CONFLICT (name, slot) DO NOTHING";

// The pipeline's steps as write transactions; they own their requests because the
// SQLite writer runs them on its own thread.
fn grants(p: &LeaseParams, reqs: &[GrantRequest]) -> Batch<Vec<GrantOutcome>> {
    let (p, reqs) = (p.clone(), reqs.to_vec());
    batch::batch(move |ops| Box::pin(async move { batch::grant(ops, &p, &reqs).await }))
}

fn renewals(p: &LeaseParams, reqs: &[RenewRequest]) -> Batch<Vec<RenewOutcome>> {
    let (ttl, reqs) = (p.ttl, reqs.to_vec());
    batch::batch(move |ops| Box::pin(async move { ops.leases_renew(ttl, &reqs).await }))
}

fn finishes(reqs: &[FinishRequest]) -> Batch<Vec<FinishOutcome>> {
    let reqs = reqs.to_vec();
    batch::batch(move |ops| Box::pin(async move { batch::finish(ops, &reqs).await }))
}
