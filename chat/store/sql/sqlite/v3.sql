-- chat schema, version 3 (SQLite). Portable SQL: no backquotes, no AUTOINCREMENT.

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
INSERT INTO schema_version (version) VALUES (3);

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

-- File contents, stored once per distinct content, whoever sent it to how
-- many. A file is deleted with the last message that uses it.
CREATE TABLE files (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    content BLOB NOT NULL
);

-- One row per recipient: a message to N users is N rows sharing their
-- content. Names are captured at send time, as the course server did, so a
-- message outlives a later rename or the deletion of its sender. Deleting
-- the recipient deletes its messages. A row never changes once written;
-- whether it is delivered yet is whether it is in the mailbox table below.
-- Delivered messages stay (history) until --retention purges them (oldest
-- ids first: ids grow with the time messages are stored).
--
-- group_name: the group a message was sent to (no foreign key: a message
-- outlives its group). A group message is also stored, never in a mailbox,
-- for the sender, for the sender's history of the group.
-- file_*: set for a file message; body is then the file name.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    sender_name TEXT NOT NULL,
    recipient_name TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    group_name TEXT,
    file_name TEXT,
    file_size INTEGER,
    file_sha256 TEXT REFERENCES files (sha256)
);
CREATE INDEX messages_conversation ON messages (recipient, sender, id);
CREATE INDEX messages_by_group ON messages (recipient, group_name, id) WHERE group_name IS NOT NULL;
CREATE INDEX messages_by_file ON messages (file_sha256) WHERE file_sha256 IS NOT NULL;
-- The files each user sent: their quota of stored files (chat.store.quotas).
CREATE INDEX messages_files_by_sender ON messages (sender, file_sha256) WHERE file_sha256 IS NOT NULL;

-- A user's mailbox: the messages not delivered to them yet. A message is
-- put here in the transaction that stores it, and taken out in the one
-- that delivers it (inbox, ack); the message itself never changes. So
-- delivering is a delete from this narrow table, rather than an update of
-- the message's row and of every index over it; and counting a mailbox
-- (its limit, and each sender's share of it) reads this table alone.
CREATE TABLE mailbox (
    recipient TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    message_id INTEGER NOT NULL,
    sender TEXT NOT NULL,
    PRIMARY KEY (recipient, message_id)
) WITHOUT ROWID;

-- Named groups ("groups" is a reserved word in SQL:2011 and MySQL). The
-- owner is always a member; the store keeps that so.
CREATE TABLE chat_groups (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users (username),
    created_at REAL NOT NULL
);

-- id orders members by join time: the longest-standing member has the
-- lowest id and becomes the owner when the owner leaves.
CREATE TABLE group_members (
    id INTEGER PRIMARY KEY,
    group_name TEXT NOT NULL REFERENCES chat_groups (name) ON DELETE CASCADE,
    username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    joined_at REAL NOT NULL,
    UNIQUE (group_name, username)
);
CREATE INDEX group_members_by_user ON group_members (username);

-- Realms: links to other chat servers (federation, issue 6).

-- Administrators may add realm links with the addrealm command.
ALTER TABLE users ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;

-- One row per linked realm: the Twisted client endpoint we connect to in
-- order to deliver our messages there, and the secret both realms share
-- (HMAC key of the link handshake; it never crosses the wire, but it is
-- stored here in the clear, so protect this file).
CREATE TABLE realm_links (
    realm_id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at REAL NOT NULL
);

-- Messages for other realms, stored in the transaction that answers
-- "Message Sent" and deleted in the one that records the other realm's
-- acknowledgement: delivered in id order per realm. message_uid is the
-- message's global id (the receiver's duplicate check); recipients is a
-- JSON array of usernames in that realm. No foreign key on the sender: a
-- queued message outlives its sender, as a stored one does.
CREATE TABLE realm_outbox (
    id INTEGER PRIMARY KEY,
    realm_id TEXT NOT NULL REFERENCES realm_links (realm_id),
    message_uid TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    recipients TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL
);
CREATE INDEX realm_outbox_by_realm ON realm_outbox (realm_id, id);
-- A file for another realm (version 3): as in messages, body is then the
-- file name, and the file is kept in files until the entry is gone (files
-- are deleted only when no message and no outbox entry uses them). Added
-- as upgrade-to-v3.sql adds them, so both schemas read the same.
ALTER TABLE realm_outbox ADD COLUMN file_name TEXT;
ALTER TABLE realm_outbox ADD COLUMN file_size INTEGER;
ALTER TABLE realm_outbox ADD COLUMN file_sha256 TEXT REFERENCES files (sha256);
CREATE INDEX realm_outbox_by_file ON realm_outbox (file_sha256) WHERE file_sha256 IS NOT NULL;
-- The files each user has waiting for other realms: their quota too.
CREATE INDEX realm_outbox_files_by_sender ON realm_outbox (sender, file_sha256) WHERE file_sha256 IS NOT NULL;

-- The ids of messages accepted from other realms, so that a message sent
-- again after a lost acknowledgement is not delivered twice. unknown is
-- the JSON array of recipients that did not exist, answered again to a
-- retry. Rows older than --realm-seen-ttl are deleted.
CREATE TABLE realm_inbound (
    realm_id TEXT NOT NULL,
    message_uid TEXT NOT NULL,
    unknown TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (realm_id, message_uid)
);
CREATE INDEX realm_inbound_by_time ON realm_inbound (received_at);
