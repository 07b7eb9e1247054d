//! A TCP proxy between syncpool and PostgreSQL that a test can cut and restore, to play
//! a network that drops: every connection through it is closed at once and new ones are
//! refused until `restore`. `cut_after_next_commit` plays the worst moment: the client's
//! COMMIT reaches the server, which commits, but the reply never comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    /// Bumped on every cut: connections opened under an older generation close.
    generation: watch::Sender<u64>,
    refusing: Arc<AtomicBool>,
    commit_trap: Arc<AtomicBool>,
    pub commits_cut: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let (generation, _) = watch::channel(0u64);
        let refusing = Arc::new(AtomicBool::new(false));
        let commit_trap = Arc::new(AtomicBool::new(false));
        let commits_cut = Arc::new(AtomicU64::new(0));
        let task = {
            let (generation, refusing, commit_trap, commits_cut) = (
                generation.clone(),
                refusing.clone(),
                commit_trap.clone(),
                commits_cut.clone(),
            );
            let upstream = upstream.to_string();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    if refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let gen_rx = generation.subscribe();
                    let (upstream, commit_trap, commits_cut) =
                        (upstream.clone(), commit_trap.clone(), commits_cut.clone());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        pipe(client, server, gen_rx, commit_trap, commits_cut).await;
                    });
                }
            })
        };
        Proxy {
            port,
            generation,
            refusing,
            commit_trap,
            commits_cut,
            task,
        }
    }

    /// Closes every connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }

    /// Restores the proxy after `after`, from a task of its own.
    pub fn restore_later(&self, after: Duration) {
        let refusing = self.refusing.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            refusing.store(false, Ordering::SeqCst);
        });
    }

    /// The next COMMIT sent through the proxy reaches the server; then that connection
    /// is closed before the server's answer gets back.
    pub fn cut_after_next_commit(&self) {
        self.commit_trap.store(true, Ordering::SeqCst);
    }

    /// A URL like `base` (`postgres://user@127.0.0.1:5432/db`) that goes through the proxy.
    pub fn url(&self, base: &str) -> String {
        let (scheme_user, rest) = base.split_once('@').expect("a URL with user@host");
        let (_, db) = rest.split_once('/').expect("a URL with a database");
        // Plain text: the commit trap reads the protocol, which TLS (sqlx's default
        // `prefer`, against a server that offers it) would hide.
        let sep = if db.contains('?') { '&' } else { '?' };
        format!(
            "{scheme_user}@127.0.0.1:{}/{db}{sep}sslmode=disable",
            self.port
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mut generation: watch::Receiver<u64>,
    commit_trap: Arc<AtomicBool>,
    commits_cut: Arc<AtomicU64>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set before a trapped COMMIT is forwarded, so its answer can never slip through.
    let silenced = AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // A simple-protocol COMMIT: 'Q', length, "COMMIT\0".
            let trapped = buf[..n].windows(7).any(|w| w == b"COMMIT\0")
                && commit_trap.swap(false, Ordering::SeqCst);
            if trapped {
                silenced.store(true, Ordering::SeqCst);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if trapped {
                // Give the server time to commit, then vanish without its answer.
                tokio::time::sleep(Duration::from_millis(300)).await;
                commits_cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if silenced.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = generation.changed() => {}
    }
}
