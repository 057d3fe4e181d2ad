-- chat schema, version 1 to 2 (SQLite).
-- One statement per change, each also in v2.sql (a fresh database has
-- them from there); the version last.
--
-- messages: no delivery mark any more; the undelivered ones are listed in
-- mailbox instead. Fewer indexes to write for each message: the one by
-- recipient and the one by time go (the conversation index, now over every
-- message, serves lookups by recipient; retention finds old messages by
-- id), and so does the partial index of undelivered messages.

CREATE TABLE mailbox (
    recipient TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    message_id INTEGER NOT NULL,
    sender TEXT NOT NULL,
    PRIMARY KEY (recipient, message_id)
) WITHOUT ROWID;
INSERT INTO mailbox (recipient, message_id, sender)
    SELECT recipient, id, sender FROM messages WHERE delivered_at IS NULL;
DROP INDEX messages_undelivered;
DROP INDEX messages_by_recipient;
DROP INDEX messages_by_time;
DROP INDEX messages_conversation;
CREATE INDEX messages_conversation ON messages (recipient, sender, id);
ALTER TABLE messages DROP COLUMN delivered_at;
-- The files each user sent: their quota of stored files (chat.store.quotas).
CREATE INDEX messages_files_by_sender ON messages (sender, file_sha256) WHERE file_sha256 IS NOT NULL;
UPDATE schema_version SET version = 2;
