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

use crate::http::access::{self, Authn};
use crate::model::Principal;
use crate::store::StoreError;

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
    authn: Authn,
    derived: Arc<OnceCell<Derived>>,
}

/// The signing keys: one per `SYNCPOOL_API_TOKEN` token, one for the open console's
/// CSRF tokens, and the secret that keys a stored token's cookies with its hash.
pub struct Derived {
    secret: Vec<u8>,
    per_token: Vec<Vec<u8>>,
    open: Vec<u8>,
}

/// A signed-in operator (or, with no token anywhere, anyone).
#[derive(Clone, Debug)]
pub struct Visitor {
    /// The signed nonce; the CSRF token derives from it.
    nonce: String,
    /// The key that signed the cookie (and keys its CSRF tokens).
    key: Vec<u8>,
    /// When the cookie expires (Unix seconds); a revocation is kept until then.
    pub expiry: i64,
    /// Who signed in, with the role their token has now.
    pub principal: Principal,
    /// The open console's visitor: no cookie.
    open: bool,
}

impl Visitor {
    /// The cookie's nonce (None for the open console, which has no cookie).
    pub fn nonce(&self) -> Option<&str> {
        (!self.open).then_some(self.nonce.as_str())
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
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whose cookie it is: `e<N>`, the Nth `SYNCPOOL_API_TOKEN` token, or `d<hex name>`,
/// a stored token (hex: a name may hold the `.` that separates the cookie's parts).
enum Holder {
    Env(usize),
    Stored(String),
}

impl Holder {
    fn encode(&self) -> String {
        match self {
            Holder::Env(i) => format!("e{i}"),
            Holder::Stored(name) => format!("d{}", hex(name.as_bytes())),
        }
    }
    fn decode(s: &str) -> Option<Holder> {
        match s.split_at_checked(1)? {
            ("e", i) => i.parse().ok().map(Holder::Env),
            ("d", h) => String::from_utf8(unhex(h)?).ok().map(Holder::Stored),
            _ => None,
        }
    }
}

/// A cookie's parts: `expiry.nonce.holder.signature`.
struct Cookie<'a> {
    expiry: &'a str,
    nonce: &'a str,
    holder: &'a str,
    sig: Vec<u8>,
}

impl<'a> Cookie<'a> {
    fn parse(value: &'a str) -> Option<Cookie<'a>> {
        let mut parts = value.splitn(4, '.');
        let (expiry, nonce, holder) = (parts.next()?, parts.next()?, parts.next()?);
        let sig = unhex(parts.next()?)?;
        (nonce.len() == 32).then_some(Cookie {
            expiry,
            nonce,
            holder,
            sig,
        })
    }
    /// Signed by `key` and not expired at `now`.
    fn valid(&self, key: &[u8], now: i64) -> Option<i64> {
        let expiry = self.expiry.parse::<i64>().ok().filter(|e| *e > now)?;
        let want = mac(key, &["session", self.expiry, self.nonce, self.holder]);
        super::super::constant_time_eq(&want, &self.sig).then_some(expiry)
    }
}

impl Keys {
    /// Keys over `authn`'s tokens. Nothing is read until a page needs a key: the
    /// database may not be migrated yet when the server starts.
    pub fn new(authn: Authn) -> Self {
        Keys {
            authn,
            derived: Arc::new(OnceCell::new()),
        }
    }

    /// Whether a sign-in is needed (some token is configured or stored).
    pub async fn required(&self) -> Result<bool, StoreError> {
        self.authn
            .open()
            .await
            .map(|open| !open)
            .map_err(|e| StoreError::Other(e.to_string()))
    }

