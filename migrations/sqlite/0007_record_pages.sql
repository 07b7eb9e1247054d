-- The PostgreSQL twin puts the id into the (session_id, status) index for keyset pages of
-- a session's records. A SQLite index already ends with the rowid, so the existing index
-- serves those pages as it is; this migration keeps the two lists numbered alike.
SELECT 1;
