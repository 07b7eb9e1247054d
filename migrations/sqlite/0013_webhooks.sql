-- Webhooks (docs/WEBHOOKS.md): where events are sent, and one delivery row per event
-- and webhook, written with the event by the transaction that caused it (the outbox),
-- then claimed, sent and settled by the workers, never inside a transaction.
CREATE TABLE webhooks (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret_env TEXT NOT NULL,
    -- The event types it takes, as ",type,type," (the same LIKE in both databases).
    events TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook TEXT NOT NULL,
    event_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Due once `backoff_s` seconds have passed since `last_attempt_at` (the database's clock).
    last_attempt_at TEXT,
    backoff_s REAL NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claimed_at TEXT,
    last_status INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    delivered_at TEXT,
    UNIQUE (webhook, event_id)
);
CREATE INDEX idx_deliveries_pending ON webhook_deliveries (id) WHERE state = 'pending';
CREATE INDEX idx_deliveries_webhook ON webhook_deliveries (webhook, id);
