//! What the sources share: credentials, read limits, timeouts and error classification.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::files::{MAX_SECRET_NAME, is_plain_file_name, read_small_file};
use crate::tls::{SslMode, Tls};
use crate::{InstanceSpec, SourceError, SourceSettings};

/// Largest password file, in bytes.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// Reads the instance's password: from the environment variable it names, which must
/// start with [`SECRET_ENV_PREFIX`], or from the file it names under [`secrets_dir`].
/// The rules are checked when an instance is added and again here, so a row written
/// around the API (or by an older version) still cannot make a worker read
/// `SYNCPOOL_DATABASE_URL`, `SYNCPOOL_API_TOKEN` or a file outside the secrets folder
/// and send it to whatever host the instance names. A named but missing secret is fatal:
/// no retry will make it appear.
///
/// A password file must be a regular file of at most [`MAX_PASSWORD_FILE_BYTES`] inside
/// the folder (see [`read_small_file`]); it is read on a blocking thread, never on the
/// runtime's, within a few seconds.
pub async fn password(instance: &InstanceSpec) -> Result<Option<String>, SourceError> {
    password_in(instance, &secrets_dir()).await
}

pub(crate) async fn password_in(
    instance: &InstanceSpec,
    dir: &Path,
) -> Result<Option<String>, SourceError> {
    if let Some(var) = &instance.password_env {
        check_secret_env(var).map_err(SourceError::Fatal)?;
        return std::env::var(var).map(Some).map_err(|_| {
            SourceError::Fatal(format!(
                "the password variable {var} of instance '{}' is not set in the worker's environment",
                instance.name
            ))
        });
    }
    if let Some(file) = &instance.password_file {
        check_secret_file(file).map_err(SourceError::Fatal)?;
        let what = format!("the password file {file} of instance '{}'", instance.name);
        let bytes = read_small_file(dir, file, MAX_PASSWORD_FILE_BYTES)
            .await
            .map_err(|e| {
                SourceError::Fatal(format!(
                    "{what} {}",
                    e.explain("secrets folder (SYNCPOOL_SECRETS_DIR)")
                ))
            })?;
        // Never echo the bytes: the file may hold anything.
        let text = String::from_utf8(bytes)
            .map_err(|_| SourceError::Fatal(format!("{what} is not UTF-8 text")))?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
    }
    Ok(None)
}

/// What one sync may read from an instance, counted as rows arrive, so that a server
/// with millions of roles or grants of megabytes fails its record instead of growing the
/// worker without bound. Bytes are those of the values as read (names, attributes,
/// privilege text), plus [`Budget::FIELD`] for each number or flag.
pub(crate) struct Budget<'a> {
    instance: &'a str,
    max_accounts: usize,
    max_account_bytes: usize,
    max_sync_bytes: usize,
    count: usize,
    total: usize,
    accounts: HashMap<String, usize>,
}

impl<'a> Budget<'a> {
    /// What a number, a flag or a timestamp is counted as.
    pub(crate) const FIELD: usize = 8;

    pub(crate) fn new(instance: &'a str, settings: &SourceSettings) -> Self {
        Budget {
            instance,
            max_accounts: settings.max_accounts,
            max_account_bytes: settings.max_row_bytes,
            max_sync_bytes: settings.max_sync_bytes,
            count: 0,
            total: 0,
            accounts: HashMap::new(),
        }
    }

    pub(crate) fn max_accounts(&self) -> usize {
        self.max_accounts
    }

    /// One more account, `key` (its name, or `user@host`), of `bytes` so far.
    pub(crate) fn account(&mut self, key: &str, bytes: usize) -> Result<(), SourceError> {
        if self.count >= self.max_accounts {
            return Err(SourceError::Fatal(format!(
                "instance '{}' has more than {} accounts (limit max_accounts; raise it with \
                 --max-accounts or SYNCPOOL_MAX_ACCOUNTS)",
                self.instance, self.max_accounts
            )));
        }
        self.count += 1;
        self.accounts.insert(key.to_string(), 0);
        self.charge(key, bytes)
    }

