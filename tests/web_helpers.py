"""
In-memory clients of the web client's site: plain HTTP requests and
WebSockets (spoken with wsproto, as a browser would) over a
StringTransport, so the whole path from HTTP upgrade to ChatProtocol runs
without a reactor.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from chat.web import OriginPolicy, WebSettings, make_site
from tests.clients import Client
from tests.helpers import Server

HOST = "127.0.0.1:8080"
ORIGIN = "http://127.0.0.1:8080"
PEER = IPv4Address("TCP", "127.0.0.1", 40000)
LOCAL = IPv4Address("TCP", "127.0.0.1", 8080)


def web_site(
    server: Server, origins: list[str] | None = None, registration: bool = True
) -> Site:
    return make_site(
        server.factory,
        WebSettings(1024 * 1024, registration),
        OriginPolicy.from_strings(origins or []),
        reactor=Clock(),
    )


class HTTPResponse:
    def __init__(self, data: bytes) -> None:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        length = int(self.headers.get("content-length", len(body)))
        self.body = body[:length]


def http(
    site: Site,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> HTTPResponse:
    """
    One HTTP/1.1 request to the site; its response.
    """
    channel = site.buildProtocol(PEER)
    assert channel is not None
    transport = StringTransport(peerAddress=PEER, hostAddress=LOCAL)
    channel.makeConnection(transport)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    response = HTTPResponse(transport.value())
    channel.connectionLost(Failure(ConnectionDone()))
    return response


class WebSocketClient(Client):
    """
    A browser's WebSocket to the site, over a StringTransport.

    @ivar transport: the connection under the WebSocket, as the server sees
        it (its producer state shows whether the server reads).
    """

    def __init__(
        self,
        site: Site,
        origin: str | None = ORIGIN,
        host: str = HOST,
        peer: IPv4Address = PEER,
        headers: dict[str, str] | None = None,
    ) -> None:
        channel = site.buildProtocol(peer)
        assert channel is not None
        self.channel: Any = channel
        self.transport = StringTransport(peerAddress=peer, hostAddress=LOCAL)
        self.channel.makeConnection(self.transport)
        self.ws = WSConnection(ConnectionType.CLIENT)
        extra = [
            (name.encode(), value.encode()) for name, value in (headers or {}).items()
        ]
        if origin is not None:
            extra.append((b"origin", origin.encode()))
        self.channel.dataReceived(
            self.ws.send(Request(host=host, target="/ws", extra_headers=extra))
        )
        self.close_code: int | None = None
        self.rejected: int | None = None
        self.accepted = False
        self._text = ""
        self._frames: list[str] = []
        self._read()

    def _read(self) -> list[Event]:
        data = self.transport.value()
        self.transport.clear()
        if not data:
            return []
        self.ws.receive_data(data)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, RejectConnection):
                self.rejected = event.status_code
            elif isinstance(event, RejectData):
                pass
            elif isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    self._frames.append(self._text)
                    self._text = ""
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
        return events

    def send_bytes(self, data: bytes) -> None:
        """
        Raw bytes, as the network would bring them.
        """
        self.channel.dataReceived(data)

    def send(self, text: str) -> None:
        self.send_bytes(self.ws.send(TextMessage(data=text)))

    def send_binary(self, data: bytes) -> None:
        self.send_bytes(self.ws.send(BytesMessage(data=data)))

    def raw_frames(self) -> list[str]:
        """
        The text frames received since the last call, as they came.
        """
        self._read()
        frames, self._frames = self._frames, []
        return frames

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame in self.raw_frames()]

    def write(self, line: str | bytes) -> None:
        """
        One command as a text frame.
        """
        self.send(line if isinstance(line, str) else line.decode("utf-8"))

    def read(self) -> dict[str, Any]:
        """
        The one frame the server sent since the last call (and nothing else).
        """
        frames = self.frames()
        assert len(frames) == 1, frames
        return frames[0]

    def close(self) -> None:
        """
        Close the WebSocket as a browser does: a close frame, the server's
        answer, then the connection goes.
        """
        self.send_bytes(self.ws.send(CloseConnection(code=1000)))
        self._read()
        assert self.transport.disconnecting
        self.channel.connectionLost(Failure(ConnectionDone()))

    def lose(self) -> None:
        """
        The connection under the WebSocket drops.
        """
        self.channel.connectionLost(Failure(ConnectionLost()))
