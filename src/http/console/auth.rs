//! The console's sign-in and its defence against cross-site requests.
//!
//! With API tokens configured, an operator signs in once with one of them; the server
//! answers with a session cookie that is HttpOnly (no script reads it) and
//! SameSite=Strict (no other site's page sends it). The cookie holds no token: it is an
//! expiry and a random nonce, signed with HMAC-SHA256 under a key derived from the token
//! *and* a random secret stored in syncpool's database. Keyed by the token alone, one
//! leaked cookie would let anyone test guesses of the token offline; with the secret, a
//! guess can only be tried against the server, which limits wrong sign-ins per client
//! (`limit.rs`). Every `serve` replica reads the same secret, so each accepts the others'
//! cookies, and retiring a token from `SYNCPOOL_API_TOKEN` signs out everyone who signed
//! in with it. Signing out records the nonce as revoked in the database, so a copied
//! cookie dies with the sign-out on every replica.
//!
//! Every form that changes something carries a CSRF token, an HMAC of the cookie's nonce
//! (so it is worthless without the cookie), and the server also refuses a POST whose
//! `Origin` or `Sec-Fetch-Site` says it came from another site (`site.rs`). Without
//! tokens (a loopback-only `serve`, see `serve_checks`) the CSRF key derives from the
//! stored secret too, so replicas accept each other's forms.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::OnceCell;

use crate::store::{Store, StoreError};

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "syncpool_console";
/// How long a sign-in lasts.
pub const LIFETIME_SECS: i64 = 12 * 3600;
/// The stored secret's name (`console_secrets`).
const SECRET: &str = "console";

/// The keys the console signs with, derived once per process from the stored secret.
#[derive(Clone)]
pub struct Keys {
    store: Arc<dyn Store>,
    /// The configured API tokens; empty: the console is open.
    tokens: Vec<Arc<str>>,
    derived: Arc<OnceCell<Derived>>,
}

/// The signing keys: one per token, and one for the open console's CSRF tokens.
pub struct Derived {
    per_token: Vec<Vec<u8>>,
    open: Vec<u8>,
}

/// A signed-in operator (or, with no tokens configured, anyone).
#[derive(Clone, Debug)]
pub struct Visitor {
    /// The signed nonce; the CSRF token derives from it.
    nonce: String,
    /// Which key signed it (index into the tokens; `usize::MAX` when open).
    key: usize,
    /// When the cookie expires (Unix seconds); a revocation is kept until then.
    pub expiry: i64,
}

impl Visitor {
    /// The cookie's nonce (None for the open console, which has no cookie).
    pub fn nonce(&self) -> Option<&str> {
        (self.key != usize::MAX).then_some(self.nonce.as_str())
    }
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
    /// Keys for these API tokens (empty: an open console), over the store that keeps
    /// the secret. Nothing is read until a page needs a key: the database may not be
    /// migrated yet when the server starts.
    pub fn new(store: Arc<dyn Store>, tokens: &[Arc<str>]) -> Self {
        Keys {
            store,
            tokens: tokens.to_vec(),
            derived: Arc::new(OnceCell::new()),
        }
    }

    /// Whether a sign-in is needed.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The signing keys, from the secret stored in the database (created by whichever
    /// process needs it first).
    pub async fn derived(&self) -> Result<&Derived, StoreError> {
        self.derived
            .get_or_try_init(|| async {
                let mut candidate = [0u8; 32];
                rand::rng().fill_bytes(&mut candidate);
                let secret = self.store.secret_get_or_insert(SECRET, &candidate).await?;
                if secret.len() < 32 {
                    return Err(StoreError::Other(
                        "the stored console secret is shorter than 32 bytes".into(),
                    ));
                }
                Ok(Derived::new(&secret, &self.tokens))
            })
            .await
    }

    /// Who sent these headers: the holder of a valid, unexpired, not signed-out cookie;
    /// anyone when the console is open; None otherwise.
    pub async fn visitor(
        &self,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<Option<Visitor>, StoreError> {
        let d = self.derived().await?;
        if !self.required() {
            return Ok(Some(d.open_visitor()));
        }
        let Some(who) = cookie(headers, COOKIE).and_then(|v| d.verify(v, now)) else {
            return Ok(None);
        };
        if self.store.console_nonce_revoked(&who.nonce).await? {
            return Ok(None);
        }
        Ok(Some(who))
    }

    /// The cookie value for a sign-in with `token`; None if it is not a configured one.
    pub async fn sign_in(&self, token: &str, now: i64) -> Result<Option<String>, StoreError> {
        Ok(self.derived().await?.sign_in(&self.tokens, token, now))
    }

    /// Signs `who` out on every replica: its nonce is refused until its cookie expires.
    pub async fn revoke(&self, who: &Visitor) -> Result<(), StoreError> {
        let Some(nonce) = who.nonce() else {
            return Ok(());
        };
        let expiry = chrono::DateTime::from_timestamp(who.expiry, 0)
            .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::seconds(LIFETIME_SECS));
        self.store.console_nonce_revoke(nonce, expiry).await
    }
}

