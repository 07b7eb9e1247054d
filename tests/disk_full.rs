//! A full disk under the SQLite file: writes fail for a while, then space comes back and
//! the fleet must carry on by itself. Tried for real on a small tmpfs (root mounts it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;
use syncpool::model::SyncType;
use syncpool::store::Store;
use uuid::Uuid;

use crate::common::*;
use crate::processes::{assert_invariants, wait_finished};

/// A size-limited filesystem for the test's database, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        assert!(
            is_root(),
            "the full-disk test mounts a tmpfs and needs root (CI runs as root)"
        );
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount a tmpfs at {}", at.display());
        SmallDisk(at.to_path_buf())
    }

    /// Fills what space is left with a file; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // Smaller pieces, so that not even one page is left.
        while f.write_all(&block[..512]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The fault of issue #19: the disk filled for a few seconds during a session with large
/// inventories. It used to end with every worker waiting on "database is locked" for good
/// (a connection left inside a failed transaction) and the session stuck `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_sqlite_stops_writes_only_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("disk");
    let db = TestDb::sqlite_at(dir, &at.join("syncpool.db"));
    // Declared after the database: unmounted first, then its folder removed.
    let disk = SmallDisk::mount(&at, "48m");
    let store = db.store().await;
    let (mut workers, session) = a_session_under_way(&db, store.as_ref()).await;
    // Fill the disk once some records are written, while the rest are in flight.
    let filler = disk.fill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();

    let done = wait_finished(&db, &[session], Duration::from_secs(120)).await;
    eprintln!(
        "session finished {:?} after space returned",
        freed.elapsed()
    );
    let logs = every_instance_synced(&done, &workers);
    assert!(
        logs.iter()
            .any(|l| l.contains("full") || l.contains("disk") || l.contains("I/O")),
        "the disk really was full for the workers: {logs:?}"
    );
    for l in &logs {
        assert!(
            !l.contains("non-zero transaction depth"),
            "a connection was reused inside a failed transaction: {l}"
        );
    }
    the_fleet_carries_on(&db, store.as_ref(), &mut workers).await;
    let pool = match store.pool() {
        syncpool::store::DbPool::Sqlite(p) => p,
        _ => unreachable!(),
    };
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(check, "ok");
}

/// The same on PostgreSQL: a private cluster whose data directory is a small tmpfs fills
/// up during a session. PostgreSQL answers `53100 disk_full` to writes (transient for
/// syncpool), or stops when it cannot write its WAL; when space is back (and the server,
/// had it stopped, is started again as its operator would), the fleet carries on by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_postgres_stops_writes_only_until_space_returns() {
    let pg = crate::private_pg::PrivatePg::start_on_small_disk("160m");
    {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres"))
            .await
            .expect("connect to the private cluster");
        sqlx::query("CREATE DATABASE syncpool")
            .execute(&mut c)
            .await
            .unwrap();
    }
    // A temp dir for the workers' logs; the database is the private cluster's.
    let mut db = TestDb::new(Backend::Sqlite).await;
    db.url = pg.url("syncpool");
    let store = db.store().await;
    let (mut workers, session) = a_session_under_way(&db, store.as_ref()).await;
    let filler = pg.fill_disk();
    tokio::time::sleep(Duration::from_secs(4)).await;
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    // PostgreSQL restarts itself after a failed WAL write unless its recovery also found
    // the disk full; then it has stopped, and its operator starts it again. A server still
    // in recovery refuses connections but runs: starting another would fail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = !pg.is_running();
    if restarted {
        pg.start_server();
    }
    // The test's own reads below need the server; syncpool's workers wait on their own.
    pg.wait_until_up(Duration::from_secs(120)).await;
    let done = wait_finished(&db, &[session], Duration::from_secs(180)).await;
    eprintln!(
        "session finished {:?} after space returned (server restarted by the test: {restarted})",
        freed.elapsed()
    );
    let logs = every_instance_synced(&done, &workers);
    assert!(
        logs.iter().any(|l| l.contains("space")
            || l.contains("disk")
            || l.contains("53100")
            || l.contains("connection")
            || l.contains("terminat")),
        "the workers saw the full disk: {logs:?}"
    );
    the_fleet_carries_on(&db, store.as_ref(), &mut workers).await;
}

/// 60 slow instances with 400 accounts each, two workers, and a session of them that has
/// written some records with the rest in flight: the moment to fill the disk.
async fn a_session_under_way(db: &TestDb, store: &dyn Store) -> (Vec<(Child, PathBuf)>, Uuid) {
    for i in 0..60 {
        store
            .instance_insert(&simulated(
                &format!("big{i}"),
                json!({"latency_ms": 300, "accounts": 400}),
            ))
            .await
            .unwrap();
    }
    let workers = vec![
        worker(db, "a", &["--concurrency", "4"]),
        worker(db, "b", &["--concurrency", "4"]),
    ];
    let s = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let d = store.session_get(s.session_id).await.unwrap().unwrap();
        if d.session.successful_instances >= 8 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (workers, s.session_id)
}

/// Asserts the session ended with every instance synced and the invariants held; the
/// workers' logs, for what each backend's test looks for in them.
fn every_instance_synced(
    done: &[syncpool::model::SessionDetail],
    workers: &[(Child, PathBuf)],
) -> Vec<String> {
    assert_invariants(done);
    assert_eq!(
        done[0].session.successful_instances,
        60,
        "every instance synced: {:?}",
        done[0]
            .records
            .iter()
            .filter_map(|r| r.error.as_deref())
            .collect::<Vec<_>>()
    );
    workers
        .iter()
        .map(|w| std::fs::read_to_string(&w.1).unwrap_or_default())
        .collect()
}

/// The fleet is still healthy: a second session runs straight through, and the workers
/// stop cleanly on SIGTERM.
async fn the_fleet_carries_on(db: &TestDb, store: &dyn Store, workers: &mut [(Child, PathBuf)]) {
    let again = store
        .session_create(SyncType::ManualBatch, None)
        .await
        .unwrap();
    let done = wait_finished(db, &[again.session_id], Duration::from_secs(60)).await;
    assert_eq!(done[0].session.successful_instances, 60);
    for (c, _) in workers.iter() {
        signal(c, "TERM");
    }
    for (c, log) in workers.iter_mut() {
        assert!(
            c.wait().unwrap().success(),
            "worker exits cleanly: {}",
            std::fs::read_to_string(&*log).unwrap_or_default()
        );
    }
}
