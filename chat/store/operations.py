"""
The operations of the SQL stores, written once for SQLite and PostgreSQL,
and L{SQLStore}, which maps the store interfaces onto them.

Each operation is a synchronous C{_something_txn(connection, ...)} function
run inside a batch transaction on the store's thread (see L{chat.store.sqlite}
and L{chat.store.postgres} for the batching). The SQL is the dialect both
databases share:

    - C{?} parameters; the PostgreSQL connection wrapper turns them into
      C{%s} (and drops SQLite's C{INDEXED BY} hint);
    - new ids come from C{RETURNING id};
    - no operation relies on catching an integrity error (which aborts the
      whole transaction in PostgreSQL): C{ON CONFLICT DO NOTHING} or a check
      first;
    - where nodes sharing a PostgreSQL database could race for the same
      rows (draining a mailbox), the rows are locked (C{FOR UPDATE}) when
      the connection says C{locks_rows}; SQLite has one writer at a time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from zope.interface import implementer

from chat.errors import (
    AlreadyAMember,
    CannotKickSelf,
    ChatError,
    GroupExists,
    MailboxFull,
    NoSuchGroup,
    NoSuchRealm,
    NoSuchUser,
    NoSuchUsers,
    NotAMember,
    NotGroupOwner,
    RealmExists,
    RealmQueueFull,
    UserExists,
)
from chat.interfaces import IChatStore, IRealmStore
from chat.limits import DEFAULT_MAX_MAILBOX, Quotas
from chat.links import (
    POSTMASTER,
    POSTMASTER_NAME,
    Delivery,
    InboundMessage,
    OutboundMessage,
    RealmLink,
    address,
    bounce_text,
)
from chat.model import Attachment, Group, Message, Page, Session, User
from chat.store.batching import GroupCommit, Op
from chat.store.quotas import check_file_quota, check_group_quota
from chat.store.revocation import existing_sessions_txn

_Op = Op


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def close(self) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """
    What the operations need of a connection: C{sqlite3.Connection}, or the
    PostgreSQL wrapper.
    """

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...


def _locks_rows(connection: Connection) -> str:
    """
    C{" FOR UPDATE"} on a database where several writers may race.
    """
    return " FOR UPDATE" if getattr(connection, "locks_rows", False) else ""


class _MailboxCounts:
    """
    Undelivered messages per mailbox, as counted by the store's thread.

    Only the store's thread reads or changes it. A count belongs to the
    recipient's C{created_at}, so a user deleted and made again (by
    chat-admin, in another process) is counted afresh. Every change the
    store makes to a mailbox updates or drops its count; if a batch fails,
    all counts are forgotten, since its changes were undone.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self.counts: dict[str, tuple[float, int]] = {}

    def get(self, recipient: str, created_at: float) -> int | None:
        found = self.counts.get(recipient)
        if found is None or found[0] != created_at:
            return None
        return found[1]

    def set(self, recipient: str, created_at: float, count: int) -> None:
        if recipient not in self.counts and len(self.counts) >= self.max_entries:
            self.counts.clear()
        self.counts[recipient] = (created_at, count)

    def drop(self, recipient: str) -> None:
        self.counts.pop(recipient, None)

    def clear(self) -> None:
        self.counts.clear()


def _dropping(op: _Op, mailboxes: _MailboxCounts | None) -> _Op:
    """
    C{op}, then forget the counts of the mailboxes it changed: those of the
    messages it returns (for operations that do not keep the counts, such
    as the realm links': their messages are not limited by mailbox size,
    but must not be missed by its counts).
    """
    if mailboxes is None:
        return op

    def run(connection: Connection, *args: Any) -> Any:
        result = op(connection, *args)
        if isinstance(result, Delivery):
            changed: list[Any] = list(result.messages)
        elif isinstance(result, list):
            changed = result
        else:
            changed = [result]
        for message in changed:
            if isinstance(message, Message):
                mailboxes.drop(message.recipient)
        return result

    return run


