-- The fleet's declared state (docs/POLICY.md): each `policy set` adds a version; the
-- newest one is in force for every worker and server.
CREATE TABLE policies (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    created_by TEXT NOT NULL
);

-- What a policy flags: one row per (instance, rule, account, what) while it lasts,
-- opened and resolved by the transaction that writes the instance's inventory (or by
-- `policy set`'s evaluation). No foreign keys, like the history: named by value.
CREATE TABLE policy_violations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id INTEGER NOT NULL,
    instance_name TEXT NOT NULL,
    rule TEXT NOT NULL,
    account TEXT NOT NULL,
    what TEXT NOT NULL,
    reason TEXT NOT NULL,
    opened_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    resolved_at TEXT
);
CREATE UNIQUE INDEX idx_violations_open ON policy_violations (instance_id, rule, account, what)
    WHERE resolved_at IS NULL;
CREATE INDEX idx_violations_instance ON policy_violations (instance_name, id);
CREATE INDEX idx_violations_rule ON policy_violations (rule, id);

-- The outbox: every event (a violation opened or resolved, a sensitive change, a session
-- finished) written in the transaction of what caused it. SQLite's writes are serial,
-- so ids commit in order.
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    instance_name TEXT,
    occurred_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    data TEXT NOT NULL
);
CREATE INDEX idx_events_occurred_at ON events (occurred_at);
