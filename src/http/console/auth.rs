//! The console's sign-in and its defence against cross-site requests.
//!
//! With API tokens configured, an operator signs in once with one of them; the server
//! answers with a session cookie that is HttpOnly (no script reads it) and
//! SameSite=Strict (no other site's page sends it). The cookie holds no token: it is an
//! expiry and a random nonce, signed with HMAC-SHA256 keyed by a token. Nothing is
//! stored server-side, so every `serve` replica accepts it, and retiring a token from
//! `SYNCPOOL_API_TOKEN` signs out everyone who signed in with it.
//!
//! Every form that changes something carries a CSRF token, an HMAC of the cookie's nonce
//! (so it is worthless without the cookie), and the server also refuses a POST whose
//! `Origin` or `Sec-Fetch-Site` says it came from another site. Without tokens (a
//! loopback-only `serve`, see `serve_checks`), the CSRF key is random per process.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "syncpool_console";
/// How long a sign-in lasts.
pub const LIFETIME_SECS: i64 = 12 * 3600;

/// The keys the console signs with.
#[derive(Clone)]
pub struct Keys {
    /// One per configured API token; empty: the console is open.
    tokens: Vec<Arc<str>>,
    /// For CSRF tokens when the console is open.
    anonymous: Arc<[u8; 32]>,
}

/// A signed-in operator (or, with no tokens configured, anyone).
#[derive(Clone, Debug)]
pub struct Visitor {
    /// The signed nonce; the CSRF token derives from it.
    nonce: String,
    /// Which key signed it (index into the tokens; 0 when open).
    key: usize,
}

fn mac(key: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p.as_bytes());
        m.update(b"\x1f");
    }
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Keys {
    /// Keys for these API tokens (empty: an open console).
    pub fn new(tokens: &[Arc<str>]) -> Self {
        let mut anonymous = [0u8; 32];
        rand::rng().fill_bytes(&mut anonymous);
        Keys {
            tokens: tokens.to_vec(),
            anonymous: Arc::new(anonymous),
        }
    }

    /// Whether a sign-in is needed.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn key(&self, i: usize) -> &[u8] {
        match self.tokens.get(i) {
            Some(t) => t.as_bytes(),
            None => &self.anonymous[..],
        }
    }

    /// The cookie value for a sign-in with `token`, or None if it is not a configured
    /// one. Every token is compared, whichever matches (no early exit to time).
    pub fn sign_in(&self, token: &str, now: i64) -> Option<String> {
        let key = self.tokens.iter().enumerate().fold(None, |found, (i, t)| {
            let ok = super::super::constant_time_eq(token.trim().as_bytes(), t.as_bytes());
            if ok && found.is_none() {
                Some(i)
            } else {
                found
            }
        })?;
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex(&nonce);
        let expiry = (now + LIFETIME_SECS).to_string();
        let sig = hex(&mac(self.key(key), &["session", &expiry, &nonce]));
        Some(format!("{expiry}.{nonce}.{sig}"))
    }

    /// Who sent these headers: the holder of a valid, unexpired cookie; anyone when the
    /// console is open; None otherwise.
    pub fn visitor(&self, headers: &HeaderMap, now: i64) -> Option<Visitor> {
        if !self.required() {
            return Some(Visitor {
                nonce: "open".into(),
                key: usize::MAX,
            });
        }
        let value = cookie(headers, COOKIE)?;
        let mut parts = value.splitn(3, '.');
        let (expiry, nonce, sig) = (parts.next()?, parts.next()?, unhex(parts.next()?)?);
        if expiry.parse::<i64>().ok()? <= now || nonce.len() != 32 {
            return None;
        }
        let key = (0..self.tokens.len()).fold(None, |found, i| {
            let ok = super::super::constant_time_eq(
                &mac(self.key(i), &["session", expiry, nonce]),
                &sig,
            );
            if ok && found.is_none() {
                Some(i)
            } else {
                found
            }
        })?;
        Some(Visitor {
            nonce: nonce.to_string(),
            key,
        })
    }

    /// The CSRF token this visitor's forms carry.
    pub fn csrf(&self, v: &Visitor) -> String {
        hex(&mac(self.key(v.key), &["csrf", &v.nonce]))
    }

    /// Whether `given` is this visitor's CSRF token.
    pub fn csrf_ok(&self, v: &Visitor, given: &str) -> bool {
        unhex(given).is_some_and(|g| {
            super::super::constant_time_eq(&mac(self.key(v.key), &["csrf", &v.nonce]), &g)
        })
    }
}

/// A cookie's value from the `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value that signs in (or, with an empty value, out). `Secure` when
/// the request reached a TLS-terminating proxy (`X-Forwarded-Proto: https`).
pub fn set_cookie(value: &str, headers: &HeaderMap) -> String {
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let max_age = if value.is_empty() { 0 } else { LIFETIME_SECS };
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Whether a state-changing request came from another site: the browser says so in
/// `Sec-Fetch-Site`, or its `Origin` names another host than the one it asked.
pub fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if fetch_site == "cross-site" || fetch_site == "same-site" {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
    origin == "null" || !origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={v}")).unwrap(),
        );
        h
    }

    #[test]
    fn a_signed_cookie_is_accepted_until_it_expires_and_never_when_altered() {
        let keys = Keys::new(&["secret-one".into(), "secret-two".into()]);
        assert!(keys.sign_in("wrong", 0).is_none());
        let cookie = keys.sign_in("secret-two", 1000).unwrap();
        assert!(!cookie.contains("secret"));
        let v = keys.visitor(&with_cookie(&cookie), 1000).unwrap();
        assert!(keys.csrf_ok(&v, &keys.csrf(&v)));
        assert!(!keys.csrf_ok(&v, "00"));
        assert!(
            keys.visitor(&with_cookie(&cookie), 1000 + LIFETIME_SECS)
                .is_none()
        );
        let forged = cookie.replacen('.', "9.", 1);
        assert!(keys.visitor(&with_cookie(&forged), 1000).is_none());
        // A token retired from the configuration signs its sessions out.
        let rotated = Keys::new(&["secret-one".into()]);
        assert!(rotated.visitor(&with_cookie(&cookie), 1000).is_none());
    }

    #[test]
    fn another_sites_post_is_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!cross_site(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(!cross_site(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(cross_site(&h));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&h));
    }
}
