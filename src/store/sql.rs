//! The seam below the storage logic: a statement with its arguments ([`Q`]), how each
//! database binds the values it stores differently ([`Dialect`]), and typed reads of a
//! row ([`Fetch`], [`Col`]).
//!
//! The logic in `store/common/` is written once over `D: Fetch`; each database's folder
//! holds its SQL text and the few operations that really differ (docs/ARCHITECTURE.md).
//! sqlx can be generic over its `Database` trait, but every generic function would then
//! repeat a dozen `Encode`/`Decode` bounds; here they are stated once, on the blanket
//! [`Fetch`] impl, and the generic code needs only `D: Fetch`.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{Database, Executor, IntoArguments, Pool, Transaction};
use uuid::Uuid;

use super::{Result, StoreError};

/// One argument of a statement. The common kinds bind the same way everywhere; the
/// others are stored differently per database and bound by [`Dialect::bind_special`].
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I64(i64),
    OptI64(Option<i64>),
    I32(i32),
    F64(f64),
    Bool(bool),
    Text(String),
    OptText(Option<String>),
    Bytes(Vec<u8>),
    /// A session's public id (SQLite: lowercase hyphenated text; PostgreSQL: `uuid`).
    Uuid(Uuid),
    /// A time in syncpool's tables (SQLite: ISO 8601 text in UTC, millisecond precision,
    /// which sorts as time does; PostgreSQL: `timestamptz`).
    Time(DateTime<Utc>),
    OptTime(Option<DateTime<Utc>>),
    /// A time in apalis' jobs table (SQLite: Unix seconds; PostgreSQL: `timestamptz`).
    QueueTime(DateTime<Utc>),
    /// A JSON document (SQLite: text; PostgreSQL: `jsonb`).
    Json(serde_json::Value),
    /// A list of ids for [`Dialect::in_list`] (SQLite: a JSON array; PostgreSQL: `int8[]`).
    Ids(Vec<i64>),
    /// A list of strings for [`Dialect::in_list`].
    Texts(Vec<String>),
}

macro_rules! arg_from {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for Arg {
            fn from(v: $t) -> Self {
                Arg::$v(v.into())
            }
        })*
    };
}
arg_from!(i64 => I64, Option<i64> => OptI64, i32 => I32, f64 => F64, bool => Bool,
    String => Text, &str => Text, Option<String> => OptText, Uuid => Uuid,
    DateTime<Utc> => Time, Option<DateTime<Utc>> => OptTime);

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::OptText(v.map(str::to_string))
    }
}

impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Self {
        Arg::OptText(v.clone())
    }
}

impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(v.clone())
    }
}

/// A statement and its arguments, `$1`, `$2`, ... in the text on both databases.
#[derive(Debug, Clone)]
pub(crate) struct Q {
    sql: String,
    args: Vec<Arg>,
    persistent: bool,
}

impl Q {
    pub(crate) fn new(sql: impl Into<String>) -> Self {
        Q {
            sql: sql.into(),
            args: Vec::new(),
            persistent: true,
        }
    }
    /// Adds the next argument.
    pub(crate) fn bind(mut self, a: impl Into<Arg>) -> Self {
        self.args.push(a.into());
        self
    }
    /// Planned for its arguments each time, not from a cached generic plan (PostgreSQL:
    /// an unnamed statement; see the callers for where a generic plan went wrong).
    pub(crate) fn unprepared(mut self) -> Self {
        self.persistent = false;
        self
    }
}

/// Where a statement runs: on the pool, or on a transaction's connection.
pub(crate) enum Ex<'c, D: Database> {
    Pool(&'c Pool<D>),
    Conn(&'c mut D::Connection),
}

impl<'c, D: Database> From<&'c Pool<D>> for Ex<'c, D> {
    fn from(p: &'c Pool<D>) -> Self {
        Ex::Pool(p)
    }
}

impl<'c, 't, D: Database> From<&'c mut Transaction<'t, D>> for Ex<'c, D> {
    fn from(t: &'c mut Transaction<'t, D>) -> Self {
        Ex::Conn(&mut **t)
    }
}

type SqlxQuery<'q, D> = sqlx::query::Query<'q, D, <D as Database>::Arguments>;

