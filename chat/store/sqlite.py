"""
The SQLite store: one connection on one dedicated thread, group commit.

Every operation is a synchronous C{_something_txn(connection, ...)}
function. Operations are queued; when no transaction is in flight, the whole
queue goes to the store's thread as one batch and runs in one transaction
(each operation inside its own SAVEPOINT, so a domain error such as an
unknown recipient undoes only that operation). Every operation's Deferred
fires only after COMMIT returned. Operations that arrive while a batch is
being committed form the next batch: under load, many sends share one
fsync (group commit), so durability does not cost throughput.

The database runs in WAL mode with C{synchronous=FULL}: a commit that
returned survives a power cut.

A message is refused with L{MailboxFull} when its recipient already has
C{max_mailbox} undelivered messages, checked inside the inserting
transaction. Counting a mailbox (on the partial index of undelivered
messages, stopping at C{max_mailbox}) takes up to a millisecond when it is
nearly full, so the store's thread keeps the counts it has made and keeps
them up to date (L{_MailboxCounts}); a failed batch forgets them all.

If SQLite fails (disk full, I/O error), the whole batch is rolled back and
every operation in it fails with L{StorageUnavailable}: nothing is
acknowledged that was not stored. The next batch tries again, so the store
recovers by itself when space returns.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
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
    StorageUnavailable,
    UserExists,
)
from chat.interfaces import IChatStore, IRealmStore
from chat.limits import DEFAULT_MAX_MAILBOX
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
from chat.store import schema

_Op = Callable[..., Any]
_Job = tuple[_Op, tuple[Any, ...], "Deferred[Any]"]


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


def _dropping(op: _Op, mailboxes: _MailboxCounts) -> _Op:
    """
    C{op}, then forget the counts of the mailboxes it changed: those of the
    messages it returns (for operations that do not keep the counts, such
    as the realm links': their messages are not limited by mailbox size,
    but must not be missed by its counts).
    """

    def run(connection: sqlite3.Connection, *args: Any) -> Any:
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
class SQLiteStore:
    """
    L{IChatStore} on a SQLite file.

    @ivar commits: how many transactions have been committed (for tests and
        statistics).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorFromThreads,
        path: str,
        connection_setup: Callable[[sqlite3.Connection], None] | None = None,
        max_mailbox: int = DEFAULT_MAX_MAILBOX,
    ) -> None:
        """
        Open (creating or upgrading if needed) the database at C{path}.

        @param max_mailbox: the most undelivered messages per recipient.

        @raise chat.errors.SchemaTooNew: if a newer chat wrote it.
        """
        schema.prepare(path)
        self.path = path
        self.max_mailbox = max_mailbox
        self.commits = 0
        #: Called with (operations in the batch, seconds the transaction
        #: took) after each commit, in the reactor thread (for metrics).
        self.commit_observers: list[Callable[[int, float], None]] = []
        self._mailboxes = _MailboxCounts()
        self._reactor = reactor
        self._setup = connection_setup
        self._connection: sqlite3.Connection | None = None
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="chat-sqlite")
        self._pending: list[_Job] = []
        self._in_flight: Deferred[None] | None = None
        self._closed = False
        self._idle_waiters: list[Deferred[None]] = []

    # Lifecycle.

    def start(self) -> None:
        """
        Start the store's thread. Operations queued before this wait.
        """
        self._pool.start()

    def close(self) -> Deferred[None]:
        """
        Commit what is queued, then close the connection and the thread.
        Operations asked for after this fail with L{StorageUnavailable}.
        """
        self._closed = True
        idle: Deferred[None] = Deferred()
        if self._in_flight is None:
            idle.callback(None)
        else:
            self._idle_waiters.append(idle)
        closed = idle.addCallback(
            lambda _: deferToThreadPool(self._reactor, self._pool, self._close_txn)
        )

        def stop_thread(passthrough: object) -> object:
            self._pool.stop()
            return passthrough

        return closed.addBoth(stop_thread)

    def _close_txn(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # Group commit.

    def _run(self, op: _Op, *args: Any) -> Deferred[Any]:
        """
        Queue C{op(connection, *args)} for the next transaction.
        """
        if self._closed:
            return fail(StorageUnavailable("the store is closed"))
        d: Deferred[Any] = Deferred()
        self._pending.append((op, args, d))
        if self._in_flight is None:
            self._flush()
        return d

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        batch_done: Deferred[tuple[list[tuple[bool, Any]], float]] = deferToThreadPool(
            self._reactor,
            self._pool,
            self._run_batch_txn,
            [(op, args) for op, args, _ in batch],
        )
        self._in_flight = batch_done.addBoth(self._batch_done, batch)

    def _batch_done(self, outcome: object, batch: list[_Job]) -> None:
        if isinstance(outcome, Failure):
            if not outcome.check(StorageUnavailable):
                self.log.failure("Unexpected error in a store batch", outcome)
            error = StorageUnavailable(str(outcome.value))
            for _, _, d in batch:
                d.errback(error)
        else:
            assert isinstance(outcome, tuple)
            results, seconds = outcome
            for observer in self.commit_observers:
                observer(len(batch), seconds)
            for (_, _, d), (succeeded, value) in zip(batch, results, strict=True):
                if succeeded:
                    d.callback(value)
                else:
                    d.errback(value)
        self._in_flight = None
        if self._pending:
            self._flush()
        else:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA busy_timeout=5000")
            if self._setup is not None:
                self._setup(connection)
            self._connection = connection
        return self._connection

    def _run_batch_txn(
        self, batch: list[tuple[_Op, tuple[Any, ...]]]
    ) -> tuple[list[tuple[bool, Any]], float]:
        """
        Run a batch in one transaction, in the store's thread.

        @return: the outcome of each operation, and the seconds it took.
        """
        results: list[tuple[bool, Any]] = []
        started = time.perf_counter()
        try:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            for op, args in batch:
                if op in _CHECKS_BEFORE_WRITING:
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
                except sqlite3.Error:
                    raise
                except Exception as e:
                    connection.execute("ROLLBACK TO op")
                    connection.execute("RELEASE op")
                    results.append((False, e))
                else:
                    connection.execute("RELEASE op")
                    results.append((True, value))
            connection.execute("COMMIT")
        except BaseException as e:
            self._mailboxes.clear()
            self._abandon()
            if not isinstance(e, sqlite3.Error):
                raise
            self.log.error("Storage error, batch rolled back: {error}", error=str(e))
            raise StorageUnavailable(str(e)) from None
        self.commits += 1
        return results, time.perf_counter() - started

    def _abandon(self) -> None:
        """
        Roll back after a failure; drop the connection if even that fails.
        """
        if self._connection is None:
            return
        try:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
        except sqlite3.Error:
            self._connection.close()
            self._connection = None

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
        )

    def create_group(self, name: str, owner: str, created_at: float) -> Deferred[Group]:
        return self._run(_create_group_txn, name, owner, created_at)

    def join_group(self, name: str, username: str, joined_at: float) -> Deferred[Group]:
        return self._run(_join_group_txn, name, username, joined_at)

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