    /// Whether `key` was counted by [`Budget::account`].
    pub(crate) fn has(&self, key: &str) -> bool {
        self.accounts.contains_key(key)
    }

    /// `bytes` more of the account `key`; a row of no counted account (a membership of a
    /// role that was filtered out) counts toward the total only.
    pub(crate) fn charge(&mut self, key: &str, bytes: usize) -> Result<(), SourceError> {
        self.total = self.total.saturating_add(bytes);
        if let Some(n) = self.accounts.get_mut(key) {
            *n = n.saturating_add(bytes);
            if *n > self.max_account_bytes {
                return Err(SourceError::Fatal(format!(
                    "account '{key}' of instance '{}' is larger than {} bytes as read (limit \
                     max_account_bytes; raise it with --max-account-bytes or SYNCPOOL_MAX_ACCOUNT_BYTES)",
                    self.instance, self.max_account_bytes
                )));
            }
        }
        if self.total > self.max_sync_bytes {
            return Err(SourceError::Fatal(format!(
                "instance '{}' returned more than {} bytes of accounts (limit max_sync_bytes; \
                 raise it with --max-sync-bytes or SYNCPOOL_MAX_SYNC_BYTES)",
                self.instance, self.max_sync_bytes
            )));
        }
        Ok(())
    }
}

/// The length of `value` as JSON text, without building the text.
pub(crate) fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A read that failed in the driver (classified by the caller, who knows the address)
/// or on a rule of its own (a limit).
pub(crate) enum ReadError {
    Db(sqlx::Error),
    Source(SourceError),
}

impl From<sqlx::Error> for ReadError {
    fn from(e: sqlx::Error) -> Self {
        ReadError::Db(e)
    }
}

impl From<SourceError> for ReadError {
    fn from(e: SourceError) -> Self {
        ReadError::Source(e)
    }
}

impl ReadError {
    pub(crate) fn classify(self, addr: &str, user: &str) -> SourceError {
        match self {
            ReadError::Db(e) => classify(e, addr, user, None),
            ReadError::Source(e) => e,
        }
    }
}

/// The only environment variables an instance may name for its password start with this.
pub const SECRET_ENV_PREFIX: &str = "SYNCPOOL_SECRET_";

/// Where `password_file` names are looked up: `SYNCPOOL_SECRETS_DIR`, by default
/// `/run/secrets` (where container platforms mount secrets).
pub fn secrets_dir() -> std::path::PathBuf {
    std::env::var_os("SYNCPOOL_SECRETS_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/run/secrets".into())
}

/// Where `ssl_root_cert` file names are looked up: `SYNCPOOL_CERTS_DIR`, by default
/// `/etc/syncpool/certs`.
pub fn certs_dir() -> std::path::PathBuf {
    std::env::var_os("SYNCPOOL_CERTS_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/etc/syncpool/certs".into())
}

/// [`check_secret_env`] as a regular expression, for the API's schema.
pub const SECRET_ENV_PATTERN: &str = "^SYNCPOOL_SECRET_[A-Z0-9_]+$";

/// [`check_secret_file`] as a regular expression, for the API's schema.
pub const SECRET_FILE_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$";

/// The rule for `password_env`, in words a user can act on.
pub fn check_secret_env(var: &str) -> Result<(), String> {
    let rest = var.strip_prefix(SECRET_ENV_PREFIX).unwrap_or("");
    let ok = !rest.is_empty()
        && var.len() <= MAX_SECRET_NAME
        && rest
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "password_env must name a variable {SECRET_ENV_PREFIX}NAME (upper-case letters, digits, underscores), \
             not hold a password; a worker reads no other variable for an instance"
        ))
    }
}

/// The rule for `password_file`: a plain file name inside the secrets folder.
pub fn check_secret_file(name: &str) -> Result<(), String> {
    if is_plain_file_name(name) {
        Ok(())
    } else {
        Err(
            "password_file must be a plain file name (letters, digits, '.', '_', '-'; no path) \
             in the worker's secrets folder (SYNCPOOL_SECRETS_DIR, default /run/secrets)"
                .into(),
        )
    }
}

