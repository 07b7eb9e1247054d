//! The `mysql` kind (MySQL and MariaDB): every account `user@host` with its attributes and
//! its grants, `SHOW GRANTS` parsed into structured privileges (global, database, table,
//! routine, role, proxy).
//!
//! Options: `user_like` (a LIKE pattern to restrict the accounts read), `ssl_mode` and
//! `ssl_root_cert` (TLS, see `tls.rs`).

use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{Connection, Row};

use crate::common::{Budget, ReadError, allowed_host, classify, password, within};
use crate::tls::Tls;
use crate::{Account, AccountSource, InstanceSpec, SourceError, SourceSettings};

/// The `mysql` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct MysqlSource;

#[async_trait::async_trait]
impl AccountSource for MysqlSource {
    async fn fetch_accounts(
        &self,
        inst: &InstanceSpec,
        settings: &SourceSettings,
    ) -> Result<Vec<Account>, SourceError> {
        let host = allowed_host(inst, settings)?;
        let port = inst.port.unwrap_or(3306);
        let user = inst.username.clone().unwrap_or_else(|| "root".into());
        let addr = format!("{host}:{port}");
        let mut opts = MySqlConnectOptions::new()
            .host(host)
            .port(port)
            .username(&user);
        let tls = Tls::of(inst).await?;
        opts = opts.ssl_mode(tls.mysql());
        if let Some(pem) = &tls.root_cert {
            opts = opts.ssl_ca_from_pem(pem.clone());
        }
        if let Some(db) = &inst.database {
            opts = opts.database(db);
        }
        if let Some(pw) = password(inst).await? {
            opts = opts.password(&pw);
        }
        let mut conn = within(
            settings.connect_timeout,
            &format!("connecting to {addr}"),
            async {
                MySqlConnection::connect_with(&opts)
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
        let _ = conn.close().await;
        result
    }
}

/// MariaDB keeps the lock flag in mysql.global_priv; MySQL has it in mysql.user.
const USERS_MARIADB: &str = "SELECT CAST(u.User AS CHAR) AS user, CAST(u.Host AS CHAR) AS host, \
     CAST(u.password_expired AS CHAR) AS expired, CAST(u.plugin AS CHAR) AS plugin, \
     CAST(u.ssl_type AS CHAR) AS ssl_type, CAST(u.is_role AS CHAR) AS is_role, \
     CAST(COALESCE(JSON_VALUE(g.Priv, '$.account_locked'), 'false') AS CHAR) AS locked \
     FROM mysql.user u LEFT JOIN mysql.global_priv g ON g.User = u.User AND g.Host = u.Host \
     WHERE u.User LIKE ? ORDER BY u.User, u.Host LIMIT ?";
const USERS_MYSQL: &str = "SELECT CAST(User AS CHAR) AS user, CAST(Host AS CHAR) AS host, \
     CAST(password_expired AS CHAR) AS expired, CAST(plugin AS CHAR) AS plugin, \
     CAST(ssl_type AS CHAR) AS ssl_type, 'N' AS is_role, \
     CAST(IF(account_locked = 'Y', 'true', 'false') AS CHAR) AS locked \
     FROM mysql.user WHERE User LIKE ? ORDER BY User, Host LIMIT ?";

/// An account as read from `mysql.user`, before its grants.
struct User {
    user: String,
    host: String,
    key: String,
    attributes: Value,
}

/// The account list and then each account's `SHOW GRANTS`, every row counted against the
/// [`Budget`] as it arrives (a grant line toward its account and the total).
async fn read(
    conn: &mut MySqlConnection,
    inst: &InstanceSpec,
    settings: &SourceSettings,
) -> Result<Vec<Account>, ReadError> {
    let like = inst
        .options
        .get("user_like")
        .and_then(Value::as_str)
        .unwrap_or("%")
        .to_string();
    // MariaDB and MySQL name the statement timeout differently; whichever fails is the
    // other server's.
    let secs = settings.statement_timeout.as_secs_f64();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET SESSION max_statement_time = {secs}"
    )))
    .execute(&mut *conn)
    .await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET SESSION max_execution_time = {}",
        (secs * 1000.0) as u64
    )))
    .execute(&mut *conn)
    .await;
    let mut tx = conn.begin_with("START TRANSACTION READ ONLY").await?;
    let mut budget = Budget::new(&inst.name, settings);
    let users = match users(&mut tx, USERS_MARIADB, &like, &mut budget).await {
        Err(ReadError::Db(sqlx::Error::Database(e)))
            if e.code().as_deref() == Some("42S02") || e.code().as_deref() == Some("1146") =>
        {
            budget = Budget::new(&inst.name, settings);
            users(&mut tx, USERS_MYSQL, &like, &mut budget).await?
        }
        other => other?,
    };
    let mut accounts = Vec::with_capacity(users.len());
    for User {
        user,
        host,
        key,
        attributes,
    } in users
    {
        let mut privileges = Vec::new();
        let mut grants = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
            "SHOW GRANTS FOR {}@{}",
            quote(&user),
            quote(&host)
        )))
        .fetch(&mut *tx);
        while let Some(grant) = grants.try_next().await? {
            budget.charge(&key, grant.len())?;
            privileges.extend(parse_grant(&grant));
        }
        drop(grants);
        accounts.push(Account {
            attributes,
            privileges: Value::Array(privileges),
            username: user,
            host,
        });
    }
    tx.commit().await?;
    Ok(accounts)
}

