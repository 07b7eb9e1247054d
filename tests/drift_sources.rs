//! Drift found on real servers (issue #24): a PostgreSQL role made superuser and back, a
//! MariaDB account open to every host, a required account dropped. Synced by real
//! worker processes, with syncpool's own database on SQLite and on PostgreSQL.

use serde_json::{Value, json};

use crate::common::*;
use crate::sources::{PW_GROUP, instance, maria, pg, private_pg, sync_one, tag};

on_both_databases!(
    a_postgres_role_made_superuser_opens_a_violation_that_nosuperuser_resolves,
    a_mariadb_account_open_to_every_host_and_a_dropped_required_account_are_flagged,
);

fn set_policy(db: &TestDb, text: &str) {
    let file = db.dir.path().join("policy.yaml");
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = cli(&db.url, &["policy", "set", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Open violations as `(account, what)`, sorted.
fn drift(db: &TestDb) -> Vec<(String, String)> {
    let (code, out, err) = cli(&db.url, &["drift", "--json"]);
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    let mut v: Vec<(String, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["account"].as_str().unwrap().into(),
                v["what"].as_str().unwrap().into(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn a_postgres_role_made_superuser_opens_a_violation_that_nosuperuser_resolves(b: Backend) {
    let server = private_pg();
    let t = tag();
    let secret = format!("pw-{t}-secret");
    pg(
        &server,
        &format!(
            "CREATE ROLE {t}_app LOGIN PASSWORD '{secret}' IN ROLE {PW_GROUP};\n\
         CREATE ROLE {t}_monitor LOGIN"
        ),
    )
    .await;
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let var = format!("SYNCPOOL_SECRET_PW_{}", t.to_uppercase());
    store
        .instance_insert(&instance(
            "pg",
            "postgres",
            server.port as i64,
            &format!("{t}_app"),
            Some("postgres"),
            Some(&var),
            json!({"role_like": format!("{t}_%")}),
        ))
        .await
        .unwrap();
    set_policy(
        &db,
        &format!(
            "rules:\n  - name: approved-superusers\n    kinds: [postgres]\n    deny: [superuser]\n    except_accounts: [postgres]\n\
             \x20 - name: monitoring-user\n    require_accounts: [{t}_monitor]\n"
        ),
    );
    let env = [(var.as_str(), secret.as_str())];
    let (record, _) = sync_one(&db, "pg", &env);
    assert_eq!(record["status"], "completed", "{record}");
    assert!(drift(&db).is_empty());

    pg(&server, &format!("ALTER ROLE {t}_app SUPERUSER")).await;
    sync_one(&db, "pg", &env);
    assert_eq!(
        drift(&db),
        vec![(format!("{t}_app"), "superuser".to_string())]
    );
    let (_, out, _) = cli(&db.url, &["drift"]);
    assert!(
        out.contains("approved-superusers") && out.contains("holds superuser"),
        "{out}"
    );

    pg(
        &server,
        &format!("ALTER ROLE {t}_app NOSUPERUSER;\nDROP ROLE {t}_monitor"),
    )
    .await;
    sync_one(&db, "pg", &env);
    assert_eq!(
        drift(&db),
        vec![(format!("{t}_monitor"), "missing_account".to_string())],
        "NOSUPERUSER resolved the first; the dropped role is missing"
    );
    let (_, out, _) = cli(&db.url, &["drift", "--resolved", "--json"]);
    let resolved: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(resolved["items"][0]["what"], "superuser", "{out}");
    assert!(resolved["items"][0]["resolved_at"].is_string());
    pg(&server, &format!("DROP ROLE {t}_app")).await;
}

async fn a_mariadb_account_open_to_every_host_and_a_dropped_required_account_are_flagged(
    b: Backend,
) {
    let t = tag();
    let secret = format!("pw-{t}-secret");
    maria(&format!(
        "CREATE USER '{t}_admin'@'%' IDENTIFIED BY '{secret}'; GRANT SELECT ON mysql.* TO '{t}_admin'@'%';\
         CREATE USER '{t}_app'@'10.%'; CREATE USER '{t}_mon'@'localhost';"
    ));
    let db = TestDb::new(b).await;
    let store = db.store().await;
    let var = format!("SYNCPOOL_SECRET_PW_{}", t.to_uppercase());
    store
        .instance_insert(&instance(
            "maria",
            "mysql",
            3306,
            &format!("{t}_admin"),
            None,
            Some(&var),
            json!({"user_like": format!("{t}_%")}),
        ))
        .await
        .unwrap();
    set_policy(
        &db,
        &format!(
            "rules:\n  - name: no-open-hosts\n    kinds: [mysql]\n    deny_accounts: [\"*@%\"]\n\
             \x20 - name: monitoring-user\n    require_accounts: [{t}_mon]\n"
        ),
    );
    let env = [(var.as_str(), secret.as_str())];
    let (record, _) = sync_one(&db, "maria", &env);
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(
        drift(&db),
        vec![(format!("{t}_admin@%"), "denied_account".to_string())],
        "only the account at % (not 10.%)"
    );
    maria(&format!("DROP USER '{t}_mon'@'localhost';"));
    sync_one(&db, "maria", &env);
    assert_eq!(
        drift(&db),
        vec![
            (format!("{t}_admin@%"), "denied_account".to_string()),
            (format!("{t}_mon"), "missing_account".to_string()),
        ]
    );
    maria(&format!(
        "DROP USER '{t}_admin'@'%'; DROP USER '{t}_app'@'10.%';"
    ));
}
