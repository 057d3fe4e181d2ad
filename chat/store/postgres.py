"""
The PostgreSQL store: any number of chat nodes on one database.

The operations are SQLite's (L{chat.store.sql}), and so is the group
commit (L{chat.store.batching}): one connection on the store's thread, each
batch of operations one transaction, every operation acknowledged only after
C{COMMIT} returned with C{synchronous_commit} on. In the same transaction,
a batch that stored messages sends one C{NOTIFY chat_messages} carrying
their ids and recipients (L{chat.store.cluster.notification_payloads}), so
other nodes hear of them exactly when they are committed (L{chat.cluster}
listens, on the connections L{cluster_connection} and
L{notification_listener} make).

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

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from zope.interface import implementer

from chat.errors import StorageUnavailable
from chat.interfaces import IClusterStore
from chat.limits import DEFAULT_MAX_MAILBOX, Quotas
from chat.store import schema
from chat.store.batching import (
    BatchOutcome,
    Operation,
    Outcome,
    Transaction,
    run_batch,
)
from chat.store.cluster import (
    MESSAGES_CHANNEL,
    SESSIONS_CHANNEL,
    compact_json,
    notification_payloads,
    notify,
)
from chat.store.cluster_connections import ClusterConnection, NotificationThread
from chat.store.messages import new_messages
from chat.store.sql import SQLStore

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


#: Errors that say one operation's values were refused (a constraint, a
#: value out of range), not that the database failed: they fail that
#: operation only (after a rollback to its savepoint). Every other psycopg
#: error fails the batch.
_OPERATION_ERRORS = (
    errors.DataError,
    errors.IntegrityError,
    errors.ProgrammingError,
    errors.NotSupportedError,
)


def is_storage_error(error: BaseException) -> bool:
    """
    Whether C{error} means the database failed (unreachable, shut down, a
    deadlock), rather than one operation.
    """
    return isinstance(error, psycopg.Error) and not isinstance(error, _OPERATION_ERRORS)


class _Translating:
    """
    Runs the operations' SQL on a psycopg connection: C{?} parameters become
    C{%s}.
    """

    _translated: dict[str, str] = {}

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def _query(self, sql: str) -> str:
        query = self._translated.get(sql)
        if query is None:
            query = sql.replace("%", "%%").replace("?", "%s")
            self._translated[sql] = query
        return query

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self.connection.execute(self._query(sql), parameters)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        with self.connection.cursor() as cursor:
            cursor.executemany(self._query(sql), rows)
            return cursor


def transaction(
    connection: psycopg.Connection[Any],
    max_mailbox: int = DEFAULT_MAX_MAILBOX,
    max_per_sender: int = DEFAULT_MAX_MAILBOX,
    quotas: Quotas | None = None,
) -> Transaction:
    """
    What the operations are given on a PostgreSQL connection.
    """
    translating = _Translating(connection)
    return Transaction(
        connection,
        "postgresql",
        None,
        execute=translating.execute,
        executemany=translating.executemany,
        max_mailbox=max_mailbox,
        max_per_sender=max_per_sender,
        quotas=quotas,
    )


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
        max_per_sender: int | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        """
        Connect to the database at C{url}, creating or upgrading its schema.
        C{quotas} is what each user may keep stored (by default L{Quotas}'s
        defaults).

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
        self.max_per_sender = max_mailbox if max_per_sender is None else max_per_sender
        if quotas is not None:
            self.quotas = quotas
        self._connection: psycopg.Connection[Any] | None = None
        self._retry_at = 0.0
        self._retry_delay = FIRST_RETRY

    def cluster_connection(self, reactor: IReactorFromThreads) -> ClusterConnection:
        return ClusterConnection(
            reactor, connection_arguments(self.url, f"chat {self.node_id} cluster")
        )

    def notification_listener(
        self, reactor: IReactorFromThreads, clock: IReactorTime
    ) -> NotificationThread:
        arguments = connection_arguments(self.url, f"chat {self.node_id} listen")
        return NotificationThread(reactor, clock, arguments)

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

    def _run_batch_txn(self, batch: list[Operation]) -> BatchOutcome:
        started = time.perf_counter()
        for attempt in range(RETRIES + 1):
            connection = self._connect()
            try:
                connection.execute("BEGIN")
                txn = transaction(
                    connection, self.max_mailbox, self.max_per_sender, self.quotas
                )
                results = run_batch(txn, batch, is_storage_error)
                # The notifications and the commit in one round trip.
                with connection.pipeline():
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
        batch: list[Operation],
        results: list[Outcome],
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
        for operation, (succeeded, _) in zip(batch, results, strict=True):
            ended = operation.ends_sessions
            if succeeded and ended is not None:
                value = getattr(
                    operation, "token_hash" if ended == "session" else "username"
                )
                notices.append(
                    (
                        SESSIONS_CHANNEL,
                        compact_json({"node": self.node_id, ended: value}),
                    )
                )
        for channel, payload in notices:
            notify(connection, channel, payload)

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