    /// The signing keys, from the secret stored in the database (created by whichever
    /// process needs it first).
    pub async fn derived(&self) -> Result<&Derived, StoreError> {
        self.derived
            .get_or_try_init(|| async {
                let mut candidate = [0u8; 32];
                rand::rng().fill_bytes(&mut candidate);
                let secret = self
                    .authn
                    .store()
                    .secret_get_or_insert(SECRET, &candidate)
                    .await?;
                if secret.len() < 32 {
                    return Err(StoreError::Other(
                        "the stored console secret is shorter than 32 bytes".into(),
                    ));
                }
                Ok(Derived::new(&secret, self.authn.env()))
            })
            .await
    }

    /// Who sent these headers: the holder of a valid, unexpired, not signed-out cookie
    /// whose token still works; anyone when the console is open; None otherwise.
    pub async fn visitor(
        &self,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<Option<Visitor>, StoreError> {
        let d = self.derived().await?;
        if !self.required().await? {
            return Ok(Some(d.open_visitor()));
        }
        let Some(c) = cookie(headers, COOKIE).and_then(Cookie::parse) else {
            return Ok(None);
        };
        // An expired cookie costs no lookup (a forged one costs one, like any request).
        if c.expiry.parse::<i64>().ok().is_none_or(|e| e <= now) {
            return Ok(None);
        }
        let (key, principal) = match Holder::decode(c.holder) {
            Some(Holder::Env(i)) if i < d.per_token.len() => (
                d.per_token[i].clone(),
                access::admin(access::ENV_TOKEN_NAME),
            ),
            // Read on every request: a revoked token's cookies stop at once, and a
            // token's role is what it is now.
            Some(Holder::Stored(name)) => match self.authn.store().token_hash_of(&name).await? {
                Some((role, hash)) => (d.stored_key(&hash), Principal { name, role }),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let Some(expiry) = c.valid(&key, now) else {
            return Ok(None);
        };
        if self.authn.store().console_nonce_revoked(c.nonce).await? {
            return Ok(None);
        }
        Ok(Some(Visitor {
            nonce: c.nonce.to_string(),
            key,
            expiry,
            principal,
            open: false,
        }))
    }

    /// The cookie value for a sign-in with `token`; None if no token is that one.
    pub async fn sign_in(&self, token: &str, now: i64) -> Result<Option<String>, StoreError> {
        let d = self.derived().await?;
        if let Some(i) = self.authn.env_index(token) {
            return Ok(Some(d.cookie(&d.per_token[i], &Holder::Env(i), now)));
        }
        let stored = self
            .authn
            .stored(token)
            .await
            .map_err(|e| StoreError::Other(e.to_string()))?;
        Ok(stored.map(|p| {
            let key = d.stored_key(&crate::tokens::hash(token.trim()));
            d.cookie(&key, &Holder::Stored(p.name), now)
        }))
    }

    /// Signs `who` out on every replica: its nonce is refused until its cookie expires.
    pub async fn revoke(&self, who: &Visitor) -> Result<(), StoreError> {
        let Some(nonce) = who.nonce() else {
            return Ok(());
        };
        let expiry = chrono::DateTime::from_timestamp(who.expiry, 0)
            .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::seconds(LIFETIME_SECS));
        self.authn.store().console_nonce_revoke(nonce, expiry).await
    }
}

impl Derived {
    /// The keys for `tokens` under `secret`: HMAC-SHA256(secret, purpose, token), so a
    /// cookie tells nothing about a token to whoever lacks the secret.
    pub fn new(secret: &[u8], tokens: &[Arc<str>]) -> Self {
        Derived {
            secret: secret.to_vec(),
            per_token: tokens
                .iter()
                .map(|t| mac(secret, &["console-key", t]))
                .collect(),
            open: mac(secret, &["console-open-csrf"]),
        }
    }

    /// The key of a stored token's cookies: from its hash, so a token replaced under the
    /// same name does not accept the old one's cookies.
    fn stored_key(&self, token_hash: &str) -> Vec<u8> {
        mac(&self.secret, &["console-stored-key", token_hash])
    }

    fn open_visitor(&self) -> Visitor {
        Visitor {
            nonce: "open".into(),
            key: self.open.clone(),
            expiry: i64::MAX,
            principal: access::admin(access::ANONYMOUS),
            open: true,
        }
    }

    /// A new cookie for `holder`, signed with `key`.
    fn cookie(&self, key: &[u8], holder: &Holder, now: i64) -> String {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex(&nonce);
        let expiry = (now + LIFETIME_SECS).to_string();
        let holder = holder.encode();
        let sig = hex(&mac(key, &["session", &expiry, &nonce, &holder]));
        format!("{expiry}.{nonce}.{holder}.{sig}")
    }

    /// The CSRF token this visitor's forms carry.
    pub fn csrf(&self, v: &Visitor) -> String {
        hex(&mac(&v.key, &["csrf", &v.nonce]))
    }

    /// Whether `given` is this visitor's CSRF token.
    pub fn csrf_ok(&self, v: &Visitor, given: &str) -> bool {
        unhex(given)
            .is_some_and(|g| super::super::constant_time_eq(&mac(&v.key, &["csrf", &v.nonce]), &g))
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

    /// The visitor a cookie names when it is held by an env token (what
    /// `Keys::visitor` does without the database).
    fn verify(d: &Derived, value: &str, now: i64) -> Option<i64> {
        let c = Cookie::parse(value)?;
        match Holder::decode(c.holder)? {
            Holder::Env(i) => c.valid(d.per_token.get(i)?, now),
            Holder::Stored(_) => None,
        }
    }

    #[test]
    fn a_signed_cookie_is_accepted_until_it_expires_and_never_when_altered() {
        let tokens: Vec<Arc<str>> = vec!["secret-one".into(), "secret-two".into()];
        let keys = Derived::new(&[7u8; 32], &tokens);
        let cookie = keys.cookie(&keys.per_token[1], &Holder::Env(1), 1000);
        assert!(!cookie.contains("secret"));
        assert_eq!(verify(&keys, &cookie, 1000), Some(1000 + LIFETIME_SECS));
        assert!(verify(&keys, &cookie, 1000 + LIFETIME_SECS).is_none());
        let forged = cookie.replacen('.', "9.", 1);
        assert!(verify(&keys, &forged, 1000).is_none());
        // Claiming another holder breaks the signature.
        let other_holder = cookie.replacen(".e1.", ".e0.", 1);
        assert!(verify(&keys, &other_holder, 1000).is_none());
        // A token retired from the configuration signs its sessions out.
        let rotated = Derived::new(&[7u8; 32], &tokens[..1]);
        assert!(verify(&rotated, &cookie, 1000).is_none());
        // Another secret (another deployment) accepts none of these cookies.
        let other = Derived::new(&[8u8; 32], &tokens);
        assert!(verify(&other, &cookie, 1000).is_none());
    }

    #[test]
    fn the_cookie_is_not_signed_with_the_token_itself() {
        let tokens: Vec<Arc<str>> = vec!["secret-one-0123456789".into()];
        let keys = Derived::new(&[7u8; 32], &tokens);
        let cookie = keys.cookie(&keys.per_token[0], &Holder::Env(0), 1000);
        let c = Cookie::parse(&cookie).unwrap();
        assert_ne!(
            mac(
                b"secret-one-0123456789",
                &["session", c.expiry, c.nonce, c.holder]
            ),
            c.sig
        );
    }

    #[test]
    fn a_stored_tokens_cookie_names_it_and_is_keyed_by_its_hash() {
        let keys = Derived::new(&[7u8; 32], &[]);
        let key = keys.stored_key("hash-one");
        let cookie = keys.cookie(&key, &Holder::Stored("ci.bot".into()), 1000);
        let c = Cookie::parse(&cookie).unwrap();
        assert!(matches!(Holder::decode(c.holder), Some(Holder::Stored(n)) if n == "ci.bot"));
        assert!(c.valid(&key, 1000).is_some());
        // The same name with another token (revoked, then created again): refused.
        assert!(c.valid(&keys.stored_key("hash-two"), 1000).is_none());
    }
}
