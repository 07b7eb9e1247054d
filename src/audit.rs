//! The audit trail's request scope. A request (or a CLI command) that may change
//! something runs inside [`run`], which carries who asked, from where, for what and with
//! which fields. The store's changing methods read it with [`current`] and write the row
//! in the change's own transaction, naming what they changed; so a change is never
//! committed without its row, nor a row claiming a change that rolled back. Whatever was
//! refused or failed before such a write (bad input, a missing role, a database error)
//! is recorded by the caller of [`run`] afterwards, from [`Scope::closing`].
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

/// The scope of the request this task serves, if it is audited and its row is not
/// written yet (a request's first committed change carries its row).
pub fn current() -> Option<Arc<Scope>> {
    SCOPE.try_with(Arc::clone).ok().filter(|s| !s.written())
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

    /// Called once the row's transaction has committed.
    pub fn mark_written(&self) {
        self.written.store(true, Ordering::SeqCst);
    }

    /// Whether a change committed this request's row.
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

/// Field names whose values are never recorded: a request that carries a secret (a
/// password, a token) is recorded with the field present and its value left out.
const SECRET_FIELDS: &[&str] = &["password", "token", "secret", "csrf"];

/// `fields` with the values of secret-looking keys replaced, at any depth.
pub fn scrub(mut fields: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    let k = k.to_ascii_lowercase();
                    // `password_env` and `password_file` name where a password is, not
                    // the password: operators need them in the trail.
                    let names_a_place = k.ends_with("_env") || k.ends_with("_file");
                    if !names_a_place && SECRET_FIELDS.iter().any(|s| k.contains(s)) {
                        *v = serde_json::Value::String("(left out)".into());
                    } else {
                        walk(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut fields);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_looking_fields_are_left_out_at_any_depth_but_places_are_kept() {
        let f = scrub(json!({
            "name": "pg-1",
            "password": "hunter2",
            "password_env": "PG1_PASSWORD",
            "options": {"api_token": "abc", "list": [{"secret": "x"}]},
            "csrf": "00ff"
        }));
        let text = f.to_string();
        for secret in ["hunter2", "abc", "\"x\"", "00ff"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(f["password_env"], "PG1_PASSWORD");
        assert_eq!(f["name"], "pg-1");
    }

    #[tokio::test]
    async fn a_scope_is_current_inside_run_until_its_row_is_written() {
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
            s.mark_written();
            assert!(current().is_none(), "a written row is not written twice");
        })
        .await;
        assert!(scope.written());
    }
}
