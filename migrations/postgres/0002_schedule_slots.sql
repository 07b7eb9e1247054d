-- One row per fired cron slot: the primary key makes each slot fire exactly once, however
-- many `serve` replicas share the database.
CREATE TABLE schedule_slots (
    name TEXT NOT NULL,
    slot TIMESTAMPTZ NOT NULL,
    session_id UUID,
    skipped BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (name, slot)
);
