"""
Group commit: operations queued while a transaction is in flight form the
next transaction, run on the store's one thread.

An operation is a small object (L{Operation}) with a synchronous C{run}
that is given the transaction (L{Transaction}); a kind of operation that
can do better in bulk also has C{run_many}. A caller hands an operation to
L{GroupCommit.submit} with a plain callback, C{done(succeeded, value)},
called in the reactor thread only after the batch's COMMIT returned: no
Deferred per operation. L{GroupCommit.run} wraps the same in a Deferred,
for callers that want one.

Under load, many operations share one commit (and its fsync), so
durability does not cost throughput.

How one batch runs (L{run_batch}), in the store's thread:

 - The operations are grouped by kind, in the order each kind first
   appears, and each group runs as a whole (C{run_many} if the kind has
   one). This reorders the batch, which is sound: the operations of one
   batch are concurrent (each was asked for by a different command in
   flight, since a connection runs one command at a time, and none has been
   answered), so any order is one that could have happened.
 - If anything other than a storage failure or a domain error escapes (a
   bug, or a value the database refuses, such as an integer out of range),
   the transaction is rolled back and begun again, and the operations run
   again one by one, each in a savepoint of its own: only the culprit
   fails, never its batch. (The fast way needs no savepoint per group.)
 - A domain error (L{chat.errors.ChatError}) fails its operation only:
   kinds that raise them only before their first write (C{checks_first})
   need no savepoint of their own; the others get one.
 - A storage failure (the database is unavailable, the disk is full: the
   store's C{is_storage_error}) rolls the whole batch back, and every
   operation in it fails with L{StorageUnavailable}: nothing is
   acknowledged that was not stored.

A subclass runs a batch (L{GroupCommit._run_batch_txn}, in the store's
thread) and closes its connection (L{GroupCommit._close_txn}).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from chat.callbacks import Done, firing
from chat.errors import ChatError, StorageUnavailable
from chat.limits import Quotas

T = TypeVar("T")

#: C{(succeeded, value or exception)}: how one operation ended.
Outcome = tuple[bool, Any]
#: Each operation's outcome, and the seconds the transaction took.
BatchOutcome = tuple[list[Outcome], float]


class Transaction:
    """
    What an operation is given: the open transaction's connection, and what
    the store's thread keeps between transactions.

    @ivar execute: runs one statement (C{?} parameters) and returns its
        cursor.
    @ivar executemany: runs one statement for each row of parameters.
    @ivar dialect: C{"sqlite"} or C{"postgresql"}, for the few statements
        that differ.
    @ivar locks_rows: whether rows that several writers could race for must
        be locked (C{SELECT ... FOR UPDATE}): several nodes share the
        database. SQLite has one writer at a time.
    @ivar caches: what the store's thread remembers between transactions
        (L{chat.store.caches.StoreCaches}), or None where other processes
        write the same rows too often to remember anything (PostgreSQL).
    @ivar connection: the database connection itself, for the statements
        only one dialect has (with its own parameter style).
    @ivar max_mailbox: the most undelivered messages per recipient.
    @ivar max_per_sender: the most undelivered messages per recipient from
        one sender.
    @ivar quotas: what each user may keep stored (L{chat.store.quotas}).
    @ivar begin: the statement that begins a transaction.
    @ivar external_changes: how many times the store has seen, as a
        transaction began, that another process had committed meanwhile
        (SQLite; L{chat.store.interfaces.IExternalChanges}).
    """

    def __init__(
        self,
        connection: Any,
        dialect: str,
        caches: Any = None,
        execute: Callable[..., Any] | None = None,
        executemany: Callable[..., Any] | None = None,
        max_mailbox: int = 10_000,
        max_per_sender: int = 10_000,
        begin: str = "BEGIN",
        quotas: Quotas | None = None,
    ) -> None:
        self.connection = connection
        self.begin = begin
        self.dialect = dialect
        self.locks_rows = dialect == "postgresql"
        self.caches = caches
        self.execute = execute or connection.execute
        self.executemany = executemany or connection.executemany
        self.max_mailbox = max_mailbox
        self.max_per_sender = max_per_sender
        self.quotas = Quotas() if quotas is None else quotas
        self.external_changes = 0

    def restart(self) -> None:
        """
        Roll the transaction back and begin it again.
        """
        self.execute("ROLLBACK")
        self.execute(self.begin)

    def for_update(self, of: str = "") -> str:
        """
        C{" FOR UPDATE"} (of the tables C{of} names, e.g. C{" OF b"}) where
        several writers may race for the rows read.
        """
        return f" FOR UPDATE{of}" if self.locks_rows else ""


class Operation:
    """
    One thing the store does, as part of a batch transaction.

    Subclasses are small attrs classes: their fields are the arguments.

    @cvar checks_first: it raises its domain errors (L{ChatError}) only
        before its first write, or never, so it needs no savepoint of its
        own.
    @cvar stores_messages: its result is the new message(s) it stored (a
        stored message, a list of them, or a L{chat.links.Delivery}), which
        other nodes are told about.
    @cvar ends_sessions: C{"session"} if it ends the session named by its
        C{token_hash}, C{"user"} if it ends every session of its
        C{username}; other nodes are told.
    @cvar bulk: whether the kind has a C{run_many} worth calling.
    """

    checks_first: ClassVar[bool] = False
    stores_messages: ClassVar[bool] = False
    ends_sessions: ClassVar[str | None] = None
    bulk: ClassVar[bool] = False

    __slots__ = ()

    def run(self, txn: Transaction) -> Any:
        raise NotImplementedError

    @classmethod
    def run_many(
        cls, txn: Transaction, operations: Sequence[Operation]
    ) -> list[Outcome]:
        """
        Run several operations of this kind at once; each succeeds or fails
        as it would alone. Only called where C{bulk} is set.
        """
        raise NotImplementedError


class Call(Operation):
    """
    An operation made of a function of the transaction: for tools and
    tests that need one statement of their own.
    """

    __slots__ = ("function",)

    def __init__(self, function: Callable[[Transaction], Any]) -> None:
        self.function = function

    def run(self, txn: Transaction) -> Any:
        return self.function(txn)


def run_batch(
    txn: Transaction,
    batch: Sequence[Operation],
    is_storage_error: Callable[[BaseException], bool],
    forget: Callable[[], None] = lambda: None,
) -> list[Outcome]:
    """
    Run each operation of C{batch} in the open transaction (see the module
    docstring).

    @param is_storage_error: whether an exception means the database
        failed (then the whole batch is rolled back), rather than one
        operation.
    @param forget: called when the transaction, or part of it, was rolled
        back: what the store's thread remembers may describe undone changes.
    @return: each operation's outcome, in the order of C{batch}.
    @raise Exception: the database failed; roll the batch back.
    """
    try:
        return _run_grouped(txn, batch)
    except Exception as e:
        if is_storage_error(e):
            raise
    # One of them raised something unexpected (a bug, or a value the
    # database refused): start again, and run each alone to find which.
    txn.restart()
    forget()
    return [_run_alone(txn, op, is_storage_error, forget) for op in batch]


def _run_grouped(txn: Transaction, batch: Sequence[Operation]) -> list[Outcome]:
    """
    The fast way: the operations grouped by kind, each group at once (in
    bulk where the kind can).
    """
    if len(batch) == 1:
        operation = batch[0]
        if operation.bulk:
            return type(operation).run_many(txn, batch)
        return [_run_in_group(txn, operation)]
    groups: dict[type[Operation], list[int]] = {}
    for position, operation in enumerate(batch):
        kind = type(operation)
        positions = groups.get(kind)
        if positions is None:
            groups[kind] = [position]
        else:
            positions.append(position)
    outcomes: list[Outcome | None] = [None] * len(batch)
    for kind, positions in groups.items():
        operations = [batch[i] for i in positions]
        if kind.bulk:
            results = kind.run_many(txn, operations)
        else:
            results = [_run_in_group(txn, op) for op in operations]
        for position, outcome in zip(positions, results, strict=True):
            outcomes[position] = outcome
    return outcomes  # type: ignore[return-value]


def _run_in_group(txn: Transaction, operation: Operation) -> Outcome:
    """
    Run one operation of a group: a domain error fails it alone; anything
    else escapes, and the group is run again one by one.
    """
    if operation.checks_first:
        try:
            return (True, operation.run(txn))
        except ChatError as e:
            return (False, e)
    execute = txn.execute
    execute("SAVEPOINT op")
    try:
        value = operation.run(txn)
    except ChatError as e:
        execute("ROLLBACK TO op")
        execute("RELEASE op")
        return (False, e)
    execute("RELEASE op")
    return (True, value)


def _run_alone(
    txn: Transaction,
    operation: Operation,
    is_storage_error: Callable[[BaseException], bool],
    forget: Callable[[], None],
) -> Outcome:
    """
    Run one operation in a savepoint of its own: whatever it raises (but a
    storage failure) fails it alone.
    """
    execute = txn.execute
    execute("SAVEPOINT op")
    try:
        value = operation.run(txn)
    except Exception as e:
        if is_storage_error(e):
            raise
        execute("ROLLBACK TO op")
        execute("RELEASE op")
        forget()
        if not isinstance(e, ChatError):
            GroupCommit.log.failure(
                "Operation {operation} failed", Failure(), operation=type(operation)
            )
        return (False, e)
    execute("RELEASE op")
    return (True, value)


class GroupCommit:
    """
    A queue of operations run in batches, one transaction each, on one
    thread.

    @ivar commits: how many transactions have been committed (for tests and
        statistics).
    @ivar commit_observers: called with (operations in the batch, seconds
        the transaction took) after each commit, in the reactor thread (for
        metrics).
    """

    log = Logger()

    def __init__(self, reactor: IReactorFromThreads, thread_name: str) -> None:
        self.commits = 0
        self.commit_observers: list[Callable[[int, float], None]] = []
        self._reactor = reactor
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        #: Batches (and the last job, closing) for the store's thread.
        self._jobs: queue.SimpleQueue[list[Operation] | None] = queue.SimpleQueue()
        self._pending: list[Operation] = []
        self._callbacks: list[Done] = []
        #: The callbacks of the batch in flight, if one is.
        self._in_flight: list[Done] | None = None
        self._closed = False
        self._idle_waiters: list[Deferred[None]] = []
        self._stopped: Deferred[None] = Deferred()

    def _run_batch_txn(self, batch: list[Operation]) -> BatchOutcome:
        """
        Run C{batch} in one transaction, in the store's thread.

        @raise StorageUnavailable: if the database failed (nothing of the
            batch was committed).
        """
        raise NotImplementedError

    def _close_txn(self) -> None:
        """
        Close the connection, in the store's thread.
        """
        raise NotImplementedError

    # Lifecycle.

    def start(self) -> None:
        """
        Start the store's thread. Operations queued before this wait.
        """
        self._thread = threading.Thread(
            target=self._work, name=self._thread_name, daemon=True
        )
        self._thread.start()

    def _work(self) -> None:
        """
        The store's thread: run each batch, hand its outcome to the reactor
        thread; at the end, close the connection.
        """
        call = self._reactor.callFromThread
        while True:
            batch = self._jobs.get()
            if batch is None:
                break
            try:
                outcome: object = self._run_batch_txn(batch)
            except BaseException:
                outcome = Failure()
            call(self._batch_done, outcome)
        try:
            self._close_txn()
        finally:
            call(self._stopped.callback, None)

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

        def stop(_: object) -> Deferred[None]:
            if self._thread is None:
                # Never started: nothing to close in its thread.
                self._close_txn()
                return succeed(None)
            self._jobs.put(None)
            return self._stopped

        return idle.addCallback(stop)

    # Group commit.

    def submit(self, operation: Operation, done: Done) -> None:
        """
        Queue C{operation} for the next transaction; C{done} is called with
        its outcome after that transaction ended.
        """
        if self._closed:
            done(False, StorageUnavailable("the store is closed"))
            return
        self._pending.append(operation)
        self._callbacks.append(done)
        if self._in_flight is None:
            self._flush()

    def run(self, operation: Operation) -> Deferred[Any]:
        """
        Queue C{operation} for the next transaction.

        @return: fires with its result once committed, or fails with its
            error (L{StorageUnavailable} if the batch failed).
        """
        d: Deferred[Any] = Deferred()
        self.submit(operation, firing(d))
        return d

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._in_flight, self._callbacks = self._callbacks, []
        self._jobs.put(batch)

    def _batch_done(self, outcome: object) -> None:
        # Still in flight while the callbacks run: what they submit waits
        # for the next batch.
        callbacks = self._in_flight or []
        if isinstance(outcome, Failure):
            if not outcome.check(StorageUnavailable):
                self.log.failure("Unexpected error in a store batch", outcome)
            error = StorageUnavailable(str(outcome.value))
            for done in callbacks:
                _call(done, False, error)
        else:
            assert isinstance(outcome, tuple)
            results: list[Outcome] = outcome[0]
            for observer in self.commit_observers:
                observer(len(callbacks), outcome[1])
            for done, (succeeded, value) in zip(callbacks, results, strict=True):
                try:
                    done(succeeded, value)
                except Exception:
                    self.log.failure("Error in a store callback")
        self._in_flight = None
        if self._pending:
            self._flush()
        else:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)


def _call(done: Done, succeeded: bool, value: object) -> None:
    try:
        done(succeeded, value)
    except Exception:
        GroupCommit.log.failure("Error in a store callback")


#: Most values bound in one C{IN (...)} list.
CHUNK = 500


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """
    C{items} in slices of at most C{size} (by default L{CHUNK}, for
    C{IN (...)} lists).
    """
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(count: int) -> str:
    """
    C{count} parameter marks, for an C{IN (...)} list.
    """
    return ", ".join("?" * count)


def column(cursor: Iterable[tuple[Any, ...]]) -> list[Any]:
    """
    The first value of each row.
    """
    return [row[0] for row in cursor]
