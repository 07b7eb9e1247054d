-- Webhooks (docs/WEBHOOKS.md): where events are sent, and one delivery row per event
-- and webhook, written with the event by the transaction that caused it (the outbox),
-- then claimed, sent and settled by the workers, never inside a transaction.
-- Deliveries name their webhook by id: a webhook removed and added again under its
-- name is another one, and the first one's deliveries never reach the second's URL.
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    secret_env TEXT NOT NULL,
    -- The event types it takes, as ",type,type," (the same LIKE in both databases).
    events TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id BIGINT NOT NULL,
    webhook TEXT NOT NULL,
    event_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Due once `backoff_s` seconds have passed since `last_attempt_at` (the database's clock).
    last_attempt_at TEXT,
    backoff_s REAL NOT NULL DEFAULT 0,
    claimed_by TEXT,
    -- A claim lapses `claim_lease_s` after `claimed_at`: the claimer's own timeout.
    claim_lease_s REAL,
    claimed_at TEXT,
    last_status INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    delivered_at TEXT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX idx_deliveries_pending ON webhook_deliveries (id) WHERE state = 'pending';
CREATE INDEX idx_deliveries_webhook ON webhook_deliveries (webhook, id);
CREATE INDEX idx_deliveries_event ON webhook_deliveries (event_id);
