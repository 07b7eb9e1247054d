//! TLS to instances, and the options of the two database kinds.
//!
//! `ssl_mode` takes libpq's names for both kinds, so an operator learns one vocabulary:
//! `disable`, `prefer` (the default, as in libpq: TLS when the server offers it),
//! `require` (TLS or no connection, certificate not checked), `verify-ca` (the
//! certificate must chain to a trusted root) and `verify-full` (and name the host).
//! `ssl_root_cert` is the trusted root for the two verifying modes: an absolute path on the
//! worker or the PEM text itself; without it the worker's system roots are used.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{InstanceSpec, SourceError};

/// The valid `ssl_mode` values, weakest first.
pub const SSL_MODES: &[&str] = &["disable", "prefer", "require", "verify-ca", "verify-full"];

/// Longest accepted text option (a LIKE pattern, a path, a PEM bundle).
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
    pub(crate) fn of(inst: &InstanceSpec) -> Result<Tls, SourceError> {
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
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    SourceError::Fatal(format!(
                        "the ssl_root_cert file {path} of instance '{}' cannot be read: {}",
                        inst.name,
                        e.kind()
                    ))
                })?;
                // Never echo the contents: the path may name a file that is not a
                // certificate at all.
                if !is_pem(&String::from_utf8_lossy(&bytes)) {
                    return Err(SourceError::Fatal(format!(
                        "the ssl_root_cert file {path} of instance '{}' holds no PEM certificate",
                        inst.name
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

fn is_pem(text: &str) -> bool {
    text.trim_start().starts_with("-----BEGIN CERTIFICATE-----")
}

/// The options of `kind` as JSON Schema, the same rules as [`validate_db_options`].
pub(crate) fn db_options_schema(kind: &str) -> Value {
    let text = serde_json::json!({"type": "string", "maxLength": 1024});
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
            "pattern": "^(/|\\s*-----BEGIN CERTIFICATE-----)",
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
                if s.chars().count() <= MAX_TEXT && (is_pem(s) || s.starts_with('/')) => {}
            _ => {
                return Err(
                    "option ssl_root_cert must be an absolute path on the workers or a PEM \
                     certificate (-----BEGIN CERTIFICATE-----...), at most 64 KiB"
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
