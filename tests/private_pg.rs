//! A private PostgreSQL cluster in a temporary directory, for tests that restart the
//! server or need settings the machine's server lacks. The machine's server, which other
//! tests share, is never touched.

use std::path::PathBuf;
use std::process::Command;

pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// The data directory is a tmpfs of this size (unmounted on drop).
    small_disk: Option<String>,
}

/// The newest installed server's binaries (Debian keeps them out of PATH).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql are required")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("initdb is required")
}

impl PrivatePg {
    /// initdb (trust auth, no fsync: a test server), then start it on a free port.
    pub fn start() -> PrivatePg {
        Self::start_with(None)
    }

    /// Like [`PrivatePg::start`], with the data directory on a tmpfs of `size` (root
    /// mounts it), so that a test can fill the server's disk. WAL segments are 1 MB.
    pub fn start_on_small_disk(size: &str) -> PrivatePg {
        Self::start_with(Some(size.to_string()))
    }

    /// Fills what space is left on the small disk; returns the filler's path.
    pub fn fill_disk(&self) -> PathBuf {
        use std::io::Write;
        assert!(self.small_disk.is_some(), "not on a small disk");
        let filler = PathBuf::from(self.data()).join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..512]).is_ok() {}
        filler
    }

    /// Whether the server's postmaster runs, answering or not: after a full disk it may be
    /// in crash recovery (running, refusing connections for a while) or have stopped.
    pub fn is_running(&self) -> bool {
        // pg_ctl refuses to run as root; `status` exits 0 while a postmaster runs.
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if crate::common::is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        cmd.args(["status", "-D", &self.data()])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Waits until the server accepts connections (after crash recovery, say).
    pub async fn wait_until_up(&self, limit: std::time::Duration) {
        let start = std::time::Instant::now();
        loop {
            let up = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "the server did not come back within {limit:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    fn start_with(small_disk: Option<String>) -> PrivatePg {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(size) = &small_disk {
            assert!(
                crate::common::is_root(),
                "a small disk is a tmpfs mount, which needs root (CI runs as root)"
            );
            let data = dir.path().join("data");
            std::fs::create_dir(&data).unwrap();
            let ids = |flag: &str| {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            };
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!(
                    "size={size},mode=0700,uid={},gid={}",
                    ids("-u"),
                    ids("-g")
                ))
                .arg("tmpfs")
                .arg(&data)
                .status()
                .expect("mount");
            assert!(status.success(), "mount a tmpfs for the cluster");
        }
        if crate::common::is_root() {
            // The server refuses to run as root: the cluster belongs to `postgres`.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the cluster directory failed");
        }
        let pg = PrivatePg {
            bin: pg_bin(),
            port: crate::common::free_port(),
            dir,
            small_disk,
        };
        let data = pg.data();
        let mut args = vec![
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ];
        if pg.small_disk.is_some() {
            args.push("--wal-segsize=1");
        }
        pg.run("initdb", &args);
        pg.start_server();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if crate::common::is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "start"],
        );
    }

    /// From now on, members of `group` (created here) must log in over TCP with their
    /// password (SCRAM), as on a production server; everyone else is trusted.
    pub fn require_passwords(&self, group: &str) {
        let port = self.port.to_string();
        let sock = self.dir.path().display().to_string();
        self.run(
            "createuser",
            &[
                "-h",
                &sock,
                "-p",
                &port,
                "-U",
                "postgres",
                "--no-login",
                group,
            ],
        );
        let hba = self.dir.path().join("data").join("pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "local all all trust\nhost all +{group} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n"
            ),
        )
        .expect("write pg_hba.conf");
        self.run("pg_ctl", &["-D", &self.data(), "-w", "reload"]);
    }

    /// From now on the server speaks TLS with `cert`/`key` and accepts TCP connections only
    /// over TLS (`hostssl` lines only, as a hardened production server would).
    pub fn serve_tls_only(&self, cert: &std::path::Path, key: &std::path::Path) {
        let data = self.dir.path().join("data");
        std::fs::copy(cert, data.join("server.crt")).expect("copy cert");
        std::fs::copy(key, data.join("server.key")).expect("copy key");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .expect("write pg_hba.conf");
        // The server refuses a key others can read.
        let status = Command::new("chmod")
            .arg("600")
            .arg(data.join("server.key"))
            .status()
            .unwrap();
        assert!(status.success());
        if crate::common::is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .status()
                .unwrap();
            assert!(status.success());
        }
        self.run("pg_ctl", &["-D", &self.data(), "-w", "reload"]);
    }

    /// Stops the server the hard way (as a crash would) and starts it again.
    pub fn crash_restart(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        self.start_server();
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
        }));
        if self.small_disk.is_some() {
            let _ = Command::new("umount").arg("-l").arg(&data).status();
        }
    }
}
