-- A session's records filtered by status come in keyset pages (GET
-- /api/v1/sessions/{id}/records, the console): with the id in the index, a page is one
-- range read instead of every matching record sorted. It replaces (session_id, status),
-- whose every use it serves, so each record write keeps the same number of indexes.
CREATE INDEX idx_sync_instance_records_session_status_id
    ON sync_instance_records (session_id, status, id);
DROP INDEX idx_sync_instance_records_session_status;
