//! A private MariaDB server in a temporary directory, for tests that need settings the
//! machine's server lacks (TLS with a test CA, insecure transport refused). The machine's
//! server is never touched.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct PrivateMaria {
    dir: tempfile::TempDir,
    server: Child,
    pub port: u16,
}

impl PrivateMaria {
    /// A server that serves TLS with `cert`/`key` (signed by `ca`) and refuses every
    /// connection without it (`require_secure_transport`).
    pub fn start_tls_only(ca: &Path, cert: &Path, key: &Path) -> PrivateMaria {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let user: &[&str] = if crate::common::is_root() {
            &["--user=root"]
        } else {
            &[]
        };
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(user)
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .expect("mariadb-install-db (Debian's mariadb-server) is required");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::common::free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let server = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--port={port}"))
            .args(user)
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                "--skip-log-bin",
                "--require-secure-transport=ON",
            ])
            .arg(format!("--ssl-ca={}", ca.display()))
            .arg(format!("--ssl-cert={}", cert.display()))
            .arg(format!("--ssl-key={}", key.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mariadbd");
        let m = PrivateMaria { dir, server, port };
        let started = Instant::now();
        while m.sql("SELECT 1").is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the private MariaDB did not start: {}",
                std::fs::read_to_string(m.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// Runs SQL as root over the server's socket (the socket is not "transport" that
    /// require_secure_transport refuses).
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args(["-uroot", "-N", "-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for PrivateMaria {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
