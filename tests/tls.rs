//! TLS to instances, against real servers that accept only TLS: a private PostgreSQL
//! cluster (`hostssl` lines only) and a private MariaDB (`require_secure_transport`), both
//! serving a certificate for `localhost` signed by a CA made at test time. Each mode is
//! shown to do what its name promises: `disable` is refused by the server, `require`
//! encrypts without checking, `verify-ca` checks the chain, `verify-full` also the name.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use syncpool::model::NewInstance;

use crate::common::*;

/// A test CA and a server certificate for `localhost` only (no IP address), so that
/// connecting to 127.0.0.1 with `verify-full` is a name mismatch by construction. The
/// folder is also the workers' certificates folder (`SYNCPOOL_CERTS_DIR`): the CA is
/// `ca.crt` in it.
struct Certs {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is required");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=syncpool test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        d,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    // The private MariaDB may run as another user: everything here is readable by it.
    for f in ["ca.crt", "server.crt", "server.key"] {
        Command::new("chmod")
            .arg("644")
            .arg(d.join(f))
            .status()
            .unwrap();
    }
    Command::new("chmod").arg("755").arg(d).status().unwrap();
    Certs {
        ca: d.join("ca.crt"),
        cert: d.join("server.crt"),
        key: d.join("server.key"),
        dir,
    }
}

fn instance(
    name: &str,
    kind: &str,
    host: &str,
    port: u16,
    user: &str,
    options: Value,
) -> NewInstance {
    NewInstance {
        name: name.into(),
        kind: kind.parse().unwrap(),
        host: Some(host.into()),
        port: Some(port as i64),
        username: Some(user.into()),
        database: None,
        password_env: None,
        password_file: None,
        options,
        active: true,
        group: None,
    }
}

/// (name, host, options, expected status, text the error must contain)
type Case = (
    &'static str,
    &'static str,
    Value,
    &'static str,
    &'static str,
);

/// Every mode against a TLS-only server; `ca` is the CA given as a file name in the
/// workers' certificates folder (`ca_pem` inline), `filter` the kind's option that limits
/// what is read.
fn cases(ca: &str, ca_pem: &str) -> Vec<Case> {
    vec![
        ("default-prefer", "127.0.0.1", json!({}), "completed", ""),
        (
            "require",
            "127.0.0.1",
            json!({"ssl_mode": "require"}),
            "completed",
            "",
        ),
        (
            "disable",
            "127.0.0.1",
            json!({"ssl_mode": "disable"}),
            "failed",
            // PostgreSQL says the connection was refused for want of TLS; MariaDB
            // answers "access denied" and the message can only add a hint.
            "ssl_mode is disable",
        ),
        (
            "verify-ca",
            "127.0.0.1",
            json!({"ssl_mode": "verify-ca", "ssl_root_cert": ca}),
            "completed",
            "",
        ),
        (
            "verify-full",
            "localhost",
            json!({"ssl_mode": "verify-full", "ssl_root_cert": ca}),
            "completed",
            "",
        ),
        (
            "verify-full-inline-pem",
            "localhost",
            json!({"ssl_mode": "verify-full", "ssl_root_cert": ca_pem}),
            "completed",
            "",
        ),
        (
            "verify-full-wrong-name",
            "127.0.0.1",
            json!({"ssl_mode": "verify-full", "ssl_root_cert": ca}),
            "failed",
            "ssl_mode=verify-full",
        ),
        (
            "verify-full-untrusted-ca",
            "localhost",
            json!({"ssl_mode": "verify-full"}),
            "failed",
            "ssl_mode=verify-full",
        ),
        (
            "unreadable-root-cert",
            "localhost",
            json!({"ssl_mode": "verify-ca", "ssl_root_cert": "absent.crt"}),
            "failed",
            "is missing, unreadable or not a regular file in the certificates folder",
        ),
        (
            // Refused at the door; a row written around it is not read by the worker.
            "root-cert-path",
            "localhost",
            json!({"ssl_mode": "verify-ca", "ssl_root_cert": "/nonexistent/ca.crt"}),
            "failed",
            "is neither PEM text nor a file name in the certificates folder",
        ),
    ]
}

