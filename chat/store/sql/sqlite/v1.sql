-- chat schema, version 1 (SQLite). Portable SQL: no backquotes, no AUTOINCREMENT.

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
INSERT INTO schema_version (version) VALUES (1);

CREATE TABLE users (
    username TEXT PRIMARY KEY,
    full_name TEXT NOT NULL,
    country TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);

-- Only the sha256 of a token is stored; the token itself never is.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (username);

-- Names are captured at send time, as the course server did, so a message
-- outlives a later rename or the deletion of its sender. Deleting the
-- recipient deletes its mailbox.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    sender_name TEXT NOT NULL,
    recipient_name TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX messages_undelivered ON messages (recipient, id) WHERE delivered_at IS NULL;
CREATE INDEX messages_by_recipient ON messages (recipient, id);