@implementer(IChatStore, IRealmStore)
class SQLStore(GroupCommit):
    """
    L{IChatStore} and L{IRealmStore} on a SQL database: each method queues
    its operation for the next batch transaction (L{GroupCommit}).

    @ivar max_mailbox: the most undelivered messages per recipient.
    """

    max_mailbox: int = DEFAULT_MAX_MAILBOX
    #: What each user may keep stored (chat.store.quotas).
    quotas: Quotas = Quotas()
    #: The store's counts of undelivered messages, or None where other
    #: processes write the same mailboxes (PostgreSQL).
    _mailboxes: _MailboxCounts | None = None

    # IChatStore.

    def add_user(self, user: User) -> Deferred[None]:
        return self._run(_add_user_txn, user)

    def get_user(self, username: str) -> Deferred[User]:
        return self._run(_get_user_txn, username)

    def set_password_hash(self, username: str, password_hash: str) -> Deferred[None]:
        return self._run(_set_password_hash_txn, username, password_hash)

    def delete_user(self, username: str) -> Deferred[None]:
        return self._run(_delete_user_txn, username)

    def list_users(self) -> Deferred[list[User]]:
        return self._run(_list_users_txn)

    def create_session(self, session: Session) -> Deferred[None]:
        return self._run(_create_session_txn, session)

    def get_session(self, token_hash: str) -> Deferred[Session | None]:
        return self._run(_get_session_txn, token_hash)

    def touch_session(self, token_hash: str, last_seen_at: float) -> Deferred[bool]:
        return self._run(_touch_session_txn, token_hash, last_seen_at)

    def delete_session(self, token_hash: str) -> Deferred[None]:
        return self._run(_delete_session_txn, token_hash)

    def delete_expired_sessions(
        self, idle_since: float, created_since: float
    ) -> Deferred[int]:
        return self._run(_delete_expired_sessions_txn, idle_since, created_since)

    def existing_sessions(self, token_hashes: Sequence[str]) -> Deferred[set[str]]:
        return self._run(existing_sessions_txn, list(token_hashes))

    def store_message(
        self, sender: str, recipient: str, text: str, sent_at: float
    ) -> Deferred[Message]:
        return self._run(
            _store_message_txn,
            sender,
            recipient,
            text,
            sent_at,
            self.max_mailbox,
            self._mailboxes,
        )

    def drain_inbox(
        self, username: str, delivered_at: float, max_bytes: int | None = None
    ) -> Deferred[list[Message]]:
        return self._run(
            _drain_inbox_txn, username, delivered_at, max_bytes, self._mailboxes
        )

    def store_messages(
        self,
        sender: str,
        recipients: Sequence[str],
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        return self._run(
            _store_messages_txn,
            sender,
            list(recipients),
            text,
            sent_at,
            attachment,
            self.max_mailbox,
            self._mailboxes,
            self.quotas,
        )

    def store_group_message(
        self,
        sender: str,
        group: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        return self._run(
            _store_group_message_txn,
            sender,
            group,
            text,
            sent_at,
            attachment,
            self.max_mailbox,
            self._mailboxes,
            self.quotas,
        )

    def create_group(self, name: str, owner: str, created_at: float) -> Deferred[Group]:
        return self._run(_create_group_txn, name, owner, created_at, self.quotas)

    def join_group(self, name: str, username: str, joined_at: float) -> Deferred[Group]:
        return self._run(_join_group_txn, name, username, joined_at, self.quotas)

    def leave_group(self, name: str, username: str) -> Deferred[Group | None]:
        return self._run(_leave_group_txn, name, username)

    def kick_from_group(self, name: str, by: str, username: str) -> Deferred[Group]:
        return self._run(_kick_from_group_txn, name, by, username)

    def list_groups(self, username: str) -> Deferred[list[Group]]:
        return self._run(_list_groups_txn, username)

    def conversation(
        self,
        username: str,
        peer: str,
        limit: int,
        before_id: int | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[Page]:
        return self._run(_conversation_txn, username, peer, limit, before_id, max_bytes)

    def group_history(
        self,
        username: str,
        group: str,
        limit: int,
        before_id: int | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[Page]:
        return self._run(
            _group_history_txn, username, group, limit, before_id, max_bytes
        )

    def purge_messages(self, sent_before: float, limit: int) -> Deferred[int]:
        return self._run(_purge_messages_txn, sent_before, limit, self._mailboxes)

    def undelivered(
        self, username: str, after_id: int, limit: int
    ) -> Deferred[list[Message]]:
        return self._run(_undelivered_txn, username, after_id, limit)

    def mark_delivered(
        self, username: str, up_to_id: int, delivered_at: float
    ) -> Deferred[int]:
        return self._run(
            _mark_delivered_txn, username, up_to_id, delivered_at, self._mailboxes
        )

    def mark_delivered_ids(
        self, username: str, ids: Sequence[int], delivered_at: float
    ) -> Deferred[int]:
        return self._run(
            _mark_delivered_ids_txn, username, list(ids), delivered_at, self._mailboxes
        )

    # IRealmStore.

    def set_admin(self, username: str, is_admin: bool) -> Deferred[None]:
        return self._run(_set_admin_txn, username, is_admin)

    def is_admin(self, username: str) -> Deferred[bool]:
        return self._run(_is_admin_txn, username)

    def add_realm_link(self, link: RealmLink) -> Deferred[None]:
        return self._run(_add_realm_link_txn, link)

    def get_realm_link(self, realm_id: str) -> Deferred[RealmLink]:
        return self._run(_get_realm_link_txn, realm_id)

    def list_realm_links(self) -> Deferred[list[RealmLink]]:
        return self._run(_list_realm_links_txn)

    def remove_realm_link(self, realm_id: str, now: float) -> Deferred[list[Message]]:
        return self._run(
            _dropping(_remove_realm_link_txn, self._mailboxes), realm_id, now
        )

    def queue_outbound(
        self,
        sender: str,
        text: str,
        sent_at: float,
        batches: Sequence[tuple[str, tuple[str, ...], str]],
        max_queue: int,
    ) -> Deferred[list[OutboundMessage]]:
        return self._run(
            _queue_outbound_txn, sender, text, sent_at, list(batches), max_queue
        )

    def next_outbound(
        self, realm_id: str, limit: int
    ) -> Deferred[list[OutboundMessage]]:
        return self._run(_next_outbound_txn, realm_id, limit)

    def outbox_size(self, realm_id: str) -> Deferred[int]:
        return self._run(_outbox_size_txn, realm_id)

    def finish_outbound(
        self, outbox_id: int, failed: Sequence[str], reason: str, now: float
    ) -> Deferred[Message | None]:
        return self._run(
            _dropping(_finish_outbound_txn, self._mailboxes),
            outbox_id,
            list(failed),
            reason,
            now,
        )

    def receive_remote(
        self, realm_id: str, message: InboundMessage, received_at: float
    ) -> Deferred[Delivery]:
        return self._run(
            _dropping(_receive_remote_txn, self._mailboxes),
            realm_id,
            message,
            received_at,
        )

    def drain_realm_inbox(
        self, username: str, realm_id: str, delivered_at: float
    ) -> Deferred[list[Message]]:
        return self._run(
            _dropping(_drain_realm_inbox_txn, self._mailboxes),
            username,
            realm_id,
            delivered_at,
        )

    def forget_remote_ids(self, before: float) -> Deferred[int]:
        return self._run(_forget_remote_ids_txn, before)

    # For other nodes' notifications (chat.cluster).

    def messages_by_id(self, ids: Sequence[int]) -> Deferred[list[Message]]:
        """
        Read messages (delivered or not) by id, in id order.
        """
        return self._run(_messages_by_id_txn, list(ids))


# The operations. Each runs inside the batch transaction, in the store's
# thread; a ChatError undoes just that operation.

_USER_COLUMNS = "username, full_name, country, password_hash"
# Mailbox queries must walk the small partial index of undelivered messages,
# not every message the user ever received: SQLite's planner, without
# statistics, prefers a full (recipient, ...) index for "id > ?" ranges.
_UNDELIVERED = "messages INDEXED BY messages_undelivered"

_MESSAGE_COLUMNS = (
    "id, sender, recipient, sender_name, recipient_name, body, sent_at,"
    " group_name, file_name, file_size, file_sha256"
)
#: Positions in a row of _MESSAGE_COLUMNS.
_ID, _BODY, _FILE_SIZE, _FILE_SHA256 = 0, 5, 9, 10

#: Most values bound in one IN (...) list.
_CHUNK = 500
_NO_ID_LIMIT = 2**63 - 1


def _column(cursor: Iterable[tuple[Any, ...]]) -> list[Any]:
    return [row[0] for row in cursor]


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _add_user_txn(connection: Connection, user: User) -> None:
    cursor = connection.execute(
        "INSERT INTO users (username, full_name, country, password_hash,"
        " created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (username) DO NOTHING",
        (
            user.username,
            user.full_name,
            user.country,
            user.password_hash,
            time.time(),
        ),
    )
    if cursor.rowcount == 0:
        raise UserExists(user.username)


def _get_user_txn(connection: Connection, username: str) -> User:
    row = connection.execute(
        f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,)
    ).fetchone()
    if row is None:
        raise NoSuchUser(username)
    return User(*row)


def _set_password_hash_txn(
    connection: Connection, username: str, password_hash: str
) -> None:
    cursor = connection.execute(
        "UPDATE users SET password_hash = ? WHERE username = ?",
        (password_hash, username),
    )
    if cursor.rowcount == 0:
        raise NoSuchUser(username)
    connection.execute("DELETE FROM sessions WHERE username = ?", (username,))


def _delete_user_txn(connection: Connection, username: str) -> None:
    groups = connection.execute(
        "SELECT group_name FROM group_members WHERE username = ?", (username,)
    ).fetchall()
    for (group,) in groups:
        _leave_group_txn(connection, group, username)
    files = _column(
        connection.execute(
            "SELECT DISTINCT file_sha256 FROM messages"
            " WHERE recipient = ? AND file_sha256 IS NOT NULL",
            (username,),
        )
    )
    cursor = connection.execute("DELETE FROM users WHERE username = ?", (username,))
    if cursor.rowcount == 0:
        raise NoSuchUser(username)
    _forget_unused_files(connection, files)


def _list_users_txn(connection: Connection) -> list[User]:
    rows = connection.execute(
        f"SELECT {_USER_COLUMNS} FROM users ORDER BY username"
    ).fetchall()
    return [User(*row) for row in rows]


def _create_session_txn(connection: Connection, session: Session) -> None:
    cursor = connection.execute(
        "INSERT INTO sessions (token_hash, username, created_at, last_seen_at)"
        " SELECT ?, username, ?, ? FROM users WHERE username = ?",
        (
            session.token_hash,
            session.created_at,
            session.last_seen_at,
            session.username,
        ),
    )
    if cursor.rowcount == 0:
        raise NoSuchUser(session.username)


def _get_session_txn(connection: Connection, token_hash: str) -> Session | None:
    row = connection.execute(
        "SELECT token_hash, username, created_at, last_seen_at FROM sessions"
        " WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    return None if row is None else Session(*row)


def _touch_session_txn(
    connection: Connection, token_hash: str, last_seen_at: float
) -> bool:
    cursor = connection.execute(
        "UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?"
        " AND last_seen_at < ?",
        (last_seen_at, token_hash, last_seen_at),
    )
    if cursor.rowcount:
        return True
    return (
        connection.execute(
            "SELECT 1 FROM sessions WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        is not None
    )


def _delete_session_txn(connection: Connection, token_hash: str) -> None:
    connection.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))


def _delete_expired_sessions_txn(
    connection: Connection, idle_since: float, created_since: float
) -> int:
    cursor = connection.execute(
        "DELETE FROM sessions WHERE last_seen_at < ? OR created_at < ?",
        (idle_since, created_since),
    )
    return cursor.rowcount


def _mailbox(
    connection: Connection,
    recipient: str,
    max_mailbox: int,
    mailboxes: _MailboxCounts | None,
    created_at: float | None = None,
) -> tuple[float, int] | None:
    """
    The recipient's C{created_at} and count of undelivered messages, or
    None if the mailbox is full. Pass C{created_at} if already read.
    """
    if created_at is None:
        row = connection.execute(
            "SELECT created_at FROM users WHERE username = ?", (recipient,)
        ).fetchone()
        created_at = 0.0 if row is None else row[0]
    count = None if mailboxes is None else mailboxes.get(recipient, created_at)
    if count is None:
        (count,) = connection.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {_UNDELIVERED}"
            " WHERE recipient = ? AND delivered_at IS NULL LIMIT ?) AS mailbox",
            (recipient, max_mailbox),
        ).fetchone()
        if mailboxes is not None:
            mailboxes.set(recipient, created_at, count)
    return None if count >= max_mailbox else (created_at, count)


def _one_more(
    mailboxes: _MailboxCounts | None, recipient: str, mailbox: tuple[float, int]
) -> None:
    if mailboxes is not None:
        created_at, count = mailbox
        mailboxes.set(recipient, created_at, count + 1)


def _store_message_txn(
    connection: Connection,
    sender: str,
    recipient: str,
    text: str,
    sent_at: float,
    max_mailbox: int = DEFAULT_MAX_MAILBOX,
    mailboxes: _MailboxCounts | None = None,
) -> Message:
    names: dict[str, str] = {}
    created_at = 0.0
    for username, full_name, created in connection.execute(
        "SELECT username, full_name, created_at FROM users WHERE username IN (?, ?)",
        (sender, recipient),
    ):
        names[username] = full_name
        if username == recipient:
            created_at = created
    for username in (sender, recipient):
        if username not in names:
            raise NoSuchUser(username)
    mailbox = _mailbox(connection, recipient, max_mailbox, mailboxes, created_at)
    if mailbox is None:
        raise MailboxFull(recipient)
    cursor = connection.execute(
        "INSERT INTO messages (sender, recipient, sender_name, recipient_name,"
        " body, sent_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (sender, recipient, names[sender], names[recipient], text, sent_at),
    )
    (new_id,) = cursor.fetchone()
    _one_more(mailboxes, recipient, mailbox)
    return Message(
        new_id,
        sender,
        recipient,
        names[sender],
        names[recipient],
        text,
        sent_at,
    )


def _within(
    rows: Iterable[tuple[Any, ...]], max_bytes: int | None, limit: int | None = None
) -> tuple[list[tuple[Any, ...]], bool]:
    """
    The first rows (at most C{limit}) whose text and file bytes together
    stay within C{max_bytes}, but at least one; and whether any row was
    left out.
    """
    taken: list[tuple[Any, ...]] = []
    total = 0
    for row in rows:
        if limit is not None and len(taken) == limit:
            return taken, True
        size = len(row[_BODY]) + (row[_FILE_SIZE] or 0)
        if taken and max_bytes is not None and total + size > max_bytes:
            return taken, True
        taken.append(row)
        total += size
    return taken, False


def _messages(connection: Connection, rows: list[tuple[Any, ...]]) -> list[Message]:
    """
    Messages from rows of _MESSAGE_COLUMNS, with their files' content.
    """
    hashes = list({row[_FILE_SHA256] for row in rows if row[_FILE_SHA256]})
    contents: dict[str, bytes] = {}
    for chunk in _chunks(hashes):
        contents.update(
            connection.execute(
                "SELECT sha256, content FROM files"
                f" WHERE sha256 IN ({_marks(len(chunk))})",
                chunk,
            ).fetchall()
        )
    return [_message(row, contents.get(row[_FILE_SHA256])) for row in rows]


def _message(row: tuple[Any, ...], content: bytes | None) -> Message:
    (id, sender, recipient, sender_name, recipient_name, text, sent_at) = row[:7]
    group, file_name, file_size, file_sha256 = row[7:]
    return Message(
        id,
        sender,
        recipient,
        sender_name,
        recipient_name,
        text,
        sent_at,
        group=group,
        file_name=file_name,
        file_size=file_size,
        file_sha256=file_sha256,
        file_content=content,
    )


def _drain_inbox_txn(
    connection: Connection,
    username: str,
    delivered_at: float,
    max_bytes: int | None,
    mailboxes: _MailboxCounts | None = None,
) -> list[Message]:
    if mailboxes is not None:
        mailboxes.drop(username)
    cursor = connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM {_UNDELIVERED}"
        " WHERE recipient = ? AND delivered_at IS NULL ORDER BY id"
        + _locks_rows(connection),
        (username,),
    )
    rows, _ = _within(cursor, max_bytes)
    cursor.close()
    # Exactly the rows read (and locked): on PostgreSQL each statement sees
    # the commits made since the last, so "id <= the last id read" could
    # take a lower id that another node committed meanwhile, unreturned.
    ids = [row[_ID] for row in rows]
    for chunk in _chunks(ids):
        connection.execute(
            f"UPDATE messages SET delivered_at = ? WHERE id IN ({_marks(len(chunk))})",
            (delivered_at, *chunk),
        )
    return _messages(connection, rows)


def _full_names(connection: Connection, usernames: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for chunk in _chunks(usernames):
        names.update(
            connection.execute(
                "SELECT username, full_name FROM users"
                f" WHERE username IN ({_marks(len(chunk))})",
                chunk,
            ).fetchall()
        )
    return names


def _store_file(connection: Connection, attachment: Attachment) -> None:
    connection.execute(
        "INSERT INTO files (sha256, size, content) VALUES (?, ?, ?)"
        " ON CONFLICT (sha256) DO NOTHING",
        (attachment.sha256, attachment.size, attachment.content),
    )


def _insert_message(
    connection: Connection,
    sender: tuple[str, str],
    recipient: tuple[str, str],
    text: str,
    sent_at: float,
    group: str | None,
    attachment: Attachment | None,
    delivered_at: float | None = None,
) -> Message:
    file_fields = (
        (None, None, None)
        if attachment is None
        else (attachment.name, attachment.size, attachment.sha256)
    )
    cursor = connection.execute(
        "INSERT INTO messages (sender, recipient, sender_name, recipient_name,"
        " body, sent_at, delivered_at, group_name, file_name, file_size,"
        " file_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            sender[0],
            recipient[0],
            sender[1],
            recipient[1],
            text,
            sent_at,
            delivered_at,
            group,
            *file_fields,
        ),
    )
    (new_id,) = cursor.fetchone()
    return _message(
        (
            new_id,
            sender[0],
            recipient[0],
            sender[1],
            recipient[1],
            text,
            sent_at,
            group,
            *file_fields,
        ),
        None if attachment is None else attachment.content,
    )


def _store_messages_txn(
    connection: Connection,
    sender: str,
    recipients: list[str],
    text: str,
    sent_at: float,
    attachment: Attachment | None,
    max_mailbox: int = DEFAULT_MAX_MAILBOX,
    mailboxes: _MailboxCounts | None = None,
    quotas: Quotas | None = None,
) -> list[Message]:
    recipients = list(dict.fromkeys(recipients))
    names = _full_names(connection, [sender, *recipients])
    if sender not in names:
        raise NoSuchUser(sender)
    missing = [r for r in recipients if r not in names]
    if missing:
        raise NoSuchUsers(missing)
    # All or nothing: any full mailbox refuses the whole send.
    boxes = {}
    for recipient in recipients:
        mailbox = _mailbox(connection, recipient, max_mailbox, mailboxes)
        if mailbox is None:
            raise MailboxFull(recipient)
        boxes[recipient] = mailbox
    if attachment is not None:
        check_file_quota(connection, sender, attachment, quotas)
        _store_file(connection, attachment)
    stored = []
    for recipient in recipients:
        stored.append(
            _insert_message(
                connection,
                (sender, names[sender]),
                (recipient, names[recipient]),
                text,
                sent_at,
                None,
                attachment,
            )
        )
        _one_more(mailboxes, recipient, boxes[recipient])
    return stored


def _members(connection: Connection, name: str) -> list[tuple[str, str]]:
    """
    The members of a group with their full names, longest-standing first.
    """
    return connection.execute(
        "SELECT m.username, u.full_name FROM group_members m"
        " JOIN users u ON u.username = m.username"
        " WHERE m.group_name = ? ORDER BY m.id",
        (name,),
    ).fetchall()


def _group_txn(connection: Connection, name: str) -> Group:
    row = connection.execute(
        "SELECT owner, created_at FROM chat_groups WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise NoSuchGroup(name)
    members = tuple(username for username, _ in _members(connection, name))
    return Group(name, row[0], members, row[1])


def _is_member(connection: Connection, name: str, username: str) -> bool:
    return (
        connection.execute(
            "SELECT 1 FROM group_members WHERE group_name = ? AND username = ?",
            (name, username),
        ).fetchone()
        is not None
    )


def _store_group_message_txn(
    connection: Connection,
    sender: str,
    group: str,
    text: str,
    sent_at: float,
    attachment: Attachment | None,
    max_mailbox: int = DEFAULT_MAX_MAILBOX,
    mailboxes: _MailboxCounts | None = None,
    quotas: Quotas | None = None,
) -> list[Message]:
    _group_txn(connection, group)
    members = dict(_members(connection, group))
    if sender not in members:
        raise NotAMember(group, sender)
    if attachment is not None:
        check_file_quota(connection, sender, attachment, quotas)
        _store_file(connection, attachment)
    from_sender = (sender, members[sender])
    stored = [
        _insert_message(
            connection,
            from_sender,
            from_sender,
            text,
            sent_at,
            group,
            attachment,
            delivered_at=sent_at,
        )
    ]
    for member, full_name in members.items():
        if member == sender:
            continue
        mailbox = _mailbox(connection, member, max_mailbox, mailboxes)
        # A full mailbox: one member who never reads must not stop the
        # group. Their copy is kept as delivered (it shows in their group
        # history) and not returned, so nobody pushes it.
        message = _insert_message(
            connection,
            from_sender,
            (member, full_name),
            text,
            sent_at,
            group,
            attachment,
            delivered_at=sent_at if mailbox is None else None,
        )
        if mailbox is not None:
            stored.append(message)
            _one_more(mailboxes, member, mailbox)
    return stored


def _require_user(connection: Connection, username: str) -> None:
    if (
        connection.execute(
            "SELECT 1 FROM users WHERE username = ?", (username,)
        ).fetchone()
        is None
    ):
        raise NoSuchUser(username)


def _create_group_txn(
    connection: Connection,
    name: str,
    owner: str,
    created_at: float,
    quotas: Quotas | None = None,
) -> Group:
    _require_user(connection, owner)
    if (
        connection.execute(
            "SELECT 1 FROM chat_groups WHERE name = ?", (name,)
        ).fetchone()
        is not None
    ):
        raise GroupExists(name)
    check_group_quota(connection, owner, quotas)
    connection.execute(
        "INSERT INTO chat_groups (name, owner, created_at) VALUES (?, ?, ?)",
        (name, owner, created_at),
    )
    connection.execute(
        "INSERT INTO group_members (group_name, username, joined_at) VALUES (?, ?, ?)",
        (name, owner, created_at),
    )
    return Group(name, owner, (owner,), created_at)


def _join_group_txn(
    connection: Connection,
    name: str,
    username: str,
    joined_at: float,
    quotas: Quotas | None = None,
) -> Group:
    _group_txn(connection, name)
    _require_user(connection, username)
    if _is_member(connection, name, username):
        raise AlreadyAMember(name, username)
    check_group_quota(connection, username, quotas)
    connection.execute(
        "INSERT INTO group_members (group_name, username, joined_at) VALUES (?, ?, ?)",
        (name, username, joined_at),
    )
    return _group_txn(connection, name)


def _leave_group_txn(connection: Connection, name: str, username: str) -> Group | None:
    group = _group_txn(connection, name)
    if username not in group.members:
        raise NotAMember(name, username)
    connection.execute(
        "DELETE FROM group_members WHERE group_name = ? AND username = ?",
        (name, username),
    )
    remaining = [member for member in group.members if member != username]
    if not remaining:
        connection.execute("DELETE FROM chat_groups WHERE name = ?", (name,))
        return None
    if group.owner == username:
        connection.execute(
            "UPDATE chat_groups SET owner = ? WHERE name = ?", (remaining[0], name)
        )
    return _group_txn(connection, name)


def _kick_from_group_txn(
    connection: Connection, name: str, by: str, username: str
) -> Group:
    group = _group_txn(connection, name)
    if group.owner != by:
        raise NotGroupOwner(name)
    if username == by:
        raise CannotKickSelf(name)
    left = _leave_group_txn(connection, name, username)
    assert left is not None  # the owner is still in it
    return left


def _list_groups_txn(connection: Connection, username: str) -> list[Group]:
    names = _column(
        connection.execute(
            "SELECT group_name FROM group_members WHERE username = ?"
            " ORDER BY group_name",
            (username,),
        )
    )
    return [_group_txn(connection, name) for name in names]


def _page(
    connection: Connection,
    conditions: list[tuple[str, tuple[Any, ...]]],
    limit: int,
    before_id: int | None,
    max_bytes: int | None,
) -> Page:
    """
    The newest messages matching any of C{conditions} (each a WHERE clause
    and its arguments, disjoint, each served by an index in id order).
    """
    below = _NO_ID_LIMIT if before_id is None else before_id
    branches = [
        f"SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages"
        f" WHERE {where} AND id < ? ORDER BY id DESC LIMIT ?) AS branch"
        for where, _ in conditions
    ]
    arguments = [a for _, args in conditions for a in (*args, below, limit + 1)]
    cursor = connection.execute(
        " UNION ALL ".join(branches) + " ORDER BY id DESC LIMIT ?",
        (*arguments, limit + 1),
    )
    rows, more = _within(cursor, max_bytes, limit)
    cursor.close()
    return Page(tuple(_messages(connection, rows)), more)


_CONVERSATION = "recipient = ? AND sender = ? AND group_name IS NULL"


def _conversation_txn(
    connection: Connection,
    username: str,
    peer: str,
    limit: int,
    before_id: int | None,
    max_bytes: int | None,
) -> Page:
    _require_user(connection, peer)
    conditions = [(_CONVERSATION, (peer, username))]
    if peer != username:
        conditions.append((_CONVERSATION, (username, peer)))
    return _page(connection, conditions, limit, before_id, max_bytes)


def _group_history_txn(
    connection: Connection,
    username: str,
    group: str,
    limit: int,
    before_id: int | None,
    max_bytes: int | None,
) -> Page:
    _group_txn(connection, group)
    if not _is_member(connection, group, username):
        raise NotAMember(group, username)
    return _page(
        connection,
        [("recipient = ? AND group_name = ?", (username, group))],
        limit,
        before_id,
        max_bytes,
    )


def _forget_unused_files(connection: Connection, hashes: list[str]) -> None:
    for sha256 in hashes:
        connection.execute(
            "DELETE FROM files WHERE sha256 = ? AND NOT EXISTS"
            " (SELECT 1 FROM messages WHERE file_sha256 = ?)",
            (sha256, sha256),
        )


def _purge_messages_txn(
    connection: Connection,
    sent_before: float,
    limit: int,
    mailboxes: _MailboxCounts | None = None,
) -> int:
    rows = connection.execute(
        "SELECT id, file_sha256 FROM messages WHERE sent_at < ?"
        " ORDER BY sent_at, id LIMIT ?",
        (sent_before, limit),
    ).fetchall()
    for chunk in _chunks([row[0] for row in rows]):
        connection.execute(
            f"DELETE FROM messages WHERE id IN ({_marks(len(chunk))})", chunk
        )
    _forget_unused_files(connection, list({row[1] for row in rows if row[1]}))
    if rows and mailboxes is not None:
        mailboxes.clear()  # undelivered messages may have gone too
    return len(rows)


def _undelivered_txn(
    connection: Connection, username: str, after_id: int, limit: int
) -> list[Message]:
    rows = connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM {_UNDELIVERED} WHERE recipient = ?"
        " AND delivered_at IS NULL AND id > ? ORDER BY id LIMIT ?",
        (username, after_id, limit),
    ).fetchall()
    return _messages(connection, rows)


def _mark_delivered_txn(
    connection: Connection,
    username: str,
    up_to_id: int,
    delivered_at: float,
    mailboxes: _MailboxCounts | None = None,
) -> int:
    if mailboxes is not None:
        mailboxes.drop(username)
    cursor = connection.execute(
        f"UPDATE {_UNDELIVERED} SET delivered_at = ?"
        " WHERE recipient = ? AND delivered_at IS NULL AND id <= ?",
        (delivered_at, username, up_to_id),
    )
    return cursor.rowcount


def _mark_delivered_ids_txn(
    connection: Connection,
    username: str,
    ids: list[int],
    delivered_at: float,
    mailboxes: _MailboxCounts | None = None,
) -> int:
    if mailboxes is not None:
        mailboxes.drop(username)
    count = 0
    for chunk in _chunks(ids):
        cursor = connection.execute(
            f"UPDATE {_UNDELIVERED} SET delivered_at = ? WHERE recipient = ?"
            f" AND delivered_at IS NULL AND id IN ({_marks(len(chunk))})",
            (delivered_at, username, *chunk),
        )
        count += cursor.rowcount
    return count


# Realms (issue 6).

_OUTBOX_COLUMNS = (
    "id, message_uid, realm_id, sender, sender_name, recipients, body, sent_at"
)


def _set_admin_txn(connection: Connection, username: str, is_admin: bool) -> None:
    cursor = connection.execute(
        "UPDATE users SET is_admin = ? WHERE username = ?", (int(is_admin), username)
    )
    if cursor.rowcount == 0:
        raise NoSuchUser(username)


def _is_admin_txn(connection: Connection, username: str) -> bool:
    row = connection.execute(
        "SELECT is_admin FROM users WHERE username = ?", (username,)
    ).fetchone()
    if row is None:
        raise NoSuchUser(username)
    return bool(row[0])


def _add_realm_link_txn(connection: Connection, link: RealmLink) -> None:
    cursor = connection.execute(
        "INSERT INTO realm_links (realm_id, endpoint, secret, created_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (realm_id) DO NOTHING",
        (link.realm_id, link.endpoint, link.secret, link.created_at),
    )
    if cursor.rowcount == 0:
        raise RealmExists(link.realm_id)


def _get_realm_link_txn(connection: Connection, realm_id: str) -> RealmLink:
    row = connection.execute(
        "SELECT realm_id, endpoint, secret, created_at FROM realm_links"
        " WHERE realm_id = ?",
        (realm_id,),
    ).fetchone()
    if row is None:
        raise NoSuchRealm(realm_id)
    return RealmLink(*row)


def _list_realm_links_txn(connection: Connection) -> list[RealmLink]:
    rows = connection.execute(
        "SELECT realm_id, endpoint, secret, created_at FROM realm_links"
        " ORDER BY realm_id"
    ).fetchall()
    return [RealmLink(*row) for row in rows]


def _outbound(row: tuple[Any, ...]) -> OutboundMessage:
    outbox_id, uid, realm_id, sender, sender_name, recipients, body, sent_at = row
    return OutboundMessage(
        outbox_id,
        uid,
        realm_id,
        sender,
        sender_name,
        tuple(json.loads(recipients)),
        body,
        sent_at,
    )


def _remove_realm_link_txn(
    connection: Connection, realm_id: str, now: float
) -> list[Message]:
    _get_realm_link_txn(connection, realm_id)
    rows = connection.execute(
        f"SELECT {_OUTBOX_COLUMNS} FROM realm_outbox WHERE realm_id = ? ORDER BY id",
        (realm_id,),
    ).fetchall()
    bounces = []
    for row in rows:
        queued = _outbound(row)
        bounce = _bounce_txn(
            connection, queued, queued.recipients, "the link was removed", now
        )
        if bounce is not None:
            bounces.append(bounce)
    connection.execute("DELETE FROM realm_outbox WHERE realm_id = ?", (realm_id,))
    connection.execute("DELETE FROM realm_links WHERE realm_id = ?", (realm_id,))
    return bounces


def _queue_outbound_txn(
    connection: Connection,
    sender: str,
    text: str,
    sent_at: float,
    batches: list[tuple[str, tuple[str, ...], str]],
    max_queue: int,
) -> list[OutboundMessage]:
    row = connection.execute(
        "SELECT full_name FROM users WHERE username = ?", (sender,)
    ).fetchone()
    if row is None:
        raise NoSuchUser(sender)
    (sender_name,) = row
    queued = []
    for realm_id, recipients, uid in batches:
        _get_realm_link_txn(connection, realm_id)
        if _outbox_size_txn(connection, realm_id) >= max_queue:
            raise RealmQueueFull(realm_id, max_queue)
        cursor = connection.execute(
            "INSERT INTO realm_outbox (message_uid, realm_id, sender, sender_name,"
            " recipients, body, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                uid,
                realm_id,
                sender,
                sender_name,
                json.dumps(list(recipients)),
                text,
                sent_at,
            ),
        )
        (new_id,) = cursor.fetchone()
        queued.append(
            OutboundMessage(
                new_id,
                uid,
                realm_id,
                sender,
                sender_name,
                tuple(recipients),
                text,
                sent_at,
            )
        )
    return queued


