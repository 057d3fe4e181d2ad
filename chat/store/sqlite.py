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

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from chat.errors import StorageUnavailable
from chat.interfaces import IExternalChanges
from chat.limits import DEFAULT_MAX_MAILBOX
from chat.store import schema
from chat.store.operations import (
    SQLStore,
    _MailboxCounts,
    _Op,
    run_operations,
)
from chat.store.revocation import data_version_txn


@implementer(IExternalChanges)
class SQLiteStore(SQLStore):
    """
    L{IChatStore} and L{IRealmStore} on a SQLite file; L{IExternalChanges}
    tells when C{chat-admin} wrote to the file.
    """

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
        super().__init__(reactor, "chat-sqlite")
        self.path = path
        self.max_mailbox = max_mailbox
        self._mailboxes = _MailboxCounts()
        self._setup = connection_setup
        self._connection: sqlite3.Connection | None = None

    def data_version(self) -> Deferred[int]:
        """
        Read on the store's thread between two batches, not in one: no
        transaction to commit, nothing in the commit metrics, and no wait
        for the write lock.
        """
        if self._closed:
            return fail(StorageUnavailable("the store is closed"))
        return deferToThreadPool(self._reactor, self._pool, self._data_version_now)

    def _data_version_now(self) -> int:
        try:
            return data_version_txn(self._connect())
        except sqlite3.Error as e:
            raise StorageUnavailable(str(e)) from None

    def _close_txn(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

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
        started = time.perf_counter()
        try:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            results = run_operations(connection, batch, sqlite3.Error)
            connection.execute("COMMIT")
        except BaseException as e:
            if self._mailboxes is not None:
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