/// The instance's host, if the worker may connect to it: checked before anything,
/// password included, is sent (see `hosts.rs`).
pub(crate) fn allowed_host<'a>(
    inst: &'a InstanceSpec,
    settings: &crate::SourceSettings,
) -> Result<&'a str, SourceError> {
    let host = require(&inst.host, "host", inst)?;
    // Checked again here for rows written around the API.
    if !crate::hosts::is_network_host(host) {
        return Err(SourceError::Fatal(format!(
            "host of instance '{}' is not a DNS name or an IP address (a socket folder or a path is refused)",
            inst.name
        )));
    }
    if settings.instance_hosts.allows(host) {
        Ok(host)
    } else {
        Err(SourceError::Fatal(format!(
            "host {host} of instance '{}' is not among this worker's allowed instance hosts \
             (--instance-hosts / SYNCPOOL_INSTANCE_HOSTS); nothing was sent to it",
            inst.name
        )))
    }
}

pub(crate) fn require<'a>(
    value: &'a Option<String>,
    what: &str,
    instance: &InstanceSpec,
) -> Result<&'a str, SourceError> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SourceError::Fatal(format!("instance '{}' has no {what}", instance.name)))
}

/// Runs `fut` with a deadline; running out of time is worth another attempt.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, SourceError>>,
) -> Result<T, SourceError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(SourceError::Retryable(format!(
            "{what} timed out after {} s",
            limit.as_secs_f64()
        )))
    })
}

