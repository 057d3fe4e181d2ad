"""
The two connections a node of a cluster (L{chat.cluster}) keeps to
PostgreSQL besides the store's own, each on a daemon thread of its own so
that the reactor never waits for the database:

    - L{ClusterConnection}: this node's writes to the cluster's tables
      (heartbeats, presence, link leases: L{chat.store.cluster}), in
      autocommit mode. Its session holds the node's link leases.
    - L{NotificationThread}: the LISTEN connection, handing each
      notification to the reactor in order.

Both use TCP keepalives and a user timeout (the arguments they are given,
L{chat.store.postgres.connection_arguments}), so that a database that
vanished without closing them is noticed.

Why a thread for LISTEN, not C{addReader}
    The LISTEN connection is watched by one daemon thread that blocks in
    psycopg's C{notifies()} and hands each notification to the reactor with
    C{callFromThread}, in order. Watching the socket from the reactor would
    need libpq's non-blocking connect (C{PQconnectStart}), which still
    resolves host names synchronously, and careful handling of data libpq
    has already buffered (TLS records hold several messages, so a readable
    socket is not the only sign of a pending notification); psycopg's
    blocking API does all of that correctly, and the thread costs one idle
    thread per node. The thread also reads the presence snapshot on the
    same connection right after C{LISTEN}, so that the snapshot and the
    notifications that follow it arrive in the reactor in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.errors import StorageUnavailable
from chat.interfaces import IClusterConnection, INotificationListener
from chat.logs import make_logger
from chat.store.cluster import (
    CHANNELS,
    SyncResult,
    lease_txn,
    leave_txn,
    notify_outbox_txn,
    presence_snapshot,
    sync_txn,
)

T = TypeVar("T")


def _storage_error(e: Exception) -> StorageUnavailable:
    return StorageUnavailable(f"PostgreSQL: {type(e).__name__}: {e}".strip())


class _Worker:
    """
    One daemon thread running jobs in order; each job's result comes back
    in the reactor thread. Never joined: stopping it never blocks the
    reactor, even while a job hangs on a dead network.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str) -> None:
        self._reactor = reactor
        self._jobs: queue.Queue[tuple[Callable[[], Any], Deferred[Any]] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Callable[[], T]) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self._jobs.put((job, d))
        return d

    def stop(self) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, d = item
            try:
                result = job()
            except BaseException:
                self._reactor.callFromThread(d.errback, Failure())
            else:
                self._reactor.callFromThread(d.callback, result)


