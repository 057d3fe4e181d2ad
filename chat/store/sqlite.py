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

A damaged file is different: once SQLite reports a malformed page (in any
operation, even a read), the batch is rolled back, the damage is logged as
such, and every later batch fails (L{DatabaseDamaged}, a
L{StorageUnavailable}) without touching the file, so nothing more is
written into it, let alone acknowledged. A server also checks the file when it starts
(L{sqlitefile.check_integrity}) and takes the file's lock
(L{sqlitefile.ServerLock}) for as long as it runs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads

from chat.errors import StorageUnavailable, StoreReadOnly
from chat.limits import DEFAULT_MAX_MAILBOX
from chat.store import schema, sqlitefile
from chat.store.operations import (
    SQLStore,
    _MailboxCounts,
    _Op,
    run_operations,
)


class SQLiteStore(SQLStore):
    """
    L{IChatStore} and L{IRealmStore} on a SQLite file.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        path: str,
        connection_setup: Callable[[sqlite3.Connection], None] | None = None,
        max_mailbox: int = DEFAULT_MAX_MAILBOX,
        *,
        read_only: bool = False,
        server: bool = False,
        check: bool = False,
    ) -> None:
        """
        Open (creating or upgrading if needed) the database at C{path}.

        @param max_mailbox: the most undelivered messages per recipient.
        @param read_only: open it for reading only: a missing file is not
            created (otherwise it is, never its folder), and writing fails
            with L{StoreReadOnly}.
        @param server: hold the file's lock until L{close}, refusing the
            file if another server holds it.
        @param check: refuse a damaged file (SQLite's quick_check, which
            reads the whole file).

        @raise chat.errors.SchemaTooNew: if a newer chat wrote it.
        @raise StorageUnavailable: with a one-line reason, if the file
            cannot be used (see L{sqlitefile.check_path}), is damaged
            (L{DatabaseDamaged}), read-only (L{StoreReadOnly}) or held by
            another server (L{chat.errors.StoreInUse}).
        """
        sqlitefile.check_path(path, create=not read_only, write=not read_only)
        self._lock: sqlitefile.ServerLock | None = None
        if server:
            self._lock = sqlitefile.ServerLock(path)
            self._lock.acquire()
        try:
            schema.prepare(path, read_only)
            if check:
                sqlitefile.check_integrity(path)
        except (OSError, sqlite3.Error) as e:
            self._release(refused=True)
            raise StorageUnavailable(f"cannot open {path}: {e}") from None
        except BaseException:
            self._release(refused=True)
            raise
        super().__init__(reactor, "chat-sqlite")
        self.path = path
        self.read_only = read_only
        self.max_mailbox = max_mailbox
        self._mailboxes = _MailboxCounts()
        self._setup = connection_setup
        self._connection: sqlite3.Connection | None = None
        #: Why the file is known to be damaged, once SQLite said so.
        self.damage: str | None = None

    def start(self) -> None:
        if self._lock is not None:
            # twistd may have forked (to run in the background) since.
            self._lock.write_pid()
        super().start()

    def _close_txn(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._release()

    def _release(self, refused: bool = False) -> None:
        if self._lock is not None:
            self._lock.release(refused)
            self._lock = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlitefile.connect(self.path, self.read_only)
            if not self.read_only:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA busy_timeout=5000")
            # Malformed pages are found when they are read, not later.
            connection.execute("PRAGMA cell_size_check=ON")
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
        if self.damage is not None:
            raise sqlitefile.damaged(self.path, self.damage)
        try:
            connection = self._connect()
            connection.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
            results = run_operations(connection, batch, sqlite3.Error)
            found = damage_in(results)
            if found is not None:
                raise found
            connection.execute("COMMIT")
        except BaseException as e:
            if self._mailboxes is not None:
                self._mailboxes.clear()
            self._abandon()
            if not isinstance(e, sqlite3.Error):
                raise
            raise self._storage_error(e) from None
        self.commits += 1
        return results, time.perf_counter() - started

    def _storage_error(self, error: sqlite3.Error) -> StorageUnavailable:
        """
        What a batch that SQLite failed fails with, logged.
        """
        if sqlitefile.is_corruption(error):
            self.damage = str(error)
            self.log.critical(
                "The database {path} is damaged ({error}): the batch was rolled "
                "back, and nothing more will be written to it. Stop the server, "
                "run chat-admin --store sqlite:{path} check, and restore a "
                "backup (the file and its -wal file together).",
                path=self.path,
                error=str(error),
            )
            return sqlitefile.damaged(self.path, error)
        if sqlitefile.is_read_only(error):
            return StoreReadOnly(f"{self.path} is read-only: {error}")
        self.log.error("Storage error, batch rolled back: {error}", error=str(error))
        return StorageUnavailable(str(error))

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


def damage_in(results: list[tuple[bool, Any]]) -> sqlite3.Error | None:
    """
    A corruption error that failed one operation of a batch, if any: it
    fails the whole batch (the file is damaged, so nothing of the batch
    may be committed and acknowledged).
    """
    for succeeded, value in results:
        if not succeeded and sqlitefile.is_corruption(value):
            return value
    return None
