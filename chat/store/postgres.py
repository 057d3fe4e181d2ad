"""
The PostgreSQL store: any number of chat nodes on one database.

The operations are SQLite's (L{chat.store.operations}), and so is the group
commit (L{chat.store.batching}): one connection on the store's thread, each
batch of operations one transaction, every operation acknowledged only after
C{COMMIT} returned with C{synchronous_commit} on. In the same transaction,
a batch that stored messages sends one C{NOTIFY chat_messages} carrying
their ids and recipients (L{notification_payloads}), so other nodes hear of
them exactly when they are committed (L{chat.cluster} listens).

Several nodes write the same rows, so the operations lock what they could
race for (a mailbox being drained: C{SELECT ... FOR UPDATE}), and a batch
that PostgreSQL aborts for a deadlock or a serialization failure is run
again (it was rolled back whole). The mailbox counts that the SQLite store
keeps in memory would be wrong here: PostgreSQL counts each time, on the
partial index of undelivered messages.

If PostgreSQL is stopped or unreachable, the batch fails with
L{StorageUnavailable} (nothing is acknowledged), the connection is dropped,
and the store waits before connecting again (0.1 s, doubling up to 5 s);
operations asked for meanwhile fail at once. The store recovers by itself
when the database returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from twisted.internet.interfaces import IReactorFromThreads
from zope.interface import implementer

from chat.errors import MailboxFull, NoSuchUser, StorageUnavailable
from chat.interfaces import IClusterStore
from chat.limits import DEFAULT_MAX_MAILBOX
from chat.model import Message
from chat.store import schema
from chat.store.batching import BatchOutcome, Op
from chat.store.operations import (
    _ID,
    _MESSAGE_COLUMNS,
    SQLStore,
    _delete_session_txn,
    _delete_user_txn,
    _drain_inbox_txn,
    _messages,
    _set_password_hash_txn,
    _store_message_txn,
    _within,
    new_messages,
    run_operations,
)

#: The channel of committed messages.
MESSAGES_CHANNEL = "chat_messages"
#: The channel of sessions ended (logout), and of users whose sessions all
#: ended (password changed, user deleted).
SESSIONS_CHANNEL = "chat_sessions"
#: PostgreSQL refuses payloads of 8000 bytes or more.
MAX_PAYLOAD = 7000
#: Seconds to wait before connecting again after a failure: first, most.
FIRST_RETRY, MAX_RETRY = 0.1, 5.0
#: A batch aborted for a deadlock or serialization failure is run again at
#: most this many times.
RETRIES = 5
#: libpq connection parameters, unless the URL sets them: give up
#: connecting after 5 s, and notice a dead peer within about 10 s instead of
#: hanging on it.
CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def is_postgres_url(description: str) -> bool:
    return description.startswith(("postgresql://", "postgres://"))


def safe_url(url: str) -> str:
    """
    C{url} with any password in it (before the host, or a C{password=}
    parameter) masked, for messages and logs.
    """
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    if "password=" in query:
        query = "&".join(
            "password=***" if item.startswith("password=") else item
            for item in query.split("&")
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def connection_arguments(url: str, application_name: str = "chat") -> dict[str, Any]:
    """
    The arguments of C{psycopg.connect} for an autocommit connection to
    C{url}: L{CONNECT_OPTIONS} where the URL does not set them, and an
    application name that shows in C{pg_stat_activity}.
    """
    given = conninfo_to_dict(url)
    defaults = {"application_name": application_name[:63], **CONNECT_OPTIONS}
    return {
        "conninfo": url,
        "autocommit": True,
        **{key: value for key, value in defaults.items() if key not in given},
    }


def connect(url: str, application_name: str = "chat") -> psycopg.Connection[Any]:
    """
    An autocommit connection to C{url} (a libpq URI; the password from
    C{PGPASSWORD}, C{~/.pgpass} or C{passfile=}).

    @raise StorageUnavailable: if PostgreSQL cannot be reached.
    """
    try:
        return psycopg.connect(**connection_arguments(url, application_name))
    except psycopg.Error as e:
        raise StorageUnavailable(
            f"cannot connect to PostgreSQL at {safe_url(url)}: {_first_line(e)}"
        ) from None


def schema_version(url: str) -> int | None:
    """
    The chat schema version of the database at C{url}, or None if it has
    no chat schema (nothing is created).

    @raise StorageUnavailable: if PostgreSQL cannot be reached.
    """
    with connect(url, "chat-admin") as connection:
        try:
            exists = connection.execute(
                "SELECT to_regclass('schema_version') IS NOT NULL"
            ).fetchone()
            if not (exists and exists[0]):
                return None
            row = connection.execute("SELECT version FROM schema_version").fetchone()
        except psycopg.Error as e:
            raise StorageUnavailable(_first_line(e)) from None
    return int(row[0]) if row else None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)


def notification_payloads(node_id: str, messages: Sequence[Message]) -> list[str]:
    """
    The C{chat_messages} payloads announcing C{messages}: JSON objects
    C{{"node": ..., "at": <commit time>, "messages": [[id, recipient],
    ...]}}, each under PostgreSQL's size limit.
    """
    head = {"node": node_id, "at": time.time()}
    overhead = len(compact_json({**head, "messages": []}))
    entries = ([message.id, message.recipient] for message in messages)
    return [
        compact_json({**head, "messages": chunk})
        for chunk in notify_chunks(entries, overhead)
    ]


def notify_chunks(items: Iterable[Any], overhead: int) -> Iterator[list[Any]]:
    """
    C{items} in lists whose JSON, with C{overhead} bytes more, fits in
    L{MAX_PAYLOAD} bytes (at least one item per list).
    """
    chunk: list[Any] = []
    size = overhead
    for item in items:
        item_size = len(compact_json(item).encode()) + 1
        if chunk and size + item_size > MAX_PAYLOAD:
            yield chunk
            chunk, size = [], overhead
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


def compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


#: Operations that end sessions, and what their first argument is.
_ENDS_SESSIONS: dict[Op, str] = {
    _delete_session_txn: "session",
    _set_password_hash_txn: "user",
    _delete_user_txn: "user",
}


class _Connection:
    """
    A psycopg connection speaking the operations' SQL: C{?} parameters
    become C{%s}, and SQLite's index hint goes (PostgreSQL's planner has
    statistics). Rows the operations could race for are locked.
    """

    locks_rows = True
    _translated: dict[str, str] = {}

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        query = self._translated.get(sql)
        if query is None:
            query = sql.replace(" INDEXED BY messages_undelivered", "")
            query = query.replace("%", "%%").replace("?", "%s")
            self._translated[sql] = query
        return self.connection.execute(query, parameters)


def _run_operations(
    connection: _Connection, batch: list[tuple[Op, tuple[Any, ...]]]
) -> list[tuple[bool, Any]]:
    """
    Run the operations of C{batch}, as L{run_operations} does, but all its
    private messages in a few statements, then all its inbox drains in a
    few more: with the database a round trip away, statements per
    operation are what cost.

    The order changes (messages, drains, then the rest in order), which is
    sound because the operations of one batch are concurrent: each was
    asked for by a different command in flight (a connection runs one
    command at a time), none has finished, so any order is one that could
    have happened.
    """
    results: list[tuple[bool, Any] | None] = [None] * len(batch)
    for op, bulk in (
        (_store_message_txn, _store_messages_bulk),
        (_drain_inbox_txn, _drain_inboxes_bulk),
    ):
        positions = [i for i, (o, _) in enumerate(batch) if o is op]
        if len(positions) > 1:
            outcomes = bulk(connection, [batch[i][1] for i in positions])
            for i, outcome in zip(positions, outcomes, strict=True):
                results[i] = outcome
    for i, (op, args) in enumerate(batch):
        if results[i] is None:
            (results[i],) = run_operations(connection, [(op, args)], psycopg.Error)
    return [outcome for outcome in results if outcome is not None]


def _drain_inboxes_bulk(
    connection: _Connection, drains: list[tuple[Any, ...]]
) -> list[tuple[bool, Any]]:
    """
    Several L{_drain_inbox_txn}s at once, each taking what it would alone,
    in order: one query locking the mailboxes' undelivered messages, one
    update, and one query for their files.
    """
    usernames = sorted({args[0] for args in drains})
    waiting: dict[str, list[tuple[Any, ...]]] = {name: [] for name in usernames}
    for row in connection.connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE recipient = ANY(%s)"
        " AND delivered_at IS NULL ORDER BY id FOR UPDATE",
        (usernames,),
    ):
        waiting[row[2]].append(row)
    taken: list[list[tuple[Any, ...]]] = []
    marks: list[tuple[int, float]] = []
    for username, delivered_at, max_bytes, *_ in drains:
        rows, _ = _within(waiting[username], max_bytes)
        waiting[username] = waiting[username][len(rows) :]
        taken.append(rows)
        marks.extend((row[_ID], delivered_at) for row in rows)
    if marks:
        ids, times = zip(*marks, strict=True)
        connection.connection.execute(
            "UPDATE messages SET delivered_at = u.t FROM unnest(%s::bigint[],"
            " %s::float8[]) AS u (id, t) WHERE messages.id = u.id",
            (list(ids), list(times)),
        )
    messages = iter(_messages(connection, [row for rows in taken for row in rows]))
    return [(True, [next(messages) for _ in rows]) for rows in taken]


def _store_messages_bulk(
    connection: _Connection, sends: list[tuple[Any, ...]]
) -> list[tuple[bool, Any]]:
    """
    Several L{_store_message_txn}s at once, each succeeding or failing as it
    would alone, in order: one query for the users' names, one for the
    mailboxes' counts, one insert.
    """
    arguments = [args[:5] for args in sends]
    usernames = sorted({name for a in arguments for name in a[:2]})
    names = dict(
        connection.connection.execute(
            "SELECT username, full_name FROM users WHERE username = ANY(%s)",
            (usernames,),
        ).fetchall()
    )
    recipients = sorted({a[1] for a in arguments if a[1] in names})
    # One index scan per mailbox, stopping at the limit: a plain index scan
    # (not the bitmap scan a GROUP BY gets) marks the index entries of
    # delivered rows dead as it passes them, so the next count skips them
    # instead of visiting the table for each until autovacuum comes.
    counts: dict[str, int] = dict(
        connection.connection.execute(
            "SELECT r, (SELECT count(*) FROM (SELECT 1 FROM messages"
            " WHERE recipient = r AND delivered_at IS NULL LIMIT %s) AS m)"
            " FROM unnest(%s::text[]) AS r",
            (max(a[4] for a in arguments), recipients),
        ).fetchall()
    )
    outcomes: list[tuple[bool, Any]] = []
    rows: list[tuple[int, tuple[Any, ...]]] = []
    for sender, recipient, text, sent_at, max_mailbox in arguments:
        missing = next((u for u in (sender, recipient) if u not in names), None)
        if missing is not None:
            outcomes.append((False, NoSuchUser(missing)))
            continue
        if counts.get(recipient, 0) >= max_mailbox:
            outcomes.append((False, MailboxFull(recipient)))
            continue
        counts[recipient] = counts.get(recipient, 0) + 1
        row = (sender, recipient, names[sender], names[recipient], text, sent_at)
        rows.append((len(outcomes), row))
        outcomes.append((True, None))
    if rows:
        columns = list(zip(*(row for _, row in rows), strict=True))
        ids = sorted(
            new_id
            for (new_id,) in connection.connection.execute(
                "INSERT INTO messages (sender, recipient, sender_name,"
                " recipient_name, body, sent_at)"
                " SELECT s, r, sn, rn, b, t FROM unnest(%s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::text[], %s::float8[])"
                " WITH ORDINALITY AS u (s, r, sn, rn, b, t, n) ORDER BY n"
                " RETURNING id",
                [list(column) for column in columns],
            ).fetchall()
        )
        # Identity values are drawn in the order the rows are inserted.
        for new_id, (position, row) in zip(ids, rows, strict=True):
            outcomes[position] = (True, Message(new_id, *row))
    return outcomes


@implementer(IClusterStore)
class PostgresStore(SQLStore):
    """
    L{IChatStore} and L{IRealmStore} on a PostgreSQL database shared by the
    nodes of one realm.

    @ivar node_id: this node's name in the cluster (in notifications).
    @ivar url: the libpq URI of the database.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        url: str,
        max_mailbox: int = DEFAULT_MAX_MAILBOX,
        node_id: str = "",
    ) -> None:
        """
        Connect to the database at C{url}, creating or upgrading its schema.

        @raise chat.errors.SchemaTooNew: if a newer chat wrote it.
        @raise StorageUnavailable: if PostgreSQL cannot be reached, or the
            database holds something else.
        """
        with connect(url) as connection:
            try:
                schema.prepare_postgres(connection)
            except psycopg.Error as e:
                raise StorageUnavailable(
                    f"cannot prepare the database at {safe_url(url)}: {_first_line(e)}"
                ) from None
        super().__init__(reactor, "chat-postgres")
        self.url = url
        self.node_id = node_id
        self.max_mailbox = max_mailbox
        self._connection: psycopg.Connection[Any] | None = None
        self._retry_at = 0.0
        self._retry_delay = FIRST_RETRY

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        now = time.monotonic()
        if now < self._retry_at:
            raise StorageUnavailable("PostgreSQL is unavailable; retrying soon")
        try:
            connection = connect(self.url, f"chat {self.node_id}")
            connection.execute("SET synchronous_commit = on")
        except (StorageUnavailable, psycopg.Error) as e:
            self._retry_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, MAX_RETRY)
            self.log.error("Storage error: {error}", error=_first_line(e))
            raise StorageUnavailable(_first_line(e)) from None
        self._retry_delay = FIRST_RETRY
        self._connection = connection
        return connection

    def _close_txn(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _run_batch_txn(self, batch: list[tuple[Op, tuple[Any, ...]]]) -> BatchOutcome:
        started = time.perf_counter()
        for attempt in range(RETRIES + 1):
            connection = self._connect()
            try:
                connection.execute("BEGIN")
                results = _run_operations(_Connection(connection), batch)
                self._notify(connection, batch, results)
                connection.execute("COMMIT")
            except (errors.DeadlockDetected, errors.SerializationFailure) as e:
                self._rollback()
                if attempt == RETRIES:
                    raise StorageUnavailable(_first_line(e)) from None
                continue
            except psycopg.Error as e:
                self._abandon()
                self.log.error(
                    "Storage error, batch rolled back: {error}", error=_first_line(e)
                )
                raise StorageUnavailable(_first_line(e)) from None
            except BaseException:
                self._rollback()
                raise
            self.commits += 1
            return results, time.perf_counter() - started
        raise AssertionError("unreachable")

    def _notify(
        self,
        connection: psycopg.Connection[Any],
        batch: list[tuple[Op, tuple[Any, ...]]],
        results: list[tuple[bool, Any]],
    ) -> None:
        """
        Tell the other nodes, in the batch's transaction, what it changed
        that they keep in memory: new messages, ended sessions.
        """
        notices = [
            (MESSAGES_CHANNEL, payload)
            for payload in notification_payloads(
                self.node_id, new_messages(batch, results)
            )
        ]
        for (op, args), (succeeded, _) in zip(batch, results, strict=True):
            if succeeded and op in _ENDS_SESSIONS:
                key = _ENDS_SESSIONS[op]
                notices.append(
                    (
                        SESSIONS_CHANNEL,
                        compact_json({"node": self.node_id, key: args[0]}),
                    )
                )
        for channel, payload in notices:
            connection.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def _rollback(self) -> None:
        try:
            if self._connection is not None:
                self._connection.execute("ROLLBACK")
        except psycopg.Error:
            self._abandon()

    def _abandon(self) -> None:
        """
        Drop the connection after a failure: the next batch reconnects.
        """
        if self._connection is not None:
            try:
                self._connection.close()
            except psycopg.Error:
                pass
            self._connection = None
