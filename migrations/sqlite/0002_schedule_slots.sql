-- One row per fired cron slot: the primary key makes each slot fire exactly once, however
-- many `serve` replicas share the database.
CREATE TABLE schedule_slots (
    name TEXT NOT NULL,
    slot TEXT NOT NULL,
    session_id TEXT,
    skipped INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (name, slot)
);
