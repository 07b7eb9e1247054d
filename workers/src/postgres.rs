//! The `postgres` kind: every role with its attributes, memberships, and privileges on
//! databases and schemas, read in one short read-only transaction on one connection.
//!
//! Options: `exclude_system_roles` (true: skip `pg_*` roles), `role_like` (a LIKE pattern
//! to restrict the roles read), `ssl_mode` and `ssl_root_cert` (TLS, see `tls.rs`).

use std::collections::BTreeMap;

use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

use crate::common::{Budget, ReadError, allowed_host, classify, password, within};
use crate::tls::Tls;
use crate::{Account, AccountSource, InstanceSpec, SourceError, SourceSettings};

/// The `postgres` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresSource;

#[async_trait::async_trait]
impl AccountSource for PostgresSource {
    async fn fetch_accounts(
        &self,
        inst: &InstanceSpec,
        settings: &SourceSettings,
    ) -> Result<Vec<Account>, SourceError> {
        let host = allowed_host(inst, settings)?;
        let port = inst.port.unwrap_or(5432);
        let user = inst.username.clone().unwrap_or_else(|| "postgres".into());
        let addr = format!("{host}:{port}");
        // Not `new()`: it reads `~/.pgpass` (and `PGPASSWORD`, below) from the worker's
        // environment, meant for syncpool's own database, and would send that password
        // to whatever host an instance names (docs/SECURITY.md).
        let mut opts = PgConnectOptions::new_without_pgpass()
            .host(host)
            .port(port)
            .username(&user)
            .database(inst.database.as_deref().unwrap_or("postgres"))
            .application_name("syncpool");
        let tls = Tls::of(inst).await?;
        opts = opts.ssl_mode(tls.postgres());
        if let Some(pem) = &tls.root_cert {
            opts = opts.ssl_root_cert_from_pem(pem.clone());
        }
        // Always set, so that `PGPASSWORD` never stands in for an instance without one.
        let pw = password(inst).await?.unwrap_or_default();
        opts = opts.password(&pw);
        let mut conn = within(
            settings.connect_timeout,
            &format!("connecting to {addr}"),
            async {
                PgConnection::connect_with(&opts)
                    .await
                    .map_err(|e| classify(e, &addr, &user, Some(&tls)))
            },
        )
        .await?;
        let result = within(
            settings.statement_timeout * 4,
            &format!("reading accounts at {addr}"),
            async {
                read(&mut conn, inst, settings)
                    .await
                    .map_err(|e| e.classify(&addr, &user))
            },
        )
        .await;
        // Closed on every path: explicitly here, by drop when a timeout or cancel
        // abandons the future above.
        let _ = conn.close().await;
        result
    }
}

/// A role as read from `pg_roles`, before its memberships and privileges are known.
struct Role {
    name: String,
    attributes: serde_json::Map<String, Value>,
}

/// Selects the roles read: `$1` is the `role_like` pattern, `$2` whether `pg_*` roles are
/// left out.
const ROLE_FILTER: &str = "rolname LIKE $1 AND (NOT $2 OR rolname NOT LIKE 'pg\\_%')";

/// Every query streams its rows and counts them against the [`Budget`] as they arrive, so
/// an instance with too many roles or grants fails before it fills the worker's memory.
async fn read(
    conn: &mut PgConnection,
    inst: &InstanceSpec,
    settings: &SourceSettings,
) -> Result<Vec<Account>, ReadError> {
    let mut budget = Budget::new(&inst.name, settings);
    let exclude_system = inst
        .options
        .get("exclude_system_roles")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let like = inst
        .options
        .get("role_like")
        .and_then(Value::as_str)
        .unwrap_or("%")
        .to_string();
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {}",
        settings.statement_timeout.as_millis()
    )))
    .execute(&mut *tx)
    .await?;
    let roles = roles(&mut tx, &mut budget, &like, exclude_system, settings).await?;
    // Rows of roles that were not read (filtered out, or system roles) still count toward
    // the total, but are not kept.
    let memberships = memberships(&mut tx, &mut budget, &like).await?;
    let mut privileges: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    database_privileges(&mut tx, &mut budget, &like, exclude_system, &mut privileges).await?;
    let database = inst.database.clone().unwrap_or_else(|| "postgres".into());
    schema_privileges(
        &mut tx,
        &mut budget,
        &like,
        exclude_system,
        &database,
        &mut privileges,
    )
    .await?;
    tx.commit().await?;

    Ok(accounts(roles, memberships, privileges))
}

/// Reads the roles of `pg_roles` that the filter selects, with their attributes.
async fn roles(
    conn: &mut PgConnection,
    budget: &mut Budget<'_>,
    like: &str,
    exclude_system: bool,
    settings: &SourceSettings,
) -> Result<Vec<Role>, ReadError> {
    const FIELD: usize = Budget::FIELD;
    let mut roles = Vec::new();
    // One row past the limit is enough to know it is passed.
    let limit = i64::try_from(settings.max_accounts)
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT rolname, rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, \
         rolinherit, rolconnlimit, rolvaliduntil::text AS valid_until FROM pg_roles WHERE {ROLE_FILTER} \
         ORDER BY rolname LIMIT $3"
    )))
    .bind(like)
    .bind(exclude_system)
    .bind(limit)
    .fetch(conn);
    while let Some(r) = rows.try_next().await? {
        let name: String = r.try_get("rolname")?;
        let valid_until: Option<String> = r.try_get("valid_until")?;
        budget.account(
            &name,
            name.len() + valid_until.as_ref().map_or(0, String::len) + 8 * FIELD,
        )?;
        let Value::Object(attributes) = json!({
            "superuser": r.try_get::<bool, _>("rolsuper")?,
            "can_login": r.try_get::<bool, _>("rolcanlogin")?,
            "create_db": r.try_get::<bool, _>("rolcreatedb")?,
            "create_role": r.try_get::<bool, _>("rolcreaterole")?,
            "replication": r.try_get::<bool, _>("rolreplication")?,
            "bypass_rls": r.try_get::<bool, _>("rolbypassrls")?,
            "inherit": r.try_get::<bool, _>("rolinherit")?,
            "connection_limit": r.try_get::<i32, _>("rolconnlimit")?,
            "valid_until": valid_until,
        }) else {
            unreachable!("a JSON object literal")
        };
        roles.push(Role { name, attributes });
    }
    Ok(roles)
}

