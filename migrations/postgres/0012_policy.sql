-- The fleet's declared state (docs/POLICY.md): each `policy set` adds a version; the
-- newest one is in force for every worker and server on every host.
CREATE TABLE policies (
    version BIGSERIAL PRIMARY KEY,
    body JSONB NOT NULL,
    source TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    created_by TEXT NOT NULL
);

-- What a policy flags: one row per (instance, rule, account, what) while it lasts,
-- opened and resolved by the transaction that writes the instance's inventory (or by
-- `policy set`'s evaluation). No foreign keys, like the history: named by value.
CREATE TABLE policy_violations (
    id BIGSERIAL PRIMARY KEY,
    instance_id BIGINT NOT NULL,
    instance_name TEXT NOT NULL,
    rule TEXT NOT NULL,
    account TEXT NOT NULL,
    what TEXT NOT NULL,
    reason TEXT NOT NULL,
    opened_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    resolved_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX idx_violations_open ON policy_violations (instance_id, rule, account, what)
    WHERE resolved_at IS NULL;
CREATE INDEX idx_violations_instance ON policy_violations (instance_name, id);
CREATE INDEX idx_violations_rule ON policy_violations (rule, id);

-- The outbox: every event (a violation opened or resolved, a sensitive change, a session
-- finished) written in the transaction of what caused it. `txid` is the writing
-- transaction: a reader that follows the stream takes rows only once every transaction
-- before them has ended, so it never skips a row whose id committed late.
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    instance_name TEXT,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    data JSONB NOT NULL,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX idx_events_occurred_at ON events (occurred_at);