async fn users(
    conn: &mut MySqlConnection,
    sql: &'static str,
    like: &str,
    budget: &mut Budget<'_>,
) -> Result<Vec<User>, ReadError> {
    const FIELD: usize = Budget::FIELD;
    // One row past the limit is enough to know it is passed.
    let limit = u64::try_from(budget.max_accounts())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut rows = sqlx::query(sql).bind(like).bind(limit).fetch(conn);
    let mut users = Vec::new();
    while let Some(r) = rows.try_next().await? {
        let user: String = r.try_get("user")?;
        let host: String = r.try_get("host")?;
        let plugin: String = r.try_get("plugin")?;
        let ssl: String = r.try_get("ssl_type")?;
        let key = format!("{user}@{host}");
        budget.account(
            &key,
            user.len() + host.len() + plugin.len() + ssl.len() + 3 * FIELD,
        )?;
        let attributes = json!({
            // MariaDB's JSON_VALUE renders a JSON true as "1".
            "locked": matches!(r.try_get::<String, _>("locked")?.as_str(), "true" | "1"),
            "password_expired": r.try_get::<String, _>("expired")? == "Y",
            "plugin": plugin,
            "ssl_required": if ssl.is_empty() { Value::Null } else { Value::String(ssl) },
            "is_role": r.try_get::<String, _>("is_role")? == "Y",
        });
        users.push(User {
            user,
            host,
            key,
            attributes,
        });
    }
    Ok(users)
}

/// Quotes a string literal for `SHOW GRANTS FOR 'user'@'host'` (it takes no parameters).
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Strips one level of backquotes or quotes from an identifier.
fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['`', '\'', '"'] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].replace(&format!("{q}{q}"), &q.to_string());
        }
    }
    s.to_string()
}

/// Splits on commas that are outside parentheses (column lists) and quotes.
fn split_privileges(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quote) = (vec![], String::new(), 0, None::<char>);
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '`' | '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Finds the ASCII `needle` (ASCII case-insensitive) outside quotes, as a byte offset
/// into `s` itself. Matching on the bytes of `s`, never on an upper-cased copy, matters:
/// upper-casing changes the byte length of some characters (`ı` becomes `I`), and offsets
/// from the copy would cut `s` inside a character or in the wrong place.
fn find_keyword(s: &str, needle: &str) -> Option<usize> {
    let (bytes, needle) = (s.as_bytes(), needle.as_bytes());
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '`' || c == '\'' => quote = Some(c),
            None if bytes[i..]
                .get(..needle.len())
                .is_some_and(|b| b.eq_ignore_ascii_case(needle)) =>
            {
                return Some(i);
            }
            None => {}
        }
    }
    None
}

