-- chat schema, version 1 to 2 (PostgreSQL): an index of the files each user
-- sent, for the per-user quota of stored files.

CREATE INDEX messages_files_by_sender ON messages (sender, file_sha256) WHERE file_sha256 IS NOT NULL;
UPDATE schema_version SET version = 2;
