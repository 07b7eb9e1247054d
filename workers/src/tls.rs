//! TLS to instances, and the options of the two database kinds.
//!
//! `ssl_mode` takes libpq's names for both kinds, so an operator learns one vocabulary:
//! `disable`, `prefer` (the default, as in libpq: TLS when the server offers it),
//! `require` (TLS or no connection, certificate not checked), `verify-ca` (the
//! certificate must chain to a trusted root) and `verify-full` (and name the host).
//! `ssl_root_cert` is the trusted root for the two verifying modes: the PEM text itself or
//! the name of a file in the workers' certificates folder ([`crate::certs_dir`]); without
//! it the worker's system roots are used. Never a path: whoever adds instances must not
//! choose which file of the worker host is read, nor learn from an error which exist.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::files::{is_plain_file_name, read_small_file};
use crate::{InstanceSpec, SourceError};

/// Largest `ssl_root_cert` file, in bytes.
pub const MAX_ROOT_CERT_FILE_BYTES: u64 = 1024 * 1024;

/// The valid `ssl_mode` values, weakest first.
pub const SSL_MODES: &[&str] = &["disable", "prefer", "require", "verify-ca", "verify-full"];

/// Longest accepted text option (a LIKE pattern, a PEM bundle).
const MAX_TEXT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// What a source needs to set up TLS: the mode and, for the verifying modes, the PEM of
/// the trusted root (read here, at sync time, so an unreadable file is a clear fatal
/// error of this instance rather than an opaque handshake failure).
pub(crate) struct Tls {
    pub mode: SslMode,
    pub root_cert: Option<Vec<u8>>,
}

impl Tls {
    pub(crate) async fn of(inst: &InstanceSpec) -> Result<Tls, SourceError> {
        Self::of_in(inst, &crate::certs_dir()).await
    }

    /// [`Tls::of`] with the certificates folder given, for tests.
    pub(crate) async fn of_in(inst: &InstanceSpec, certs: &Path) -> Result<Tls, SourceError> {
        let mode = match inst.options.get("ssl_mode").and_then(Value::as_str) {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            // Validated when the instance was added; a row written around the API must
            // still never fall back to a weaker mode than it asked for.
            Some(other) => {
                return Err(SourceError::Fatal(format!(
                    "instance '{}' has an unknown ssl_mode '{other}'",
                    inst.name
                )));
            }
        };
        let root_cert = match inst.options.get("ssl_root_cert").and_then(Value::as_str) {
            None => None,
            Some(pem) if is_pem(pem) => Some(pem.as_bytes().to_vec()),
            // Checked at the door too; a row written around the API (or before paths
            // were refused) must not reach outside the folder either. The value is not
            // echoed: it may be a path.
            Some(name) if !is_plain_file_name(name) => {
                return Err(SourceError::Fatal(format!(
                    "the ssl_root_cert of instance '{}' is neither PEM text nor a file name in \
                     the certificates folder (SYNCPOOL_CERTS_DIR)",
                    inst.name
                )));
            }
            Some(name) => {
                use crate::files::FileRefused as R;
                let what = format!("the ssl_root_cert file {name} of instance '{}'", inst.name);
                let bytes = read_small_file(certs, name, MAX_ROOT_CERT_FILE_BYTES)
                    .await
                    .map_err(|e| {
                        SourceError::Fatal(match e {
                            // One text for all three, so that an error cannot tell which
                            // of them a name is.
                            R::Missing | R::Unreadable(_) | R::NotRegular => format!(
                                "{what} is missing, unreadable or not a regular file in the \
                                 certificates folder (SYNCPOOL_CERTS_DIR)"
                            ),
                            other => format!("{what} {}", other.explain("certificates folder")),
                        })
                    })?;
                // Never echo the contents.
                if !is_pem(&String::from_utf8_lossy(&bytes)) {
                    return Err(SourceError::Fatal(format!(
                        "{what} holds no PEM certificate"
                    )));
                }
                Some(bytes)
            }
        };
        Ok(Tls { mode, root_cert })
    }

    pub(crate) fn postgres(&self) -> sqlx::postgres::PgSslMode {
        use sqlx::postgres::PgSslMode as M;
        match self.mode {
            SslMode::Disable => M::Disable,
            SslMode::Prefer => M::Prefer,
            SslMode::Require => M::Require,
            SslMode::VerifyCa => M::VerifyCa,
            SslMode::VerifyFull => M::VerifyFull,
        }
    }

