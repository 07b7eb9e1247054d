-- Server-side secrets shared by every `serve` replica. `console` keys the console's
-- cookies and CSRF tokens (with the API token), so that a leaked cookie cannot be used
-- to guess the token offline, and so that replicas accept each other's forms. Written
-- once: the first process stores its random candidate, every later one reads it.
CREATE TABLE console_secrets (
    name TEXT PRIMARY KEY,
    secret BLOB NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Signed-out console sessions: a cookie whose nonce is here is refused by every replica.
-- Kept until the cookie would have expired anyway; cleanup drops the rows after that.
CREATE TABLE console_revoked_nonces (
    nonce TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
);
CREATE INDEX idx_console_revoked_nonces_expires_at ON console_revoked_nonces (expires_at);