/// Adds every case as an instance of `kind`, syncs them all in one session through a real
/// worker, and checks each record: the right status, a fatal failure (one attempt, no
/// retry can fix a certificate) with a message that names the cause.
async fn sync_cases(kind: &str, port: u16, user: &str, filter: Value, certs: &Certs) {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let pem = std::fs::read_to_string(&certs.ca).unwrap();
    let ca = certs.ca.file_name().unwrap().to_str().unwrap();
    let cases = cases(ca, &pem);
    for (name, host, options, _, _) in &cases {
        let mut options = options.clone();
        for (k, v) in filter.as_object().unwrap() {
            options[k] = v.clone();
        }
        let name = format!("{kind}-{name}");
        store
            .instance_insert(&instance(&name, kind, host, port, user, options))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let certs_dir = certs.dir.path().display().to_string();
    let (mut worker, _) = worker_at(
        &db,
        &db.url,
        "tls",
        &["--retry-backoff", "100ms"],
        &[("SYNCPOOL_CERTS_DIR", certs_dir.as_str())],
    );
    let (_, out, err) = cli(&db.url, &["sync-all", "--wait", "--json"]);
    signal(&worker, "TERM");
    worker.wait().unwrap();
    let session: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    for (name, _, _, status, needle) in &cases {
        let name = format!("{kind}-{name}");
        let r = session["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["instance_name"] == name.as_str())
            .unwrap();
        assert_eq!(r["status"], *status, "{name}: {r}");
        if *status == "failed" {
            let error = r["error"].as_str().unwrap_or("");
            eprintln!("{name}: {error}");
            assert!(
                error.contains(needle),
                "{name}: expected {needle:?} in {error:?}"
            );
            assert_eq!(
                r["attempts"], 1,
                "{name}: a TLS misconfiguration is fatal: {r}"
            );
        } else {
            assert!(r["accounts_total"].as_i64().unwrap() >= 1, "{name}: {r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ssl_mode_does_what_it_names_against_a_postgres_that_accepts_only_tls() {
    let certs = make_certs();
    let pg = crate::private_pg::PrivatePg::start();
    pg.serve_tls_only(&certs.cert, &certs.key);
    // The reload is asynchronous: wait until a plain connection is refused.
    let plain = format!("{}?sslmode=disable", pg.url("postgres"));
    let started = std::time::Instant::now();
    while <sqlx::PgConnection as sqlx::Connection>::connect(&plain)
        .await
        .is_ok()
    {
        assert!(
            started.elapsed().as_secs() < 30,
            "pg_hba.conf was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sync_cases(
        "postgres",
        pg.port,
        "postgres",
        json!({"role_like": "postgres"}),
        &certs,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ssl_mode_does_what_it_names_against_a_mariadb_that_accepts_only_tls() {
    let certs = make_certs();
    let maria =
        crate::private_maria::PrivateMaria::start_tls_only(&certs.ca, &certs.cert, &certs.key);
    maria
        .sql("CREATE USER 'syncer'@'%'; GRANT SELECT ON mysql.* TO 'syncer'@'%';")
        .unwrap();
    sync_cases(
        "mysql",
        maria.port,
        "syncer",
        json!({"user_like": "syncer"}),
        &certs,
    )
    .await;
}

#[tokio::test]
async fn tls_options_are_checked_when_an_instance_is_added() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (code, _, err) = cli(&db.url, &["migrate"]);
    assert_eq!(code, 0, "{err}");
    let bad: &[(&str, &[&str], &str)] = &[
        (
            "postgres",
            &["ssl_mode=sometimes"],
            "ssl_mode must be one of: disable, prefer, require, verify-ca, verify-full",
        ),
        (
            "mysql",
            &["ssl_mode=VERIFY_IDENTITY"],
            "ssl_mode must be one of",
        ),
        (
            "postgres",
            &["ssl_mode=verify-full", "ssl_root_cert=certs/ca.pem"],
            "or the name of a file",
        ),
        (
            "postgres",
            &[
                "ssl_mode=verify-full",
                "ssl_root_cert=/etc/ssl/certs/ca.pem",
            ],
            "certificates folder SYNCPOOL_CERTS_DIR",
        ),
        (
            "mysql",
            &["ssl_mode=require", "ssl_root_cert=ca.pem"],
            "only with ssl_mode verify-ca or verify-full",
        ),
        (
            "postgres",
            &["role_lik=foo"],
            "unknown option 'role_lik' for kind postgres",
        ),
        (
            "postgres",
            &["exclude_system_roles=maybe"],
            "exclude_system_roles must be true or false",
        ),
        (
            "mysql",
            &["role_like=x"],
            "unknown option 'role_like' for kind mysql",
        ),
    ];
    for (i, (kind, options, needle)) in bad.iter().enumerate() {
        let name = format!("bad-{i}");
        let mut args = vec![
            "instances",
            "add",
            "--name",
            &name,
            "--kind",
            kind,
            "--host",
            "db.example",
        ];
        for o in *options {
            args.extend(["--option", o]);
        }
        let (code, _, err) = cli(&db.url, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let (code, out, err) = cli(&db.url, &["instances", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("bad-"),
        "a rejected instance was stored: {out}"
    );
    let (code, _, err) = cli(
        &db.url,
        &[
            "instances",
            "add",
            "--name",
            "good",
            "--kind",
            "postgres",
            "--host",
            "db.example",
            "--option",
            "ssl_mode=verify-full",
            "--option",
            "ssl_root_cert=ca.pem",
            "--option",
            "exclude_system_roles=false",
        ],
    );
    assert_eq!(code, 0, "{err}");
}
