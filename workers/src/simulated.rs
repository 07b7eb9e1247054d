//! A source that behaves like a real instance without one: it waits, sometimes fails,
//! and returns a deterministic set of accounts. Demos, tests and benchmarks use it.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use crate::common::{Budget, json_len};
use crate::{Account, AccountSource, InstanceSpec, SourceError, SourceSettings};

/// The `simulated` kind. Options: `latency_ms` (10), `jitter_ms` (0), `fail_rate` (0.0),
/// `accounts` (20), `panic_rate` (0.0: the share of syncs in which the source panics, to
/// prove a buggy source cannot pin a lease). Every option is bounded, so an instance
/// cannot make a worker sleep for days or build millions of accounts in memory.
///
/// With `SYNCPOOL_SIMULATED_TRACE=FILE` in the worker's environment, every read appends
/// its steps to FILE (`instance sync pid s|e unix_ns`, one line per step of at most 20 ms
/// and one at the end): an observer outside syncpool's tables, with which the fault tests
/// check that no two syncs of one instance ever overlapped.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatedSource;

struct Options {
    latency_ms: u64,
    jitter_ms: u64,
    fail_rate: f64,
    accounts: u64,
    panic_rate: f64,
}

/// Upper bounds of the options.
const MAX_LATENCY_MS: u64 = 3_600_000;
pub const MAX_ACCOUNTS: u64 = 100_000;

fn parse(options: &serde_json::Value) -> Result<Options, String> {
    let get_u64 = |key: &str, default: u64| -> Result<u64, String> {
        match options.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| format!("option '{key}' must be a non-negative integer")),
        }
    };
    let get_rate = |key: &str| -> Result<f64, String> {
        match options.get(key) {
            None | Some(serde_json::Value::Null) => Ok(0.0),
            Some(v) => v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| format!("option '{key}' must be a number between 0 and 1")),
        }
    };
    let bounded = |key: &str, default: u64, max: u64| -> Result<u64, String> {
        let v = get_u64(key, default)?;
        if v > max {
            return Err(format!("option '{key}' must be at most {max}"));
        }
        Ok(v)
    };
    Ok(Options {
        latency_ms: bounded("latency_ms", 10, MAX_LATENCY_MS)?,
        jitter_ms: bounded("jitter_ms", 0, MAX_LATENCY_MS)?,
        fail_rate: get_rate("fail_rate")?,
        accounts: bounded("accounts", 20, MAX_ACCOUNTS)?,
        panic_rate: get_rate("panic_rate")?,
    })
}

pub(crate) fn options_schema() -> serde_json::Value {
    let count = |max: u64| json!({"type": ["integer", "null"], "minimum": 0, "maximum": max});
    let rate = json!({"type": ["number", "null"], "minimum": 0, "maximum": 1});
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "latency_ms": count(MAX_LATENCY_MS),
            "jitter_ms": count(MAX_LATENCY_MS),
            "accounts": count(MAX_ACCOUNTS),
            "fail_rate": rate,
            "panic_rate": rate,
        }
    })
}

pub(crate) fn validate_options(
    options: &BTreeMap<String, serde_json::Value>,
) -> Result<(), String> {
    for key in options.keys() {
        if ![
            "latency_ms",
            "jitter_ms",
            "fail_rate",
            "accounts",
            "panic_rate",
        ]
        .contains(&key.as_str())
        {
            return Err(format!(
                "unknown option '{key}' for kind simulated (expected latency_ms, jitter_ms, fail_rate, accounts, panic_rate)"
            ));
        }
    }
    // At the door, numbers are numbers: text like "10" is read by `parse` only for
    // instances stored before this check, so the API's schema can say `integer` exactly.
    if let Some((key, _)) = options.iter().find(|(_, v)| v.is_string()) {
        return Err(format!("option '{key}' must be a number, not text"));
    }
    let value = serde_json::Value::Object(options.clone().into_iter().collect());
    parse(&value).map(|_| ())
}

