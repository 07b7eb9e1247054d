-- An instance's password can come from a file in the worker's secrets folder (the way
-- container platforms mount secrets) instead of an environment variable; only the file's
-- name is stored, never its content.
ALTER TABLE instances ADD COLUMN password_file TEXT;