def _next_outbound_txn(
    connection: Connection, realm_id: str, limit: int
) -> list[OutboundMessage]:
    rows = connection.execute(
        f"SELECT {_OUTBOX_COLUMNS} FROM realm_outbox WHERE realm_id = ?"
        " ORDER BY id LIMIT ?",
        (realm_id, limit),
    ).fetchall()
    return [_outbound(row) for row in rows]


def _outbox_size_txn(connection: Connection, realm_id: str) -> int:
    (count,) = connection.execute(
        "SELECT count(*) FROM realm_outbox WHERE realm_id = ?", (realm_id,)
    ).fetchone()
    return int(count)


def _bounce_txn(
    connection: Connection,
    queued: OutboundMessage,
    failed: Sequence[str],
    reason: str,
    now: float,
) -> Message | None:
    """
    Tell the sender of C{queued} that it did not reach C{failed}; nothing
    if the sender no longer exists.
    """
    row = connection.execute(
        "SELECT full_name FROM users WHERE username = ?", (queued.sender,)
    ).fetchone()
    if row is None:
        return None
    sender = address(POSTMASTER, queued.realm_id)
    text = bounce_text(queued.realm_id, failed, reason, queued.text)
    cursor = connection.execute(
        "INSERT INTO messages (sender, recipient, sender_name, recipient_name,"
        " body, sent_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (sender, queued.sender, POSTMASTER_NAME, row[0], text, now),
    )
    (new_id,) = cursor.fetchone()
    return Message(new_id, sender, queued.sender, POSTMASTER_NAME, row[0], text, now)


