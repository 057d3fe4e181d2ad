"""
Group commit: operations queued while a transaction is in flight form the
next transaction, run on the store's one thread.

Every operation's Deferred fires only after its batch's COMMIT returned.
Under load, many operations share one commit (and its fsync), so durability
does not cost throughput. A subclass runs a batch (L{GroupCommit._run_batch_txn},
in the store's thread) and closes its connection (L{GroupCommit._close_txn}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from chat.errors import StorageUnavailable

Op = Callable[..., Any]
_Job = tuple[Op, tuple[Any, ...], "Deferred[Any]"]
#: Each operation's (succeeded, value or exception), and the seconds the
#: transaction took.
BatchOutcome = tuple[list[tuple[bool, Any]], float]


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
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=thread_name)
        self._pending: list[_Job] = []
        self._in_flight: Deferred[None] | None = None
        self._closed = False
        self._idle_waiters: list[Deferred[None]] = []

    def _run_batch_txn(self, batch: list[tuple[Op, tuple[Any, ...]]]) -> BatchOutcome:
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

    # Group commit.

    def _run(self, op: Op, *args: Any) -> Deferred[Any]:
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
        batch_done: Deferred[BatchOutcome] = deferToThreadPool(
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
            results: list[tuple[bool, Any]] = outcome[0]
            for observer in self.commit_observers:
                observer(len(batch), outcome[1])
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
