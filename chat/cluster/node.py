"""
This node's part of a cluster (L{Cluster}): it builds the fan-out,
presence, membership, link leases and router on the two connections the
store makes for it, starts and stops them, and keeps the LISTEN connection
up, listening again with backoff whenever it is lost.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from chat.cluster.fanout import PostgresFanout
from chat.cluster.leases import LinkLeases
from chat.cluster.membership import DEFAULT_HEARTBEAT, Membership
from chat.cluster.presence import ClusterPresence
from chat.cluster.router import Router
from chat.interfaces import IClusterStore
from chat.logs import make_logger

if TYPE_CHECKING:
    from chat.federation import Federation
    from chat.sessions import SessionManager


def new_node_id() -> str:
    """
    A node id unique enough for the default of C{--node-id}.
    """
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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
    ) -> None:
        """
        @param reactor: the reactor, also the clock.
        @param heartbeat: seconds between this node's heartbeats (and its
            tries to take link leases).
        @param retry_min: seconds before listening again after the LISTEN
            connection was lost, doubling for each failure to...
        @param retry_max: ...at most this many.
        """
        self.store = store
        self.clock: IReactorTime = reactor
        self.node_id: str = store.node_id
        self.heartbeat = heartbeat
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.fanout = PostgresFanout(store, reactor, self.node_id)
        self.presence = ClusterPresence(node_id=self.node_id)
        self.connection = store.cluster_connection(reactor)
        self.membership = Membership(
            self.connection, reactor, self.node_id, self.presence, heartbeat
        )
        self.presence.changed = self.membership.request
        self.leases = LinkLeases(self.connection, reactor, self.node_id, heartbeat)
        self.connection.lost_observers.append(self.leases.connection_lost)
        self.notifications = store.notification_listener(reactor, reactor)
        self.router = Router(self.node_id, self.fanout, self.presence, self.membership)
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
        Tell C{federation} (made with this node's L{LinkLeases}, so that it
        delivers only the links whose lease this node holds) when a lease is
        gained, lost or held, and what other nodes say about its links.
        """
        self.router.federation = federation
        self.leases.gained = federation.lease_gained
        self.leases.lost = federation.lease_lost
        self.leases.held = federation.wake

    def serve_sessions(self, sessions: SessionManager) -> None:
        """
        End in C{sessions} the sessions other nodes end.
        """
        self.router.sessions = sessions

    def start(self) -> None:
        self._running = True
        self.connection.start()
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
        d.addBoth(lambda _: self.connection.close())
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
        self.router.caught_up(snapshot)

    def _notified(self, channel: str, text: str) -> None:
        if self._running:
            self.router.notified(channel, text)

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
