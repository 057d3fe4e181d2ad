"""
The WebSocket door (chat.web.socket): a browser's frames reach the same
ChatProtocol as TCP lines, replies and events come back one per frame, and
the line protocol's limits hold, all in memory on StringTransports.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.testing import StringTransport
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chat.protocol import ChatProtocol
from chat.web.socket import (
    CLOSE_INVALID_DATA,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    FRAME_SLACK,
    FrameTransport,
)
from tests.helpers import Server
from tests.web_helpers import WebSocketClient, web_site


@pytest.fixture
def server() -> Server:
    return Server()


def protocols(server: Server) -> list[ChatProtocol]:
    """
    The chat protocols the factory built, spied on through buildProtocol.
    """
    built: list[ChatProtocol] = []
    build = server.factory.buildProtocol

    def spy(addr: Any) -> ChatProtocol:
        protocol = build(addr)
        built.append(protocol)
        return protocol

    server.factory.buildProtocol = spy  # type: ignore[method-assign]
    return built


def test_frames_are_lines_and_replies_are_frames(server: Server) -> None:
    """A text frame is one request; each reply is one JSON frame without the
    line protocol's CR LF CR LF."""
    client = WebSocketClient(web_site(server))
    assert client.accepted
    client.send("auth messi surabaya")
    (frame,) = client.raw_frames()
    assert not frame.endswith("\r\n\r\n")
    token = json.loads(frame)["tokenid"]
    assert client.request(f"send {token} henderson halo  bro") == {
        "status": "OK",
        "message": "Message Sent",
    }
    other = WebSocketClient(web_site(server))
    reader = other.login("henderson")
    inbox = other.request(f"inbox {reader}")
    assert inbox["messages"]["messi"][0]["msg"] == "halo  bro"


def test_pipelined_frames_are_answered_in_order(server: Server) -> None:
    """Frames sent without waiting are answered one frame each, in order,
    even when they arrive in one read."""
    client = WebSocketClient(web_site(server))
    data = b"".join(
        client.ws.send(TextMessage(data=line))
        for line in ["ping one", "bogus", "ping three", "ping"]
    )
    client.send_bytes(data)
    assert client.frames() == [
        {"status": "OK", "message": "PONG", "echo": "one"},
        {
            "status": "ERROR",
            "message": "**Protocol Tidak Benar",
            "code": "unknown_command",
        },
        {"status": "OK", "message": "PONG", "echo": "three"},
        {"status": "OK", "message": "PONG"},
    ]


def test_events_after_subscribe(server: Server) -> None:
    """After subscribe, pushed messages and presence arrive as frames with
    an "event" key, between replies."""
    site = web_site(server)
    henderson = WebSocketClient(site)
    token = henderson.login("henderson")
    assert henderson.request(f"subscribe {token}")["message"] == "Subscribed"
    messi = WebSocketClient(site)
    sender = messi.login("messi")
    events = henderson.frames()
    assert events == [
        {
            "event": "presence",
            "user": "messi",
            "full_name": "Lionel Messi",
            "online": True,
        }
    ]
    messi.request(f"send {sender} henderson <b>hi</b>")
    (event,) = henderson.frames()
    assert (event["event"], event["msg"], event["from"]) == (
        "message",
        "<b>hi</b>",
        "messi",
    )
    assert henderson.request(f"ack {token} {event['id']}")["count"] == 1
    messi.close()
    assert messi.close_code == 1000
    assert henderson.frames() == [
        {
            "event": "presence",
            "user": "messi",
            "full_name": "Lionel Messi",
            "online": False,
        }
    ]


def test_connection_lost_reaches_the_protocol(server: Server) -> None:
    """When the connection under a WebSocket drops, the chat protocol is
    told: its user goes offline and its subscription ends."""
    built = protocols(server)
    site = web_site(server)
    client = WebSocketClient(site)
    token = client.login()
    client.request(f"subscribe {token}")
    watcher = WebSocketClient(site)
    other = watcher.login("henderson")
    assert [u["username"] for u in watcher.request(f"who {other}")["users"]] == [
        "henderson",
        "messi",
    ]
    client.lose()
    assert built[0]._subscription is None
    assert [u["username"] for u in watcher.request(f"who {other}")["users"]] == [
        "henderson"
    ]


def test_frame_longer_than_max_line() -> None:
    """A frame longer than --max-line gets line too long (after the replies
    before it), then the WebSocket closes with 1009; nothing after runs."""
    small = Server(max_line=20000, max_file_size=1000)
    site = web_site(small)
    client = WebSocketClient(site)
    token = client.login()
    data = client.ws.send(TextMessage(data="ping before"))
    data += client.ws.send(TextMessage(data=f"send {token} henderson " + "x" * 20000))
    data += client.ws.send(TextMessage(data=f"send {token} henderson after"))
    client.send_bytes(data)
    assert client.frames() == [
        {"status": "OK", "message": "PONG", "echo": "before"},
        {"status": "ERROR", "message": "line too long", "code": "line_too_long"},
    ]
    assert client.close_code == CLOSE_TOO_BIG
    assert client.transport.disconnecting
    reader = WebSocketClient(site)
    other = reader.login("henderson")
    assert reader.request(f"inbox {other}")["messages"] == {}