def _finish_outbound_txn(
    connection: Connection,
    outbox_id: int,
    failed: list[str],
    reason: str,
    now: float,
) -> Message | None:
    row = connection.execute(
        f"SELECT {_OUTBOX_COLUMNS} FROM realm_outbox WHERE id = ?", (outbox_id,)
    ).fetchone()
    if row is None:
        return None
    connection.execute("DELETE FROM realm_outbox WHERE id = ?", (outbox_id,))
    if not failed:
        return None
    return _bounce_txn(connection, _outbound(row), failed, reason, now)


def _receive_remote_txn(
    connection: Connection,
    realm_id: str,
    message: InboundMessage,
    received_at: float,
) -> Delivery:
    _get_realm_link_txn(connection, realm_id)
    cursor = connection.execute(
        "INSERT INTO realm_inbound (realm_id, message_uid, unknown, received_at)"
        " VALUES (?, ?, '[]', ?) ON CONFLICT (realm_id, message_uid) DO NOTHING",
        (realm_id, message.uid, received_at),
    )
    if cursor.rowcount == 0:
        (unknown,) = connection.execute(
            "SELECT unknown FROM realm_inbound WHERE realm_id = ? AND message_uid = ?",
            (realm_id, message.uid),
        ).fetchone()
        return Delivery((), tuple(json.loads(unknown)), True)
    recipients = message.recipients
    names = dict(
        connection.execute(
            "SELECT username, full_name FROM users WHERE username IN"
            f" ({', '.join('?' * len(recipients))})",
            recipients,
        ).fetchall()
    )
    sender = address(message.sender, realm_id)
    stored = []
    for recipient in recipients:
        if recipient not in names:
            continue
        cursor = connection.execute(
            "INSERT INTO messages (sender, recipient, sender_name, recipient_name,"
            " body, sent_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (
                sender,
                recipient,
                message.sender_name,
                names[recipient],
                message.text,
                message.sent_at,
            ),
        )
        (new_id,) = cursor.fetchone()
        stored.append(
            Message(
                new_id,
                sender,
                recipient,
                message.sender_name,
                names[recipient],
                message.text,
                message.sent_at,
            )
        )
    unknown = tuple(r for r in recipients if r not in names)
    if unknown:
        connection.execute(
            "UPDATE realm_inbound SET unknown = ? WHERE realm_id = ?"
            " AND message_uid = ?",
            (json.dumps(list(unknown)), realm_id, message.uid),
        )
    return Delivery(tuple(stored), unknown, False)


