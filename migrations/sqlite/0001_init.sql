-- syncpool schema, SQLite flavour. The PostgreSQL twin has the same number and name.
-- Timestamps are TEXT in one fixed format ('%Y-%m-%dT%H:%M:%fZ', UTC) so that they
-- compare correctly as strings; the lease expiry is judged by SQLite's clock.

CREATE TABLE instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('postgres', 'mysql', 'simulated')),
    host TEXT,
    port INTEGER,
    username TEXT,
    database TEXT,
    password_env TEXT,
    options TEXT NOT NULL DEFAULT '{}',
    active INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE sync_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL UNIQUE,
    sync_type TEXT NOT NULL CHECK (sync_type IN ('manual_single', 'manual_batch', 'scheduled')),
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'completed_with_errors', 'failed', 'cancelled')),
    total_instances INTEGER NOT NULL DEFAULT 0,
    successful_instances INTEGER NOT NULL DEFAULT 0,
    failed_instances INTEGER NOT NULL DEFAULT 0,
    cancelled_instances INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at TEXT,
    completed_at TEXT,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_sync_sessions_status_created ON sync_sessions (status, created_at);

-- No foreign key to instances: a record outlives the instance it synced (history),
-- and it carries the instance's name for that reason.
CREATE TABLE sync_instance_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL REFERENCES sync_sessions (id),
    instance_id INTEGER NOT NULL,
    instance_name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    job_id TEXT,
    lock_token INTEGER,
    worker_id TEXT,
    lock_wait_ms INTEGER,
    started_at TEXT,
    completed_at TEXT,
    accounts_total INTEGER,
    accounts_added INTEGER,
    accounts_removed INTEGER,
    accounts_changed INTEGER,
    error TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_sync_instance_records_session_status ON sync_instance_records (session_id, status);
CREATE INDEX idx_sync_instance_records_instance_status ON sync_instance_records (instance_id, status);

CREATE TABLE sync_locks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id INTEGER NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    record_id INTEGER NOT NULL,
    owner TEXT NOT NULL,
    token INTEGER NOT NULL,
    locked_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_sync_locks_expires ON sync_locks (expires_at);

-- The database-wide fencing counter: tokens are never reused, even after lock rows are deleted.
CREATE TABLE sync_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO sync_counters (name, value) VALUES ('lock_token', 0);

CREATE TABLE instance_accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id INTEGER NOT NULL,
    username TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    attributes TEXT NOT NULL DEFAULT '{}',
    privileges TEXT NOT NULL DEFAULT '[]',
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    deleted_at TEXT,
    UNIQUE (instance_id, username, host)
);

CREATE VIEW sync_performance_view AS
SELECT
    s.session_id,
    s.sync_type,
    s.status,
    s.created_at,
    s.started_at,
    s.completed_at,
    s.total_instances,
    s.successful_instances,
    s.failed_instances,
    s.cancelled_instances,
    CASE
        WHEN s.started_at IS NULL THEN NULL
        ELSE (julianday(COALESCE(s.completed_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))) - julianday(s.started_at)) * 86400.0
    END AS duration_seconds,
    COUNT(r.id) AS total_records,
    COUNT(CASE WHEN r.status = 'pending' THEN 1 END) AS pending_records,
    COUNT(CASE WHEN r.status = 'running' THEN 1 END) AS running_records,
    COUNT(CASE WHEN r.status = 'completed' THEN 1 END) AS completed_records,
    COUNT(CASE WHEN r.status = 'failed' THEN 1 END) AS failed_records,
    COUNT(CASE WHEN r.status = 'cancelled' THEN 1 END) AS cancelled_records
FROM sync_sessions s
LEFT JOIN sync_instance_records r ON r.session_id = s.id
GROUP BY s.id;
