//! The `postgres` kind: every role with its attributes, memberships, and privileges on
//! databases and schemas, read in one short read-only transaction on one connection.
//!
//! Options: `exclude_system_roles` (true: skip `pg_*` roles), `role_like` (a LIKE pattern
//! to restrict the roles read), `ssl_mode` and `ssl_root_cert` (TLS, see `tls.rs`).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

use crate::common::{classify, password, require, within};
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
        let host = require(&inst.host, "host", inst)?;
        let port = inst.port.unwrap_or(5432);
        let user = inst.username.clone().unwrap_or_else(|| "postgres".into());
        let addr = format!("{host}:{port}");
        let mut opts = PgConnectOptions::new()
            .host(host)
            .port(port)
            .username(&user)
            .database(inst.database.as_deref().unwrap_or("postgres"))
            .application_name("syncpool");
        let tls = Tls::of(inst)?;
        opts = opts.ssl_mode(tls.postgres());
        if let Some(pem) = &tls.root_cert {
            opts = opts.ssl_root_cert_from_pem(pem.clone());
        }
        if let Some(pw) = password(inst)? {
            opts = opts.password(&pw);
        }
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
                    .map_err(|e| classify(e, &addr, &user, None))
            },
        )
        .await;
        // Closed on every path: explicitly here, by drop when a timeout or cancel
        // abandons the future above.
        let _ = conn.close().await;
        result
    }
}

async fn read(
    conn: &mut PgConnection,
    inst: &InstanceSpec,
    settings: &SourceSettings,
) -> Result<Vec<Account>, sqlx::Error> {
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
    let filter = "rolname LIKE $1 AND (NOT $2 OR rolname NOT LIKE 'pg\\_%')";
    let roles = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT rolname, rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, \
         rolinherit, rolconnlimit, rolvaliduntil::text AS valid_until FROM pg_roles WHERE {filter} ORDER BY rolname"
    )))
    .bind(&like)
    .bind(exclude_system)
    .fetch_all(&mut *tx)
    .await?;
    let members = sqlx::query(
        "SELECT m.rolname AS member, r.rolname AS role, am.admin_option FROM pg_auth_members am \
         JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member \
         WHERE m.rolname LIKE $1 ORDER BY 1, 2",
    )
    .bind(&like)
    .fetch_all(&mut *tx)
    .await?;
    let dbs = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT r.rolname, d.datname, has_database_privilege(r.oid, d.oid, 'CONNECT') AS connect, \
         has_database_privilege(r.oid, d.oid, 'CREATE') AS create, has_database_privilege(r.oid, d.oid, 'TEMP') AS temp \
         FROM pg_roles r CROSS JOIN pg_database d WHERE d.datallowconn AND NOT d.datistemplate AND {filter} ORDER BY 1, 2"
    )))
    .bind(&like)
    .bind(exclude_system)
    .fetch_all(&mut *tx)
    .await?;
    let schemas = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT r.rolname, n.nspname, has_schema_privilege(r.oid, n.oid, 'USAGE') AS usage, \
         has_schema_privilege(r.oid, n.oid, 'CREATE') AS create FROM pg_roles r CROSS JOIN pg_namespace n \
         WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' AND {filter} ORDER BY 1, 2"
    )))
    .bind(&like)
    .bind(exclude_system)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let mut memberships: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in &members {
        memberships
            .entry(m.try_get("member")?)
            .or_default()
            .push(json!({"role": m.try_get::<String, _>("role")?, "admin_option": m.try_get::<bool, _>("admin_option")?}));
    }
    let mut privileges: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for d in &dbs {
        let granted: Vec<&str> = [
            ("CONNECT", "connect"),
            ("CREATE", "create"),
            ("TEMP", "temp"),
        ]
        .into_iter()
        .filter(|(_, col)| d.try_get::<bool, _>(*col).unwrap_or(false))
        .map(|(p, _)| p)
        .collect();
        if !granted.is_empty() {
            privileges.entry(d.try_get("rolname")?).or_default().push(
                json!({"level": "database", "database": d.try_get::<String, _>("datname")?, "privileges": granted}),
            );
        }
    }
    let database = inst.database.clone().unwrap_or_else(|| "postgres".into());
    for s in &schemas {
        let granted: Vec<&str> = [("USAGE", "usage"), ("CREATE", "create")]
            .into_iter()
            .filter(|(_, col)| s.try_get::<bool, _>(*col).unwrap_or(false))
            .map(|(p, _)| p)
            .collect();
        if !granted.is_empty() {
            privileges.entry(s.try_get("rolname")?).or_default().push(json!({
                "level": "schema", "database": database, "schema": s.try_get::<String, _>("nspname")?, "privileges": granted
            }));
        }
    }
    roles
        .iter()
        .map(|r| {
            let name: String = r.try_get("rolname")?;
            Ok(Account {
                attributes: json!({
                    "superuser": r.try_get::<bool, _>("rolsuper")?,
                    "can_login": r.try_get::<bool, _>("rolcanlogin")?,
                    "create_db": r.try_get::<bool, _>("rolcreatedb")?,
                    "create_role": r.try_get::<bool, _>("rolcreaterole")?,
                    "replication": r.try_get::<bool, _>("rolreplication")?,
                    "bypass_rls": r.try_get::<bool, _>("rolbypassrls")?,
                    "inherit": r.try_get::<bool, _>("rolinherit")?,
                    "connection_limit": r.try_get::<i32, _>("rolconnlimit")?,
                    "valid_until": r.try_get::<Option<String>, _>("valid_until")?,
                    "member_of": memberships.remove(&name).unwrap_or_default(),
                }),
                privileges: Value::Array(privileges.remove(&name).unwrap_or_default()),
                username: name,
                host: String::new(),
            })
        })
        .collect()
}
