-- The id of the last pipeline request (grant or finish) that wrote a record, set in the
-- same transaction as the write: a retry after a commit whose outcome was unknown finds
-- its own id and replays the outcome instead of deciding again (docs/ARCHITECTURE.md).
ALTER TABLE sync_instance_records ADD COLUMN request_id TEXT;

-- The rescuer looks for running records without a live lease every few seconds; running
-- records are few, so a partial index keeps that sweep cheap however large history grows.
CREATE INDEX idx_sync_instance_records_running ON sync_instance_records (instance_id)
    WHERE status = 'running';