/// Turns a driver error into a message a DBA understands, classified as retryable
/// (network, timeouts, overload) or fatal (authentication, privileges, configuration).
///
/// `tls` is given while connecting: a handshake that fails (a certificate that does not
/// chain or names another host) is a configuration problem no retry fixes, and its
/// message names the `ssl_mode` so the operator knows which knob to turn.
pub(crate) fn classify(e: sqlx::Error, addr: &str, user: &str, tls: Option<&Tls>) -> SourceError {
    use SourceError::{Fatal, Retryable};
    let mode = tls.map(Tls::name).unwrap_or("prefer");
    match e {
        // rustls reports a rejected certificate through the socket as InvalidData.
        sqlx::Error::Io(io)
            if io.kind() == std::io::ErrorKind::InvalidData
                && tls.is_some_and(|t| t.mode != SslMode::Disable) =>
        {
            Fatal(format!(
                "TLS handshake with {addr} failed (ssl_mode={mode}): {io}"
            ))
        }
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Retryable(format!(
                "connection refused by {addr}: is the server running?"
            )),
            std::io::ErrorKind::TimedOut => Retryable(format!("network timeout talking to {addr}")),
            _ => Retryable(format!("network error talking to {addr}: {io}")),
        },
        sqlx::Error::Tls(t) => Fatal(format!("TLS failure with {addr} (ssl_mode={mode}): {t}")),
        sqlx::Error::Database(db) => {
            // MySQL's SQLSTATEs are coarse (42000 covers most denials): prefer its error number.
            let code = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|e| e.number().to_string())
                .or_else(|| db.code().map(|c| c.into_owned()))
                .unwrap_or_default();
            let msg = db.message().to_string();
            let insecure_refused = (code == "28000" && msg.contains("no encryption"))
                || code == "3159"
                || msg.contains("insecure transport");
            match code.as_str() {
                // pg_hba.conf with hostssl only, or MySQL's require_secure_transport.
                _ if insecure_refused => Fatal(format!(
                    "{addr} accepts only TLS connections but ssl_mode is {mode}: {msg}"
                )),
                // PostgreSQL: invalid password / authorization; MySQL: access denied.
                // MariaDB answers a plain connection refused by require_secure_transport
                // with an ordinary "access denied", so the hint can only be a maybe.
                "1045" if tls.is_some_and(|t| t.mode == SslMode::Disable) => Fatal(format!(
                    "authentication failed for user '{user}' at {addr}: {msg} \
                     (ssl_mode is disable: the server may accept this user only over TLS)"
                )),
                "28P01" | "28000" | "1045" => Fatal(format!(
                    "authentication failed for user '{user}' at {addr}: {msg}"
                )),
                // Missing privileges (to connect or to read the catalog).
                "42501" | "1044" | "1142" | "1143" | "1227" | "1141" => Fatal(format!(
                    "user '{user}' lacks a privilege needed to read accounts at {addr}: {msg}"
                )),
                "3D000" | "1049" => Fatal(format!("database missing at {addr}: {msg}")),
                // Statement timeouts, overload, server starting or shutting down.
                "57014" | "1969" | "3024" => {
                    Retryable(format!("catalog query timed out at {addr}: {msg}"))
                }
                "53300" | "1040" | "57P03" | "57P01" | "08006" | "08001" => {
                    Retryable(format!("{addr} refused service: {msg}"))
                }
                _ => Retryable(format!("database error at {addr} ({code}): {msg}")),
            }
        }
        other => Retryable(format!("error talking to {addr}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::files::{FILE_READ_DEADLINE, FileRefused};

    fn mkfifo(path: &Path) {
        let ok = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo");
        assert!(ok.success());
    }

    fn spec(password_file: &str) -> InstanceSpec {
        InstanceSpec {
            id: 1,
            name: "db-x".into(),
            kind: "postgres".into(),
            host: None,
            port: None,
            username: None,
            database: None,
            password_env: None,
            password_file: Some(password_file.into()),
            options: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn a_regular_file_in_the_folder_is_read_also_through_a_symlink_that_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain"), "abc").unwrap();
        // Kubernetes' layout: name -> ..data/name, ..data -> ..2024_01_01.
        std::fs::create_dir(dir.path().join("..2024_01_01")).unwrap();
        std::fs::write(dir.path().join("..2024_01_01/mounted"), "def").unwrap();
        std::os::unix::fs::symlink("..2024_01_01", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/mounted", dir.path().join("mounted")).unwrap();
        assert_eq!(
            read_small_file(dir.path(), "plain", 3).await.unwrap(),
            b"abc"
        );
        assert_eq!(
            read_small_file(dir.path(), "mounted", 10).await.unwrap(),
            b"def"
        );
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_folder_a_directory_or_a_path_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "outside-secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("up")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/inner"), "x").unwrap();
        for name in [
            "out",
            "zero",
            "up",
            "sub",
            "sub/inner",
            "../secret",
            "/etc/passwd",
            "..",
        ] {
            assert_eq!(
                read_small_file(dir.path(), name, 4096).await,
                Err(FileRefused::NotRegular),
                "{name}"
            );
        }
        assert_eq!(
            read_small_file(dir.path(), "absent", 4096).await,
            Err(FileRefused::Missing)
        );
    }

    #[tokio::test]
    async fn a_fifo_is_refused_at_once_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        mkfifo(&dir.path().join("pipe"));
        std::os::unix::fs::symlink("pipe", dir.path().join("to-pipe")).unwrap();
        for name in ["pipe", "to-pipe"] {
            let started = Instant::now();
            let read = read_small_file(dir.path(), name, 4096).await;
            assert_eq!(read, Err(FileRefused::NotRegular), "{name}");
            assert!(
                started.elapsed() < FILE_READ_DEADLINE,
                "{name}: took {:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn a_file_larger_than_the_cap_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        // Sparse: 64 GiB of zeros a reader without a cap would try to hold in memory.
        let huge = std::fs::File::create(dir.path().join("huge")).unwrap();
        huge.set_len(64 << 30).unwrap();
        std::fs::write(dir.path().join("exact"), vec![b'a'; 4096]).unwrap();
        let started = Instant::now();
        assert_eq!(
            read_small_file(dir.path(), "huge", 1 << 20).await,
            Err(FileRefused::TooLarge(1 << 20))
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            read_small_file(dir.path(), "exact", 4096)
                .await
                .unwrap()
                .len(),
            4096,
            "the cap itself is allowed"
        );
        assert_eq!(
            read_small_file(dir.path(), "exact", 4095).await,
            Err(FileRefused::TooLarge(4095))
        );
    }

    #[tokio::test]
    async fn a_password_file_obeys_the_rules_and_errors_never_show_its_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good"), "s3cret-pw\r\n").unwrap();
        std::fs::write(dir.path().join("big"), "s3cret-pw".repeat(569)).unwrap(); // 5,121 bytes
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("pw"), "s3cret-pw").unwrap();
        std::os::unix::fs::symlink(outside.path().join("pw"), dir.path().join("link")).unwrap();
        mkfifo(&dir.path().join("fifo"));
        std::fs::write(dir.path().join("binary"), [0xff, 0xfe, 0x00]).unwrap();
        assert_eq!(
            password_in(&spec("good"), dir.path()).await.unwrap(),
            Some("s3cret-pw".into())
        );
        for (file, rule) in [
            ("big", "is larger than 4096 bytes"),
            ("link", "is not a regular file in the secrets folder"),
            ("fifo", "is not a regular file in the secrets folder"),
            ("missing", "does not exist in the secrets folder"),
            ("binary", "is not UTF-8 text"),
        ] {
            let started = Instant::now();
            let err = password_in(&spec(file), dir.path()).await.unwrap_err();
            assert!(started.elapsed() < FILE_READ_DEADLINE, "{file}");
            assert!(!err.is_retryable(), "{file}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!(
                    "the password file {file} of instance 'db-x' {rule}"
                )),
                "{file}: {text}"
            );
            assert!(!text.contains("s3cret"), "{file}: {text}");
        }
        // The name rule is checked again here, for rows written around the API.
        let err = password_in(&spec("../good"), dir.path()).await.unwrap_err();
        assert!(err.to_string().contains("plain file name"), "{err}");
    }

    fn limits(accounts: usize, account_bytes: usize, sync_bytes: usize) -> SourceSettings {
        SourceSettings {
            max_accounts: accounts,
            max_row_bytes: account_bytes,
            max_sync_bytes: sync_bytes,
            ..SourceSettings::default()
        }
    }

    #[test]
    fn the_budget_counts_accounts_bytes_per_account_and_the_total() {
        let settings = limits(2, 100, 250);
        let mut b = Budget::new("inst", &settings);
        b.account("a", 60).unwrap();
        b.charge("a", 40).unwrap();
        assert!(b.has("a") && !b.has("other"));
        let err = b.charge("a", 1).unwrap_err().to_string();
        assert!(
            err.contains("account 'a' of instance 'inst' is larger than 100 bytes")
                && err.contains("max_account_bytes")
                && err.contains("--max-account-bytes"),
            "{err}"
        );

        let mut b = Budget::new("inst", &settings);
        b.account("a", 10).unwrap();
        b.account("b", 10).unwrap();
        // Rows of accounts not counted (filtered out) count toward the total only.
        b.charge("not-read", 1000).unwrap_err();
        let mut b = Budget::new("inst", &settings);
        b.account("a", 10).unwrap();
        b.account("b", 10).unwrap();
        let err = b.account("c", 0).unwrap_err();
        assert!(!err.is_retryable());
        let err = err.to_string();
        assert!(
            err.contains("instance 'inst' has more than 2 accounts")
                && err.contains("max_accounts")
                && err.contains("--max-accounts"),
            "{err}"
        );

        let mut b = Budget::new("inst", &settings);
        b.account("a", 100).unwrap();
        b.account("b", 100).unwrap();
        b.charge("x", 50).unwrap();
        let err = b.charge("x", 1).unwrap_err().to_string();
        assert!(
            err.contains("instance 'inst' returned more than 250 bytes")
                && err.contains("max_sync_bytes")
                && err.contains("--max-sync-bytes"),
            "{err}"
        );
    }

    #[test]
    fn json_len_is_the_length_of_the_json_text() {
        let v = serde_json::json!({"a": [1, "xé"], "b": null});
        assert_eq!(json_len(&v), v.to_string().len());
    }
}
