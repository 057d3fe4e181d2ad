"""
The WebSocket door: one text frame in is one request line, one reply or
event out is one text frame.

Nothing about the chat lives here. Each WebSocket gets the very
L{chat.protocol.ChatProtocol} a TCP connection gets, built by the same
L{chat.protocol.ChatFactory}, behind a L{FrameTransport}: a small
transport that turns the protocol's C{JSON\\r\\n\\r\\n} writes into text
frames and maps flow control onto the TCP connection under the WebSocket.
So every limit of the line protocol (line length, pipelining, whatever
the protocol enforces on its transport) applies to browsers unchanged.

The flow of one WebSocket:

 1. L{ChatWebSocketResource} refuses the upgrade with 403 unless the
    request's C{Origin} is the page's own origin or an allowed one
    (L{chat.web.origins}); nothing of the chat runs before that.
 2. Twisted's L{WebSocketResource} upgrades the connection; the
    L{ChatWebSocket} builds a protocol from the chat factory and connects
    it to a L{FrameTransport}.
 3. Each text frame is handed to the protocol as one line,
    C{frame + b"\\n"}, through C{dataReceived}, exactly as TCP bytes are:
    the protocol checks its length against C{MAX_LENGTH}. A frame with a
    line feed inside would be two requests, so it closes the WebSocket
    (1007); a binary frame closes it too (1003).
 4. Twisted buffers a fragmented frame until it is complete, without a
    limit, so the bytes arriving for one frame are counted as they come:
    past the line limit (plus room for the frame headers) the protocol is
    told the line is too long, answers C{line too long} after the earlier
    replies, and the WebSocket closes with 1009. Nothing more is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProducer,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto.utilities import LocalProtocolError
from zope.interface import implementer

from chat.commands import DELIMITER
from chat.logs import make_logger
from chat.web.origins import OriginPolicy
from chat.web.plain import PlainResource

#: WebSocket close codes (RFC 6455, section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013

#: Bytes a frame may take on the wire beyond its payload before it counts
#: as too long: frame headers, masks, and control frames in between.
FRAME_SLACK = 64 * 1024


@implementer(ITransport, IConsumer, IPushProducer)
class FrameTransport:
    """
    What a L{ChatProtocol} behind a WebSocket sees as its transport.

    C{write} cuts the protocol's output at each C{\\r\\n\\r\\n} and sends
    each reply or event as one text frame, without the delimiter. Pausing
    and resuming pause and resume reading from the connection under the
    WebSocket; a producer registered here is told when that connection's
    send buffer fills and drains.

    @ivar disconnecting: True once the protocol (or anyone) asked to close.
    @ivar disconnected: True once the connection is gone.
    """

    def __init__(
        self,
        websocket: WebSocketTransport,
        connection: Any,
        channel: Any,
    ) -> None:
        """
        @param websocket: sends frames and closes the WebSocket.
        @param connection: the TCP (or TLS) transport under the WebSocket.
        @param channel: the HTTP channel that is that connection's producer;
            producers registered here are registered with it.
        """
        self._websocket = websocket
        self._connection = connection
        self._channel = channel
        self._pending = b""
        self.disconnecting = False
        self.disconnected = False
        #: The close code sent when the protocol closes the connection.
        self.close_code = CLOSE_NORMAL
        self.producer: IProducer | None = None

    # ITransport

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.disconnected:
            return
        *frames, self._pending = (self._pending + data).split(DELIMITER)
        for frame in frames:
            try:
                self._websocket.sendTextMessage(frame.decode("utf-8"))
            except LocalProtocolError:
                # The peer began closing: nothing more can be sent.
                return

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        try:
            self._websocket.loseConnection(self.close_code)
        except LocalProtocolError:
            # A close is already under way; make sure the connection goes.
            self._connection.loseConnection()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._connection.abortConnection()

    def getPeer(self) -> IAddress:
        return self._connection.getPeer()

    def getHost(self) -> IAddress:
        return self._connection.getHost()

    # IPushProducer: the protocol pausing its input.

    def pauseProducing(self) -> None:
        if not self.disconnected:
            self._connection.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.disconnected:
            self._connection.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    # IConsumer: the protocol's output.

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer "
                f"{self.producer} was never unregistered."
            )
        self.producer = producer
        if self.disconnected:
            producer.stopProducing()
            return
        self._channel.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self.producer is None:
            return
        self.producer = None
        if not self.disconnected:
            self._channel.unregisterProducer()

    def connection_lost(self) -> None:
        self.disconnecting = self.disconnected = True
        self.producer = None


class ChatWebSocket:
    """
    One WebSocket (a L{twisted.web.websocket.WebSocketProtocol}) with a
    chat protocol behind it.
    """

    log = make_logger()

    def __init__(self, protocol: Protocol | None, request: Request) -> None:
        """
        @param protocol: the chat protocol for this connection, or None if
            the chat factory refused it (the WebSocket then closes at once
            with 1013, try again later).
        """
        self.protocol = protocol
        self.transport: FrameTransport | None = None
        self._channel = request.channel
        self._websocket: WebSocketTransport | None = None
        self._incoming = 0
        self._refusing = False

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self._websocket = transport
        channel = self._channel
        self.transport = FrameTransport(transport, channel.transport, channel)

    def negotiationFinished(self) -> None:
        assert self.transport is not None and self._websocket is not None
        if self.protocol is None:
            self._refusing = True
            self._websocket.loseConnection(CLOSE_TRY_AGAIN)
            return
        self.protocol.makeConnection(self.transport)

    def bytes_arriving(self, count: int) -> bool:
        """
        C{count} more bytes arrived for the WebSocket: may they be read?

        Stops a frame at the protocol's line limit while it arrives, rather
        than after Twisted has buffered all of it.
        """
        if self._refusing:
            return False
        self._incoming += count
        protocol = self.protocol
        if protocol is None or self.transport is None:
            return True
        if self._incoming > _max_length(protocol) + FRAME_SLACK:
            self._too_long()
            return False
        return True

    def textMessageReceived(self, message: str) -> None:
        self._incoming = 0
        if self._refusing or self.protocol is None or self.transport is None:
            return
        line = message.encode("utf-8")
        if line.endswith(b"\n"):
            line = line[:-1]
        if b"\n" in line:
            self.log.info(
                "WebSocket frame with a line feed from {peer}; closing",
                peer=self.transport.getPeer(),
            )
            self._close(CLOSE_INVALID_DATA)
            return
        if len(line) > _max_length(protocol := self.protocol):
            self.transport.close_code = CLOSE_TOO_BIG
        protocol.dataReceived(line + b"\n")

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        self._incoming = 0
        if self._refusing or self.transport is None:
            return
        self._close(CLOSE_UNSUPPORTED)

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self.transport is not None:
            self.transport.connection_lost()
        if self.protocol is not None and self.transport is not None:
            self.protocol.connectionLost(reason)

    def _too_long(self) -> None:
        """
        Refuse the frame arriving: the protocol answers C{line too long}
        after its earlier replies, and closes.
        """
        self._refusing = True
        assert self.transport is not None and self.protocol is not None
        self.transport.close_code = CLOSE_TOO_BIG
        self.protocol.lineLengthExceeded(b"")  # type: ignore[attr-defined]

    def _close(self, code: int) -> None:
        """
        Close at once: the peer broke the framing, so nothing it sent after
        this frame runs.
        """
        assert self.transport is not None
        self._refusing = True
        self.transport.close_code = code
        self.transport.loseConnection()


def _max_length(protocol: Protocol) -> int:
    return int(getattr(protocol, "MAX_LENGTH", 16384))


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
        protocol = self.chat_factory.buildProtocol(request.getClientAddress())
        self._built = ChatWebSocket(protocol, request)
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
