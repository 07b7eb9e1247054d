-- A session started by `retry` names the session it retries (issue #23). Text, like the
-- history's session ids: it names a session that cleanup may delete before this one.
ALTER TABLE sync_sessions ADD COLUMN retry_of TEXT;