def _add_user_txn(connection: sqlite3.Connection, user: User) -> None:
    try:
        connection.execute(
            "INSERT INTO users (username, full_name, country, password_hash,"
            " created_at) VALUES (?, ?, ?, ?, (julianday('now') - 2440587.5) * 86400)",
            (user.username, user.full_name, user.country, user.password_hash),
        )
    except sqlite3.IntegrityError:
        raise UserExists(user.username) from None


def _get_user_txn(connection: sqlite3.Connection, username: str) -> User:
    row = connection.execute(
        f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,)
    ).fetchone()
    if row is None:
        raise NoSuchUser(username)
    return User(*row)


def _set_password_hash_txn(
    connection: sqlite3.Connection, username: str, password_hash: str
) -> None:
    cursor = connection.execute(
        "UPDATE users SET password_hash = ? WHERE username = ?",
        (password_hash, username),
    )
    if cursor.rowcount == 0:
        raise NoSuchUser(username)
    connection.execute("DELETE FROM sessions WHERE username = ?", (username,))


def _delete_user_txn(connection: sqlite3.Connection, username: str) -> None:
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


def _list_users_txn(connection: sqlite3.Connection) -> list[User]:
    rows = connection.execute(
        f"SELECT {_USER_COLUMNS} FROM users ORDER BY username"
    ).fetchall()
    return [User(*row) for row in rows]


