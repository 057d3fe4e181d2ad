-- chat schema, version 1 to 2 (PostgreSQL). One statement per change, each
-- also in v2.sql (a fresh database has them from there); the version last.

-- The files each user sent: their quota of stored files (chat.store.quotas).
CREATE INDEX messages_files_by_sender ON messages (sender, file_sha256) WHERE file_sha256 IS NOT NULL;

UPDATE schema_version SET version = 2;
