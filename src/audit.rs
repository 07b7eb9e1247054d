//! The audit trail's request scope. A request (or a CLI command) that may change
//! something runs inside [`run`], which carries who asked, from where, for what and with
//! which fields. The store's changing methods read it with [`current`] and write a row
//! in each change's own transaction, naming what it changed; so a change is never
//! committed without its row, nor a row claiming a change that rolled back. When no
//! change wrote one (the request was refused, failed, or changed nothing), the caller of
//! [`run`] records that afterwards, from [`Scope::closing`].
//!
//! A task-local rather than a parameter: every changing store method would otherwise
//! take an audit argument that the worker, the scheduler and the tests have no use for,
//! and a handler that forgot to pass one would still compile. Here the scope is set in
//! one place per door (the API's and the console's access layer, `cli::run`), so a new
//! route or command is audited without doing anything.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::model::{AuditOutcome, AuditTarget, NewAuditEvent};

/// The request being audited.
#[derive(Debug)]
pub struct Scope {
    /// The row so far: actor, client, action, fields (targets and outcome come later).
    event: Mutex<NewAuditEvent>,
    /// A store method has committed this request's row with its change.
    written: AtomicBool,
}

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// Runs `f` as the request `event` describes; returns its output and the scope, whose
/// [`Scope::written`] says whether a change recorded the row.
pub async fn run<F: Future>(event: NewAuditEvent, f: F) -> (F::Output, Arc<Scope>) {
    let scope = Arc::new(Scope {
        event: Mutex::new(event),
        written: AtomicBool::new(false),
    });
    let out = SCOPE.scope(scope.clone(), f).await;
    (out, scope)
}

/// The scope of the request this task serves, if it is audited. Each change it makes
/// writes a row (a `demo` registers instances, then starts a session: two rows).
pub fn current() -> Option<Arc<Scope>> {
    SCOPE.try_with(Arc::clone).ok()
}

impl Scope {
    fn event(&self) -> NewAuditEvent {
        // A poisoned lock only means a panic elsewhere; the row is still whole.
        match self.event.lock() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The row of a change that succeeded, naming what it changed.
    pub fn ok_row(&self, targets: Vec<AuditTarget>) -> NewAuditEvent {
        NewAuditEvent {
            targets,
            outcome: AuditOutcome::Ok,
            detail: None,
            ..self.event()
        }
    }

    /// Called once a row's transaction has committed.
    pub fn mark_written(&self) {
        self.written.store(true, Ordering::SeqCst);
    }

    /// Whether a change committed a row of this request.
    pub fn written(&self) -> bool {
        self.written.load(Ordering::SeqCst)
    }

    /// The row for a request that ended without a change writing one: refused, failed,
    /// or a success that changed nothing (a cancel of a finished session).
    pub fn closing(&self, outcome: AuditOutcome, detail: Option<String>) -> NewAuditEvent {
        NewAuditEvent {
            outcome,
            detail,
            ..self.event()
        }
    }
}

/// Where a change made on this machine comes from: `local:HOST`.
pub fn local_client() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("local:{host}")
}

/// Field names whose values are never recorded: a request that carries a secret (a
/// password, a token) is recorded with the field present and its value left out.
const SECRET_FIELDS: &[&str] = &["password", "token", "secret", "csrf"];

/// `fields` with the values of secret-looking keys replaced, at any depth, and in every
/// other string: API tokens (syncpool's `spt_` form, and each of `secrets`) and URL
/// passwords, wherever a caller pasted them (a token as a token's name, a connection
/// string in an option).
pub fn scrub(mut fields: serde_json::Value, secrets: &[&str]) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value, secrets: &[&str]) {
        match v {
            serde_json::Value::String(s) => *s = scrub_text(s, secrets),
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    let k = k.to_ascii_lowercase();
                    // `password_env` and `password_file` name where a password is, not
                    // the password: operators need them in the trail.
                    let names_a_place = k.ends_with("_env") || k.ends_with("_file");
                    if !names_a_place && SECRET_FIELDS.iter().any(|s| k.contains(s)) {
                        *v = serde_json::Value::String("(left out)".into());
                    } else {
                        walk(v, secrets);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, secrets)),
            _ => {}
        }
    }
    walk(&mut fields, secrets);
    fields
}

/// `s` without API tokens or URL passwords (see [`scrub`]).
pub fn scrub_text(s: &str, secrets: &[&str]) -> String {
    let mut out = crate::redact::text(s, secrets);
    // `spt_` and 64 hex digits: a stored token, wherever it appears.
    let mut from = 0;
    while let Some(at) = out[from..].find(crate::tokens::PREFIX).map(|i| i + from) {
        let digits = out[at + 4..]
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count();
        if digits >= 32 {
            out.replace_range(at + 4..at + 4 + digits, "***");
        }
        from = at + 4;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_looking_fields_are_left_out_at_any_depth_but_places_are_kept() {
        let token = crate::tokens::generate();
        let f = scrub(
            json!({
                "name": "pg-1",
                "password": "hunter2",
                "password_env": "PG1_PASSWORD",
                "options": {"api_token": "abc", "list": [{"secret": "x"}], "dsn": "postgres://u:pw1@h/db"},
                "csrf": "00ff",
                "path": format!("/api/v1/tokens/{token}"),
                "args": ["--note", "env-secret-123"]
            }),
            &["env-secret-123"],
        );
        let text = f.to_string();
        for secret in [
            "hunter2",
            "abc",
            "\"x\"",
            "00ff",
            "pw1",
            &token[4..],
            "env-secret-123",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(f["password_env"], "PG1_PASSWORD");
        assert_eq!(f["name"], "pg-1");
    }

    #[tokio::test]
    async fn a_scope_is_current_inside_run_and_remembers_a_written_row() {
        assert!(current().is_none());
        let event = NewAuditEvent {
            actor: "a".into(),
            client: "c".into(),
            action: "x".into(),
            targets: vec![],
            fields: json!({}),
            outcome: AuditOutcome::Refused,
            detail: None,
        };
        let ((), scope) = run(event, async {
            let s = current().expect("inside the scope");
            assert_eq!(s.ok_row(vec![]).outcome, AuditOutcome::Ok);
            assert!(!s.written());
            s.mark_written();
            assert!(
                current().is_some(),
                "a second change writes a row of its own"
            );
        })
        .await;
        assert!(scope.written());
    }
}