/// What differs in how the two databases take and give values.
pub(crate) trait Dialect: Database + sqlx::database::HasStatementCache {
    /// Binds the kinds of [`Arg`] stored differently here.
    fn bind_special(q: SqlxQuery<'_, Self>, a: Arg) -> SqlxQuery<'_, Self>;
    /// `column IN (the list in parameter $n)`: SQLite reads a JSON array with
    /// `json_each`, PostgreSQL an array with `ANY`.
    fn in_list(column: &str, n: usize) -> String;
    /// A session id column.
    fn uuid_at(row: &Self::Row, col: &str) -> Result<Uuid>;
    /// A JSON column; `Null` where SQLite holds text that is not JSON.
    fn json_at(row: &Self::Row, col: &str) -> Result<serde_json::Value>;
    /// A time column of apalis' jobs table.
    fn queue_time_at(row: &Self::Row, col: &str) -> Result<DateTime<Utc>>;
    /// Rows a statement changed (sqlx has no trait for it; both results have one).
    fn rows_affected(r: &Self::QueryResult) -> u64;
}

/// Runs [`Q`]s and reads their rows; implemented once, for both databases, below.
pub(crate) trait Fetch: Dialect {
    fn all<'c>(e: impl Into<Ex<'c, Self>>, q: Q) -> BoxFuture<'c, Result<Vec<Self::Row>>>;
    fn opt<'c>(e: impl Into<Ex<'c, Self>>, q: Q) -> BoxFuture<'c, Result<Option<Self::Row>>>;
    /// Rows affected.
    fn run<'c>(e: impl Into<Ex<'c, Self>>, q: Q) -> BoxFuture<'c, Result<u64>>;
    fn i64_at(row: &Self::Row, col: &str) -> Result<i64>;
    fn opt_i64_at(row: &Self::Row, col: &str) -> Result<Option<i64>>;
    fn f64_at(row: &Self::Row, col: &str) -> Result<f64>;
    fn bool_at(row: &Self::Row, col: &str) -> Result<bool>;
    fn text_at(row: &Self::Row, col: &str) -> Result<String>;
    fn opt_text_at(row: &Self::Row, col: &str) -> Result<Option<String>>;
    fn bytes_at(row: &Self::Row, col: &str) -> Result<Vec<u8>>;
    fn time_at(row: &Self::Row, col: &str) -> Result<DateTime<Utc>>;
    fn opt_time_at(row: &Self::Row, col: &str) -> Result<Option<DateTime<Utc>>>;

    /// The first row, which the statement always returns (a COUNT, a RETURNING).
    fn one<'c>(e: impl Into<Ex<'c, Self>>, q: Q) -> BoxFuture<'c, Result<Self::Row>> {
        let fut = Self::opt(e, q);
        Box::pin(async move {
            fut.await?
                .ok_or_else(|| StoreError::Other("a statement returned no row".into()))
        })
    }
    /// Column `col` of `row` as a `T`.
    fn get<T: Col<Self>>(row: &Self::Row, col: &str) -> Result<T> {
        T::at(row, col)
    }
}

/// A type a column is read as.
pub(crate) trait Col<D: Fetch>: Sized {
    fn at(row: &D::Row, col: &str) -> Result<Self>;
}

macro_rules! col {
    ($($t:ty => $f:ident),* $(,)?) => {
        $(impl<D: Fetch> Col<D> for $t {
            fn at(row: &D::Row, col: &str) -> Result<Self> {
                D::$f(row, col)
            }
        })*
    };
}
col!(i64 => i64_at, Option<i64> => opt_i64_at, f64 => f64_at, bool => bool_at,
    String => text_at, Option<String> => opt_text_at, Vec<u8> => bytes_at,
    DateTime<Utc> => time_at, Option<DateTime<Utc>> => opt_time_at, Uuid => uuid_at,
    serde_json::Value => json_at);

fn build<D: Fetch>(q: Q) -> SqlxQuery<'static, D>
where
    i64: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D>,
    i32: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D>,
    f64: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D>,
    bool: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D>,
    String: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D>,
    Vec<u8>: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D>,
    Option<i64>: for<'q> sqlx::Encode<'q, D>,
    Option<String>: for<'q> sqlx::Encode<'q, D>,
{
    let mut out = sqlx::query::<D>(sqlx::AssertSqlSafe(q.sql)).persistent(q.persistent);
    for a in q.args {
        out = match a {
            Arg::I64(v) => out.bind(v),
            Arg::OptI64(v) => out.bind(v),
            Arg::I32(v) => out.bind(v),
            Arg::F64(v) => out.bind(v),
            Arg::Bool(v) => out.bind(v),
            Arg::Text(v) => out.bind(v),
            Arg::OptText(v) => out.bind(v),
            Arg::Bytes(v) => out.bind(v),
            special => D::bind_special(out, special),
        };
    }
    out
}

