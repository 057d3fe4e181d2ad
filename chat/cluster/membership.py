"""
This node's membership of the cluster: its heartbeat and its users,
written to the database one write at a time (through the store's
L{chat.interfaces.IClusterConnection}), and the removal of nodes whose
heartbeats stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from chat.errors import StorageUnavailable
from chat.interfaces import IClusterConnection
from chat.logs import make_logger

if TYPE_CHECKING:
    from chat.cluster.presence import ClusterPresence
    from chat.store.cluster import SyncResult

#: Default seconds between heartbeats; a node whose heartbeat is older than
#: C{EXPIRE_BEATS} of them is removed by the others.
DEFAULT_HEARTBEAT = 5.0
EXPIRE_BEATS = 3


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
        connection: IClusterConnection,
        clock: IReactorTime,
        node_id: str,
        presence: ClusterPresence,
        heartbeat: float = DEFAULT_HEARTBEAT,
    ) -> None:
        self.connection = connection
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
            return self.connection.leave_cluster(self.node_id)

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
        d = self.connection.sync_node(
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