def _create_session_txn(connection: sqlite3.Connection, session: Session) -> None:
    try:
        connection.execute(
            "INSERT INTO sessions (token_hash, username, created_at, last_seen_at)"
            " VALUES (?, ?, ?, ?)",
            (
                session.token_hash,
                session.username,
                session.created_at,
                session.last_seen_at,
            ),
        )
    except sqlite3.IntegrityError:
        raise NoSuchUser(session.username) from None


def _get_session_txn(connection: sqlite3.Connection, token_hash: str) -> Session | None:
    row = connection.execute(
        "SELECT token_hash, username, created_at, last_seen_at FROM sessions"
        " WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    return None if row is None else Session(*row)


def _touch_session_txn(
    connection: sqlite3.Connection, token_hash: str, last_seen_at: float
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


def _delete_session_txn(connection: sqlite3.Connection, token_hash: str) -> None:
    connection.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))


def _delete_expired_sessions_txn(
    connection: sqlite3.Connection, idle_since: float, created_since: float
) -> int:
    cursor = connection.execute(
        "DELETE FROM sessions WHERE last_seen_at < ? OR created_at < ?",
        (idle_since, created_since),
    )
    return cursor.rowcount


def _mailbox(
    connection: sqlite3.Connection,
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
            " WHERE recipient = ? AND delivered_at IS NULL LIMIT ?)",
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
    connection: sqlite3.Connection,
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
        " body, sent_at) VALUES (?, ?, ?, ?, ?, ?)",
        (sender, recipient, names[sender], names[recipient], text, sent_at),
    )
    assert cursor.lastrowid is not None
    _one_more(mailboxes, recipient, mailbox)
    return Message(
        cursor.lastrowid,
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


def _messages(
    connection: sqlite3.Connection, rows: list[tuple[Any, ...]]
) -> list[Message]:
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
    connection: sqlite3.Connection,
    username: str,
    delivered_at: float,
    max_bytes: int | None,
    mailboxes: _MailboxCounts | None = None,
) -> list[Message]:
    if mailboxes is not None:
        mailboxes.drop(username)
    cursor = connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM {_UNDELIVERED}"
        " WHERE recipient = ? AND delivered_at IS NULL ORDER BY id",
        (username,),
    )
    rows, _ = _within(cursor, max_bytes)
    cursor.close()
    if rows:
        connection.execute(
            f"UPDATE {_UNDELIVERED} SET delivered_at = ?"
            " WHERE recipient = ? AND delivered_at IS NULL AND id <= ?",
            (delivered_at, username, rows[-1][_ID]),
        )
    return _messages(connection, rows)


def _full_names(connection: sqlite3.Connection, usernames: list[str]) -> dict[str, str]:
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


def _store_file(connection: sqlite3.Connection, attachment: Attachment) -> None:
    connection.execute(
        "INSERT INTO files (sha256, size, content) VALUES (?, ?, ?)"
        " ON CONFLICT (sha256) DO NOTHING",
        (attachment.sha256, attachment.size, attachment.content),
    )


