"""
The WebSocket door (chat.web.socket): a browser's frames reach the same
dispatcher as TCP lines, replies and events come back one per frame, and
the line protocol's limits hold, all in memory on StringTransports.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError

from chat.door import State
from chat.web.socket import (
    CLOSE_INVALID_DATA,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    FRAME_SLACK,
    ChatWebSocket,
)
from tests.helpers import Server
from tests.web_helpers import WebSocketClient, web_site


@pytest.fixture
def server() -> Server:
    return Server()


def protocols(server: Server) -> list[ChatWebSocket]:
    """
    The WebSockets the chat factory admitted, spied on through admit.
    """
    built: list[ChatWebSocket] = []
    admit = server.factory.admit

    def spy(door: Any) -> str | None:
        built.append(door)
        return admit(door)

    server.factory.admit = spy  # type: ignore[method-assign]
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


def test_connection_lost_reaches_the_dispatcher(server: Server) -> None:
    """When the connection under a WebSocket drops, its dispatcher is told:
    its user goes offline and its subscription ends."""
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
    dispatcher: Any = built[0].handler
    client.lose()
    assert dispatcher._subscription is None
    assert built[0].state is State.CLOSED
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
    websocket: Any = built[0]._websocket
    buffered = websocket._textBuffer.data
    assert len(buffered) < 20000 + FRAME_SLACK
    for data in rest[6:]:
        client.send_bytes(data)
    assert websocket._textBuffer.data == buffered


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
    """If the chat factory refuses the connection (too many connections),
    the WebSocket closes at once with 1013, try again later."""
    server.factory.admit = lambda door: "too many connections"  # type: ignore[method-assign]
    client = WebSocketClient(web_site(server))
    assert client.accepted
    assert client.close_code == CLOSE_TRY_AGAIN
    assert client.transport.disconnecting


def test_peer_is_the_connection_s(server: Server) -> None:
    """The door sees the browser's address as its peer (registration
    limits and per-address counts use it)."""
    built = protocols(server)
    WebSocketClient(web_site(server))
    assert built[0].peer == "127.0.0.1:40000"
    assert built[0].address == "127.0.0.1"


def test_counted_with_the_tcp_connections() -> None:
    """WebSockets count towards the connection limits with TCP
    connections, and leave them when they close."""
    server = Server()
    site = web_site(server)
    client = WebSocketClient(site)
    assert server.factory.connections.total == 1
    tcp = server.connect()
    assert server.factory.connections.total == 2
    client.lose()
    tcp.lose()
    assert server.factory.connections.total == 0


def test_flow_control_through_the_real_channel(server: Server) -> None:
    """The door is the producer of the connection under the WebSocket: when
    its send buffer fills (the channel pauses its producer) the door stops
    reading and running frames, and goes on when it drains."""
    built = protocols(server)
    client = WebSocketClient(web_site(server))
    door = built[0]
    channel = client.channel
    assert channel._requestProducer is door
    channel.pauseProducing()
    assert client.transport.producerState == "paused"
    client.send("ping while paused")
    assert client.frames() == []
    channel.resumeProducing()
    assert client.transport.producerState == "producing"
    assert client.frames() == [{"status": "OK", "message": "PONG", "echo": "while"}]


def test_writes_while_the_peer_closes_are_dropped(server: Server) -> None:
    """While the peer closes, wsproto refuses to send: replies are dropped,
    and closing then drops the connection itself."""
    built = protocols(server)
    client = WebSocketClient(web_site(server))
    door = built[0]
    websocket: Any = door._websocket

    def refuse(*args: Any) -> None:
        raise LocalProtocolError("closing")

    websocket.sendTextMessage = refuse
    websocket.loseConnection = refuse
    client.send("quit")
    assert client.transport.disconnecting


def test_stop_producing_stops_reading(server: Server) -> None:
    """stopProducing, as a consumer calls it, stops running frames."""
    built = protocols(server)
    client = WebSocketClient(web_site(server))
    built[0].stopProducing()
    client.send("ping")
    assert client.frames() == []
