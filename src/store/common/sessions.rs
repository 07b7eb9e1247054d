//! Sessions: creating one (its records and jobs, in the caller's transaction) and the
//! reads of sessions and their records.

use uuid::Uuid;

use super::rows::{self, SESSION_COLS};
use super::{Backend, SqlStore, count};
use crate::model::{
    AuditTarget, Record, RecordStatus, Session, SessionCreated, SessionDetail, SessionStatus,
    SyncType,
};
use crate::queue;
use crate::store::sql::{Arg, Q};
use crate::store::{
    RecordFilter, Result, SessionFilter, StoreError, check_all_found, parse_status,
};

/// Enqueues a session over `instance_ids` (None: every active instance) in `tx`: the
/// session row, one record and one apalis job per instance. Three statements whatever
/// the size; the rows travel as one argument each.
pub(crate) async fn insert<D: Backend>(
    tx: &mut sqlx::Transaction<'static, D>,
    sync_type: SyncType,
    instance_ids: Option<&[i64]>,
) -> Result<SessionCreated> {
    let found = match instance_ids {
        None => {
            let q = Q::new("SELECT id, name FROM instances WHERE active ORDER BY id");
            D::all(&mut *tx, q).await?
        }
        Some(ids) => {
            let q = Q::new(format!(
                "SELECT id, name FROM instances WHERE {} ORDER BY id",
                D::in_list("id", 1)
            ))
            .bind(Arg::Ids(ids.to_vec()));
            let found = D::all(&mut *tx, q).await?;
            let got = found
                .iter()
                .map(|r| D::get::<i64>(r, "id"))
                .collect::<Result<Vec<_>>>()?;
            check_all_found(ids, got.into_iter())?;
            found
        }
    };
    if found.is_empty() {
        return Err(StoreError::NoInstances);
    }
    let session_id = Uuid::new_v4();
    let total = found.len() as i64;
    // Never empty (refused above), so a new session is always pending.
    let q = Q::new(
        "INSERT INTO sync_sessions (session_id, sync_type, status, total_instances) \
         VALUES ($1, $2, 'pending', $3) RETURNING id",
    )
    .bind(session_id)
    .bind(sync_type.as_str())
    .bind(total);
    let session_row: i64 = D::get(&D::one(&mut *tx, q).await?, "id")?;
    let mut ids = Vec::with_capacity(found.len());
    let mut names = Vec::with_capacity(found.len());
    for r in &found {
        ids.push(D::get::<i64>(r, "id")?);
        names.push(D::get::<String>(r, "name")?);
    }
    let job_ids = ids.iter().map(|_| queue::new_job_id()).collect();
    let mut q = Q::new(D::SQL.records_insert).bind(session_row);
    for a in D::record_rows(ids, names, job_ids) {
        q = q.bind(a);
    }
    D::run(&mut *tx, q).await?;
    let q = Q::new(
        "UPDATE sync_sessions SET first_record_id = (SELECT MIN(id) FROM sync_instance_records \
         WHERE session_id = $1 AND status = 'pending') WHERE id = $1",
    );
    D::run(&mut *tx, q.bind(session_row)).await?;
    let q = Q::new(D::SQL.jobs_insert)
        .bind(session_id)
        .bind(queue::QUEUE)
        .bind(queue::APALIS_MAX_ATTEMPTS as i32)
        .bind(session_row);
    D::run(&mut *tx, q).await?;
    let q = Q::new("SELECT status FROM sync_sessions WHERE id = $1").bind(session_row);
    let status = parse_status(D::get(&D::one(&mut *tx, q).await?, "status")?)?;
    Ok(SessionCreated {
        session_id,
        total_instances: total,
        status,
        retry_of: None,
    })
}

/// Starts a session over the instances whose records in `session_id` failed or were
/// cancelled (those still registered), naming the one it retries. None: no such session;
/// a conflict while it still runs (its records are not final) or when nothing is left to
/// retry.
pub(super) async fn retry<D: Backend>(
    s: &SqlStore<D>,
    session_id: Uuid,
) -> Result<Option<SessionCreated>> {
    let mut tx = s.begin().await?;
    // Two retries at once (a double click) must not both start: the first takes the old
    // session's row (a no-op write: PostgreSQL's row lock; SQLite's writes are serial
    // anyway), the second then sees the first's session below.
    let lock = Q::new(format!(
        "UPDATE sync_sessions SET updated_at = updated_at WHERE session_id = $1 \
         RETURNING {SESSION_COLS}"
    ))
    .bind(session_id);
    let Some(row) = D::opt(&mut tx, lock).await? else {
        return Ok(None);
    };
    let old = rows::session::<D>(&row)?;
    if !old.is_finished() {
        return Err(StoreError::Conflict(format!(
            "session {session_id} is still {}: retry it once it has finished",
            old.status
        )));
    }
    let q = Q::new(
        "SELECT session_id FROM sync_sessions WHERE retry_of = $1 \
         AND status IN ('pending', 'running') LIMIT 1",
    )
    .bind(session_id.to_string());
    if let Some(r) = D::opt(&mut tx, q).await? {
        let running: Uuid = D::get(&r, "session_id")?;
        return Err(StoreError::Conflict(format!(
            "session {session_id} is already being retried by session {running}"
        )));
    }
    let q = Q::new(
        "SELECT DISTINCT r.instance_id AS id FROM sync_instance_records r \
         JOIN instances i ON i.id = r.instance_id \
         WHERE r.session_id = $1 AND r.status IN ('failed', 'cancelled') ORDER BY r.instance_id",
    )
    .bind(old.id);
    let ids = D::all(&mut tx, q)
        .await?
        .iter()
        .map(|r| D::get::<i64>(r, "id"))
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        return Err(StoreError::Conflict(format!(
            "session {session_id} has no failed or cancelled records of registered instances \
             to retry"
        )));
    }
    let mut created = insert(&mut tx, SyncType::manual(ids.len()), Some(&ids)).await?;
    let q = Q::new("UPDATE sync_sessions SET retry_of = $1 WHERE session_id = $2")
        .bind(session_id.to_string())
        .bind(created.session_id);
    D::run(&mut tx, q).await?;
    let audit = super::access::InTx::new(vec![
        AuditTarget::new("session", created.session_id),
        AuditTarget::new("retried_session", session_id),
    ]);
    audit.write::<D>(&mut tx).await?;
    tx.commit().await?;
    audit.committed();
    created.retry_of = Some(session_id);
    Ok(Some(created))
}