def _insert_message(
    connection: sqlite3.Connection,
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
        " file_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    assert cursor.lastrowid is not None
    return _message(
        (
            cursor.lastrowid,
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
    connection: sqlite3.Connection,
    sender: str,
    recipients: list[str],
    text: str,
    sent_at: float,
    attachment: Attachment | None,
    max_mailbox: int = DEFAULT_MAX_MAILBOX,
    mailboxes: _MailboxCounts | None = None,
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


def _members(connection: sqlite3.Connection, name: str) -> list[tuple[str, str]]:
    """
    The members of a group with their full names, longest-standing first.
    """
    return connection.execute(
        "SELECT m.username, u.full_name FROM group_members m"
        " JOIN users u ON u.username = m.username"
        " WHERE m.group_name = ? ORDER BY m.id",
        (name,),
    ).fetchall()


def _group_txn(connection: sqlite3.Connection, name: str) -> Group:
    row = connection.execute(
        "SELECT owner, created_at FROM chat_groups WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise NoSuchGroup(name)
    members = tuple(username for username, _ in _members(connection, name))
    return Group(name, row[0], members, row[1])


def _is_member(connection: sqlite3.Connection, name: str, username: str) -> bool:
    return (
        connection.execute(
            "SELECT 1 FROM group_members WHERE group_name = ? AND username = ?",
            (name, username),
        ).fetchone()
        is not None
    )


def _store_group_message_txn(
    connection: sqlite3.Connection,
    sender: str,
    group: str,
    text: str,
    sent_at: float,
    attachment: Attachment | None,
    max_mailbox: int = DEFAULT_MAX_MAILBOX,
    mailboxes: _MailboxCounts | None = None,
) -> list[Message]:
    _group_txn(connection, group)
    members = dict(_members(connection, group))
    if sender not in members:
        raise NotAMember(group, sender)
    if attachment is not None:
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
        if mailbox is None:
            # The member's mailbox is full: one member who never reads must
            # not stop the group. Their copy is kept as delivered (it shows
            # in their group history) and not returned, so nobody pushes it.
            _insert_message(
                connection,
                from_sender,
                (member, full_name),
                text,
                sent_at,
                group,
                attachment,
                delivered_at=sent_at,
            )
            continue
        stored.append(
            _insert_message(
                connection,
                from_sender,
                (member, full_name),
                text,
                sent_at,
                group,
                attachment,
            )
        )
        _one_more(mailboxes, member, mailbox)
    return stored


def _require_user(connection: sqlite3.Connection, username: str) -> None:
    if (
        connection.execute(
            "SELECT 1 FROM users WHERE username = ?", (username,)
        ).fetchone()
        is None
    ):
        raise NoSuchUser(username)


def _create_group_txn(
    connection: sqlite3.Connection, name: str, owner: str, created_at: float
) -> Group:
    _require_user(connection, owner)
    if (
        connection.execute(
            "SELECT 1 FROM chat_groups WHERE name = ?", (name,)
        ).fetchone()
        is not None
    ):
        raise GroupExists(name)
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
    connection: sqlite3.Connection, name: str, username: str, joined_at: float
) -> Group:
    _group_txn(connection, name)
    _require_user(connection, username)
    if _is_member(connection, name, username):
        raise AlreadyAMember(name, username)
    connection.execute(
        "INSERT INTO group_members (group_name, username, joined_at) VALUES (?, ?, ?)",
        (name, username, joined_at),
    )
    return _group_txn(connection, name)


def _leave_group_txn(
    connection: sqlite3.Connection, name: str, username: str
) -> Group | None:
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
    connection: sqlite3.Connection, name: str, by: str, username: str
) -> Group:
    group = _group_txn(connection, name)
    if group.owner != by:
        raise NotGroupOwner(name)
    if username == by:
        raise CannotKickSelf(name)
    left = _leave_group_txn(connection, name, username)
    assert left is not None  # the owner is still in it
    return left


def _list_groups_txn(connection: sqlite3.Connection, username: str) -> list[Group]:
    names = _column(
        connection.execute(
            "SELECT group_name FROM group_members WHERE username = ?"
            " ORDER BY group_name",
            (username,),
        )
    )
    return [_group_txn(connection, name) for name in names]


def _page(
    connection: sqlite3.Connection,
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
        f" WHERE {where} AND id < ? ORDER BY id DESC LIMIT ?)"
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
    connection: sqlite3.Connection,
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
    connection: sqlite3.Connection,
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


def _forget_unused_files(connection: sqlite3.Connection, hashes: list[str]) -> None:
    for sha256 in hashes:
        connection.execute(
            "DELETE FROM files WHERE sha256 = ? AND NOT EXISTS"
            " (SELECT 1 FROM messages WHERE file_sha256 = ?)",
            (sha256, sha256),
        )


def _purge_messages_txn(
    connection: sqlite3.Connection,
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
    connection: sqlite3.Connection, username: str, after_id: int, limit: int
) -> list[Message]:
    rows = connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM {_UNDELIVERED} WHERE recipient = ?"
        " AND delivered_at IS NULL AND id > ? ORDER BY id LIMIT ?",
        (username, after_id, limit),
    ).fetchall()
    return _messages(connection, rows)


def _mark_delivered_txn(
    connection: sqlite3.Connection,
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


# Realms (issue 6).

_OUTBOX_COLUMNS = (
    "id, message_uid, realm_id, sender, sender_name, recipients, body, sent_at"
)


def _set_admin_txn(
    connection: sqlite3.Connection, username: str, is_admin: bool
) -> None:
    cursor = connection.execute(
        "UPDATE users SET is_admin = ? WHERE username = ?", (int(is_admin), username)
    )
    if cursor.rowcount == 0:
        raise NoSuchUser(username)


def _is_admin_txn(connection: sqlite3.Connection, username: str) -> bool:
    row = connection.execute(
        "SELECT is_admin FROM users WHERE username = ?", (username,)
    ).fetchone()
    if row is None:
        raise NoSuchUser(username)
    return bool(row[0])


def _add_realm_link_txn(connection: sqlite3.Connection, link: RealmLink) -> None:
    try:
        connection.execute(
            "INSERT INTO realm_links (realm_id, endpoint, secret, created_at)"
            " VALUES (?, ?, ?, ?)",
            (link.realm_id, link.endpoint, link.secret, link.created_at),
        )
    except sqlite3.IntegrityError:
        raise RealmExists(link.realm_id) from None


def _get_realm_link_txn(connection: sqlite3.Connection, realm_id: str) -> RealmLink:
    row = connection.execute(
        "SELECT realm_id, endpoint, secret, created_at FROM realm_links"
        " WHERE realm_id = ?",
        (realm_id,),
    ).fetchone()
    if row is None:
        raise NoSuchRealm(realm_id)
    return RealmLink(*row)


def _list_realm_links_txn(connection: sqlite3.Connection) -> list[RealmLink]:
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
    connection: sqlite3.Connection, realm_id: str, now: float
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
    connection: sqlite3.Connection,
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
            " recipients, body, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
        assert cursor.lastrowid is not None
        queued.append(
            OutboundMessage(
                cursor.lastrowid,
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
    connection: sqlite3.Connection, realm_id: str, limit: int
) -> list[OutboundMessage]:
    rows = connection.execute(
        f"SELECT {_OUTBOX_COLUMNS} FROM realm_outbox WHERE realm_id = ?"
        " ORDER BY id LIMIT ?",
        (realm_id, limit),
    ).fetchall()
    return [_outbound(row) for row in rows]


def _outbox_size_txn(connection: sqlite3.Connection, realm_id: str) -> int:
    (count,) = connection.execute(
        "SELECT count(*) FROM realm_outbox WHERE realm_id = ?", (realm_id,)
    ).fetchone()
    return int(count)


def _bounce_txn(
    connection: sqlite3.Connection,
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
        " body, sent_at) VALUES (?, ?, ?, ?, ?, ?)",
        (sender, queued.sender, POSTMASTER_NAME, row[0], text, now),
    )
    assert cursor.lastrowid is not None
    return Message(
        cursor.lastrowid, sender, queued.sender, POSTMASTER_NAME, row[0], text, now
    )


def _finish_outbound_txn(
    connection: sqlite3.Connection,
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
    connection: sqlite3.Connection,
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
            " body, sent_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                sender,
                recipient,
                message.sender_name,
                names[recipient],
                message.text,
                message.sent_at,
            ),
        )
        assert cursor.lastrowid is not None
        stored.append(
            Message(
                cursor.lastrowid,
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
    connection: sqlite3.Connection,
    username: str,
    realm_id: str,
    delivered_at: float,
) -> list[Message]:
    _get_realm_link_txn(connection, realm_id)
    pattern = _from_realm_pattern(realm_id)
    rows = connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM {_UNDELIVERED}"
        " WHERE recipient = ? AND delivered_at IS NULL"
        " AND sender LIKE ? ESCAPE '\\' ORDER BY id",
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


def _forget_remote_ids_txn(connection: sqlite3.Connection, before: float) -> int:
    cursor = connection.execute(
        "DELETE FROM realm_inbound WHERE received_at < ?", (before,)
    )
    return cursor.rowcount


#: Operations that raise their domain errors (ChatError) only before their
#: first write, or never, so they run without a savepoint of their own.
#: Any other exception in them rolls back the whole batch.
_CHECKS_BEFORE_WRITING = frozenset(
    {
        _store_message_txn,
        _drain_inbox_txn,
        _undelivered_txn,
        _mark_delivered_txn,
        _get_user_txn,
        _get_session_txn,
        _touch_session_txn,
        _create_session_txn,
    }
)