    pub(crate) fn mysql(&self) -> sqlx::mysql::MySqlSslMode {
        use sqlx::mysql::MySqlSslMode as M;
        match self.mode {
            SslMode::Disable => M::Disabled,
            SslMode::Prefer => M::Preferred,
            SslMode::Require => M::Required,
            SslMode::VerifyCa => M::VerifyCa,
            SslMode::VerifyFull => M::VerifyIdentity,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self.mode {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Leading blanks before a PEM block: spelled out rather than `trim_start` so that the
/// schema's pattern can say exactly the same (regex `\s` differs between engines).
const PEM_LEADING: [char; 4] = [' ', '\t', '\n', '\r'];

fn is_pem(text: &str) -> bool {
    text.trim_start_matches(PEM_LEADING)
        .starts_with("-----BEGIN CERTIFICATE-----")
}

/// The options of `kind` as JSON Schema, the same rules as [`validate_db_options`].
pub(crate) fn db_options_schema(kind: &str) -> Value {
    // No NUL anywhere (validate_options): PostgreSQL's JSONB cannot store it.
    let text = serde_json::json!({"type": "string", "maxLength": 1024, "pattern": "^[^\\x00]*$"});
    let mut properties = serde_json::Map::new();
    if kind == "postgres" {
        properties.insert("role_like".into(), text);
        properties.insert(
            "exclude_system_roles".into(),
            serde_json::json!({"type": "boolean"}),
        );
    } else {
        properties.insert("user_like".into(), text);
    }
    properties.insert("ssl_mode".into(), serde_json::json!({"enum": SSL_MODES}));
    properties.insert(
        "ssl_root_cert".into(),
        serde_json::json!({
            "type": "string",
            "maxLength": MAX_TEXT,
            // PEM text, or a file name by the rule of `is_plain_file_name`.
            "pattern": format!(
                "^([ \\t\\n\\r]*-----BEGIN CERTIFICATE-----[^\\x00]*|[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{}}})$",
                crate::MAX_SECRET_NAME - 1
            ),
        }),
    );
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        // A root certificate goes with a verifying mode.
        "anyOf": [
            {"not": {"required": ["ssl_root_cert"]}},
            {"required": ["ssl_mode"], "properties": {"ssl_mode": {"enum": ["verify-ca", "verify-full"]}}},
        ],
    })
}

/// Checks the options of a `postgres` or `mysql` instance: only known keys, each of the
/// right type, so a typo (`role_lik`) is an error at the door instead of a silent no-op.
pub(crate) fn validate_db_options(
    kind: &str,
    options: &BTreeMap<String, Value>,
) -> Result<(), String> {
    let known: &[(&str, &str)] = match kind {
        "postgres" => &[
            ("role_like", "text"),
            ("exclude_system_roles", "bool"),
            ("ssl_mode", "mode"),
            ("ssl_root_cert", "cert"),
        ],
        _ => &[
            ("user_like", "text"),
            ("ssl_mode", "mode"),
            ("ssl_root_cert", "cert"),
        ],
    };
    let names = || known.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
    for (key, value) in options {
        let Some((_, ty)) = known.iter().find(|(k, _)| k == key) else {
            return Err(format!(
                "unknown option '{key}' for kind {kind} (expected {})",
                names()
            ));
        };
        match (*ty, value) {
            ("bool", Value::Bool(_)) => {}
            ("bool", _) => return Err(format!("option {key} must be true or false")),
            ("text", Value::String(s)) if s.chars().count() <= 1024 => {}
            ("text", _) => {
                return Err(format!(
                    "option {key} must be text of at most 1024 characters"
                ));
            }
            ("mode", Value::String(s)) if SSL_MODES.contains(&s.as_str()) => {}
            ("mode", _) => {
                return Err(format!(
                    "option ssl_mode must be one of: {}",
                    SSL_MODES.join(", ")
                ));
            }
            ("cert", Value::String(s))
                if s.chars().count() <= MAX_TEXT && (is_pem(s) || is_plain_file_name(s)) => {}
            _ => {
                return Err(
                    "option ssl_root_cert must be PEM text (-----BEGIN CERTIFICATE-----..., at \
                     most 64 KiB) or the name of a file (letters, digits, '.', '_', '-'; no path) \
                     in the workers' certificates folder SYNCPOOL_CERTS_DIR (default \
                     /etc/syncpool/certs)"
                        .into(),
                );
            }
        }
    }
    let mode = options.get("ssl_mode").and_then(Value::as_str);
    if options.contains_key("ssl_root_cert") && !matches!(mode, Some("verify-ca" | "verify-full")) {
        // A root certificate that nothing checks would only look safe.
        return Err(
            "option ssl_root_cert is used only with ssl_mode verify-ca or verify-full".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use serde_json::{Value, json};

    use super::*;
    use crate::files::FILE_READ_DEADLINE;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn spec(root_cert: &str) -> InstanceSpec {
        InstanceSpec {
            id: 1,
            name: "db-x".into(),
            kind: "postgres".into(),
            host: Some("h".into()),
            port: None,
            username: None,
            database: None,
            password_env: None,
            password_file: None,
            options: json!({"ssl_mode": "verify-full", "ssl_root_cert": root_cert}),
        }
    }

    fn options(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[tokio::test]
    async fn an_ssl_root_cert_is_pem_text_or_a_file_of_the_certificates_folder() {
        let certs = tempfile::tempdir().unwrap();
        std::fs::write(certs.path().join("ca.pem"), PEM).unwrap();
        let tls = Tls::of_in(&spec("ca.pem"), certs.path()).await.unwrap();
        assert_eq!(tls.root_cert.as_deref(), Some(PEM.as_bytes()));
        let tls = Tls::of_in(&spec(PEM), certs.path()).await.unwrap();
        assert_eq!(tls.root_cert.as_deref(), Some(PEM.as_bytes()));
    }

    /// Whatever a name or path leads to, the error says the same: it cannot be used to
    /// learn which files exist on the worker host, and a FIFO does not block the read.
    #[tokio::test]
    async fn an_unusable_ssl_root_cert_fails_fast_with_a_text_that_tells_nothing_of_the_host() {
        let certs = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("ca.pem"), PEM).unwrap();
        std::os::unix::fs::symlink(outside.path().join("ca.pem"), certs.path().join("out.pem"))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", certs.path().join("passwd")).unwrap();
        std::fs::create_dir(certs.path().join("dir")).unwrap();
        let ok = std::process::Command::new("mkfifo")
            .arg(certs.path().join("fifo"))
            .status()
            .unwrap();
        assert!(ok.success());
        let same = "is missing, unreadable or not a regular file in the certificates folder";
        for name in ["fifo", "out.pem", "passwd", "dir", "absent.pem"] {
            let started = Instant::now();
            let err = Tls::of_in(&spec(name), certs.path()).await.err().unwrap();
            assert!(started.elapsed() < FILE_READ_DEADLINE, "{name} blocked");
            assert!(!err.is_retryable());
            assert_eq!(
                err.to_string(),
                format!(
                    "the ssl_root_cert file {name} of instance 'db-x' {same} (SYNCPOOL_CERTS_DIR)"
                )
            );
        }
        // A path (a row written around the API) is not read, nor echoed.
        for path in ["/etc/passwd", "/nonexistent/ca.pem", "/dev/zero"] {
            let err = Tls::of_in(&spec(path), certs.path()).await.err().unwrap();
            assert_eq!(
                err.to_string(),
                "the ssl_root_cert of instance 'db-x' is neither PEM text nor a file name in the \
                 certificates folder (SYNCPOOL_CERTS_DIR)"
            );
        }
        let huge = std::fs::File::create(certs.path().join("huge.pem")).unwrap();
        huge.set_len(MAX_ROOT_CERT_FILE_BYTES + 1).unwrap();
        std::fs::write(certs.path().join("text.pem"), "not a certificate").unwrap();
        let dir = certs.path();
        let err = |name: &'static str| async move {
            Tls::of_in(&spec(name), dir)
                .await
                .err()
                .unwrap()
                .to_string()
        };
        assert!(
            err("huge.pem")
                .await
                .contains("is larger than 1048576 bytes")
        );
        let text = err("text.pem").await;
        assert!(text.contains("holds no PEM certificate") && !text.contains("not a certificate"));
    }

    #[test]
    fn ssl_root_cert_is_refused_at_the_door_unless_pem_text_or_a_plain_file_name() {
        let check = |cert: &str| {
            validate_db_options(
                "postgres",
                &options(&[
                    ("ssl_mode", json!("verify-ca")),
                    ("ssl_root_cert", json!(cert)),
                ]),
            )
        };
        for good in ["ca.pem", "fleet-ca_2.crt", PEM, &format!("\n \t{PEM}")] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        // The schema says the same (its pattern is checked against the server by
        // schemathesis; here, that it is the rule's and not a path's).
        assert_eq!(
            db_options_schema("mysql")["properties"]["ssl_root_cert"]["pattern"],
            "^([ \\t\\n\\r]*-----BEGIN CERTIFICATE-----[^\\x00]*|[A-Za-z0-9_-][A-Za-z0-9._-]{0,127})$"
        );
        for bad in [
            "/etc/ssl/ca.pem",
            "../ca.pem",
            "certs/ca.pem",
            ".ca.pem",
            "ca pem",
            "",
        ] {
            let err = check(bad).unwrap_err();
            assert!(
                err.contains("PEM text") && err.contains("SYNCPOOL_CERTS_DIR"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_option_with_a_nul_character_is_refused_with_its_name() {
        let cases = [
            ("postgres", "role_like", json!("a\0b")),
            ("mysql", "user_like", json!("\0")),
            ("postgres", "ssl_root_cert", json!(format!("{PEM}\0"))),
            ("simulated", "accounts", json!("1\0")),
        ];
        for (kind, key, value) in cases {
            let mut o = options(&[(key, value)]);
            if key == "ssl_root_cert" {
                o.insert("ssl_mode".into(), json!("verify-ca"));
            }
            assert_eq!(
                crate::validate_options(kind, &o),
                Err(format!("option {key} must not contain a NUL character")),
                "{kind} {key}"
            );
        }
        assert!(
            crate::validate_options("postgres", &options(&[("role\0like", json!("x"))]))
                .unwrap_err()
                .contains("NUL")
        );
    }
}