/// True when `s` starts with the ASCII `prefix`, ignoring ASCII case.
fn starts_with_keyword(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|b| b.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Parses one line of `SHOW GRANTS` into a structured privilege, or `None` for a line it
/// does not recognise (it is then left out rather than guessed at).
pub fn parse_grant(line: &str) -> Option<Value> {
    let line = line.trim();
    let rest = line.strip_prefix("GRANT ")?;
    let grant_option = line.to_uppercase().contains("WITH GRANT OPTION")
        || line.to_uppercase().contains("WITH ADMIN OPTION");
    let Some(on) = find_keyword(rest, " ON ") else {
        // `GRANT role TO user`: a role membership.
        let to = find_keyword(rest, " TO ")?;
        let roles: Vec<String> = split_privileges(&rest[..to])
            .iter()
            .map(|r| unquote(r))
            .collect();
        return Some(json!({"level": "role", "roles": roles, "admin_option": grant_option}));
    };
    let privs = &rest[..on];
    let after = &rest[on + 4..];
    let to = find_keyword(after, " TO ")?;
    let mut object = after[..to].trim();
    let mut kind = None;
    for k in ["FUNCTION ", "PROCEDURE ", "PACKAGE BODY ", "PACKAGE "] {
        if starts_with_keyword(object, k) {
            kind = Some(k.trim().to_lowercase());
            object = object[k.len()..].trim();
        }
    }
    let privileges: Vec<String> = split_privileges(privs)
        .iter()
        .map(|p| p.to_uppercase().replace("  ", " "))
        .collect();
    if privileges.iter().any(|p| p == "PROXY") {
        let (u, h) = object.split_once('@').unwrap_or((object, ""));
        return Some(
            json!({"level": "proxy", "user": unquote(u), "host": unquote(h), "grant_option": grant_option}),
        );
    }
    let (db, table) = match find_keyword(object, ".") {
        Some(dot) => (unquote(&object[..dot]), unquote(&object[dot + 1..])),
        None => (unquote(object), "*".to_string()),
    };
    let level = match (db.as_str(), table.as_str(), &kind) {
        (_, _, Some(_)) => "routine",
        ("*", "*", None) => "global",
        (_, "*", None) => "database",
        _ => "table",
    };
    let mut v = json!({"level": level, "privileges": privileges, "grant_option": grant_option});
    if level != "global" {
        v["database"] = json!(db);
    }
    if level == "table" {
        v["table"] = json!(table);
    }
    if level == "routine" {
        v["routine"] = json!(table);
        v["routine_type"] = json!(kind);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::parse_grant;
    use serde_json::json;

    #[test]
    fn global_grants_are_parsed_with_their_grant_option() {
        assert_eq!(
            parse_grant("GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION")
                .unwrap(),
            json!({"level": "global", "privileges": ["ALL PRIVILEGES"], "grant_option": true})
        );
        assert_eq!(
            parse_grant("GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*ABC'").unwrap(),
            json!({"level": "global", "privileges": ["USAGE"], "grant_option": false})
        );
    }

    #[test]
    fn database_and_table_grants_keep_their_objects() {
        assert_eq!(
            parse_grant("GRANT SELECT, INSERT ON `shop`.* TO `app`@`10.%`").unwrap(),
            json!({"level": "database", "database": "shop", "privileges": ["SELECT", "INSERT"], "grant_option": false})
        );
        assert_eq!(
            parse_grant(
                "GRANT SELECT (`id`, `name`), UPDATE (`name`) ON `shop`.`users` TO 'app'@'%'"
            )
            .unwrap(),
            json!({"level": "table", "database": "shop", "table": "users",
                   "privileges": ["SELECT (`ID`, `NAME`)", "UPDATE (`NAME`)"], "grant_option": false})
        );
    }

    #[test]
    fn roles_routines_and_proxies_are_recognised() {
        assert_eq!(
            parse_grant("GRANT `reader`,`writer` TO `bob`@`%` WITH ADMIN OPTION").unwrap(),
            json!({"level": "role", "roles": ["reader", "writer"], "admin_option": true})
        );
        assert_eq!(
            parse_grant("GRANT EXECUTE ON PROCEDURE `db`.`p` TO `u`@`h`").unwrap()["level"],
            "routine"
        );
        assert_eq!(
            parse_grant("GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION").unwrap()["level"],
            "proxy"
        );
        assert!(parse_grant("REVOKE SELECT ON *.* FROM x").is_none());
    }

    #[test]
    fn names_whose_upper_case_changes_length_parse_right() {
        assert_eq!(
            parse_grant("GRANT SELECT ON `երևան_1`.* TO `u`@`%`").unwrap(),
            json!({"level": "database", "database": "երևան_1", "privileges": ["SELECT"], "grant_option": false})
        );
        assert_eq!(
            parse_grant("GRANT INSERT ON `kayıtlar_1`.* TO `u`@`%`").unwrap(),
            json!({"level": "database", "database": "kayıtlar_1", "privileges": ["INSERT"], "grant_option": false})
        );
        assert_eq!(
            parse_grant("GRANT SELECT ON `straße`.`ıi` TO 'ü'@'%'").unwrap(),
            json!({"level": "table", "database": "straße", "table": "ıi", "privileges": ["SELECT"], "grant_option": false})
        );
        // `ı` upper-cases to the one-byte `I`: no keyword may be matched through it.
        assert!(parse_grant("GRANT EXECUTE ON functıon `d`.`f` TO `u`@`h`").is_some());
    }

    /// A generator of strings from every Unicode plane, weighted towards the characters
    /// the parser looks at, so that random lines often look like real grants.
    fn arbitrary(rng: &mut impl rand::Rng, len: usize) -> String {
        const PIECES: &[&str] = &[
            "GRANT ",
            " ON ",
            " TO ",
            " WITH GRANT OPTION",
            ".",
            "*",
            "`",
            "'",
            "\"",
            ",",
            "(",
            ")",
            "@",
            " ",
            "PROCEDURE ",
            "FUNCTION ",
            "PROXY",
            "ı",
            "ß",
            "İ",
            "ﬀ",
            "ǅ",
            "ΐ",
        ];
        (0..len)
            .map(|_| {
                if rng.random_bool(0.5) {
                    PIECES[rng.random_range(0..PIECES.len())].to_string()
                } else {
                    let n = rng.random_range(1..4);
                    std::iter::repeat_with(|| rng.random::<char>())
                        .take(n)
                        .collect()
                }
            })
            .collect()
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_input() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("GRANT_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let body = arbitrary(&mut rng, len);
            let line = if rng.random_bool(0.7) {
                format!("GRANT {body}")
            } else {
                body
            };
            let result = std::panic::catch_unwind(|| parse_grant(&line));
            assert!(
                result.is_ok(),
                "parse_grant panicked on {line:?} (replay with GRANT_FUZZ_SEED={seed})"
            );
        }
    }
}