impl Derived {
    /// The keys for `tokens` under `secret`: HMAC-SHA256(secret, purpose, token), so a
    /// cookie tells nothing about a token to whoever lacks the secret.
    pub fn new(secret: &[u8], tokens: &[Arc<str>]) -> Self {
        Derived {
            per_token: tokens
                .iter()
                .map(|t| mac(secret, &["console-key", t]))
                .collect(),
            open: mac(secret, &["console-open-csrf"]),
        }
    }

    fn key(&self, i: usize) -> &[u8] {
        self.per_token
            .get(i)
            .map(Vec::as_slice)
            .unwrap_or(&self.open)
    }

    fn open_visitor(&self) -> Visitor {
        Visitor {
            nonce: "open".into(),
            key: usize::MAX,
            expiry: i64::MAX,
        }
    }

    /// The cookie value for a sign-in with `token`, or None if it is not one of
    /// `tokens` (the ones these keys were derived for). Every token is compared,
    /// whichever matches (no early exit to time).
    pub fn sign_in(&self, tokens: &[Arc<str>], token: &str, now: i64) -> Option<String> {
        let key = tokens.iter().enumerate().fold(None, |found, (i, t)| {
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

    /// The visitor a cookie value names, if it is signed by one of these keys and has
    /// not expired.
    fn verify(&self, value: &str, now: i64) -> Option<Visitor> {
        let mut parts = value.splitn(3, '.');
        let (expiry, nonce, sig) = (parts.next()?, parts.next()?, unhex(parts.next()?)?);
        let expiry_at = expiry.parse::<i64>().ok()?;
        if expiry_at <= now || nonce.len() != 32 {
            return None;
        }
        let key = (0..self.per_token.len()).fold(None, |found, i| {
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
            expiry: expiry_at,
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
/// the public URL is https or the request reached a TLS-terminating proxy
/// (`X-Forwarded-Proto: https`).
pub fn set_cookie(value: &str, headers: &HeaderMap, public_https: bool) -> String {
    let secure = public_https
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let max_age = if value.is_empty() { 0 } else { LIFETIME_SECS };
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
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

    fn verify(d: &Derived, h: &HeaderMap, now: i64) -> Option<Visitor> {
        cookie(h, COOKIE).and_then(|v| d.verify(v, now))
    }

    #[test]
    fn a_signed_cookie_is_accepted_until_it_expires_and_never_when_altered() {
        let tokens: Vec<Arc<str>> = vec!["secret-one".into(), "secret-two".into()];
        let keys = Derived::new(&[7u8; 32], &tokens);
        assert!(keys.sign_in(&tokens, "wrong", 0).is_none());
        let cookie = keys.sign_in(&tokens, "secret-two", 1000).unwrap();
        assert!(!cookie.contains("secret"));
        let v = verify(&keys, &with_cookie(&cookie), 1000).unwrap();
        assert_eq!(v.expiry, 1000 + LIFETIME_SECS);
        assert!(keys.csrf_ok(&v, &keys.csrf(&v)));
        assert!(!keys.csrf_ok(&v, "00"));
        assert!(verify(&keys, &with_cookie(&cookie), 1000 + LIFETIME_SECS).is_none());
        let forged = cookie.replacen('.', "9.", 1);
        assert!(verify(&keys, &with_cookie(&forged), 1000).is_none());
        // A token retired from the configuration signs its sessions out.
        let rotated = Derived::new(&[7u8; 32], &tokens[..1]);
        assert!(verify(&rotated, &with_cookie(&cookie), 1000).is_none());
        // Another secret (another deployment) accepts none of these cookies.
        let other = Derived::new(&[8u8; 32], &tokens);
        assert!(verify(&other, &with_cookie(&cookie), 1000).is_none());
    }

    #[test]
    fn the_cookie_is_not_signed_with_the_token_itself() {
        let tokens: Vec<Arc<str>> = vec!["secret-one-0123456789".into()];
        let keys = Derived::new(&[7u8; 32], &tokens);
        let cookie = keys
            .sign_in(&tokens, "secret-one-0123456789", 1000)
            .unwrap();
        let mut parts = cookie.splitn(3, '.');
        let (expiry, nonce, sig) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert_ne!(
            hex(&mac(b"secret-one-0123456789", &["session", expiry, nonce])),
            sig
        );
    }
}
