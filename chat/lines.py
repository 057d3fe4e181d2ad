"""
The TCP and TLS door: bytes in, request lines to a L{chat.door.Door},
replies and events out as C{JSON\\r\\n\\r\\n}.

Framing: a line ends in LF; a trailing CR is stripped. A line longer than
the limit gets one ERROR reply, after the replies to the lines before it,
and the connection is closed; nothing after it runs. Before a connection
has logged in, the limit is small (L{UNAUTHENTICATED_LINE}), and so are the
bytes all such connections may hold together: only a line that names a
live session may grow to the full limit (a file sent on a fresh
connection, as the course family's clients do).

L{ChatFactory} builds the connections and keeps what every door shares:
the limits, the clock, the connection counts (at the limits, the
connection idle longest without logging in makes room, else the new one
is refused), the deadlines, and the L{chat.dispatch.Frontend}.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from chat import commands, replies
from chat.directwrite import DirectWriter
from chat.dispatch import Dispatcher, Frontend
from chat.door import CHECKING, LINE_PROGRESS, Door, State
from chat.interfaces import IRegistrar
from chat.limits import (
    ConnectionTracker,
    Deadlines,
    FailureLimiter,
    Limits,
    address_key,
)
from chat.logs import make_logger
from chat.replies import DELIMITER
from chat.sessions import SessionManager
from chat.trim import Trimmer, malloc_trim

#: The most bytes of a line kept before a connection has logged in: room
#: for any command but a file.
UNAUTHENTICATED_LINE = commands.COMMAND_ALLOWANCE

#: TCP keepalive: probe a silent peer after this many seconds, then every
#: interval, and give up after count probes (a dead peer is found in about
#: two minutes).
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 10, 6


@implementer(IHalfCloseableProtocol)
class LineConnection(Door, Protocol):
    """
    One TCP or TLS client connection speaking the line protocol.
    """

    __slots__ = ("_line_started", "_partial", "_partial_length", "_writer", "client")

    def __init__(
        self, max_line: int, max_pipeline: int = 64, client: Any = None
    ) -> None:
        super().__init__(max_line, max_pipeline)
        #: The client's address: the one the connection was built for (a
        #: proxy may carry it: L{chat.proxy}), else the transport's peer.
        self.client = client
        self._writer: DirectWriter | None = None
        self._partial: list[bytes] = []
        self._partial_length = 0
        self._line_started = 0.0

    # Lifecycle.

    def connectionMade(self) -> None:
        factory = self.factory
        transport: Any = self.transport
        peer = self.client or transport.getPeer()
        host = str(getattr(peer, "host", peer))
        self.address = address_key(str(getattr(peer, "host", "") or ""))
        self.peer = f"{host}:{getattr(peer, 'port', '')}"
        refused = factory.admit(self)
        if refused is not None:
            self.log.info(
                "Refused connection from {peer}: {why}", peer=self.peer, why=refused
            )
            transport.write(
                replies.encode(replies.error(refused, "too_many_connections"))
            )
            self.state = State.CLOSED
            self._input_closed = True
            transport.loseConnection()
            return
        _tune(transport)
        self._writer = DirectWriter(transport)
        self.log.info("Connection from {peer}", peer=self.peer)
        transport.registerProducer(self, True)
        handler = Dispatcher(factory.frontend, self, host, self.address, self.peer)
        self.opened(handler, factory.clock.seconds())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.handler is None and self.state is State.CLOSED:
            return  # refused: never counted
        self._partial.clear()
        self._partial_length = 0
        self.closed()
        self.log.info("Connection from {peer} closed", peer=self.peer)

    def readConnectionLost(self) -> None:
        """
        The client shut down its sending side (C{printf ... | nc -N}):
        answer what it sent, then close.
        """
        self._drop_partial()
        self.input_ended()

    def writeConnectionLost(self) -> None:
        """
        (This server never shuts down only its sending side.)
        """

    # The transport.

    def _emit(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data + DELIMITER)

    def _pause_input(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def _resume_input(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def _lose(self, abort: bool) -> None:
        transport: Any = self.transport
        # A registered producer keeps a transport from closing.
        transport.unregisterProducer()
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()

    # Framing.

    def dataReceived(self, data: bytes) -> None:
        if self._input_closed:
            return
        if (
            not self._partial_length
            and not self._busy
            and not self._queue
            and not self._paused_by
            and data.find(b"\n") == len(data) - 1
            and len(data) <= self._max_line + 1
        ):
            # One whole line, nothing waiting: the usual case.
            self.run_now(data[:-2] if data.endswith(b"\r\n") else data[:-1])
            return
        end = data.find(b"\n")
        if end < 0:
            self._keep(data)
            return
        if self._partial:
            # The reads of a long line are joined once, when one brings its
            # end: lines carrying files are megabytes long.
            self._partial.append(data)
            data = b"".join(self._partial)
            end += self._partial_length
            self._drop_partial()
            self._schedule()
        start = 0
        while end >= 0:
            line = data[start:end]
            if len(line) > self._max_line:
                self.too_long()
                return
            self.line_received(line[:-1] if line.endswith(b"\r") else line)
            if self._input_closed:
                return
            start = end + 1
            end = data.find(b"\n", start)
        if start < len(data):
            self._keep(data[start:])

    def _keep(self, data: bytes) -> None:
        """
        Keep part of a line in progress, within the limits.
        """
        factory = self.factory
        before = self._partial_length
        self._partial.append(data)
        self._partial_length += len(data)
        if self._partial_length > self._max_line and not self._may_grow():
            self._drop_partial()
            self.too_long()
            return
        if not factory.keep_partial(self, len(data)):
            self.close_with_error("server busy", "server_busy")
            return
        if (
            not before
            or before // LINE_PROGRESS != self._partial_length // LINE_PROGRESS
        ):
            # The line started, or grew enough: its deadline moves.
            self._line_started = factory.clock.seconds()
            self._schedule()

    def _drop_partial(self) -> None:
        self._partial.clear()
        self._partial_length = 0
        self.factory.forget_partial(self)

    def _partial_started(self) -> float | None:
        return self._line_started if self._partial_length else None

    def _may_grow(self) -> bool:
        """
        Whether a line in progress over the limit of a connection not
        logged in may grow to the full limit: it names a live session. A
        session the manager has not cached is checked with the store, with
        reading paused meanwhile.
        """
        factory = self.factory
        full = factory.max_line + 1
        sessions = factory.sessions
        if self.state is not State.NEW or self._max_line >= full or sessions is None:
            return False
        words = b"".join(self._partial)[:512].split(None, 2)
        if len(words) < 3:
            return False
        try:
            token = words[1].decode("ascii")
        except UnicodeDecodeError:
            return False
        live = sessions.live(token)
        if live is not None:
            if not sessions.vouch(live, factory.clock.seconds()):
                return False
            self._max_line = full
            return True
        self._pause_reading(CHECKING)

        def checked(_: object) -> None:
            self._max_line = full
            self._resume_reading(CHECKING)

        def refused(_: Failure) -> None:
            if self.state is State.NEW:
                self._drop_partial()
                self.too_long()

        sessions.resolve(token).addCallbacks(checked, refused)
        return True  # held meanwhile: only what arrived before the pause


def _tune(transport: Any) -> None:
    """
    Replies and pushes are small writes: without TCP_NODELAY, a push
    written just after a reply waits for the client's delayed ACK of that
    reply (40 ms on Linux). TCP keepalive finds peers that went away
    without a word, so that quiet connections need no idle timeout.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)
    set_keepalive = getattr(transport, "setTcpKeepAlive", None)
    if set_keepalive is None:
        return
    set_keepalive(True)
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, socket.socket):
        return
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, option):
            try:
                handle.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
            except OSError:
                pass