def _from_realm_pattern(realm_id: str) -> str:
    escaped = realm_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%@{escaped}"


def _drain_realm_inbox_txn(
    connection: Connection,
    username: str,
    realm_id: str,
    delivered_at: float,
) -> list[Message]:
    _get_realm_link_txn(connection, realm_id)
    pattern = _from_realm_pattern(realm_id)
    rows = connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM {_UNDELIVERED}"
        " WHERE recipient = ? AND delivered_at IS NULL"
        " AND sender LIKE ? ESCAPE '\\' ORDER BY id" + _locks_rows(connection),
        (username, pattern),
    ).fetchall()
    if rows:
        connection.execute(
            f"UPDATE {_UNDELIVERED} SET delivered_at = ?"
            " WHERE recipient = ? AND delivered_at IS NULL"
            " AND sender LIKE ? ESCAPE '\\' AND id <= ?",
            (delivered_at, username, pattern, rows[-1][0]),
        )
    return [Message(*row) for row in rows]


def _forget_remote_ids_txn(connection: Connection, before: float) -> int:
    cursor = connection.execute(
        "DELETE FROM realm_inbound WHERE received_at < ?", (before,)
    )
    return cursor.rowcount


#: Operations that raise their domain errors (ChatError) only before their
#: first write, or never, so they run without a savepoint of their own.
#: Any other exception in them rolls back the whole batch.
CHECKS_BEFORE_WRITING = frozenset(
    {
        _store_message_txn,
        _drain_inbox_txn,
        _undelivered_txn,
        _mark_delivered_txn,
        _mark_delivered_ids_txn,
        _get_user_txn,
        _get_session_txn,
        _touch_session_txn,
        _create_session_txn,
    }
)


