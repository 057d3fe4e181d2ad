"""
Link leases: which realm links this node delivers. Every node queues the
messages for other realms, but only the node holding a link's lease (an
advisory lock on its cluster connection, L{chat.store.cluster}) delivers
its outbox; another node takes the link over when the holder dies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from chat.errors import StorageUnavailable
from chat.interfaces import IClusterConnection
from chat.logs import make_logger


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
        self,
        connection: IClusterConnection,
        clock: IReactorTime,
        node_id: str,
        interval: float,
    ) -> None:
        self.connection = connection
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
        d = self.connection.wake_link(self.node_id, realm_id)
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
        d = self.connection.take_leases(wanted, released)
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
