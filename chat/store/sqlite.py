"""
The SQLite store: one connection on one dedicated thread, group commit.

Operations (L{chat.store.sql}) are queued; when no transaction is in
flight, the whole queue goes to the store's thread as one batch and runs in
one transaction (L{chat.store.batching.run_batch}: a domain error such as
an unknown recipient, or any other failure of one operation, undoes only
that operation). Every operation's callback runs only after COMMIT
returned. Operations that arrive while a batch is being committed form the
next batch: under load, many sends share one fsync (group commit), so
durability does not cost throughput.

The database runs in WAL mode with C{synchronous=FULL}: a commit that
returned survives a power cut.

The store's thread remembers users' names and mailboxes' counts between
transactions (L{chat.store.caches}); it forgets them whenever another
process committed to the file meanwhile (SQLite's C{data_version}, read as
each batch begins), and when a batch or part of one was rolled back. It
also counts those changes (L{IExternalChanges}): the server ends at once
the sessions that C{chat-admin passwd} or C{userdel} deleted
(L{chat.sessions.ChangeWatcher}).

If SQLite fails (disk full, I/O error), the whole batch is rolled back and
every operation in it fails with L{StorageUnavailable}: nothing is
acknowledged that was not stored. The next batch tries again, so the store
recovers by itself when space returns.

A damaged file is different: once SQLite reports a malformed page (in any
operation, even a read), the batch is rolled back, the damage is logged as
such, and every later batch fails (L{DatabaseDamaged}, a
L{StorageUnavailable}) without touching the file, so nothing more is
written into it, let alone acknowledged. A server also checks the file when
it starts (L{sqlitefile.check_integrity}) and takes the file's lock
(L{sqlitefile.ServerLock}) for as long as it runs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from zope.interface import implementer

from chat.errors import StorageUnavailable, StoreReadOnly
from chat.limits import DEFAULT_MAX_MAILBOX, Quotas
from chat.store import schema, sqlitefile
from chat.store.batching import BatchOutcome, Operation, Transaction, run_batch
from chat.store.caches import StoreCaches
from chat.store.interfaces import IExternalChanges
from chat.store.sessions import ExternalChanges
from chat.store.sql import SQLStore

#: Errors that say one operation's values were refused (a constraint, a
#: value out of range), not that the database failed: they fail that
#: operation only. Every other sqlite3 error fails the batch.
_OPERATION_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
)


def is_storage_error(error: BaseException) -> bool:
    """
    Whether C{error} means the database failed (disk full, I/O error, a
    damaged file), rather than one operation.
    """
    return isinstance(error, sqlite3.Error) and not isinstance(error, _OPERATION_ERRORS)


@implementer(IExternalChanges)
class SQLiteStore(SQLStore):
    """
    L{chat.store.interfaces.IChatStore} on a SQLite file; L{IExternalChanges}
    tells when another process (C{chat-admin}) wrote to the file.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        path: str,
        connection_setup: Callable[[sqlite3.Connection], None] | None = None,
        max_mailbox: int = DEFAULT_MAX_MAILBOX,
        max_per_sender: int | None = None,
        quotas: Quotas | None = None,
        *,
        read_only: bool = False,
        server: bool = False,
        check: bool = False,
    ) -> None:
        """
        Open (creating or upgrading if needed) the database at C{path}.

        @param max_mailbox: the most undelivered messages per recipient.
        @param max_per_sender: the most of them from one sender (by default
            as many as C{max_mailbox}).
        @param quotas: what each user may keep stored (by default
            L{Quotas}'s defaults).
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
        self.max_per_sender = max_mailbox if max_per_sender is None else max_per_sender
        if quotas is not None:
            self.quotas = quotas
        self.caches = StoreCaches()
        self._setup = connection_setup
        self._connection: sqlite3.Connection | None = None
        self._transaction: Transaction | None = None
        #: The store's thread's: the connection's last data_version (-1:
        #: none read yet), and how many changes by other processes it saw.
        self._data_version = -1
        self._external_changes = 0
        #: Why the file is known to be damaged, once SQLite said so.
        self.damage: str | None = None

    def start(self) -> None:
        if self._lock is not None:
            # twistd may have forked (to run in the background) since.
            self._lock.write_pid()
        super().start()

    def external_changes(self) -> Deferred[int]:
        """
        An operation of the next batch, which reads C{data_version} as it
        begins anyway: no statement of its own.
        """
        return self.run(ExternalChanges())

    def _close_txn(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            self._transaction = None
        self._release()

    def _release(self, refused: bool = False) -> None:
        if self._lock is not None:
            self._lock.release(refused)
            self._lock = None

    def _connect(self) -> Transaction:
        if self._transaction is None:
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
            self._transaction = Transaction(
                connection,
                "sqlite",
                self.caches,
                max_mailbox=self.max_mailbox,
                max_per_sender=self.max_per_sender,
                quotas=self.quotas,
                begin="BEGIN" if self.read_only else "BEGIN IMMEDIATE",
            )
            self.caches.forget()
            if self._data_version != -1:
                # A new connection's data_version cannot be compared with
                # the old one's: whatever happened meanwhile is unknown.
                self._data_version = -1
                self._external_changes += 1
        return self._transaction

    def _run_batch_txn(self, batch: list[Operation]) -> BatchOutcome:
        """
        Run a batch in one transaction, in the store's thread.

        @return: the outcome of each operation, and the seconds it took.
        """
        started = time.perf_counter()
        if self.damage is not None:
            raise sqlitefile.damaged(self.path, self.damage)
        try:
            txn = self._connect()
            txn.execute(txn.begin)
            # Another process (chat-admin) committed since our last
            # transaction: what this thread remembers may be out of date,
            # and so may the sessions the server has cached.
            (version,) = txn.execute("PRAGMA data_version").fetchone()
            if version != self._data_version:
                if self._data_version != -1:
                    self._external_changes += 1
                self._data_version = version
                self.caches.forget()
            txn.external_changes = self._external_changes
            results = run_batch(txn, batch, is_storage_error, self.caches.forget)
            txn.execute("COMMIT")
        except BaseException as e:
            self.caches.forget()
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
            self._transaction = None
