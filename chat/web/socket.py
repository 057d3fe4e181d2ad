"""
The WebSocket door: one text frame in is one request line, one reply or
event out is one text frame.

Nothing about the chat lives here. Each WebSocket is a L{chat.door.Door},
as a TCP connection is: the same dispatcher runs its lines, and every
limit of the line protocol (line length, pipelining, connection counts,
output, deadlines) applies to browsers unchanged. Replies and events are
written as frames directly: no delimiter to add and split again.

The flow of one WebSocket:

 1. L{ChatWebSocketResource} refuses the upgrade with 403 unless the
    request's C{Origin} is the page's own origin or an allowed one
    (L{chat.web.origins}); nothing of the chat runs before that.
 2. Twisted's L{WebSocketResource} upgrades the connection; the
    L{ChatWebSocket} is admitted by the chat factory (at the connection
    limits it closes at once with 1013, try again later), and registers
    as the producer of the connection under it, so that it hears when the
    browser stops reading.
 3. Each text frame is one line. A frame with a line feed inside would be
    two requests, so it closes the WebSocket (1007); a binary frame closes
    it too (1003). A WebSocket never becomes a realm link.
 4. Twisted buffers a fragmented frame until it is complete, without a
    limit, so the bytes arriving for one frame are counted as they come:
    past the line limit (plus room for the frame headers) the door answers
    C{line too long} after the earlier replies, and the WebSocket closes
    with 1009. Nothing more is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto.utilities import LocalProtocolError

from chat.dispatch import Dispatcher
from chat.door import Door, State
from chat.limits import address_key
from chat.lines import UNAUTHENTICATED_LINE
from chat.logs import make_logger
from chat.web.origins import OriginPolicy
from chat.web.plain import PlainResource

if TYPE_CHECKING:
    from chat.lines import ChatFactory

#: WebSocket close codes (RFC 6455, section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013

#: Bytes a frame may take on the wire beyond its payload before it counts
#: as too long: frame headers, masks, and control frames in between.
FRAME_SLACK = 64 * 1024


class ChatWebSocket(Door):
    """
    One WebSocket (a L{twisted.web.websocket.WebSocketProtocol}) speaking
    the chat's requests, a frame each.

    @ivar close_code: sent when the door closes the WebSocket.
    """

    log = make_logger()

    __slots__ = (
        "_channel",
        "_incoming",
        "_refusing",
        "_websocket",
        "close_code",
        "factory",
    )

    def __init__(self, factory: ChatFactory, request: Request) -> None:
        super().__init__(min(factory.max_line, UNAUTHENTICATED_LINE))
        self.factory = factory
        self._channel: Any = request.channel
        self._websocket: WebSocketTransport | None = None
        self._incoming = 0
        self._refusing = False
        self.close_code = CLOSE_NORMAL
        client = request.getClientAddress()
        host = str(getattr(client, "host", client))
        self.address = address_key(str(getattr(client, "host", "") or ""))
        self.peer = f"{host}:{getattr(client, 'port', '')}"

    @property
    def max_line(self) -> int:
        """
        The longest frame accepted now, in bytes.
        """
        return self._max_line - 1

    # WebSocketProtocol.

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self._websocket = transport

    def negotiationFinished(self) -> None:
        assert self._websocket is not None
        factory = self.factory
        refused = factory.admit(self)
        if refused is not None:
            self.log.info(
                "Refused WebSocket from {peer}: {why}", peer=self.peer, why=refused
            )
            self._refusing = True
            self.state = State.CLOSED
            self._input_closed = True
            self._websocket.loseConnection(CLOSE_TRY_AGAIN)
            return
        self._channel.registerProducer(self, True)
        host = self.peer.rpartition(":")[0]
        dispatcher = Dispatcher(
            factory.frontend, self, host, self.address, self.peer, links=False
        )
        self.opened(dispatcher, factory.clock.seconds())

    def bytes_arriving(self, count: int) -> bool:
        """
        C{count} more bytes arrived for the WebSocket: may they be read?

        Stops a frame at the line limit while it arrives, rather than after
        Twisted has buffered all of it.
        """
        if self._refusing:
            return False
        self._incoming += count
        if self.handler is not None and self._incoming > self.max_line + FRAME_SLACK:
            self._refusing = True
            self.close_code = CLOSE_TOO_BIG
            self.too_long()
            return False
        return True

    def textMessageReceived(self, message: str) -> None:
        self._incoming = 0
        if self._refusing or self.handler is None or self._input_closed:
            return
        line = message.encode("utf-8")
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        if b"\n" in line:
            self.log.info(
                "WebSocket frame with a line feed from {peer}; closing",
                peer=self.peer,
            )
            self._close_now(CLOSE_INVALID_DATA)
            return
        if len(line) > self.max_line:
            self.close_code = CLOSE_TOO_BIG
            self.too_long()
            return
        if not self._busy and not self._queue and not self._paused_by:
            self.run_now(line)
        else:
            self.line_received(line)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self._incoming = 0
        if self._refusing or self.handler is None:
            return
        self._close_now(CLOSE_UNSUPPORTED)

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self.handler is not None or self.state is not State.CLOSED:
            self.closed()

    def _close_now(self, code: int) -> None:
        """
        Close at once: the peer broke the framing, so nothing it sent after
        this frame runs.
        """
        self._refusing = True
        self.close_code = code
        self._close()

    # The transport.

    def _emit(self, data: bytes) -> None:
        assert self._websocket is not None
        try:
            self._websocket.sendTextMessage(data.decode("ascii"))
        except LocalProtocolError:
            pass  # the peer began closing: nothing more can be sent

    def _pause_input(self) -> None:
        self._channel.transport.pauseProducing()

    def _resume_input(self) -> None:
        self._channel.transport.resumeProducing()

    def _lose(self, abort: bool) -> None:
        self._channel.unregisterProducer()
        if abort or self._websocket is None:
            self._channel.transport.abortConnection()
            return
        try:
            self._websocket.loseConnection(self.close_code)
        except LocalProtocolError:
            # A close is already under way; make sure the connection goes.
            self._channel.transport.loseConnection()


class ChatWebSocketResource(WebSocketResource, PlainResource):
    """
    C{/ws}: Twisted's WebSocket resource, refusing foreign origins.

    @ivar chat_factory: builds the protocol behind each WebSocket (the
        factory the TCP ports use).
    """

    log = make_logger()

    def __init__(self, chat_factory: Any, origins: OriginPolicy) -> None:
        super().__init__(self)
        self.chat_factory = chat_factory
        self.origins = origins
        self._built: ChatWebSocket | None = None

    def buildProtocol(self, request: Request) -> ChatWebSocket:
        """
        The L{twisted.web.websocket.WebSocketServerFactory} of this resource.
        """
        self._built = ChatWebSocket(self.chat_factory, request)
        return self._built

    def render_GET(self, request: Request) -> bytes | int:
        origin = request.getHeader("origin")
        if not self.origins.allows(origin, request):
            self.log.warn(
                "Refused a WebSocket from {peer}: origin {origin} is not allowed",
                peer=request.getClientAddress(),
                origin=origin,
            )
            request.setResponseCode(403)
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return b"origin not allowed\n"
        self._built = None
        result = super().render_GET(request)
        websocket, self._built = self._built, None
        if result is NOT_DONE_YET and websocket is not None:
            _count_incoming(request.channel, websocket.bytes_arriving)
            # A chat connection from now on, counted by the chat's limits.
            became_websocket = getattr(request.channel, "became_websocket", None)
            if became_websocket is not None:
                became_websocket()
        return result


def _count_incoming(channel: Any, allow: Callable[[int], bool]) -> None:
    """
    Let C{allow} see (and stop) the bytes of an upgraded connection.

    Twisted's upgrade points the HTTP channel's C{dataReceived} at the
    WebSocket's wire protocol (C{HTTPChannel._protocolUpgradeForWebsockets});
    this puts a counter in front of it, the only place that sees a frame's
    bytes before the whole frame is buffered.
    """
    deliver = channel.dataReceived

    def counted(data: bytes) -> None:
        if allow(len(data)):
            deliver(data)

    channel.dataReceived = counted