/// Reads which roles each role is a member of, by member name.
async fn memberships(
    conn: &mut PgConnection,
    budget: &mut Budget<'_>,
    like: &str,
) -> Result<BTreeMap<String, Vec<Value>>, ReadError> {
    const FIELD: usize = Budget::FIELD;
    let mut memberships: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut rows = sqlx::query(
        "SELECT m.rolname AS member, r.rolname AS role, am.admin_option FROM pg_auth_members am \
         JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member \
         WHERE m.rolname LIKE $1 ORDER BY 1, 2",
    )
    .bind(like)
    .fetch(conn);
    while let Some(m) = rows.try_next().await? {
        let member: String = m.try_get("member")?;
        let role: String = m.try_get("role")?;
        budget.charge(&member, member.len() + role.len() + FIELD)?;
        if budget.has(&member) {
            memberships
                .entry(member)
                .or_default()
                .push(json!({"role": role, "admin_option": m.try_get::<bool, _>("admin_option")?}));
        }
    }
    Ok(memberships)
}

/// Adds each role's privileges on the databases that accept connections to `privileges`.
async fn database_privileges(
    conn: &mut PgConnection,
    budget: &mut Budget<'_>,
    like: &str,
    exclude_system: bool,
    privileges: &mut BTreeMap<String, Vec<Value>>,
) -> Result<(), ReadError> {
    const FIELD: usize = Budget::FIELD;
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT r.rolname, d.datname, has_database_privilege(r.oid, d.oid, 'CONNECT') AS connect, \
         has_database_privilege(r.oid, d.oid, 'CREATE') AS create, has_database_privilege(r.oid, d.oid, 'TEMP') AS temp \
         FROM pg_roles r CROSS JOIN pg_database d WHERE d.datallowconn AND NOT d.datistemplate AND {ROLE_FILTER} ORDER BY 1, 2"
    )))
    .bind(like)
    .bind(exclude_system)
    .fetch(conn);
    while let Some(d) = rows.try_next().await? {
        let name: String = d.try_get("rolname")?;
        let database: String = d.try_get("datname")?;
        budget.charge(&name, name.len() + database.len() + 3 * FIELD)?;
        let granted = granted(
            &d,
            &[
                ("CONNECT", "connect"),
                ("CREATE", "create"),
                ("TEMP", "temp"),
            ],
        );
        if !granted.is_empty() && budget.has(&name) {
            privileges
                .entry(name)
                .or_default()
                .push(json!({"level": "database", "database": database, "privileges": granted}));
        }
    }
    Ok(())
}

/// The privileges whose `has_*_privilege` column in `row` is true, by name.
fn granted(row: &sqlx::postgres::PgRow, checks: &[(&'static str, &str)]) -> Vec<&'static str> {
    checks
        .iter()
        .filter(|(_, col)| row.try_get::<bool, _>(*col).unwrap_or(false))
        .map(|(p, _)| *p)
        .collect()
}

/// Adds each role's privileges on the schemas of `database` (the one connected to) to
/// `privileges`.
async fn schema_privileges(
    conn: &mut PgConnection,
    budget: &mut Budget<'_>,
    like: &str,
    exclude_system: bool,
    database: &str,
    privileges: &mut BTreeMap<String, Vec<Value>>,
) -> Result<(), ReadError> {
    const FIELD: usize = Budget::FIELD;
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT r.rolname, n.nspname, has_schema_privilege(r.oid, n.oid, 'USAGE') AS usage, \
         has_schema_privilege(r.oid, n.oid, 'CREATE') AS create FROM pg_roles r CROSS JOIN pg_namespace n \
         WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' AND {ROLE_FILTER} ORDER BY 1, 2"
    )))
    .bind(like)
    .bind(exclude_system)
    .fetch(conn);
    while let Some(s) = rows.try_next().await? {
        let name: String = s.try_get("rolname")?;
        let schema: String = s.try_get("nspname")?;
        budget.charge(&name, name.len() + schema.len() + 2 * FIELD)?;
        let granted = granted(&s, &[("USAGE", "usage"), ("CREATE", "create")]);
        if !granted.is_empty() && budget.has(&name) {
            privileges.entry(name).or_default().push(json!({
                "level": "schema", "database": database, "schema": schema, "privileges": granted
            }));
        }
    }
    Ok(())
}

/// Joins each role with its memberships and privileges into an account.
fn accounts(
    roles: Vec<Role>,
    mut memberships: BTreeMap<String, Vec<Value>>,
    mut privileges: BTreeMap<String, Vec<Value>>,
) -> Vec<Account> {
    roles
        .into_iter()
        .map(
            |Role {
                 name,
                 mut attributes,
             }| {
                attributes.insert(
                    "member_of".into(),
                    Value::Array(memberships.remove(&name).unwrap_or_default()),
                );
                Account {
                    attributes: Value::Object(attributes),
                    privileges: Value::Array(privileges.remove(&name).unwrap_or_default()),
                    username: name,
                    host: String::new(),
                }
            },
        )
        .collect()
}
