-- Webhooks (docs/WEBHOOKS.md): where events are sent, and one delivery row per event
-- and webhook, written with the event by the transaction that caused it (the outbox),
-- then claimed, sent and settled by the workers, never inside a transaction.
-- Deliveries name their webhook by id: a webhook removed and added again under its
-- name is another one, and the first one's deliveries never reach the second's URL.
CREATE TABLE webhooks (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    secret_env TEXT NOT NULL,
    -- The event types it takes, as ",type,type," (the same LIKE in both databases).
    events TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    webhook_id BIGINT NOT NULL,
    webhook TEXT NOT NULL,
    event_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts BIGINT NOT NULL DEFAULT 0,
    -- Due once `backoff_s` seconds have passed since `last_attempt_at` (the database's clock).
    last_attempt_at TIMESTAMPTZ,
    backoff_s DOUBLE PRECISION NOT NULL DEFAULT 0,
    claimed_by TEXT,
    -- A claim lapses `claim_lease_s` after `claimed_at`: the claimer's own timeout.
    claim_lease_s DOUBLE PRECISION,
    claimed_at TIMESTAMPTZ,
    last_status BIGINT,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    delivered_at TIMESTAMPTZ,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX idx_deliveries_pending ON webhook_deliveries (id) WHERE state = 'pending';
CREATE INDEX idx_deliveries_webhook ON webhook_deliveries (webhook, id);
CREATE INDEX idx_deliveries_event ON webhook_deliveries (event_id);

-- Followers of the streams (`GET /api/v1/events`, `changes --follow`) read rows in commit
-- order: by the writing transaction, then id (see `events.txid`). Rows written before
-- this migration have none and come first.
CREATE INDEX idx_events_txid ON events (COALESCE(txid, '0'::xid8), id);
ALTER TABLE account_changes ADD COLUMN txid xid8;
ALTER TABLE account_changes ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX idx_account_changes_txid ON account_changes (COALESCE(txid, '0'::xid8), id);