class ChatFactory(Factory):
    """
    Builds a L{LineConnection} for each TCP or TLS connection, and keeps
    what every door shares (WebSockets too): the limits, the clock, the
    connection counts, the connections not logged in (in the order they
    were last active, with when they connected), the bytes of lines in
    progress they hold, the deadlines, and the L{Frontend} of the
    dispatchers.
    """

    log = make_logger()

    def __init__(
        self,
        portal: Portal,
        max_line: int = 16 * 1024,
        registrar: IRegistrar | None = None,
        *,
        limits: Limits | None = None,
        clock: IReactorTime | None = None,
        sessions: SessionManager | None = None,
        metrics: Any = None,
        federation: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.max_line = max_line
        self.limits = limits = limits or Limits()
        self.clock = clock
        self.connections = ConnectionTracker(
            limits.max_connections, limits.max_connections_per_address
        )
        self.deadlines = Deadlines(clock)
        self.frontend = Frontend(
            portal,
            clock,
            FailureLimiter.of(clock, limits),
            sessions=sessions,
            registrar=registrar,
            federation=federation,
            metrics=metrics,
        )
        self._new: dict[Door, float] = {}
        self._partial: dict[Door, int] = {}
        #: Bytes of replies and events held for connections that are not
        #: reading: in all, per user, and the connections holding them.
        self.output_bytes = 0
        self._output_by_user: dict[str, int] = {}
        self._holding: set[Door] = set()
        #: Bytes of lines in progress held for connections not logged in.
        self.partial_bytes = 0
        #: Returns the memory of released buffers to the system.
        self.trimmer = Trimmer(clock, malloc_trim())

    # What the service and the tests set and read.

    @property
    def portal(self) -> Portal:
        return self.frontend.portal

    @property
    def sessions(self) -> SessionManager | None:
        return self.frontend.sessions

    @property
    def failures(self) -> FailureLimiter:
        return self.frontend.failures

    @property
    def federation(self) -> Any:
        return self.frontend.federation

    @property
    def metrics(self) -> Any:
        return self.frontend.metrics

    @property
    def is_open(self) -> bool:
        return self.frontend.is_open

    def hold(self) -> None:
        """
        Accept connections but run no command until L{open}.
        """
        self.frontend.hold()

    def open(self) -> None:
        self.frontend.open()

    def buildProtocol(self, addr: Any) -> LineConnection:  # type: ignore[override]
        connection = LineConnection(
            min(self.max_line, UNAUTHENTICATED_LINE), client=addr
        )
        connection.factory = self
        return connection

    # Connections.

    def admit(self, door: Door) -> str | None:
        """
        Count a new connection. At the limits, the connection that has been
        idle longest without logging in (from the same address, at the
        per-address limit) is closed to make room; if there is none, the
        new one is refused.

        @return: None if admitted, or why it is refused.
        """
        connections = self.connections
        address = door.address
        refused = connections.admit(address)
        if refused is not None:
            anyone = connections.total >= connections.max_total
            victim = next(
                (c for c in self._new if anyone or c.address == address), None
            )
            if victim is None:
                return refused
            self.log.info(
                "Closing the connection from {peer}, idle longest without "
                "logging in, to make room",
                peer=victim.peer,
            )
            self._forget_new(victim)
            victim.close_with_error("too many connections", "too_many_connections")
            # That one is counted until it is gone; this one from now.
            connections.add(address)
        self._new[door] = self.clock.seconds()
        return None

    def connected_at(self, door: Door) -> float:
        return self._new.get(door, 0.0)

    def active(self, door: Door) -> None:
        """
        A connection not logged in sent something: the last to make room.
        """
        new = self._new
        connected_at = new.pop(door, None)
        if connected_at is not None:
            new[door] = connected_at

    def stop_login_clock(self, door: Door) -> float:
        """
        A connection not logged in waits for the server (its password being
        hashed): out of the order of connections to close to make room
        until L{start_login_clock}.

        @return: when it connected.
        """
        return self._new.pop(door, self.clock.seconds())

    def start_login_clock(self, door: Door, connected_at: float) -> None:
        """
        The server is done for the connection: it counts as connected at
        C{connected_at} (later than it did, by the time it waited), and as
        the most recently active.
        """
        self._new[door] = connected_at

    def logged_in(self, door: Door) -> None:
        self._forget_new(door)

    def _forget_new(self, door: Door) -> None:
        self._new.pop(door, None)
        self.forget_partial(door)

    def release(self, door: Door) -> None:
        """
        A connection admitted is gone.
        """
        self._forget_new(door)
        self.connections.release(door.address)

    def hold_output(self, door: Door, count: int) -> None:
        """
        C{door}'s client, which is not reading, holds C{count} more bytes
        of replies or events. Past C{max_output_total} in all, or
        C{max_output_per_user} for its user, the connection holding the
        most (of all, or of that user's) is dropped: memory stays bounded
        however many connections stop reading.
        """
        limits = self.limits
        door.held_output += count
        self._holding.add(door)
        self.output_bytes += count
        user = door.user
        if user is not None:
            by_user = self._output_by_user
            by_user[user] = held = by_user.get(user, 0) + count
            if held > limits.max_output_per_user:
                mine = [d for d in self._holding if d.user == user]
                self._drop_holder(mine, "for its user", limits.max_output_per_user)
        if self.output_bytes > limits.max_output_total:
            self._drop_holder(self._holding, "in all", limits.max_output_total)

    def _drop_holder(self, doors: Any, scope: str, limit: int) -> None:
        victim = max(doors, key=lambda d: d.held_output)
        self.log.warn(
            "Dropping connection from {peer}: over {limit} bytes unsent {scope}",
            peer=victim.peer,
            limit=limit,
            scope=scope,
        )
        self.release_output(victim)
        victim.abort()

    def stopFactory(self) -> None:
        self.trimmer.stop()

    def release_output(self, door: Door) -> None:
        """
        C{door}'s client took what it held, or is gone.
        """
        self._holding.discard(door)
        held = door.held_output
        if not held:
            return
        door.held_output = 0
        self.output_bytes -= held
        self.trimmer.released(held)
        user = door.user
        if user is not None:
            by_user = self._output_by_user
            left = by_user.get(user, 0) - held
            if left > 0:
                by_user[user] = left
            else:
                by_user.pop(user, None)

    def keep_partial(self, door: Door, count: int) -> bool:
        """
        A connection holds C{count} more bytes of a line in progress: for
        one not logged in, whether all such bytes together stay within
        C{max_partial_total}.
        """
        if door.state is not State.NEW:
            return True
        if self.partial_bytes + count > self.limits.max_partial_total:
            return False
        self.partial_bytes += count
        self._partial[door] = self._partial.get(door, 0) + count
        self.active(door)
        return True

    def forget_partial(self, door: Door) -> None:
        held = self._partial.pop(door, 0)
        self.partial_bytes -= held
        self.trimmer.released(held)