#[async_trait::async_trait]
impl AccountSource for SimulatedSource {
    async fn fetch_accounts(
        &self,
        instance: &InstanceSpec,
        settings: &SourceSettings,
    ) -> Result<Vec<Account>, SourceError> {
        let opts = parse(&instance.options).map_err(SourceError::Fatal)?;
        let (delay, fail, panic) = {
            let mut rng = rand::rng();
            let jitter = if opts.jitter_ms > 0 {
                rng.random_range(0..=opts.jitter_ms)
            } else {
                0
            };
            (
                opts.latency_ms + jitter,
                opts.fail_rate > 0.0 && rng.random_bool(opts.fail_rate),
                opts.panic_rate > 0.0 && rng.random_bool(opts.panic_rate),
            )
        };
        let trace = Trace::open(&instance.name);
        if let Some(trace) = &trace {
            // Steps, each logged as it starts: a paused process logs nothing while it is
            // paused, so the observer sees when a read really made progress.
            let mut left = delay;
            loop {
                trace.line("s");
                let step = left.min(20);
                tokio::time::sleep(Duration::from_millis(step)).await;
                left -= step;
                if left == 0 {
                    break;
                }
            }
        } else if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if panic {
            panic!(
                "simulated panic in the source of instance '{}'",
                instance.name
            );
        }
        if fail {
            return Err(SourceError::Retryable(format!(
                "simulated failure: instance '{}' did not answer",
                instance.name
            )));
        }
        // Counted like a real instance's rows, so the limits can be shown without one.
        let mut budget = Budget::new(&instance.name, settings);
        let mut accounts = Vec::new();
        for i in 0..opts.accounts {
            let account = Account {
                username: format!("user{i:04}"),
                host: String::new(),
                attributes: json!({ "can_login": true, "superuser": i == 0 }),
                privileges: json!([{ "level": "database", "privileges": ["CONNECT"] }]),
            };
            budget.account(
                &account.username,
                account.username.len()
                    + json_len(&account.attributes)
                    + json_len(&account.privileges),
            )?;
            accounts.push(account);
        }
        Ok(accounts)
    }
}

/// The observer of `SYNCPOOL_SIMULATED_TRACE`: appends one line per step of a read, and
/// one when the read ends or is abandoned (dropped).
struct Trace {
    file: std::fs::File,
    instance: String,
    sync: u64,
}

impl Trace {
    fn open(instance: &str) -> Option<Trace> {
        let path = std::env::var_os("SYNCPOOL_SIMULATED_TRACE")?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()?;
        Some(Trace {
            file,
            instance: instance.replace(' ', "_"),
            sync: rand::rng().random(),
        })
    }

    fn line(&self, what: &str) {
        use std::io::Write;
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // One write per line: with O_APPEND, lines from several processes never interleave.
        let line = format!(
            "{} {:016x} {} {what} {ns}\n",
            self.instance,
            self.sync,
            std::process::id()
        );
        let _ = (&self.file).write_all(line.as_bytes());
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        self.line("e");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generated_accounts_count_against_the_read_limits() {
        let instance = InstanceSpec {
            id: 1,
            name: "sim".into(),
            kind: "simulated".into(),
            host: None,
            port: None,
            username: None,
            database: None,
            password_env: None,
            password_file: None,
            options: json!({"accounts": 50, "latency_ms": 0}),
        };
        let limited = |max_accounts, max_sync_bytes| SourceSettings {
            max_accounts,
            max_sync_bytes,
            ..SourceSettings::default()
        };
        let read = |s: SourceSettings| {
            let instance = instance.clone();
            async move { SimulatedSource.fetch_accounts(&instance, &s).await }
        };
        assert_eq!(read(limited(50, 1 << 20)).await.unwrap().len(), 50);
        let err = read(limited(10, 1 << 20)).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.to_string()
                .contains("instance 'sim' has more than 10 accounts (limit max_accounts"),
            "{err}"
        );
        let err = read(limited(50, 1000)).await.unwrap_err().to_string();
        assert!(err.contains("max_sync_bytes"), "{err}");
    }
}