fn by_public_id() -> String {
    format!("SELECT {SESSION_COLS} FROM sync_sessions WHERE session_id = $1")
}

pub(super) async fn get<D: Backend>(
    s: &SqlStore<D>,
    session_id: Uuid,
) -> Result<Option<SessionDetail>> {
    // One snapshot for the session and its records, so totals match the records.
    let mut tx = s.snapshot().await?;
    let Some(row) = D::opt(&mut tx, Q::new(by_public_id()).bind(session_id)).await? else {
        return Ok(None);
    };
    let session = rows::session::<D>(&row)?;
    let q = Q::new("SELECT * FROM sync_instance_records WHERE session_id = $1 ORDER BY id")
        .bind(session.id);
    let records = D::all(&mut tx, q)
        .await?
        .iter()
        .map(rows::record::<D>)
        .collect::<Result<_>>()?;
    tx.commit().await?;
    Ok(Some(SessionDetail { session, records }))
}

pub(super) async fn summary<D: Backend>(
    s: &SqlStore<D>,
    session_id: Uuid,
) -> Result<Option<Session>> {
    let row = D::opt(&s.pool, Q::new(by_public_id()).bind(session_id)).await?;
    row.as_ref().map(rows::session::<D>).transpose()
}

pub(super) async fn record_counts<D: Backend>(
    s: &SqlStore<D>,
    session_id: Uuid,
) -> Result<Vec<(RecordStatus, i64)>> {
    let q = Q::new(
        "SELECT r.status AS status, COUNT(*) AS n FROM sync_instance_records r \
         JOIN sync_sessions s ON s.id = r.session_id WHERE s.session_id = $1 GROUP BY r.status",
    )
    .bind(session_id);
    D::all(&s.pool, q)
        .await?
        .iter()
        .map(|r| Ok((parse_status(D::get(r, "status")?)?, D::get(r, "n")?)))
        .collect()
}

pub(super) async fn records<D: Backend>(
    s: &SqlStore<D>,
    session_id: Uuid,
    f: &RecordFilter,
) -> Result<Option<(Session, Vec<Record>)>> {
    let Some(session) = summary(s, session_id).await? else {
        return Ok(None);
    };
    if f.status.is_some_and(|st| !session.may_hold(st)) {
        return Ok(Some((session, Vec::new())));
    }
    // Planned for its own session and position each time: a cached generic plan guessed
    // the table's average session and walked the primary key past an older session's
    // records (PostgreSQL, 90 ms at 100,000).
    let q = Q::new(D::records_page(f.status))
        .bind(session.id)
        .bind(f.after)
        .bind(f.limit)
        .unprepared();
    let records = D::all(&s.pool, q)
        .await?
        .iter()
        .map(rows::record::<D>)
        .collect::<Result<_>>()?;
    Ok(Some((session, records)))
}

pub(super) async fn list<D: Backend>(
    s: &SqlStore<D>,
    f: &SessionFilter,
) -> Result<(Vec<Session>, i64)> {
    const WHERE: &str = "(CAST($1 AS TEXT) IS NULL OR status = $1) \
         AND (CAST($2 AS TEXT) IS NULL OR sync_type = $2)";
    let q = Q::new(format!(
        "SELECT {SESSION_COLS} FROM sync_sessions WHERE {WHERE} \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(f.status.map(SessionStatus::as_str))
    .bind(f.sync_type.map(SyncType::as_str))
    .bind(f.limit)
    .bind(f.offset);
    let items = D::all(&s.pool, q)
        .await?
        .iter()
        .map(rows::session::<D>)
        .collect::<Result<_>>()?;
    let q = Q::new(format!(
        "SELECT COUNT(*) AS n FROM sync_sessions WHERE {WHERE}"
    ))
    .bind(f.status.map(SessionStatus::as_str))
    .bind(f.sync_type.map(SyncType::as_str));
    let total = count(&s.pool, q).await?;
    Ok((items, total))
}

pub(super) async fn ids_between<D: Backend>(
    s: &SqlStore<D>,
    lo: Uuid,
    hi: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>> {
    // SQLite stores them as lowercase hyphenated text, which sorts as the ids do.
    let q = Q::new(
        "SELECT session_id FROM sync_sessions WHERE session_id BETWEEN $1 AND $2 \
         ORDER BY session_id LIMIT $3",
    )
    .bind(lo)
    .bind(hi)
    .bind(limit);
    D::all(&s.pool, q)
        .await?
        .iter()
        .map(|r| D::get(r, "session_id"))
        .collect()
}
