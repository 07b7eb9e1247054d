-- Concurrency limits per group or host (docs/ARCHITECTURE.md, "Limits"). A slot is a
-- live lease of an instance under the limit's key: taken with the lease, renewed, fenced
-- and released with it, and handed on by the rescuer when its holder dies.
ALTER TABLE instances ADD COLUMN group_name TEXT;
CREATE INDEX idx_instances_group_name ON instances (group_name);

CREATE TABLE sync_limits (
    key TEXT PRIMARY KEY,
    max_concurrent BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- A pending record waiting for a slot: the key that refused it, when it first found a
-- limit full and when it last asked (database clock, Unix ms); cleared when it is
-- granted. The oldest waiters that asked lately are owed the key's next free slots.
ALTER TABLE sync_instance_records ADD COLUMN limit_wait_key TEXT;
ALTER TABLE sync_instance_records ADD COLUMN limit_wait_since_ms BIGINT;
ALTER TABLE sync_instance_records ADD COLUMN limit_seen_ms BIGINT;
CREATE INDEX idx_records_limit_wait ON sync_instance_records (limit_wait_key, limit_wait_since_ms, id)
    WHERE limit_wait_key IS NOT NULL AND status = 'pending';
