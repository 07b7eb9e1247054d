-- Session metrics for the whole fleet, whichever process is scraped: every session that
-- finishes adds itself here in the transaction that finishes it (store/batch.rs,
-- session_bump). Monotonic, so Prometheus counters and the duration histogram stay true
-- across processes, restarts and cleanups (cleanup never touches these tables).
-- le_N counts finished sessions that took at most N seconds (the histogram's buckets,
-- model.rs SESSION_DURATION_BUCKETS); `finished` is the +Inf bucket.
CREATE TABLE session_stats (
    sync_type TEXT NOT NULL,
    status TEXT NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    duration_sum REAL NOT NULL DEFAULT 0,
    le_1 INTEGER NOT NULL DEFAULT 0,
    le_5 INTEGER NOT NULL DEFAULT 0,
    le_10 INTEGER NOT NULL DEFAULT 0,
    le_30 INTEGER NOT NULL DEFAULT 0,
    le_60 INTEGER NOT NULL DEFAULT 0,
    le_120 INTEGER NOT NULL DEFAULT 0,
    le_300 INTEGER NOT NULL DEFAULT 0,
    le_600 INTEGER NOT NULL DEFAULT 0,
    le_1800 INTEGER NOT NULL DEFAULT 0,
    le_3600 INTEGER NOT NULL DEFAULT 0,
    le_7200 INTEGER NOT NULL DEFAULT 0,
    le_14400 INTEGER NOT NULL DEFAULT 0,
    le_43200 INTEGER NOT NULL DEFAULT 0,
    le_86400 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sync_type, status)
);

-- The success ratio of the last finished (not cancelled) session of each type.
CREATE TABLE session_last_finished (
    sync_type TEXT PRIMARY KEY,
    success_rate REAL NOT NULL,
    completed_at TEXT NOT NULL
);
