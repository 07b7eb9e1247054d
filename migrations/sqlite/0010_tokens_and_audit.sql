-- Named API tokens with a role (docs/SECURITY.md, "Roles"). Only a SHA-256 of each token
-- is kept: tokens are 256 random bits, so a hash cannot be reversed by guessing, and a
-- copy of this table lets no one in. A revoked token keeps its row (its name stays in the
-- audit trail) until a token of the same name replaces it.
CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at TEXT
);

-- Every change made through the API, the console or a changing CLI command: written in
-- the change's own transaction when it succeeds, alone when it was refused or failed.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    actor TEXT NOT NULL,
    client TEXT NOT NULL,
    action TEXT NOT NULL,
    targets TEXT NOT NULL DEFAULT '[]',
    fields TEXT NOT NULL DEFAULT '{}',
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX idx_audit_log_at ON audit_log (at);
CREATE INDEX idx_audit_log_actor ON audit_log (actor, id);
