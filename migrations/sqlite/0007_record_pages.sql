-- The PostgreSQL twin puts the id into the (session_id, status) index for keyset pages of
-- a session's records. A SQLite index already ends with the rowid, so the existing index
-- serves those pages as it is.

-- Where a session's records start: an unfiltered page walks the primary key from there,
-- not from the first record of the oldest session.
ALTER TABLE sync_sessions ADD COLUMN first_record_id INTEGER;
