-- chat schema, version 2 to 3 (SQLite).
-- One statement per change, each also in v3.sql (a fresh database has
-- them from there); the version last.
--
-- realm_outbox: files for other realms (sendfilerealm and its kin). An
-- entry may carry a file, kept in files (by sha256) until the other realm
-- acknowledges the entry; body is then the file name, as in messages.

ALTER TABLE realm_outbox ADD COLUMN file_name TEXT;
ALTER TABLE realm_outbox ADD COLUMN file_size INTEGER;
ALTER TABLE realm_outbox ADD COLUMN file_sha256 TEXT REFERENCES files (sha256);
CREATE INDEX realm_outbox_by_file ON realm_outbox (file_sha256) WHERE file_sha256 IS NOT NULL;
-- The files each user has waiting for other realms: their quota too.
CREATE INDEX realm_outbox_files_by_sender ON realm_outbox (sender, file_sha256) WHERE file_sha256 IS NOT NULL;
UPDATE schema_version SET version = 3;
