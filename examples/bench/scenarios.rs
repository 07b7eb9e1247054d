//! The scenarios of issue #9's table, one function each; each returns its figures.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use syncpool::model::SyncType;

use crate::Fig;
use crate::harness::*;

/// A simulated instance that answers at once with no accounts.
fn instant_options() -> serde_json::Value {
    json!({"latency_ms": 0, "accounts": 0})
}

/// One drain of an `n`-instance session by `procs` x `conc` workers.
struct Drain {
    rate: f64,
    cpu_us: f64,
    enqueue_ms: f64,
    rss_mb: f64,
    secs: f64,
}

async fn drain(
    db: &Db,
    n: usize,
    procs: usize,
    conc: usize,
) -> anyhow::Result<(Drain, uuid::Uuid)> {
    let workers = spawn_workers(&db.url, procs, conc)?;
    // Warm: connected, migrations checked, polling.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_total(&workers);
    let t = Instant::now();
    let created = db.store.session_create(SyncType::ManualBatch, None).await?;
    let enqueue_ms = t.elapsed().as_secs_f64() * 1e3;
    // Statistics that see the queued jobs, as the raw peer's run.sh does too.
    db.store.analyze().await?;
    let ok = db
        .wait_finished(created.session_id, Duration::from_secs(1800))
        .await?;
    let secs = t.elapsed().as_secs_f64() - enqueue_ms / 1e3;
    let cpu = cpu_total(&workers) - cpu0;
    let rss_mb = workers
        .iter()
        .map(|c| peak_rss_mb(c.id()))
        .fold(0.0, f64::max);
    stop(workers);
    anyhow::ensure!(ok as usize == n, "only {ok} of {n} syncs completed");
    Ok((
        Drain {
            rate: n as f64 / secs,
            cpu_us: cpu / n as f64 * 1e6,
            enqueue_ms,
            rss_mb,
            secs,
        },
        created.session_id,
    ))
}

/// The raw apalis peer (bench/apalis-baseline), run by its own script as its users run it.
async fn raw_apalis(backend: &str, n: usize) -> anyhow::Result<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/apalis-baseline/run.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script).stderr(Stdio::inherit());
    cmd.env(
        "CARGO_TARGET_DIR",
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/apalis-baseline"),
    );
    let pg = if backend == "sqlite" {
        cmd.args(["sqlite", &n.to_string()]);
        None
    } else {
        let name = format!("apalis_raw_{}", std::process::id());
        let url = pg_create(&pg_admin(), &name).await?;
        cmd.args(["postgres", &url, &n.to_string()]);
        Some(name)
    };
    let out = tokio::task::block_in_place(|| cmd.output())?;
    if let Some(name) = pg {
        pg_drop(&pg_admin(), &name).await?;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "apalis-baseline failed: {text}");
    // "raw apalis-sqlite: 10000 no-op jobs in 1.25 s = 7990 jobs/s"
    text.rsplit('=')
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected apalis-baseline output: {text}"))
}

/// No-op throughput against raw apalis, alternating, `rounds` times; CPU per sync.
pub async fn noop(backend: &'static str, n: usize, rounds: usize) -> anyhow::Result<Vec<Fig>> {
    let (mut ours, mut raw, mut cpu, mut enq) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let db = Db::with_instances(backend, n, instant_options()).await?;
        let (d, _) = drain(&db, n, 2, 16).await?;
        db.close().await?;
        let r = raw_apalis(backend, n).await?;
        eprintln!(
            "  noop {backend} round {}: syncpool {:.0}/s ({:.0} us CPU/sync), raw apalis {r:.0}/s",
            round + 1,
            d.rate,
            d.cpu_us
        );
        ours.push(d.rate);
        cpu.push(d.cpu_us);
        enq.push(d.enqueue_ms);
        raw.push(r);
    }
    let s = "noop";
    let (ours_m, raw_m) = (spread(&ours).0, spread(&raw).0);
    Ok(vec![
        Fig::range(s, backend, "syncs_per_s", &ours, "1/s").vs(raw_m),
        Fig::range(s, backend, "raw_apalis_jobs_per_s", &raw, "1/s"),
        Fig::one(s, backend, "ratio_of_medians", ours_m / raw_m, "x"),
        Fig::range(s, backend, "cpu_per_sync", &cpu, "us"),
    ])
}

