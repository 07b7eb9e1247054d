-- Account change history (who gained or lost what, and when). One row per added,
-- removed or changed account, written by the finish that writes the inventory, in the
-- same transaction and under the same fencing token. No foreign keys: history outlives
-- the sessions `cleanup` deletes (it has its own, longer retention) and the instances
-- an operator deletes, so it names both by value.
CREATE TABLE account_changes (
    id BIGSERIAL PRIMARY KEY,
    instance_id BIGINT NOT NULL,
    instance_name TEXT NOT NULL,
    session_id TEXT NOT NULL,
    record_id BIGINT NOT NULL,
    username TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL CHECK (kind IN ('baseline', 'added', 'removed', 'changed')),
    detail JSONB NOT NULL,
    flags JSONB NOT NULL DEFAULT '[]',
    sensitive BOOLEAN NOT NULL DEFAULT FALSE,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_account_changes_instance ON account_changes (instance_name, id);
CREATE INDEX idx_account_changes_changed_at ON account_changes (changed_at);

-- When the instance's history began: the sync that recorded its accounts as a baseline.
-- NULL until then, so the first sync after this migration records a baseline, not a
-- flood of "added".
ALTER TABLE instances ADD COLUMN history_since TIMESTAMPTZ;
