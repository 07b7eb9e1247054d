//! A source that behaves like a real instance without one: it waits, sometimes fails,
//! and returns a deterministic set of accounts. Demos, tests and benchmarks use it.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use crate::{Account, AccountSource, InstanceSpec, SourceError, SourceSettings};

/// The `simulated` kind. Options: `latency_ms` (10), `jitter_ms` (0), `fail_rate` (0.0),
/// `accounts` (20).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatedSource;

struct Options {
    latency_ms: u64,
    jitter_ms: u64,
    fail_rate: f64,
    accounts: u64,
}

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
    let fail_rate = match options.get("fail_rate") {
        None | Some(serde_json::Value::Null) => 0.0,
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|f| (0.0..=1.0).contains(f))
            .ok_or_else(|| "option 'fail_rate' must be a number between 0 and 1".to_string())?,
    };
    Ok(Options {
        latency_ms: get_u64("latency_ms", 10)?,
        jitter_ms: get_u64("jitter_ms", 0)?,
        fail_rate,
        accounts: get_u64("accounts", 20)?,
    })
}

pub(crate) fn validate_options(
    options: &BTreeMap<String, serde_json::Value>,
) -> Result<(), String> {
    for key in options.keys() {
        if !["latency_ms", "jitter_ms", "fail_rate", "accounts"].contains(&key.as_str()) {
            return Err(format!(
                "unknown option '{key}' for kind simulated (expected latency_ms, jitter_ms, fail_rate, accounts)"
            ));
        }
    }
    let value = serde_json::Value::Object(options.clone().into_iter().collect());
    parse(&value).map(|_| ())
}

#[async_trait::async_trait]
impl AccountSource for SimulatedSource {
    async fn fetch_accounts(
        &self,
        instance: &InstanceSpec,
        _settings: &SourceSettings,
    ) -> Result<Vec<Account>, SourceError> {
        let opts = parse(&instance.options).map_err(SourceError::Fatal)?;
        let (delay, fail) = {
            let mut rng = rand::rng();
            let jitter = if opts.jitter_ms > 0 {
                rng.random_range(0..=opts.jitter_ms)
            } else {
                0
            };
            (
                opts.latency_ms + jitter,
                opts.fail_rate > 0.0 && rng.random_bool(opts.fail_rate),
            )
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if fail {
            return Err(SourceError::Retryable(format!(
                "simulated failure: instance '{}' did not answer",
                instance.name
            )));
        }
        Ok((0..opts.accounts)
            .map(|i| Account {
                username: format!("user{i:04}"),
                host: String::new(),
                attributes: json!({ "can_login": true, "superuser": i == 0 }),
                privileges: json!([{ "level": "database", "privileges": ["CONNECT"] }]),
            })
            .collect())
    }
}
