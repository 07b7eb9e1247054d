//! Wrong sign-ins limited per client address, in memory, per process.
//!
//! The stored secret keeps a leaked cookie from being a way to test guesses offline, so
//! guesses can only be tried here: [`MAX_FAILURES`] wrong tokens within [`WINDOW`] from
//! one address, and that address is refused (429) until the window ends, right token or
//! not (else the limit would still answer which guess was right). Other addresses are
//! unaffected. An IPv6 client is counted by its /64, which one host usually holds whole.
//! Behind a reverse proxy every client has the proxy's address, so they share one count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong sign-ins allowed per address and window.
pub const MAX_FAILURES: u32 = 10;
/// The window, from an address's first wrong sign-in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond, the oldest windows are forgotten first.
const MAX_ADDRESSES: usize = 10_000;

/// Wrong sign-ins per client address.
#[derive(Default)]
pub struct Limiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// The address a client is counted by.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::V6(s.into())
        }
        v4 => v4,
    }
}

impl Limiter {
    /// None when `ip` may try a sign-in now; else how long it must wait.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (start, failures) = *windows.get(&key(ip))?;
        let end = start + WINDOW;
        (failures >= MAX_FAILURES && now < end).then(|| end - now)
    }

    /// Counts a wrong sign-in from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_ADDRESSES && !windows.contains_key(&key(ip)) {
            windows.retain(|_, (start, _)| now < *start + WINDOW);
            if windows.len() >= MAX_ADDRESSES {
                // Still full of live windows: forget the oldest, not the newcomer.
                if let Some(oldest) = windows.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    windows.remove(&oldest);
                }
            }
        }
        let entry = windows.entry(key(ip)).or_insert((now, 0));
        if now >= entry.0 + WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// A right sign-in from `ip` clears its count.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.remove(&key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_wrong_sign_ins_until_the_window_ends() {
        let l = Limiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(l.blocked(a, t0).is_none());
            l.failed(a, t0);
        }
        let wait = l.blocked(a, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(wait, WINDOW - Duration::from_secs(10));
        assert!(
            l.blocked(b, t0).is_none(),
            "another address is not affected"
        );
        assert!(l.blocked(a, t0 + WINDOW).is_none(), "the window ends");
        l.failed(a, t0 + WINDOW);
        assert!(
            l.blocked(a, t0 + WINDOW).is_none(),
            "a new window starts at one"
        );
        // One host's IPv6 addresses share its /64.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 0..MAX_FAILURES {
            l.failed(v6(&format!("2001:db8::{i:x}")), t0);
        }
        assert!(l.blocked(v6("2001:db8::ffff"), t0).is_some());
        assert!(l.blocked(v6("2001:db8:0:1::1"), t0).is_none());
    }

    #[test]
    fn memory_stays_bounded() {
        let l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            l.failed(IpAddr::V4(i.into()), t0 + Duration::from_millis(i as u64));
        }
        assert!(l.windows.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