@implementer(IClusterConnection)
class ClusterConnection:
    """
    This node's connection for cluster writes (heartbeats, presence, link
    leases), in autocommit mode, on a thread of its own. Made on first
    use, and made again by the first job after it broke.

    @ivar lost_observers: called in the reactor thread when the connection
        broke: the advisory locks it held are gone.
    """

    log = make_logger()

    def __init__(self, reactor: IReactorFromThreads, arguments: dict[str, Any]) -> None:
        """
        @param arguments: those of C{psycopg.connect}.
        """
        self._arguments = arguments
        self._worker = _Worker(reactor, "chat-cluster")
        self._connection: psycopg.Connection[Any] | None = None
        self._generation = 0
        self.lost_observers: list[Callable[[], None]] = []

    def start(self) -> None:
        self._worker.start()

    def close(self) -> Deferred[None]:
        """
        Close the connection (releasing its advisory locks) after the jobs
        already asked for.
        """
        d = self._worker.submit(self._close_job)
        self._worker.stop()
        return d

    def sync_node(
        self,
        node_id: str,
        desired: dict[str, str],
        written: dict[str, str] | None,
        expire_after: float | None,
    ) -> Deferred[SyncResult]:
        return self._run(sync_txn, node_id, desired, written, expire_after)

    def leave_cluster(self, node_id: str) -> Deferred[None]:
        return self._run(leave_txn, node_id)

    def take_leases(
        self, wanted: Sequence[str], released: Sequence[str]
    ) -> Deferred[tuple[int, list[str]]]:
        return self._run_in_session(lease_txn, wanted, released)

    def wake_link(self, node_id: str, realm_id: str) -> Deferred[None]:
        return self._run(notify_outbox_txn, node_id, realm_id)

    def _run(self, job: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        C{job(connection, *args)} on the thread.

        @return: fires with its result; fails with L{StorageUnavailable}
            if PostgreSQL failed.
        """
        return self._run_in_session(job, *args).addCallback(lambda pair: pair[1])

    def _run_in_session(
        self, job: Callable[..., T], *args: Any
    ) -> Deferred[tuple[int, T]]:
        """
        Like L{_run}, with the number of the connection it ran on: a new
        number means the session (and its advisory locks) changed.
        """
        d = self._worker.submit(lambda: self._run_job(job, args))
        return d.addErrback(self._failed)

    def _failed(self, f: Failure) -> Failure:
        broken = f.value
        if isinstance(broken, _Broken):
            for observer in list(self.lost_observers):
                observer()
            return Failure(broken.error)
        return f

    def _run_job(self, job: Callable[..., T], args: tuple[Any, ...]) -> tuple[int, T]:
        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(**self._arguments)
                self._connection.execute("SET statement_timeout = '30s'")
                self._generation += 1
            return self._generation, job(self._connection, *args)
        except psycopg.Error as e:
            connection, error = self._connection, _storage_error(e)
            if connection is None or connection.closed or connection.broken:
                self._close_job()
                raise _Broken(error) from None
            raise error from None

    def _close_job(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception as e:  # pragma: no cover - best effort
                self.log.warn("Closing the cluster connection: {why}", why=e)


class _Broken(Exception):
    """
    The cluster connection broke while running a job (in the thread).
    """

    def __init__(self, error: StorageUnavailable) -> None:
        super().__init__(str(error))
        self.error = error


@implementer(INotificationListener)
class NotificationThread:
    """
    The LISTEN connection, watched by one daemon thread per session.

    A session connects, LISTENs on L{CHANNELS}, reads the presence
    snapshot, then hands each notification to the reactor, until the
    connection fails or L{stop} is called.
    """

    log = make_logger()

    def __init__(
        self,
        reactor: IReactorFromThreads,
        clock: IReactorTime,
        arguments: dict[str, Any],
        poll: float = 0.5,
    ) -> None:
        """
        @param arguments: those of C{psycopg.connect}.
        @param poll: seconds between two looks at whether to stop.
        """
        self._reactor = reactor
        self._clock = clock
        self._arguments = arguments
        self._poll = poll
        self._stopping = threading.Event()
        self._session: Deferred[None] | None = None

    def listen(
        self,
        ready: Callable[[dict[str, dict[str, str]]], None],
        notified: Callable[[str, str], None],
    ) -> Deferred[None]:
        session: Deferred[None] = Deferred()
        self._session = session

        def run() -> None:
            try:
                self._run(ready, notified)
            except BaseException:
                self._reactor.callFromThread(session.errback, Failure())
            else:
                self._reactor.callFromThread(session.callback, None)

        threading.Thread(target=run, name="chat-listen", daemon=True).start()
        return session

    def _run(
        self,
        ready: Callable[[dict[str, dict[str, str]]], None],
        notified: Callable[[str, str], None],
    ) -> None:
        call = self._reactor.callFromThread
        try:
            with psycopg.connect(**self._arguments) as connection:
                for channel in CHANNELS:
                    connection.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(channel))
                    )
                call(ready, presence_snapshot(connection))
                while not self._stopping.is_set():
                    for notify in connection.notifies(timeout=self._poll):
                        call(notified, notify.channel, notify.payload)
        except psycopg.Error as e:
            if self._stopping.is_set():
                return
            raise _storage_error(e) from None

    def stop(self) -> Deferred[None]:
        """
        End the session within C{poll} seconds.

        @return: fires when it ended, or after two seconds anyway.
        """
        self._stopping.set()
        session = self._session
        if session is None or session.called:
            return succeed(None)
        done: Deferred[None] = Deferred()

        def finish(_: object = None) -> None:
            if not done.called:
                done.callback(None)
            if timer.active():
                timer.cancel()

        timer = self._clock.callLater(2.0, finish)
        session.addBoth(finish)
        return done
