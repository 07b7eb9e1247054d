//! The storage of who may do what and what they did: API tokens (by hash) and the
//! audit trail. Written once for both databases in `common/access.rs`.

use async_trait::async_trait;

use super::Result;
use crate::model::{AuditEvent, AuditFilter, NewAuditEvent, Principal, Role, TokenInfo};

/// API tokens and the audit trail.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Stores a token's hash under `name` with `role` (a conflict if a working token has
    /// that name; a revoked one is replaced).
    async fn token_insert(&self, name: &str, role: Role, token_hash: &str) -> Result<TokenInfo>;
    /// The working token with this hash.
    async fn token_by_hash(&self, token_hash: &str) -> Result<Option<Principal>>;
    /// The role and hash of the working token named `name` (the console keys its
    /// cookies with the hash, so that a revoked token's cookies stop working).
    async fn token_hash_of(&self, name: &str) -> Result<Option<(Role, String)>>;
    /// Every token, working or revoked, by name.
    async fn tokens_list(&self) -> Result<Vec<TokenInfo>>;
    /// Revokes the working token named `name`; false if there is none.
    async fn token_revoke(&self, name: &str) -> Result<bool>;
    /// Whether any token was ever created (revoked ones count: a server that had tokens
    /// never falls back to being open).
    async fn tokens_exist(&self) -> Result<bool>;
    /// Writes an audit row on its own: a request refused or failed before any change.
    async fn audit_insert(&self, row: &NewAuditEvent) -> Result<()>;
    /// A page of the audit trail, newest first.
    async fn audit_list(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>>;
}
