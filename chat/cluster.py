"""
A cluster: several C{twistd chat} nodes on one PostgreSQL database serve
one realm. Each node keeps its own connections; the database carries what
the nodes must know of each other.

Live push across nodes
    The store sends C{pg_notify('chat_messages', ...)} in the transaction
    of each batch that stored messages, with the ids and recipients only
    (L{chat.interfaces.IClusterStore}). Every node LISTENs on one dedicated
    connection; a node that hears of messages committed by another node
    for users subscribed to it reads those rows (C{messages_by_id}) and
    publishes them to its local subscriptions (L{PostgresFanout}). A
    notification is delivered only after the commit, so the rows are
    there to read.

Nothing missed
    When the LISTEN connection is lost, notifications sent meanwhile are
    lost with it. Once it is made again (with backoff), every local
    subscription re-reads its undelivered messages from the store
    (C{resync}): what was committed before the new LISTEN is read, what is
    committed after it is notified.

Presence
    Each node heartbeats its row in C{cluster_nodes} and keeps one row per
    locally connected user in C{cluster_presence}, sending a
    C{chat_presence} notification in the same transaction as each change
    (L{Membership}). Other nodes keep a map of remote users, loaded on the
    LISTEN connection when it is (re)made and kept up to date by those
    notifications; they tell their watchers only when a user's state for
    the whole cluster changes (L{ClusterPresence}). Each heartbeat also
    deletes the nodes whose heartbeat is older than three intervals (their
    presence rows go with them, C{ON DELETE CASCADE}) and notifies the
    others: the users of a node that crashed go offline everywhere within
    about four heartbeats. Only a node whose own heartbeats went through
    for those three intervals removes others, so that after an outage of
    the database the first node back does not remove the rest. A node that
    stops cleanly deletes its own row.

Federation
    Each node's L{chat.federation.Federation} accepts links from other
    realms and queues outgoing messages, but only the node holding a
    link's lease delivers its outbox (L{LinkLeases}): a session-level
    advisory lock C{pg_try_advisory_lock(LEASE_CLASS,
    hashtext(realm_id))}, tried every heartbeat on the node's cluster
    connection. PostgreSQL releases it when that connection ends, so
    another node takes the link over when its holder dies. A node that
    queues a message for a link it does not hold wakes the holder with a
    C{chat_outbox} notification.

Sessions
    Each node caches the sessions it resolved (L{chat.sessions}). The store
    notifies C{chat_sessions} when a session ends (logout) or all of a
    user's do (new password, user deleted); the other nodes drop them from
    their caches at once. One missed while the LISTEN connection was down
    still ends within the session cache's touch interval.

Why a thread for LISTEN, not C{addReader}
    The LISTEN connection is watched by one daemon thread
    (L{NotificationThread}) that blocks in psycopg's C{notifies()} and
    hands each notification to the reactor with C{callFromThread}, in
    order. Watching the socket from the reactor would need libpq's
    non-blocking connect (C{PQconnectStart}), which still resolves host
    names synchronously, and careful handling of data libpq has already
    buffered (TLS records hold several messages, so a readable socket is
    not the only sign of a pending notification); psycopg's blocking API
    does all of that correctly, and the thread costs one idle thread per
    node. The thread also reads the presence snapshot on the same
    connection right after C{LISTEN}, so that the snapshot and the
    notifications that follow it arrive in the reactor in order.

The nodes' other writes (heartbeats, presence, leases) go through one more
connection of their own on one more thread (L{ClusterConnection}), never
the reactor's. Both connections use TCP keepalives and a user timeout, so
that a database that vanished without closing them is noticed.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.errors import StorageUnavailable
from chat.interfaces import IClusterStore, IFanout
from chat.logs import make_logger
from chat.model import Message
from chat.push import Listener, LocalFanout, Presence
from chat.store.postgres import (
    MAX_PAYLOAD,
    MESSAGES_CHANNEL,
    SESSIONS_CHANNEL,
    compact_json,
    connection_arguments,
    notify_chunks,
)

if TYPE_CHECKING:
    import psycopg

    from chat.federation import Federation
    from chat.sessions import SessionManager

T = TypeVar("T")

#: The notification channels. The store sends MESSAGES (messages
#: committed) and SESSIONS (sessions ended, users whose sessions all ended).
MESSAGES = MESSAGES_CHANNEL
PRESENCE = "chat_presence"
OUTBOX = "chat_outbox"
SESSIONS = SESSIONS_CHANNEL
CHANNELS = (MESSAGES, PRESENCE, OUTBOX, SESSIONS)

#: Longest payload sent in one notification (PostgreSQL's limit is 8000
#: bytes); longer ones are split (L{notify_chunks}).
NOTIFY_LIMIT = MAX_PAYLOAD

#: The first key of the advisory locks that are link leases ("link").
LEASE_CLASS = 0x6C696E6B

#: Default seconds between heartbeats; a node whose heartbeat is older than
#: C{EXPIRE_BEATS} of them is removed by the others.
DEFAULT_HEARTBEAT = 5.0
EXPIRE_BEATS = 3

#: The database's clock, in seconds: heartbeats are compared with it, so
#: that the nodes' clocks need not agree.
_NOW = "extract(epoch FROM clock_timestamp())"


def new_node_id() -> str:
    """
    A node id unique enough for the default of C{--node-id}.
    """
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _storage_error(e: Exception) -> StorageUnavailable:
    return StorageUnavailable(f"PostgreSQL: {type(e).__name__}: {e}".strip())


def presence_payloads(
    node_id: str, came: dict[str, str], went: Iterable[str], reset: bool
) -> list[str]:
    """
    The C{chat_presence} payloads for a change of this node's users:
    C{{"node", "reset", "online": [[user, full name], ...], "offline":
    [user, ...]}}, split to fit. C{reset} (in the first only) means "forget
    every user you had for this node first".
    """
    overhead = len(
        compact_json({"node": node_id, "reset": False, "online": [], "offline": []})
    )
    payloads: list[str] = []
    for chunk in notify_chunks(sorted([u, n] for u, n in came.items()), overhead):
        payloads.append(
            compact_json(
                {"node": node_id, "reset": reset, "online": chunk, "offline": []}
            )
        )
        reset = False
    for chunk in notify_chunks(sorted(went), overhead):
        payloads.append(
            compact_json(
                {"node": node_id, "reset": reset, "online": [], "offline": chunk}
            )
        )
        reset = False
    if reset:
        payloads.append(
            compact_json({"node": node_id, "reset": True, "online": [], "offline": []})
        )
    return payloads


def expired_payloads(node_id: str, expired: Iterable[str]) -> list[str]:
    """
    The C{chat_presence} payloads saying that nodes are gone:
    C{{"node", "expired": [node id, ...]}}.
    """
    overhead = len(compact_json({"node": node_id, "expired": []}))
    return [
        compact_json({"node": node_id, "expired": chunk})
        for chunk in notify_chunks(sorted(expired), overhead)
    ]


# The connections and their threads.


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


class Runner(Protocol):
    """
    What L{Membership} and L{LinkLeases} need of L{ClusterConnection}.
    """

    def run_in_session(
        self, job: Callable[..., T], *args: Any
    ) -> Deferred[tuple[int, T]]: ...

    def run(self, job: Callable[..., T], *args: Any) -> Deferred[T]: ...


class ClusterConnection:
    """
    This node's connection for cluster writes (heartbeats, presence, link
    leases), in autocommit mode, on a thread of its own. Made on first
    use, and made again by the first job after it broke.

    @ivar lost_observers: called in the reactor thread when the connection
        broke: the advisory locks it held are gone.
    """

    log = make_logger()

    def __init__(
        self,
        reactor: IReactorFromThreads,
        url: str,
        application_name: str,
        connect: Callable[..., psycopg.Connection[Any]] | None = None,
    ) -> None:
        self._arguments = connection_arguments(url, application_name)
        self._connect = connect
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

    def run(self, job: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        C{job(connection, *args)} on the thread.

        @return: fires with its result; fails with L{StorageUnavailable}
            if PostgreSQL failed.
        """
        return self.run_in_session(job, *args).addCallback(lambda pair: pair[1])

    def run_in_session(
        self, job: Callable[..., T], *args: Any
    ) -> Deferred[tuple[int, T]]:
        """
        Like L{run}, with the number of the connection it ran on: a new
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
        import psycopg

        try:
            if self._connection is None or self._connection.closed:
                connect = self._connect or psycopg.connect
                self._connection = connect(**self._arguments)
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


class Notifications(Protocol):
    """
    What L{Cluster} needs of L{NotificationThread}.
    """

    def listen(
        self,
        ready: Callable[[dict[str, dict[str, str]]], None],
        notified: Callable[[str, str], None],
    ) -> Deferred[None]: ...

    def stop(self) -> Deferred[None]: ...


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
        url: str,
        application_name: str,
        poll: float = 0.5,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._arguments = connection_arguments(url, application_name)
        self._poll = poll
        self._stopping = threading.Event()
        self._session: Deferred[None] | None = None

    def listen(
        self,
        ready: Callable[[dict[str, dict[str, str]]], None],
        notified: Callable[[str, str], None],
    ) -> Deferred[None]:
        """
        Start a session.

        @param ready: called with the presence snapshot (node -> user ->
            full name) once LISTEN is in effect.
        @param notified: called with (channel, payload) of each
            notification, in order, after C{ready}.
        @return: fires when the session ends: with None after L{stop},
            with L{StorageUnavailable} if the connection failed.
        """
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
        import psycopg
        from psycopg import sql

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


def presence_snapshot(connection: psycopg.Connection[Any]) -> dict[str, dict[str, str]]:
    """
    Every node's users: node id -> username -> full name.
    """
    snapshot: dict[str, dict[str, str]] = {}
    for node, username, full_name in connection.execute(
        "SELECT node_id, username, full_name FROM cluster_presence"
    ):
        snapshot.setdefault(node, {})[username] = full_name
    return snapshot


# Fan-out.


@implementer(IFanout)
class PostgresFanout:
    """
    Fan-out within this node (a L{LocalFanout}) and from the other nodes,
    through their C{chat_messages} notifications.

    @ivar lag_observers: called with the seconds between the commit of
        each message heard of from another node (its C{sent_at} if the
        notification gave no commit time) and its publication here.
    """

    log = make_logger()

    def __init__(self, store: IClusterStore, clock: IReactorTime, node_id: str) -> None:
        self.store = store
        self.clock = clock
        self.node_id = node_id
        self.local = LocalFanout()
        self.lag_observers: list[Callable[[float], None]] = []
        self._resyncs: dict[str, dict[Listener, Callable[[], None]]] = {}
        self._wanted: dict[int, float | None] = {}
        self._reading = False

    def listen(
        self,
        username: str,
        listener: Listener,
        resync: Callable[[], None] | None = None,
    ) -> None:
        self.local.listen(username, listener)
        if resync is not None:
            self._resyncs.setdefault(username, {})[listener] = resync

    def unlisten(self, username: str, listener: Listener) -> None:
        self.local.unlisten(username, listener)
        resyncs = self._resyncs.get(username)
        if resyncs is not None:
            resyncs.pop(listener, None)
            if not resyncs:
                del self._resyncs[username]

    def publish(self, message: Message) -> None:
        self.local.publish(message)

    def listening(self, username: str) -> bool:
        return self.local.listening(username)

    def resync(self, usernames: Iterable[str] | None = None) -> None:
        """
        Tell the listeners of C{usernames} (of everyone by default) to read
        what they may have missed.
        """
        names = list(self._resyncs) if usernames is None else list(usernames)
        for username in names:
            for resync in list(self._resyncs.get(username, {}).values()):
                resync()

    def committed(self, payload: dict[str, Any]) -> None:
        """
        A C{chat_messages} notification: read the messages of local
        listeners that another node committed, and publish them.
        """
        if payload.get("node") == self.node_id:
            return  # published at commit, by this node's realm
        at = payload.get("at")
        at = float(at) if isinstance(at, (int, float)) else None
        for entry in payload.get("messages", ()):
            try:
                message_id, recipient = int(entry[0]), str(entry[1])
            except (TypeError, ValueError, IndexError):
                continue
            if self.local.listening(recipient):
                self._wanted[message_id] = at
        self._read()

    def _read(self) -> None:
        """
        Read what is wanted, one read at a time: notifications that arrive
        meanwhile are read together next.
        """
        if self._reading or not self._wanted:
            return
        wanted, self._wanted = self._wanted, {}
        self._reading = True
        d = self.store.messages_by_id(sorted(wanted))
        d.addCallbacks(
            self._read_done,
            self._read_failed,
            callbackArgs=(wanted,),
            errbackArgs=(wanted,),
        )
        d.addErrback(lambda f: self.log.failure("Publishing messages failed", f))

    def _read_done(
        self, messages: list[Message], wanted: dict[int, float | None]
    ) -> None:
        self._reading = False
        now = self.clock.seconds()
        for message in messages:
            if message.senders_copy:
                continue
            committed_at = wanted.get(message.id)
            lag = now - (message.sent_at if committed_at is None else committed_at)
            for observer in list(self.lag_observers):
                try:
                    observer(lag)
                except Exception:
                    self.log.failure("A lag observer failed")
            self.local.publish(message)
        self._read()

    def _read_failed(self, f: Failure, wanted: dict[int, float | None]) -> None:
        self._reading = False
        self.log.warn(
            "Could not read {count} messages committed by another node: {why};"
            " their subscribers read them from the store",
            count=len(wanted),
            why=f.value,
        )
        # Subscriptions retry their own reads until the store answers.
        self.resync(set(self._resyncs))
        self._read()


# Presence.


@attrs.define
class ClusterPresence(Presence):
    """
    Who is online on any node: this node's connections (as L{Presence}),
    and the other nodes' users as their notifications tell.

    Watchers hear of a user when their state for the whole cluster
    changes: a user who connects to a second node is already online.

    @ivar node_id: this node's id (its own notifications are ignored).
    @ivar changed: called when this node's set of users changed (to write
        it to the database).
    """

    node_id: str = ""
    changed: Callable[[], None] = attrs.field(default=lambda: None)
    _remote: dict[str, dict[str, str]] = attrs.field(factory=dict)

    def _came_online(self, username: str, full_name: str) -> None:
        if self._remote_name(username) is None:
            self._announce(username, full_name, True)
        self.changed()

    def _went_offline(self, username: str, full_name: str) -> None:
        remote = self._remote_name(username)
        if remote is None:
            self._announce(username, full_name, False)
        self.changed()

    def _remote_name(self, username: str) -> str | None:
        for users in self._remote.values():
            name = users.get(username)
            if name is not None:
                return name
        return None

    def _name(self, username: str) -> str | None:
        local = self._online.get(username)
        return local.full_name if local is not None else self._remote_name(username)

    def online(self) -> list[tuple[str, str]]:
        everyone: dict[str, str] = {}
        for users in self._remote.values():
            everyone.update(users)
        everyone.update(self.local())
        return sorted(everyone.items())

    def remote_users(self) -> dict[str, dict[str, str]]:
        """
        The other nodes' users, as known here.
        """
        return {node: dict(users) for node, users in self._remote.items()}

    def _changing(self, usernames: Iterable[str], change: Callable[[], None]) -> None:
        """
        Apply C{change} to the remote map and announce the users among
        C{usernames} whose state for the cluster it changed.
        """
        before = {username: self._name(username) for username in usernames}
        change()
        for username, was in before.items():
            now = self._name(username)
            if (was is None) != (now is None):
                self._announce(username, now or was or "", now is not None)

    def load(self, snapshot: dict[str, dict[str, str]]) -> None:
        """
        Replace the remote map with a snapshot of C{cluster_presence}.
        """
        snapshot = {
            node: dict(users)
            for node, users in snapshot.items()
            if node != self.node_id and users
        }
        affected = {u for users in self._remote.values() for u in users}
        affected.update(u for users in snapshot.values() for u in users)

        def replace() -> None:
            self._remote = snapshot

        self._changing(sorted(affected), replace)

    def node_changed(
        self, node: str, came: dict[str, str], went: Iterable[str], reset: bool
    ) -> None:
        """
        Node C{node} says these users came and went (and, with C{reset},
        that it has no others).
        """
        if node == self.node_id:
            return
        went = list(went)
        previous = self._remote.get(node, {})
        affected = set(came) | set(went) | (set(previous) if reset else set())

        def change() -> None:
            users = {} if reset else dict(self._remote.get(node, {}))
            for username in went:
                users.pop(username, None)
            users.update(came)
            if users:
                self._remote[node] = users
            else:
                self._remote.pop(node, None)

        self._changing(sorted(affected), change)

    def nodes_gone(self, nodes: Iterable[str]) -> None:
        """
        These nodes stopped, or were found dead: their users are gone.
        """
        nodes = [node for node in nodes if node in self._remote]
        affected = {u for node in nodes for u in self._remote[node]}

        def drop() -> None:
            for node in nodes:
                self._remote.pop(node, None)

        self._changing(sorted(affected), drop)


@attrs.frozen
class SyncResult:
    """
    What one write of this node's state found: whether the node's row had
    to be made again, and the dead nodes it removed.
    """

    rejoined: bool
    expired: list[str]


def sync_txn(
    connection: psycopg.Connection[Any],
    node_id: str,
    desired: dict[str, str],
    written: dict[str, str] | None,
    expire_after: float | None,
) -> SyncResult:
    """
    In one transaction: heartbeat this node's row (making it if missing),
    make its presence rows those of C{desired} (knowing that they are
    C{written}, or rewriting them all if None) and notify the change, then
    remove the nodes whose heartbeat is older than C{expire_after} seconds
    (if given) and notify that.
    """
    with connection.transaction():
        updated = connection.execute(
            f"UPDATE cluster_nodes SET heartbeat_at = {_NOW} WHERE node_id = %s",
            (node_id,),
        )
        rejoined = updated.rowcount == 0
        if rejoined:
            # New, or removed by the others as dead (with its presence).
            connection.execute(
                "INSERT INTO cluster_nodes (node_id, started_at, heartbeat_at)"
                f" VALUES (%s, {_NOW}, {_NOW}) ON CONFLICT (node_id)"
                " DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
                (node_id,),
            )
            written = None
        if written is None:
            connection.execute(
                "DELETE FROM cluster_presence WHERE node_id = %s", (node_id,)
            )
            came, went = dict(desired), []
        else:
            came = {u: n for u, n in desired.items() if written.get(u) != n}
            went = sorted(u for u in written if u not in desired)
        with connection.cursor() as cursor:
            if came:
                cursor.executemany(
                    "INSERT INTO cluster_presence (node_id, username, full_name)"
                    " VALUES (%s, %s, %s) ON CONFLICT (node_id, username)"
                    " DO UPDATE SET full_name = EXCLUDED.full_name",
                    [(node_id, u, n) for u, n in sorted(came.items())],
                )
            if went:
                cursor.execute(
                    "DELETE FROM cluster_presence"
                    " WHERE node_id = %s AND username = ANY(%s)",
                    (node_id, went),
                )
        for payload in presence_payloads(node_id, came, went, written is None):
            connection.execute("SELECT pg_notify(%s, %s)", (PRESENCE, payload))
        expired: list[str] = []
        if expire_after is not None:
            expired = [
                row[0]
                for row in connection.execute(
                    "DELETE FROM cluster_nodes WHERE node_id <> %s"
                    f" AND heartbeat_at < {_NOW} - %s RETURNING node_id",
                    (node_id, expire_after),
                )
            ]
            for payload in expired_payloads(node_id, expired):
                connection.execute("SELECT pg_notify(%s, %s)", (PRESENCE, payload))
    return SyncResult(rejoined, sorted(expired))


def leave_txn(connection: psycopg.Connection[Any], node_id: str) -> None:
    """
    Remove this node (and its users) and tell the others.
    """
    with connection.transaction():
        connection.execute("DELETE FROM cluster_nodes WHERE node_id = %s", (node_id,))
        for payload in expired_payloads(node_id, [node_id]):
            connection.execute("SELECT pg_notify(%s, %s)", (PRESENCE, payload))


class Membership:
    """
    Writes this node's heartbeat and its users to the database, one write
    at a time, and removes dead nodes every heartbeat.

    A failed write is logged and made again at the next heartbeat, as a
    full rewrite of the node's users (the database may or may not have
    the last one).
    """

    log = make_logger()

    def __init__(
        self,
        runner: Runner,
        clock: IReactorTime,
        node_id: str,
        presence: ClusterPresence,
        heartbeat: float = DEFAULT_HEARTBEAT,
    ) -> None:
        self.runner = runner
        self.clock = clock
        self.node_id = node_id
        self.presence = presence
        self.heartbeat = heartbeat
        self.expire_after = EXPIRE_BEATS * heartbeat
        self._written: dict[str, str] | None = None
        self._busy: Deferred[None] | None = None
        self._again = False
        self._reap = False
        self._running = False
        self._failing = False
        #: Since when this node's writes succeed (None while they fail).
        self._healthy_since: float | None = None
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._running = True
        self._loop = LoopingCall(self.beat)
        self._loop.clock = self.clock
        self._loop.start(self.heartbeat, now=True).addErrback(
            lambda f: self.log.failure("The heartbeat stopped", f)
        )

    def stop(self) -> Deferred[None]:
        """
        Stop beating, and remove this node and its users.
        """
        self._running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        busy = self._busy if self._busy is not None else succeed(None)
        done: Deferred[None] = Deferred()
        busy.addBoth(lambda _: done.callback(None))

        def leave(_: object) -> Deferred[None]:
            return self.runner.run(leave_txn, self.node_id)

        def failed(f: Failure) -> None:
            self.log.warn(
                "Could not remove node {node} from the cluster: {why}; the"
                " others remove it within {seconds}s",
                node=self.node_id,
                why=f.value,
                seconds=self.expire_after + self.heartbeat,
            )

        return done.addCallback(leave).addErrback(failed)

    def beat(self) -> None:
        """
        Heartbeat (and remove dead nodes) now.
        """
        self._reap = True
        self.request()

    def rejoin(self) -> None:
        """
        Another node removed this one: write everything again.
        """
        self._written = None
        self.request()

    def request(self) -> None:
        """
        Write this node's users soon.
        """
        if not self._running:
            return
        if self._busy is not None:
            self._again = True
            return
        self._again = False
        reap, self._reap = self._reap, False
        # Only a node whose own heartbeats have gone through for a whole
        # expiry period judges the others: after an outage of the database
        # every heartbeat is old, and the first node back must not remove
        # all the others.
        healthy = self._healthy_since
        reap = (
            reap
            and healthy is not None
            and self.clock.seconds() - healthy >= self.expire_after
        )
        desired = self.presence.local()
        done: Deferred[None] = Deferred()
        self._busy = done
        d = self.runner.run(
            sync_txn,
            self.node_id,
            desired,
            self._written,
            self.expire_after if reap else None,
        )
        d.addCallbacks(self._synced, self._failed, callbackArgs=(desired,))
        d.addErrback(lambda f: self.log.failure("Writing presence failed", f))
        d.addBoth(self._idle, done)

    def _synced(self, result: SyncResult, desired: dict[str, str]) -> None:
        self._written = desired
        if self._healthy_since is None:
            self._healthy_since = self.clock.seconds()
        if self._failing:
            self._failing = False
            self.log.info("Node {node} writes to the cluster again", node=self.node_id)
        if result.rejoined:
            self.log.info("Node {node} joined the cluster", node=self.node_id)
        if result.expired:
            self.log.warn(
                "Nodes {nodes} missed their heartbeats: removed, with their users",
                nodes=", ".join(result.expired),
            )
            self.presence.nodes_gone(result.expired)

    def _failed(self, f: Failure) -> None:
        f.trap(StorageUnavailable)
        self._written = None
        self._healthy_since = None
        if not self._failing:
            self._failing = True
            self.log.warn(
                "Node {node} could not write its heartbeat and users: {why};"
                " retrying every {interval}s",
                node=self.node_id,
                why=f.value,
                interval=self.heartbeat,
            )

    def _idle(self, _: object, done: Deferred[None]) -> None:
        self._busy = None
        done.callback(None)
        if self._again and self._running and not self._failing:
            self.request()


# Federation leases.


def lease_txn(
    connection: psycopg.Connection[Any], wanted: Sequence[str], released: Sequence[str]
) -> list[str]:
    """
    Release the leases of C{released}, try to take those of C{wanted}.

    @return: the realms whose lease this session now holds, of C{wanted}.
    """
    for realm_id in released:
        connection.execute(
            "SELECT pg_advisory_unlock(%s, hashtext(%s))", (LEASE_CLASS, realm_id)
        )
    taken: list[str] = []
    for realm_id in wanted:
        row = connection.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LEASE_CLASS, realm_id)
        ).fetchone()
        if row is not None and row[0]:
            taken.append(realm_id)
    if not wanted and not released:
        connection.execute("SELECT 1")  # is the session (and its locks) alive?
    return taken


def notify_outbox_txn(
    connection: psycopg.Connection[Any], node_id: str, realm_id: str
) -> None:
    payload = json.dumps({"node": node_id, "realm": realm_id})
    connection.execute("SELECT pg_notify(%s, %s)", (OUTBOX, payload))


class LinkLeases:
    """
    Which realm links this node delivers: those whose advisory lock its
    cluster connection holds. Tried every C{interval} seconds; all are
    lost at once when the connection breaks.

    @ivar gained: called with a realm id whose lease this node took.
    @ivar lost: called with a realm id whose lease this node lost.
    @ivar held: called every C{interval} with each lease still held
        (to deliver what other nodes queued, should a wake-up be missed).
    """

    log = make_logger()

    def __init__(
        self, runner: Runner, clock: IReactorTime, node_id: str, interval: float
    ) -> None:
        self.runner = runner
        self.clock = clock
        self.node_id = node_id
        self.interval = interval
        self.gained: Callable[[str], None] = lambda realm_id: None
        self.lost: Callable[[str], None] = lambda realm_id: None
        self.held: Callable[[str], None] = lambda realm_id: None
        self._wanted: set[str] = set()
        self._held: set[str] = set()
        self._session: int | None = None
        self._busy = False
        self._again = False
        self._running = False
        self._loop: LoopingCall | None = None

    def holds(self, realm_id: str) -> bool:
        return realm_id in self._held

    def start(self) -> None:
        self._running = True
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("The link leases stopped", f)
        )

    def stop(self) -> None:
        """
        Stop taking leases; they are released with the cluster connection.
        """
        self._running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._lose_all()

    def want(self, realm_ids: Iterable[str]) -> None:
        """
        The links this node would run if it held their lease.
        """
        wanted = set(realm_ids)
        if wanted != self._wanted:
            self._wanted = wanted
            self.tick()

    def queued(self, realm_id: str) -> None:
        """
        A message was queued here for a link another node holds: wake it.
        """
        d = self.runner.run(notify_outbox_txn, self.node_id, realm_id)
        d.addErrback(
            lambda f: self.log.warn(
                "Could not wake the node delivering to realm {realm}: {why};"
                " it delivers within {interval}s",
                realm=realm_id,
                why=f.value,
                interval=self.interval,
            )
        )

    def connection_lost(self) -> None:
        """
        The cluster connection broke: its locks are gone.
        """
        self._lose_all()

    def tick(self) -> None:
        if not self._running:
            return
        if self._busy:
            self._again = True
            return
        self._busy, self._again = True, False
        wanted = sorted(self._wanted - self._held)
        released = sorted(self._held - self._wanted)
        d = self.runner.run_in_session(lease_txn, wanted, released)
        d.addCallbacks(self._ticked, self._failed, callbackArgs=(released,))
        d.addErrback(lambda f: self.log.failure("Taking link leases failed", f))
        d.addBoth(self._idle)

    def _ticked(self, result: tuple[int, list[str]], released: list[str]) -> None:
        session, taken = result
        if session != self._session:
            self._lose_all()
            self._session = session
        for realm_id in released:
            if realm_id in self._held:
                self._held.discard(realm_id)
                self.lost(realm_id)
        for realm_id in taken:
            if not self._running or realm_id not in self._wanted:
                continue  # released next time
            if realm_id not in self._held:
                self._held.add(realm_id)
                self.log.info(
                    "Node {node} delivers to realm {realm}",
                    node=self.node_id,
                    realm=realm_id,
                )
                self.gained(realm_id)
        for realm_id in sorted(self._held):
            self.held(realm_id)

    def _failed(self, f: Failure) -> None:
        f.trap(StorageUnavailable)
        self._lose_all()

    def _lose_all(self) -> None:
        held, self._held = self._held, set()
        self._session = None
        for realm_id in sorted(held):
            self.log.info(
                "Node {node} no longer delivers to realm {realm}",
                node=self.node_id,
                realm=realm_id,
            )
            self.lost(realm_id)

    def _idle(self, _: object) -> None:
        self._busy = False
        if self._again:
            self.tick()


# The whole.


class Cluster:
    """
    This node's part of a cluster: the fan-out and presence its realm uses,
    the link leases its federation uses, and the connections behind them.

    @ivar listening: whether the LISTEN connection is up.
    """

    log = make_logger()

    def __init__(
        self,
        store: IClusterStore,
        reactor: Any,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        retry_min: float = 0.5,
        retry_max: float = 5.0,
        notifications: Notifications | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.store = store
        self.clock: IReactorTime = reactor
        self.node_id: str = store.node_id
        self.heartbeat = heartbeat
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.fanout = PostgresFanout(store, reactor, self.node_id)
        self.presence = ClusterPresence(node_id=self.node_id)
        self._connection: ClusterConnection | None = None
        if runner is None:
            self._connection = ClusterConnection(
                reactor, store.url, f"chat {self.node_id} cluster"
            )
            runner = self._connection
        self.membership = Membership(
            runner, reactor, self.node_id, self.presence, heartbeat
        )
        self.presence.changed = self.membership.request
        self.leases = LinkLeases(runner, reactor, self.node_id, heartbeat)
        if self._connection is not None:
            self._connection.lost_observers.append(self.leases.connection_lost)
        self.notifications: Notifications = notifications or NotificationThread(
            reactor, reactor, store.url, f"chat {self.node_id} listen"
        )
        self.federation: Federation | None = None
        self.sessions: SessionManager | None = None
        self.listening = False
        self._running = False
        self._attempts = 0
        self._retry: IDelayedCall | None = None
        self._session: Deferred[None] | None = None

    @property
    def lag_observers(self) -> list[Callable[[float], None]]:
        return self.fanout.lag_observers

    def serve_federation(self, federation: Federation) -> None:
        """
        Let C{federation} deliver only the links whose lease this node
        holds.
        """
        self.federation = federation
        federation.leases = self.leases
        self.leases.gained = federation.lease_gained
        self.leases.lost = federation.lease_lost
        self.leases.held = federation.wake

    def serve_sessions(self, sessions: SessionManager) -> None:
        """
        End in C{sessions} the sessions other nodes end.
        """
        self.sessions = sessions

    def start(self) -> None:
        self._running = True
        if self._connection is not None:
            self._connection.start()
        self.membership.start()
        self.leases.start()
        self._listen()

    def stop(self) -> Deferred[None]:
        """
        Stop listening, give up the leases, remove this node and its users.
        """
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.leases.stop()
        d = self.notifications.stop()
        d.addBoth(lambda _: self.membership.stop())
        connection = self._connection
        if connection is not None:
            d.addBoth(lambda _: connection.close())
        d.addErrback(lambda f: self.log.failure("Stopping the cluster", f))
        return d.addCallback(lambda _: None)

    # The LISTEN connection.

    def _listen(self) -> None:
        self._retry = None
        session = self.notifications.listen(self._ready, self._notified)
        self._session = session
        session.addBoth(self._ended, session)

    def _ready(self, snapshot: dict[str, dict[str, str]]) -> None:
        if not self._running:
            return
        self.listening = True
        if self._attempts:
            self.log.info("Listening to the other nodes again: catching up")
        self._attempts = 0
        self.presence.load(snapshot)
        self.fanout.resync()
        federation = self.federation
        if federation is not None:
            for realm_id in list(federation.links):
                federation.wake(realm_id)

    def _notified(self, channel: str, text: str) -> None:
        if not self._running:
            return
        try:
            payload = json.loads(text)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
            if channel == MESSAGES:
                self.fanout.committed(payload)
            elif channel == PRESENCE:
                self._presence(payload)
            elif channel == OUTBOX:
                self._outbox(payload)
            elif channel == SESSIONS:
                self._sessions(payload)
        except (ValueError, TypeError, AttributeError) as e:
            self.log.warn(
                "Ignored a malformed {channel} notification: {why}",
                channel=channel,
                why=e,
            )

    def _presence(self, payload: dict[str, Any]) -> None:
        node = payload.get("node")
        if node == self.node_id or not isinstance(node, str):
            return
        expired = payload.get("expired")
        if isinstance(expired, list):
            if self.node_id in expired:
                self.log.warn(
                    "Node {other} found this node ({node}) dead: joining again",
                    other=node,
                    node=self.node_id,
                )
                self.membership.rejoin()
            self.presence.nodes_gone(str(n) for n in expired if n != self.node_id)
            return
        came = {str(u): str(n) for u, n in payload.get("online", ())}
        went = [str(u) for u in payload.get("offline", ())]
        self.presence.node_changed(node, came, went, bool(payload.get("reset")))

    def _outbox(self, payload: dict[str, Any]) -> None:
        federation = self.federation
        realm_id = payload.get("realm")
        if (
            federation is not None
            and payload.get("node") != self.node_id
            and isinstance(realm_id, str)
        ):
            federation.wake(realm_id)

    def _sessions(self, payload: dict[str, Any]) -> None:
        sessions = self.sessions
        if sessions is None or payload.get("node") == self.node_id:
            return
        token_hash, username = payload.get("session"), payload.get("user")
        if isinstance(token_hash, str):
            sessions.ended_elsewhere(token_hash, "logged out on another node")
        if isinstance(username, str):
            sessions.user_changed_elsewhere(
                username, "password changed or user deleted"
            )

    def _ended(self, result: object, session: Deferred[None]) -> None:
        self.listening = False
        if self._session is session:
            self._session = None
        if not self._running:
            return
        self._attempts += 1
        delay = min(self.retry_max, self.retry_min * 2 ** min(self._attempts - 1, 30))
        why = result.value if isinstance(result, Failure) else "closed"
        if self._attempts == 1:
            self.log.warn(
                "Lost the connection listening to the other nodes ({why});"
                " listening again in {delay}s",
                why=why,
                delay=delay,
            )
        else:
            self.log.info(
                "Could not listen to the other nodes ({why}); again in {delay}s",
                why=why,
                delay=delay,
            )
        self._retry = self.clock.callLater(delay, self._listen)
