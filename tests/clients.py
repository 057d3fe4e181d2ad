"""
The one shape of every test client: a request is a line written and the
reply read back; logging in is C{auth} with the demo password and gives
the token. Each client says only how it writes a line and reads a reply on
its own transport:

  - C{tests.helpers.Connection}: a connection to an in-memory server, on a
    StringTransport;
  - C{tests.twistd_helpers.LineClient}: a blocking socket to a real server,
    pipelining;
  - C{tests.twistd_helpers.CourseClient}: the course's chat-cli.py
    transport, byte for byte;
  - C{tests.web_helpers.WebSocketClient}: a browser's WebSocket to the web
    site, one command per text frame.

L{AsyncClient} is the same on the reactor, for tests that run a server in
their own process over real TCP.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from tests.waiting import TIMEOUT


def encoded(line: str | bytes) -> bytes:
    """
    C{line} as bytes on the wire (text as UTF-8).
    """
    return line.encode("utf-8") if isinstance(line, str) else line


#: The course's demo password (every demo user has it).
DEMO_PASSWORD = "surabaya"


class Client:
    """
    What every test client does the same way, on top of its L{write} and
    L{read}.
    """

    def write(self, line: str | bytes) -> None:
        """
        Send one command line (text is sent as UTF-8).
        """
        raise NotImplementedError

    def read(self) -> dict[str, Any]:
        """
        The next reply (or event), parsed.
        """
        raise NotImplementedError

    def request(self, line: str | bytes) -> dict[str, Any]:
        """
        Send one command line and return its reply.
        """
        self.write(line)
        return self.read()

    def login(self, username: str = "messi", password: str = DEMO_PASSWORD) -> str:
        """
        Log in as C{username}; the reply must be OK.

        @return: the session token.
        """
        reply = self.request(f"auth {username} {password}")
        assert reply["status"] == "OK", reply
        return str(reply["tokenid"])


class AsyncClient(Protocol):
    """
    A client on the reactor, over real TCP: requests may be pipelined, each
    gets its reply in order; events (pushed messages, presence) are kept
    apart, and can be waited for.

    Connect one with C{connectProtocol(endpoint, AsyncClient())}.
    """

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self.buffer = b""
        self.replies: deque[Deferred[dict[str, Any]]] = deque()
        self.events: list[dict[str, Any]] = []
        self.event_waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            frame, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            decoded = json.loads(frame)
            if "event" in decoded and "status" not in decoded:
                self.events.append(decoded)
                for check, d in list(self.event_waiters):
                    if check():
                        self.event_waiters.remove((check, d))
                        d.callback(None)
            else:
                self.replies.popleft().callback(decoded)

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)

    def request(self, line: str | bytes) -> Deferred[dict[str, Any]]:
        """
        Send one command line (CRLF added); the reply, within the timeout.
        """
        d: Deferred[dict[str, Any]] = Deferred()
        self.replies.append(d)
        self.transport.write(encoded(line) + b"\r\n")  # type: ignore[union-attr]
        return d.addTimeout(self.timeout, reactor)

    async def login(
        self, username: str = "messi", password: str = DEMO_PASSWORD
    ) -> str:
        """
        Log in as C{username}; the reply must be OK.

        @return: the session token.
        """
        reply = await self.request(f"auth {username} {password}")
        assert reply["status"] == "OK", reply
        return str(reply["tokenid"])

    def messages(self) -> list[dict[str, Any]]:
        """
        The messages pushed so far.
        """
        return [e for e in self.events if e["event"] == "message"]

    def presence(self) -> list[tuple[str, bool]]:
        """
        The presence changes pushed so far: (user, online).
        """
        return [
            (e["user"], e["online"]) for e in self.events if e["event"] == "presence"
        ]

    async def wait_for(
        self, check: Callable[[], bool], timeout: float = TIMEOUT
    ) -> None:
        """
        Wait until C{check()} holds after an event arrives.
        """
        if check():
            return
        d: Deferred[None] = Deferred()
        self.event_waiters.append((check, d))
        await d.addTimeout(timeout, reactor)

    async def close(self) -> None:
        """
        Close the connection and wait until it is closed.
        """
        self.transport.loseConnection()  # type: ignore[union-attr]
        await self.closed