def run_operations(
    connection: Connection,
    batch: list[tuple[_Op, tuple[Any, ...]]],
    database_errors: type[Exception] | tuple[type[Exception], ...],
) -> list[tuple[bool, Any]]:
    """
    Run each operation of C{batch} in the open transaction: a domain error
    (any exception but C{database_errors}) undoes that operation only.

    @return: each operation's (succeeded, value or exception).
    @raise database_errors: the database failed; roll the batch back.
    """
    results: list[tuple[bool, Any]] = []
    for op, args in batch:
        if op in CHECKS_BEFORE_WRITING:
            # A domain error from these comes before any write:
            # nothing to undo, so no savepoint to pay for.
            try:
                results.append((True, op(connection, *args)))
            except ChatError as e:
                results.append((False, e))
            continue
        connection.execute("SAVEPOINT op")
        try:
            value = op(connection, *args)
        except database_errors:
            raise
        except Exception as e:
            connection.execute("ROLLBACK TO op")
            connection.execute("RELEASE op")
            results.append((False, e))
        else:
            connection.execute("RELEASE op")
            results.append((True, value))
    return results


#: Operations that store new messages (their results are Messages, lists of
#: them, or a Delivery), which other nodes are told about.
STORES_MESSAGES = frozenset(
    {
        _store_message_txn,
        _store_messages_txn,
        _store_group_message_txn,
        _remove_realm_link_txn,
        _finish_outbound_txn,
        _receive_remote_txn,
    }
)


def new_messages(
    batch: list[tuple[_Op, tuple[Any, ...]]], results: list[tuple[bool, Any]]
) -> list[Message]:
    """
    The undelivered messages the operations of C{batch} stored (not a
    sender's own, already delivered, copy of a group message).
    """
    stored: list[Message] = []
    for (op, _), (succeeded, value) in zip(batch, results, strict=True):
        if not succeeded or op not in STORES_MESSAGES:
            continue
        if isinstance(value, Delivery):
            value = value.messages
        for message in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(message, Message) and not message.senders_copy:
                stored.append(message)
    return stored


def _messages_by_id_txn(connection: Connection, ids: Sequence[int]) -> list[Message]:
    rows: list[tuple[Any, ...]] = []
    for chunk in _chunks(list(ids)):
        rows.extend(
            connection.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                f" WHERE id IN ({_marks(len(chunk))})",
                chunk,
            ).fetchall()
        )
    rows.sort(key=lambda row: row[_ID])
    return _messages(connection, rows)
