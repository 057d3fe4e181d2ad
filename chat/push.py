"""
Live delivery: fan-out of committed messages, subscriptions with an ack
window, and presence.

A connection that sends C{subscribe <token>} gets a L{Subscription}. It
pushes the user's undelivered messages, oldest first, then new ones as they
are committed (L{IChatClient.message_received}). Pushed messages stay
undelivered until the client acknowledges them (C{ack <token> <id>}), so a
client that crashes mid-stream gets them again on its next subscribe or
inbox (at least once; clients de-duplicate by id).

Memory stays bounded however slow the client: a subscription has at most
C{window} pushed-but-unacknowledged messages. When the window is full, new
messages stay in the store and are read from there as acknowledgements make
room, so a subscriber that stops reading costs its window and nothing more.

With several nodes on one database (L{chat.cluster}), messages are not
always heard of in id order: two nodes' transactions commit in either
order, and a node that lost its connection to the others hears nothing for
a while. A subscription that hears of a message older than one it pushed,
or is told to resync by its fan-out, reads the oldest undelivered messages
again and pushes those not in flight (L{Subscription.resync}): the store,
not the notifications, decides what is still to be delivered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.interfaces import IChatClient, IFanout
from chat.logs import make_logger
from chat.model import Message
from chat.store.interfaces import IMailboxStore

Listener = Callable[[Message], None]


@implementer(IFanout)
@attrs.define
class LocalFanout:
    """
    Fan-out within one process.
    """

    _listeners: dict[str, list[Listener]] = attrs.field(factory=dict)

    def listen(
        self,
        username: str,
        listener: Listener,
        resync: Callable[[], None] | None = None,
    ) -> None:
        # Nothing is ever missed within one process: resync is not needed.
        self._listeners.setdefault(username, []).append(listener)

    def listening(self, username: str) -> bool:
        """
        Whether anyone listens for C{username}'s messages here.
        """
        return username in self._listeners

    def unlisten(self, username: str, listener: Listener) -> None:
        listeners = self._listeners.get(username, [])
        if listener in listeners:
            listeners.remove(listener)
        if not listeners:
            self._listeners.pop(username, None)

    def publish(self, message: Message) -> None:
        for listener in list(self._listeners.get(message.recipient, ())):
            listener(message)


class Reader(Enum):
    """
    Whether a L{Subscription} is reading the store.
    """

    #: Not started, or stopped: nothing is read or pushed, and a read that
    #: answers now is ignored.
    STOPPED = "stopped"
    #: Started, and no read is in flight.
    IDLE = "idle"
    #: A read is in flight.
    READING = "reading"
    #: A read is in flight, and something it may not have seen happened
    #: since it was sent (a commit, an acknowledgement, a resync): read
    #: again when it answers.
    READING_AGAIN = "reading again"


class Backlog(Enum):
    """
    What the store may hold for a L{Subscription} that it has not pushed.
    """

    #: Messages newer than the last pushed may be waiting: the next read
    #: starts after the last pushed.
    NEWER = "newer"
    #: Nothing: the last read found no more, and nothing heard of since
    #: says otherwise. Committed messages are pushed as the fan-out tells
    #: of them while the window has room, and acknowledgements read
    #: nothing.
    CAUGHT_UP = "caught up"
    #: Undelivered messages older than the last pushed may be neither
    #: pushed nor in flight (L{Subscription.resync}), and newer ones may be
    #: waiting: the next read starts from the oldest undelivered message.
    OLDER = "older"
    #: Caught up with newer messages (as in C{CAUGHT_UP}), but a read from
    #: the oldest is still owed: a resync was heard while a read from the
    #: last pushed was in flight that then found no more, or a read from
    #: the oldest failed. The next read starts from the oldest.
    RESYNC_OWED = "resync owed"

    @property
    def caught_up(self) -> bool:
        """
        Whether nothing newer than the last pushed waits in the store.
        """
        return self is Backlog.CAUGHT_UP or self is Backlog.RESYNC_OWED

    @property
    def from_oldest(self) -> bool:
        """
        Whether the next read starts from the oldest undelivered message.
        """
        return self is Backlog.OLDER or self is Backlog.RESYNC_OWED


@attrs.define(eq=False)
class Subscription:
    """
    Pushes one user's messages to one connection, at most C{window}
    unacknowledged at a time.

    Two small state machines say where it is. Its L{Reader}::

        STOPPED --start--> IDLE
        IDLE --pump, with room in the window--> READING
        READING --pump (a commit, an ack while behind, a resync)-->
            READING_AGAIN
        READING, READING_AGAIN --the store answers or fails--> IDLE
        any --stop--> STOPPED

    When the store answers it pumps again after READING_AGAIN, or if the
    backlog is not caught up and the window has room; when the store fails,
    once C{retry_delay} has passed.

    Its L{Backlog}::

        any --resync, or a commit older than the last pushed--> OLDER
        CAUGHT_UP --a commit it cannot push at once--> NEWER
        RESYNC_OWED --a commit it cannot push at once--> OLDER
        OLDER --a read from the oldest starts--> NEWER
        RESYNC_OWED --a read from the oldest starts--> CAUGHT_UP
        any --a read from the oldest answers--> OLDER (it found more than
            the window has room for, or a full answer filled the window),
            else NEWER (a full answer), else CAUGHT_UP
        NEWER, CAUGHT_UP --a read from the last pushed answers--> NEWER
            (a full answer), else CAUGHT_UP
        OLDER --a read from the last pushed answers--> OLDER (a full
            answer), else RESYNC_OWED
        NEWER --a read from the oldest fails--> OLDER
        CAUGHT_UP --a read from the oldest fails--> RESYNC_OWED
    """

    store: IMailboxStore
    fanout: IFanout
    clock: IReactorTime
    client: IChatClient
    username: str
    token_hash: str
    window: int
    retry_delay: float = 1.0
    _last_pushed: int = 0
    _in_flight: deque[int] = attrs.field(factory=deque)
    reader: Reader = attrs.field(default=Reader.STOPPED, init=False)
    backlog: Backlog = attrs.field(default=Backlog.NEWER, init=False)

    log = make_logger()

    @property
    def active(self) -> bool:
        """
        Whether it has started and not stopped.
        """
        return self.reader is not Reader.STOPPED

    def start(self) -> None:
        self.reader = Reader.IDLE
        self.fanout.listen(self.username, self._committed, self.resync)
        self.pump()

    def stop(self) -> None:
        if self.reader is not Reader.STOPPED:
            self.reader = Reader.STOPPED
            self.fanout.unlisten(self.username, self._committed)

    def _room(self) -> int:
        return self.window - len(self._in_flight)

    def resync(self) -> None:
        """
        Read the oldest undelivered messages again and push those not in
        flight: some may have been committed without this subscription
        hearing of them.
        """
        self.backlog = Backlog.OLDER
        self.pump()

    def _committed(self, message: Message) -> None:
        if self.reader is Reader.STOPPED or message.id in self._in_flight:
            return
        if message.id <= self._last_pushed:
            # Committed after a message with a higher id (by another
            # node), or heard of late: pushed if still undelivered.
            self.resync()
            return
        if self.backlog.caught_up:
            if self.reader is Reader.IDLE and self._room() > 0:
                self._push(message)
                return
            if self.backlog is Backlog.CAUGHT_UP:
                self.backlog = Backlog.NEWER
            else:
                self.backlog = Backlog.OLDER
        self.pump()

    def pump(self) -> None:
        """
        Fill the window from the store.
        """
        if self.reader is Reader.STOPPED:
            return
        if self.reader is not Reader.IDLE:
            self.reader = Reader.READING_AGAIN
            return
        room = self._room()
        if room <= 0:
            return
        self.reader = Reader.READING
        from_oldest = self.backlog.from_oldest
        if from_oldest:
            # The in-flight messages are among the oldest undelivered:
            # read them again, and as many more as there is room for.
            if self.backlog is Backlog.OLDER:
                self.backlog = Backlog.NEWER
            else:
                self.backlog = Backlog.CAUGHT_UP
            asked = self.window
            d = self.store.undelivered(self.username, 0, asked)
        else:
            asked = room
            d = self.store.undelivered(self.username, self._last_pushed, asked)
        d.addCallbacks(
            self._fetched,
            self._fetch_failed,
            callbackArgs=(asked, from_oldest),
            errbackArgs=(from_oldest,),
        )

    def _fetched(self, messages: list[Message], asked: int, from_oldest: bool) -> None:
        if self.reader is Reader.STOPPED:
            return
        again = self.reader is Reader.READING_AGAIN
        self.reader = Reader.IDLE
        full = len(messages) >= asked
        if from_oldest:
            in_flight = set(self._in_flight)
            fresh = [m for m in messages if m.id not in in_flight]
            room = self._room()
            for message in fresh[:room]:
                self._push(message)
            if len(fresh) > room or (full and self._room() <= 0):
                self.backlog = Backlog.OLDER
            elif full:
                self.backlog = Backlog.NEWER
            else:
                self.backlog = Backlog.CAUGHT_UP
        else:
            for message in messages:
                if message.id > self._last_pushed:
                    self._push(message)
            # A resync heard during the read is still owed.
            if self.backlog.from_oldest:
                self.backlog = Backlog.OLDER if full else Backlog.RESYNC_OWED
            else:
                self.backlog = Backlog.NEWER if full else Backlog.CAUGHT_UP
        if again or (not self.backlog.caught_up and self._room() > 0):
            self.pump()

    def _fetch_failed(self, f: Failure, from_oldest: bool) -> None:
        if self.reader is not Reader.STOPPED:
            self.reader = Reader.IDLE
        if from_oldest and not self.backlog.from_oldest:
            if self.backlog is Backlog.CAUGHT_UP:
                self.backlog = Backlog.RESYNC_OWED
            else:
                self.backlog = Backlog.OLDER
        self.log.warn(
            "Could not read messages for {user}: {why}; retrying",
            user=self.username,
            why=f.value,
        )
        self.clock.callLater(self.retry_delay, self.pump)

    def _push(self, message: Message) -> None:
        self._last_pushed = max(self._last_pushed, message.id)
        self._in_flight.append(message.id)
        self.client.message_received(message)

    def pushed_up_to(self, up_to_id: int) -> list[int]:
        """
        The ids pushed and not yet acknowledged, up to C{up_to_id}.
        """
        return [i for i in self._in_flight if i <= up_to_id]

    def acknowledged(self, up_to_id: int) -> None:
        """
        Messages up to C{up_to_id} were delivered: make room, and refill
        from the store if messages are waiting there. A subscription that
        is caught up reads nothing: new messages reach it from the fan-out
        (reading on every ack made a subscriber that acks each push wait
        behind a store read per message).
        """
        if self._in_flight and min(self._in_flight) <= up_to_id:
            # Not always in id order: see resync.
            self._in_flight = deque(i for i in self._in_flight if i > up_to_id)
        if not self.backlog.caught_up:
            self.pump()


@attrs.define
class _Online:
    full_name: str
    minds: set[object] = attrs.field(factory=set)


@attrs.define
class Presence:
    """
    Who has a live connection, and the subscribers told when that changes.
    """

    _online: dict[str, _Online] = attrs.field(factory=dict)
    _watchers: set[IChatClient] = attrs.field(factory=set)

    def is_attached(self, username: str, mind: object) -> bool:
        online = self._online.get(username)
        return online is not None and mind in online.minds

    def attach(self, username: str, full_name: str, mind: object) -> None:
        online = self._online.get(username)
        if online is None:
            online = self._online[username] = _Online(full_name)
            self._came_online(username, full_name)
        online.minds.add(mind)

    def detach(self, username: str, mind: object) -> None:
        online = self._online.get(username)
        if online is None or mind not in online.minds:
            return
        online.minds.discard(mind)
        if not online.minds:
            del self._online[username]
            self._went_offline(username, online.full_name)

    def _came_online(self, username: str, full_name: str) -> None:
        """
        The first connection of C{username} was attached here.
        """
        self._announce(username, full_name, True)

    def _went_offline(self, username: str, full_name: str) -> None:
        """
        The last connection of C{username} here was detached.
        """
        self._announce(username, full_name, False)

    def local(self) -> dict[str, str]:
        """
        The full name of each user with a connection to this process.
        """
        return {name: o.full_name for name, o in self._online.items()}

    def online(self) -> list[tuple[str, str]]:
        """
        (username, full name) of everyone online, by username.
        """
        return sorted((name, o.full_name) for name, o in self._online.items())

    def watch(self, client: IChatClient) -> None:
        self._watchers.add(client)

    def unwatch(self, client: IChatClient) -> None:
        self._watchers.discard(client)

    def _announce(self, username: str, full_name: str, online: bool) -> None:
        for watcher in list(self._watchers):
            watcher.presence_changed(username, full_name, online)
