//! syncpool's benchmark: every scenario of docs/BENCHMARKS.md on SQLite and PostgreSQL.
//! Prints a Markdown table and writes `target/bench/results.json`; asserts nothing.
//! Run it with `scripts/bench.sh` (which builds it and the raw apalis peer).
//!
//! Usage: bench [--quick] [--backend sqlite|postgres|both] [--scenario NAME[,NAME...]]
//! Scenarios: noop, steady, inventory, efficiency, pickup, enqueue, scale, limit, previous,
//! console
//! (default: all).

mod console;
mod harness;
mod previous;
mod scenarios;

use serde::Serialize;

/// One measured figure; `baseline` is the peer it is compared with (raw apalis, the
/// ideal time, the previous design), and `ratio` is value / baseline.
#[derive(Debug, Serialize)]
pub struct Fig {
    scenario: String,
    backend: String,
    metric: String,
    value: f64,
    unit: String,
    baseline: Option<f64>,
    ratio: Option<f64>,
    /// Median of several runs: their lowest and highest.
    #[serde(skip_serializing_if = "Option::is_none")]
    range: Option<(f64, f64)>,
}

impl Fig {
    /// A single figure.
    pub fn one(scenario: &str, backend: &str, metric: &str, value: f64, unit: &str) -> Self {
        Fig {
            scenario: scenario.into(),
            backend: backend.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
            baseline: None,
            ratio: None,
            range: None,
        }
    }

    /// The median of several runs, with their range.
    pub fn range(scenario: &str, backend: &str, metric: &str, runs: &[f64], unit: &str) -> Self {
        let (median, lo, hi) = harness::spread(runs);
        let mut f = Fig::one(scenario, backend, metric, median, unit);
        f.range = (runs.len() > 1).then_some((lo, hi));
        f
    }

    /// Compared with a peer figure.
    pub fn vs(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self.ratio = (baseline != 0.0).then(|| self.value / baseline);
        self
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn table(figs: &[Fig]) -> String {
    let mut out = String::from(
        "| scenario | backend | metric | value | unit | baseline | ratio |\n| --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for f in figs {
        let value = match f.range {
            Some((lo, hi)) => format!("{} ({}-{})", num(f.value), num(lo), num(hi)),
            None => num(f.value),
        };
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.scenario,
            f.backend,
            f.metric,
            value,
            f.unit,
            f.baseline.map(num).unwrap_or_default(),
            f.ratio.map(|r| format!("{r:.2}")).unwrap_or_default()
        );
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let backend = get("--backend").unwrap_or_else(|| "both".into());
    let wanted = get("--scenario").unwrap_or_else(|| {
        "noop,steady,inventory,efficiency,pickup,enqueue,scale,limit,policy,previous,console".into()
    });
    let wants = |s: &str| wanted.split(',').any(|w| w == s);
    let backends: Vec<&'static str> = ["sqlite", "postgres"]
        .into_iter()
        .filter(|b| backend == "both" || backend == *b)
        .collect();
    // Full sizes are issue #9's; the quick form only proves every scenario still runs.
    let console_n = if quick { 1_000 } else { 100_000 };
    // Issue #21's fleets with accounts: n x 20, and few instances of many accounts.
    let (inv_n, inv_big) = if quick {
        (300, (10, 1_000))
    } else {
        (10_000, (100, 10_000))
    };
    let (noop_n, rounds, eff_n, picks, enq, scales, prev_n, prev_ms) = if quick {
        (500, 1, 500, 5, vec![1_000], vec![500], 40, 5)
    } else {
        (
            10_000,
            3,
            10_000,
            60,
            vec![10_000, 100_000],
            vec![1_000, 10_000, 100_000],
            1_000,
            50,
        )
    };
    let mut figs = vec![];
    let mut failed = vec![];
    // A scenario that fails is reported and the others still run: a long run is not lost.
    macro_rules! run {
        ($name:expr, $fut:expr) => {
            match $fut.await {
                Ok(f) => figs.extend(f),
                Err(e) => {
                    eprintln!("  {} failed: {e:#}", $name);
                    failed.push($name.to_string());
                }
            }
            save(&figs)?;
        };
    }
    for &b in &backends {
        eprintln!("== {b}");
        if wants("noop") {
            run!(format!("noop/{b}"), scenarios::noop(b, noop_n, rounds));
        }
        if wants("steady") {
            run!(format!("steady/{b}"), scenarios::steady(b, noop_n));
        }
        if wants("inventory") {
            run!(
                format!("inventory/{b}"),
                scenarios::inventory(b, inv_n, inv_big)
            );
        }
        if wants("efficiency") {
            run!(format!("efficiency/{b}"), scenarios::efficiency(b, eff_n));
        }
        if wants("pickup") {
            run!(format!("pickup/{b}"), scenarios::pickup(b, picks));
        }
        if wants("enqueue") {
            run!(format!("enqueue/{b}"), scenarios::enqueue(b, &enq));
        }
        if wants("scale") {
            run!(format!("scale/{b}"), scenarios::scale(b, &scales));
        }
        if wants("limit") {
            run!(format!("limit/{b}"), scenarios::limit(b, noop_n, rounds));
        }
        if wants("policy") {
            run!(format!("policy/{b}"), scenarios::policy(b, noop_n, rounds));
        }
        if wants("console") {
            run!(format!("console/{b}"), console::console(b, console_n));
        }
    }
    if wants("previous") && backends.contains(&"sqlite") {
        eprintln!("== previous design (SQLite)");
        run!("previous", previous::previous(prev_n, prev_ms));
    }
    println!("{}", table(&figs));
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {}", failed.join(", "));
    Ok(())
}

/// Writes the figures so far to target/bench/results.json.
fn save(figs: &[Fig]) -> anyhow::Result<()> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        format!("{dir}/results.json"),
        serde_json::to_string_pretty(figs)?,
    )?;
    Ok(())
}