def test_frame_of_exactly_max_line_is_accepted() -> None:
    """A frame of exactly --max-line bytes is a request like a line of that
    length."""
    small = Server(max_line=20000, max_file_size=1000)
    client = WebSocketClient(web_site(small))
    token = client.login()
    line = f"send {token} henderson "
    line += "y" * (20000 - len(line))
    assert client.request(line)["message"] == "Message Sent"


def test_huge_frame_is_refused_while_it_arrives() -> None:
    """A frame that never ends is refused once the bytes received pass the
    limit, without waiting for (and buffering) all of it."""
    small = Server(max_line=20000, max_file_size=1000)
    built = protocols(small)
    client = WebSocketClient(web_site(small))
    client.login()

    def fragment(size: int) -> bytes:
        return client.ws.send(TextMessage(data="a" * size, message_finished=False))

    first, rest = fragment(30000), [fragment(10000) for _ in range(26)]
    client.send_bytes(first)
    assert client.frames() == []
    for data in rest[:6]:
        client.send_bytes(data)
    assert client.frames() == [
        {"status": "ERROR", "message": "line too long", "code": "line_too_long"}
    ]
    assert client.close_code == CLOSE_TOO_BIG
    transport = built[0].transport
    assert isinstance(transport, FrameTransport)
    buffered = transport._websocket._textBuffer.data  # type: ignore[attr-defined]
    assert len(buffered) < 20000 + FRAME_SLACK
    for data in rest[6:]:
        client.send_bytes(data)
    assert transport._websocket._textBuffer.data == buffered  # type: ignore[attr-defined]


def test_line_feed_inside_a_frame_closes(server: Server) -> None:
    """A frame with a line feed inside would be two requests: the WebSocket
    closes (1007) and neither runs."""
    built = protocols(server)
    client = WebSocketClient(web_site(server))
    client.send("ping one\nquit")
    assert client.frames() == []
    assert client.close_code == CLOSE_INVALID_DATA
    assert not built[0]._queue


def test_one_trailing_line_ending_is_allowed(server: Server) -> None:
    """A frame ending in LF or CR LF (a line-oriented client) is one request."""
    client = WebSocketClient(web_site(server))
    assert client.request("ping a\r\n")["echo"] == "a"
    assert client.request("ping b\n")["echo"] == "b"


def test_binary_frames_are_refused(server: Server) -> None:
    """Requests are text: a binary frame closes the WebSocket with 1003."""
    client = WebSocketClient(web_site(server))
    client.send_binary(b"ping")
    assert client.frames() == []
    assert client.close_code == CLOSE_UNSUPPORTED


def test_quit_closes_the_websocket(server: Server) -> None:
    """quit answers bye, then the WebSocket closes normally."""
    client = WebSocketClient(web_site(server))
    assert client.request("quit") == {"status": "OK", "message": "bye"}
    assert client.close_code == 1000


def test_pipelining_pauses_reading(server: Server) -> None:
    """A client that pipelines more than the protocol queues stops being
    read (the connection under the WebSocket is paused) until the queue
    drains, as over TCP."""
    server.factory.hold()
    client = WebSocketClient(web_site(server))
    assert client.transport.producerState == "producing"
    client.send_bytes(
        b"".join(client.ws.send(TextMessage(data=f"ping {i}")) for i in range(70))
    )
    assert client.transport.producerState == "paused"
    assert client.frames() == []
    server.factory.open()
    assert client.transport.producerState == "producing"
    assert [frame["echo"] for frame in client.frames()] == [str(i) for i in range(70)]


def test_factory_refusing_a_connection(server: Server) -> None:
    """If the chat factory builds no protocol (too many connections), the
    WebSocket closes at once with 1013, try again later."""
    server.factory.buildProtocol = lambda addr: None  # type: ignore[method-assign,assignment,return-value]
    client = WebSocketClient(web_site(server))
    assert client.accepted
    assert client.close_code == CLOSE_TRY_AGAIN
    assert client.transport.disconnecting


def test_peer_and_host_are_the_connection_s(server: Server) -> None:
    """The protocol sees the browser's address as its peer (registration
    limits and per-address counts use it)."""
    built = protocols(server)
    WebSocketClient(web_site(server))
    transport = built[0].transport
    assert transport is not None
    assert transport.getPeer().host == "127.0.0.1"  # type: ignore[attr-defined]
    assert transport.getHost().port == 8080  # type: ignore[attr-defined]
    assert built[0]._peer == "127.0.0.1:40000"


# FrameTransport alone.


class FakeWebSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: list[int] = []

    def sendTextMessage(self, text: str) -> None:
        self.sent.append(text)

    def loseConnection(self, code: int = 1000) -> None:
        self.closed.append(code)


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class FakeChannel:
    def __init__(self) -> None:
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


def frame_transport() -> tuple[
    FrameTransport, FakeWebSocket, StringTransport, FakeChannel
]:
    websocket, connection, channel = FakeWebSocket(), StringTransport(), FakeChannel()
    return (
        FrameTransport(websocket, connection, channel),
        websocket,
        connection,
        channel,
    )  # type: ignore[arg-type]


def test_frame_transport_interfaces() -> None:
    """The shim is a transport, a consumer and a push producer."""
    transport, *_ = frame_transport()
    assert verifyObject(ITransport, transport)
    assert verifyObject(IConsumer, transport)
    assert verifyObject(IPushProducer, transport)
    assert transport.disconnecting is False


def test_frame_transport_splits_writes_into_frames() -> None:
    """Each CR LF CR LF-terminated reply becomes one frame, however the
    writes cut them."""
    transport, websocket, *_ = frame_transport()
    transport.write(b'{"a":1}\r\n\r\n{"b":')
    assert websocket.sent == ['{"a":1}']
    transport.writeSequence([b"2}\r\n", b"\r\n"])
    assert websocket.sent == ['{"a":1}', '{"b":2}']


def test_frame_transport_flow_control() -> None:
    """Pausing and resuming reach the connection under the WebSocket; a
    producer registered on the shim is registered with the HTTP channel,
    which the connection pauses when its send buffer fills."""
    transport, _, connection, channel = frame_transport()
    transport.pauseProducing()
    assert connection.producerState == "paused"
    transport.resumeProducing()
    assert connection.producerState == "producing"
    producer = Producer()
    transport.registerProducer(producer, True)
    assert channel.producer is producer
    with pytest.raises(RuntimeError):
        transport.registerProducer(Producer(), True)
    transport.unregisterProducer()
    assert channel.producer is None


def test_frame_transport_close() -> None:
    """loseConnection closes the WebSocket once (with the close code set);
    later writes are dropped; abortConnection drops the connection."""
    transport, websocket, connection, _ = frame_transport()
    transport.close_code = 4000
    transport.loseConnection()
    transport.loseConnection()
    assert websocket.closed == [4000]
    assert transport.disconnecting
    transport.write(b'{"late":1}\r\n\r\n')
    assert websocket.sent == []
    transport.abortConnection()
    assert connection.disconnecting


def test_producer_registered_through_the_real_channel(server: Server) -> None:
    """Registered on a real WebSocket, a producer is paused when the TCP
    send buffer fills (the channel is the connection's producer) and
    resumed when it drains."""
    built = protocols(server)
    client = WebSocketClient(web_site(server))
    transport = built[0].transport
    assert isinstance(transport, FrameTransport)
    # The chat protocol registers itself (its output limit); swap in a
    # recording producer to see what the real channel does.
    assert transport.producer is built[0]
    transport.unregisterProducer()
    producer = Producer()
    transport.registerProducer(producer, True)
    channel = client.channel
    channel.pauseProducing()
    channel.resumeProducing()
    assert producer.calls == ["pause", "resume"]
    client.lose()
    assert transport.disconnected


class ClosingWebSocket(FakeWebSocket):
    """
    A WebSocket whose peer has begun closing: wsproto refuses to send.
    """

    def sendTextMessage(self, text: str) -> None:
        raise LocalProtocolError("closing")

    def loseConnection(self, code: int = 1000) -> None:
        raise LocalProtocolError("closing")


def test_frame_transport_while_the_peer_closes() -> None:
    """Writes while the peer closes are dropped, and closing then drops
    the connection itself."""
    connection, channel = StringTransport(), FakeChannel()
    transport = FrameTransport(ClosingWebSocket(), connection, channel)  # type: ignore[arg-type]
    transport.write(b'{"a":1}\r\n\r\n')
    transport.loseConnection()
    assert connection.disconnecting


def test_frame_transport_after_the_connection_is_gone() -> None:
    """Once the connection is lost, pausing does nothing, stopProducing is
    a close, and a producer registered late is stopped at once."""
    transport, websocket, connection, channel = frame_transport()
    transport.connection_lost()
    transport.pauseProducing()
    transport.resumeProducing()
    assert connection.producerState == "producing"
    producer = Producer()
    transport.registerProducer(producer, True)
    assert producer.calls == ["stop"]
    assert channel.producer is None
    transport.unregisterProducer()
    transport.unregisterProducer()
    transport.stopProducing()
    assert websocket.closed == []


def test_stop_producing_closes() -> None:
    """stopProducing, as a consumer calls it, closes the WebSocket."""
    transport, websocket, *_ = frame_transport()
    transport.stopProducing()
    assert websocket.closed == [1000]
