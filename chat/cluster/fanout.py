"""
Fan-out across the nodes: messages committed on this node are published
here at commit, as on a single server (L{LocalFanout}); those committed by
other nodes are heard of through their C{chat_messages} notifications, read
from the store by id, and published to this node's listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.interfaces import IClusterStore, IFanout
from chat.logs import make_logger
from chat.model import Message
from chat.push import Listener, LocalFanout


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