/// Parallel efficiency at 50 ms +- 10 ms per sync, 2 x 64, with summary reads meanwhile.
pub async fn efficiency(backend: &'static str, n: usize) -> anyhow::Result<Vec<Fig>> {
    let (procs, conc) = (2, 64);
    let db = Db::with_instances(
        backend,
        n,
        json!({"latency_ms": 40, "jitter_ms": 20, "accounts": 0}),
    )
    .await?;
    let addr = free_addr()?;
    let serve = Command::new(syncpool_bin()?)
        .args(["serve", "--bind", &addr])
        .env("SYNCPOOL_DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let workers = spawn_workers(&db.url, procs, conc)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let created = db.store.session_create(SyncType::ManualBatch, None).await?;
    let path = format!("/api/v1/sessions/{}", created.session_id);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (addr, path, done) = (addr.clone(), path.clone(), done.clone());
        tokio::spawn(async move {
            let mut lat = vec![];
            let mut bytes = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                match http_get(&addr, &path).await {
                    Ok((200, b)) => {
                        lat.push(t.elapsed());
                        bytes = b;
                    }
                    Ok((code, _)) => eprintln!("  read: HTTP {code}"),
                    Err(e) => eprintln!("  read: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (lat, bytes)
        })
    };
    let ok = db
        .wait_finished(created.session_id, Duration::from_secs(1800))
        .await?;
    let actual = t.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (lat, bytes) = reader.await.unwrap_or_default();
    let serve_rss = peak_rss_mb(serve.id());
    stop(workers);
    stop(vec![serve]);
    db.close().await?;
    anyhow::ensure!(ok as usize == n, "only {ok} of {n} syncs completed");
    let ideal = n as f64 * 0.050 / (procs * conc) as f64;
    let s = "efficiency";
    Ok(vec![
        Fig::one(s, backend, "time", actual, "s").vs(ideal),
        Fig::one(s, backend, "parallel_efficiency", ideal / actual, "x"),
        Fig::one(
            s,
            backend,
            "session_read_p50",
            percentile_ms(&lat, 50.0),
            "ms",
        ),
        Fig::one(
            s,
            backend,
            "session_read_p99",
            percentile_ms(&lat, 99.0),
            "ms",
        ),
        Fig::one(s, backend, "session_read_bytes", bytes as f64, "B"),
        Fig::one(s, backend, "serve_peak_rss", serve_rss, "MB"),
    ])
}

/// Idle workers: from the commit of a one-instance session to its sync's start.
pub async fn pickup(backend: &'static str, samples: usize) -> anyhow::Result<Vec<Fig>> {
    let db = Db::with_instances(backend, 1, instant_options()).await?;
    let id = db.store.instance_list().await?[0].id;
    let workers = spawn_workers(&db.url, 2, 16)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lat = vec![];
    for i in 0..samples {
        let created = db
            .store
            .session_create(SyncType::ManualSingle, Some(&[id]))
            .await?;
        db.wait_finished(created.session_id, Duration::from_secs(60))
            .await?;
        let d = db
            .store
            .session_get(created.session_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("session {} vanished", created.session_id))?;
        let start = d
            .records
            .first()
            .and_then(|r| r.started_at)
            .ok_or_else(|| {
                anyhow::anyhow!("session {} has no started record", created.session_id)
            })?;
        lat.push((start - d.session.created_at).to_std().unwrap_or_default());
        // Land the next enqueue anywhere in the workers' polling cycle.
        tokio::time::sleep(Duration::from_millis(37 * (i as u64 % 7) + 20)).await;
    }
    stop(workers);
    db.close().await?;
    let s = "pickup";
    Ok(vec![
        Fig::one(s, backend, "p50", percentile_ms(&lat, 50.0), "ms"),
        Fig::one(s, backend, "p99", percentile_ms(&lat, 99.0), "ms"),
        Fig::one(s, backend, "max", percentile_ms(&lat, 100.0), "ms"),
    ])
}

/// The enqueue of one session of each size.
pub async fn enqueue(backend: &'static str, sizes: &[usize]) -> anyhow::Result<Vec<Fig>> {
    let mut out = vec![];
    for &n in sizes {
        let db = Db::with_instances(backend, n, instant_options()).await?;
        let t = Instant::now();
        db.store.session_create(SyncType::ManualBatch, None).await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        db.close().await?;
        out.push(Fig::one(
            "enqueue",
            backend,
            &format!("{n}_instances"),
            ms,
            "ms",
        ));
    }
    Ok(out)
}

/// Throughput (beside raw apalis at the same size), cost and memory at growing sizes,
/// 2 x 64; the memory of reading it all.
pub async fn scale(backend: &'static str, sizes: &[usize]) -> anyhow::Result<Vec<Fig>> {
    let mut out = vec![];
    for &n in sizes {
        let db = Db::with_instances(backend, n, instant_options()).await?;
        let (d, session) = drain(&db, n, 2, 64).await?;
        // `session ID --json` prints every record: its peak memory, by GNU time.
        let cli = Command::new("/usr/bin/time")
            .args(["-f", "%M"])
            .arg(syncpool_bin()?)
            .args(["session", &session.to_string(), "--json"])
            .env("SYNCPOOL_DATABASE_URL", &db.url)
            .stdout(Stdio::null())
            .output()?;
        let cli_mb = String::from_utf8_lossy(&cli.stderr)
            .lines()
            .last()
            .and_then(|l| l.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0;
        db.close().await?;
        // The peer at the same size: apalis' own fetch slows down as the queue grows.
        let raw = raw_apalis(backend, n).await?;
        let s = "scale";
        let m = |x: &str| format!("{n}_{x}");
        out.extend([
            Fig::one(s, backend, &m("syncs_per_s"), d.rate, "1/s").vs(raw),
            Fig::one(s, backend, &m("cpu_per_sync"), d.cpu_us, "us"),
            Fig::one(s, backend, &m("drain_time"), d.secs, "s"),
            Fig::one(s, backend, &m("worker_peak_rss"), d.rss_mb, "MB"),
            Fig::one(s, backend, &m("session_json_cli_peak_rss"), cli_mb, "MB"),
        ]);
    }
    Ok(out)
}

/// Three sessions in a row of the same `n` no-op instances on the same two workers x 16
/// (issue #21): a fleet lives in later sessions, over tables that already hold finished
/// ones, with workers that have run before. Each later session's rate is compared with
/// the first's (target >= 0.9), the third's with raw apalis in the same run (>= 0.6).
pub async fn steady(backend: &'static str, n: usize) -> anyhow::Result<Vec<Fig>> {
    let db = Db::with_instances(backend, n, instant_options()).await?;
    let workers = spawn_workers(&db.url, 2, 16)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rates = vec![];
    for session in 1..=3 {
        let t = Instant::now();
        let created = db.store.session_create(SyncType::ManualBatch, None).await?;
        let ok = db
            .wait_finished(created.session_id, Duration::from_secs(1800))
            .await?;
        anyhow::ensure!(
            ok as usize == n,
            "session {session}: only {ok} of {n} syncs completed"
        );
        rates.push(n as f64 / t.elapsed().as_secs_f64());
        eprintln!(
            "  steady {backend} session {session}: {:.0}/s",
            rates[session - 1]
        );
    }
    stop(workers);
    db.close().await?;
    let raw = raw_apalis(backend, n).await?;
    let s = "steady";
    Ok(vec![
        Fig::one(s, backend, "session1_syncs_per_s", rates[0], "1/s").vs(raw),
        Fig::one(s, backend, "session2_syncs_per_s", rates[1], "1/s").vs(rates[0]),
        Fig::one(s, backend, "session3_syncs_per_s", rates[2], "1/s").vs(rates[0]),
        Fig::one(s, backend, "session3_vs_raw_apalis", rates[2] / raw, "x").vs(0.6),
        Fig::one(s, backend, "raw_apalis_jobs_per_s", raw, "1/s"),
    ])
}

/// One session's figures in a row of sessions over the same fleet.
struct Round {
    rate: f64,
    /// Account rows written per second: the inventory (one per account) and the history
    /// (a baseline per account the first time, then only what changed).
    rows_per_s: f64,
}

/// `count` sessions in a row over `n` instances of `accounts` accounts each, on two
/// workers x 16; and the workers' peak RSS.
async fn rounds(
    backend: &'static str,
    n: usize,
    accounts: usize,
    count: usize,
) -> anyhow::Result<(Vec<Round>, f64)> {
    let db = Db::with_instances(backend, n, json!({"latency_ms": 0, "accounts": accounts})).await?;
    let workers = spawn_workers(&db.url, 2, 16)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut out, mut history_before) = (vec![], 0);
    for session in 1..=count {
        let t = Instant::now();
        let created = db.store.session_create(SyncType::ManualBatch, None).await?;
        let ok = db
            .wait_finished(created.session_id, Duration::from_secs(3600))
            .await?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            ok as usize == n,
            "session {session}: only {ok} of {n} syncs completed"
        );
        let history = db.count("SELECT COUNT(*) FROM account_changes").await?;
        let rows = (n * accounts) as f64 + (history - history_before) as f64;
        history_before = history;
        out.push(Round {
            rate: n as f64 / secs,
            rows_per_s: rows / secs,
        });
        eprintln!(
            "  inventory {backend} {n} x {accounts} session {session}: {:.0} syncs/s, {:.0} account rows/s",
            n as f64 / secs,
            rows / secs
        );
    }
    let rss = workers
        .iter()
        .map(|c| peak_rss_mb(c.id()))
        .fold(0.0, f64::max);
    stop(workers);
    db.close().await?;
    Ok((out, rss))
}

/// Instances that have accounts (issue #21): `n` x 20 accounts against the no-op rate of
/// the same fleet (targets: at least 0.5 of it in the first session, which writes every
/// baseline, and 0.75 later), and `big.0` x `big.1` accounts (target: 50,000 account rows
/// per second or more, worker memory bounded).
pub async fn inventory(
    backend: &'static str,
    n: usize,
    big: (usize, usize),
) -> anyhow::Result<Vec<Fig>> {
    let db = Db::with_instances(backend, n, instant_options()).await?;
    let (noop, _) = drain(&db, n, 2, 16).await?;
    db.close().await?;
    let (small, _) = rounds(backend, n, 20, 3).await?;
    let (large, rss) = rounds(backend, big.0, big.1, 2).await?;
    let s = "inventory";
    Ok(vec![
        Fig::one(s, backend, "noop_syncs_per_s", noop.rate, "1/s"),
        Fig::one(
            s,
            backend,
            "accounts20_session1_syncs_per_s",
            small[0].rate,
            "1/s",
        )
        .vs(noop.rate),
        Fig::one(
            s,
            backend,
            "accounts20_session3_syncs_per_s",
            small[2].rate,
            "1/s",
        )
        .vs(noop.rate),
        Fig::one(
            s,
            backend,
            "accounts20_session3_rows_per_s",
            small[2].rows_per_s,
            "1/s",
        ),
        Fig::one(
            s,
            backend,
            "accounts10k_session1_rows_per_s",
            large[0].rows_per_s,
            "1/s",
        )
        .vs(50_000.0),
        Fig::one(
            s,
            backend,
            "accounts10k_session2_rows_per_s",
            large[1].rows_per_s,
            "1/s",
        )
        .vs(50_000.0),
        Fig::one(
            s,
            backend,
            "accounts10k_session1_syncs_per_s",
            large[0].rate,
            "1/s",
        ),
        Fig::one(s, backend, "accounts10k_peak_worker_rss", rss, "MB"),
    ])
}

/// Issue #23: `n` no-op syncs on 2 x 16 workers with a limit of 16 per group over 20
/// groups, against the same fleet without limits, in the same run.
pub async fn limit(backend: &'static str, n: usize, rounds: usize) -> anyhow::Result<Vec<Fig>> {
    const GROUPS: usize = 20;
    let (mut free, mut limited) = (vec![], vec![]);
    for round in 0..rounds {
        let db = Db::with_groups(backend, n, instant_options(), GROUPS).await?;
        let (d, _) = drain(&db, n, 2, 16).await?;
        db.close().await?;
        free.push(d.rate);
        let db = Db::with_groups(backend, n, instant_options(), GROUPS).await?;
        for g in 0..GROUPS {
            db.store.limit_set(&format!("group:g{g:02}"), 16).await?;
        }
        let (d, _) = drain(&db, n, 2, 16).await?;
        db.close().await?;
        limited.push(d.rate);
        eprintln!(
            "  limit {backend} round {}: no limits {:.0}/s, 16 per group x {GROUPS} groups {:.0}/s",
            round + 1,
            free[round],
            limited[round]
        );
    }
    let s = "limit";
    let (free_m, lim_m) = (spread(&free).0, spread(&limited).0);
    Ok(vec![
        Fig::range(s, backend, "no_limits_syncs_per_s", &free, "1/s"),
        Fig::range(s, backend, "limited_syncs_per_s", &limited, "1/s").vs(free_m),
        Fig::one(s, backend, "limited_vs_no_limits", lim_m / free_m, "x"),
    ])
}

/// Issue #24: what evaluating a policy in every finish costs. 10,000 instances of 20
/// accounts (the first a superuser), the first session of each fleet without a policy and
/// with a policy of three rules that opens two violations per instance; 3 rounds.
pub async fn policy(backend: &'static str, n: usize, rounds: usize) -> anyhow::Result<Vec<Fig>> {
    const RULES: &str = "rules:\n  - name: approved-superusers\n    deny: [superuser]\n    except_accounts: [postgres]\n  - name: no-open-hosts\n    deny_accounts: [\"*@%\"]\n  - name: monitoring\n    require_accounts: [monitor]\n";
    let options = json!({"latency_ms": 0, "accounts": 20});
    let (mut free, mut judged) = (vec![], vec![]);
    for round in 0..rounds {
        let db = Db::with_instances(backend, n, options.clone()).await?;
        let (d, _) = drain(&db, n, 2, 16).await?;
        db.close().await?;
        free.push(d.rate);
        let db = Db::with_instances(backend, n, options.clone()).await?;
        let policy = syncpool::policy::parse(RULES)?;
        db.store.policy_set(&policy, RULES).await?;
        let (d, _) = drain(&db, n, 2, 16).await?;
        db.close().await?;
        judged.push(d.rate);
        eprintln!(
            "  policy {backend} round {}: no policy {:.0}/s, 3 rules (2 violations per instance) {:.0}/s",
            round + 1,
            free[round],
            judged[round]
        );
    }
    let s = "policy";
    let (free_m, judged_m) = (spread(&free).0, spread(&judged).0);
    Ok(vec![
        Fig::range(s, backend, "no_policy_syncs_per_s", &free, "1/s"),
        Fig::range(s, backend, "policy_syncs_per_s", &judged, "1/s").vs(free_m),
        Fig::one(s, backend, "policy_vs_no_policy", judged_m / free_m, "x"),
    ])
}