fn read<'r, T, D>(row: &'r D::Row, col: &str) -> Result<T>
where
    D: Database,
    T: sqlx::Decode<'r, D> + sqlx::Type<D>,
    for<'a> &'a str: sqlx::ColumnIndex<D::Row>,
{
    Ok(sqlx::Row::try_get(row, col)?)
}

impl<D> Fetch for D
where
    D: Dialect,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'a> &'a str: sqlx::ColumnIndex<D::Row>,
    i64: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D> + for<'r> sqlx::Decode<'r, D>,
    i32: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D>,
    f64: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D> + for<'r> sqlx::Decode<'r, D>,
    bool: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D> + for<'r> sqlx::Decode<'r, D>,
    String: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D> + for<'r> sqlx::Decode<'r, D>,
    Vec<u8>: for<'q> sqlx::Encode<'q, D> + sqlx::Type<D> + for<'r> sqlx::Decode<'r, D>,
    DateTime<Utc>: sqlx::Type<D> + for<'r> sqlx::Decode<'r, D>,
    Option<i64>: for<'q> sqlx::Encode<'q, D>,
    Option<String>: for<'q> sqlx::Encode<'q, D>,
{
    fn all<'c>(e: impl Into<Ex<'c, Self>>, q: Q) -> BoxFuture<'c, Result<Vec<Self::Row>>> {
        let q = build::<D>(q);
        match e.into() {
            Ex::Pool(p) => Box::pin(async move { Ok(p.fetch_all(q).await?) }),
            Ex::Conn(c) => Box::pin(async move { Ok(c.fetch_all(q).await?) }),
        }
    }
    fn opt<'c>(e: impl Into<Ex<'c, Self>>, q: Q) -> BoxFuture<'c, Result<Option<Self::Row>>> {
        let q = build::<D>(q);
        match e.into() {
            Ex::Pool(p) => Box::pin(async move { Ok(p.fetch_optional(q).await?) }),
            Ex::Conn(c) => Box::pin(async move { Ok(c.fetch_optional(q).await?) }),
        }
    }
    fn run<'c>(e: impl Into<Ex<'c, Self>>, q: Q) -> BoxFuture<'c, Result<u64>> {
        let q = build::<D>(q);
        match e.into() {
            Ex::Pool(p) => Box::pin(async move { Ok(D::rows_affected(&p.execute(q).await?)) }),
            Ex::Conn(c) => Box::pin(async move { Ok(D::rows_affected(&c.execute(q).await?)) }),
        }
    }
    fn i64_at(row: &Self::Row, col: &str) -> Result<i64> {
        read::<i64, D>(row, col)
    }
    fn opt_i64_at(row: &Self::Row, col: &str) -> Result<Option<i64>> {
        read::<Option<i64>, D>(row, col)
    }
    fn f64_at(row: &Self::Row, col: &str) -> Result<f64> {
        read::<f64, D>(row, col)
    }
    fn bool_at(row: &Self::Row, col: &str) -> Result<bool> {
        read::<bool, D>(row, col)
    }
    fn text_at(row: &Self::Row, col: &str) -> Result<String> {
        read::<String, D>(row, col)
    }
    fn opt_text_at(row: &Self::Row, col: &str) -> Result<Option<String>> {
        read::<Option<String>, D>(row, col)
    }
    fn bytes_at(row: &Self::Row, col: &str) -> Result<Vec<u8>> {
        read::<Vec<u8>, D>(row, col)
    }
    fn time_at(row: &Self::Row, col: &str) -> Result<DateTime<Utc>> {
        read::<DateTime<Utc>, D>(row, col)
    }
    fn opt_time_at(row: &Self::Row, col: &str) -> Result<Option<DateTime<Utc>>> {
        read::<Option<DateTime<Utc>>, D>(row, col)
    }
}
