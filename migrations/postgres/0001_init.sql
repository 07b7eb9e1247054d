-- syncpool schema, PostgreSQL flavour. The SQLite twin has the same number and name.

CREATE TABLE instances (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('postgres', 'mysql', 'simulated')),
    host TEXT,
    port BIGINT,
    username TEXT,
    database TEXT,
    password_env TEXT,
    options JSONB NOT NULL DEFAULT '{}',
    active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE sync_sessions (
    id BIGSERIAL PRIMARY KEY,
    session_id UUID NOT NULL UNIQUE,
    sync_type TEXT NOT NULL CHECK (sync_type IN ('manual_single', 'manual_batch', 'scheduled')),
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'completed_with_errors', 'failed', 'cancelled')),
    total_instances BIGINT NOT NULL DEFAULT 0,
    successful_instances BIGINT NOT NULL DEFAULT 0,
    failed_instances BIGINT NOT NULL DEFAULT 0,
    cancelled_instances BIGINT NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idx_sync_sessions_status_created ON sync_sessions (status, created_at);

CREATE TABLE sync_instance_records (
    id BIGSERIAL PRIMARY KEY,
    session_id BIGINT NOT NULL REFERENCES sync_sessions (id),
    instance_id BIGINT NOT NULL,
    instance_name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    attempts BIGINT NOT NULL DEFAULT 0,
    job_id TEXT,
    lock_token BIGINT,
    worker_id TEXT,
    lock_wait_ms BIGINT,
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    accounts_total BIGINT,
    accounts_added BIGINT,
    accounts_removed BIGINT,
    accounts_changed BIGINT,
    error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idx_sync_instance_records_session_status ON sync_instance_records (session_id, status);
CREATE INDEX idx_sync_instance_records_instance_status ON sync_instance_records (instance_id, status);

CREATE TABLE sync_locks (
    id BIGSERIAL PRIMARY KEY,
    instance_id BIGINT NOT NULL UNIQUE,
    session_id UUID NOT NULL,
    record_id BIGINT NOT NULL,
    owner TEXT NOT NULL,
    token BIGINT NOT NULL,
    locked_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idx_sync_locks_expires ON sync_locks (expires_at);

-- The database-wide fencing counter: tokens are never reused, even after lock rows are deleted.
CREATE SEQUENCE sync_lock_token_seq;

CREATE TABLE instance_accounts (
    id BIGSERIAL PRIMARY KEY,
    instance_id BIGINT NOT NULL,
    username TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    attributes JSONB NOT NULL DEFAULT '{}',
    privileges JSONB NOT NULL DEFAULT '[]',
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ,
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
        ELSE EXTRACT(EPOCH FROM (COALESCE(s.completed_at, clock_timestamp()) - s.started_at))::float8
    END AS duration_seconds,
    COUNT(r.id) AS total_records,
    COUNT(*) FILTER (WHERE r.status = 'pending') AS pending_records,
    COUNT(*) FILTER (WHERE r.status = 'running') AS running_records,
    COUNT(*) FILTER (WHERE r.status = 'completed') AS completed_records,
    COUNT(*) FILTER (WHERE r.status = 'failed') AS failed_records,
    COUNT(*) FILTER (WHERE r.status = 'cancelled') AS cancelled_records
FROM sync_sessions s
LEFT JOIN sync_instance_records r ON r.session_id = s.id
GROUP BY s.id;
