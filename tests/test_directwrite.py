"""
chat.directwrite on a real loopback TCP connection: bytes written straight
to the socket, then (once the kernel's buffer fills) through Twisted, arrive
whole and in order, and backpressure still reaches the producer.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from chat.directwrite import DirectWriter


@implementer(IPushProducer)
class Writer(Protocol):
    """
    Writes numbered chunks through a DirectWriter as soon as it connects,
    and records the producer calls its transport makes.
    """

    def __init__(self, chunks: list[bytes], ready: Deferred[Writer]) -> None:
        self.chunks = chunks
        self.ready = ready
        self.calls: list[str] = []
        self.direct: list[bool] = []

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.registerProducer(self, True)
        writer = DirectWriter(transport)
        for chunk in self.chunks:
            writer.write(chunk)
            self.direct.append(writer.direct)
        self.ready.callback(self)

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def read_all(sock: socket.socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = sock.recv(1 << 20)
        if not data:
            break
        received += data
    return bytes(received)


@pytest_twisted.ensureDeferred
async def test_order_kept_across_the_hand_over_to_twisted() -> None:
    """Small writes go to the socket; when the client does not read and the
    kernel's buffer fills, the rest goes through Twisted (which pauses the
    producer), and the client receives every byte in order."""
    chunks = [b"%06d" % i + b"x" * 4090 for i in range(2000)]  # 8 MB
    ready: Deferred[Writer] = Deferred()
    factory = Factory.forProtocol(lambda: Writer(chunks, ready))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setblocking(True)
    try:
        writer = await ready
        assert writer.direct[0] is True
        assert writer.direct[-1] is False  # the kernel's buffer filled up
        assert "pause" in writer.calls
        expected = b"".join(chunks)
        received: Deferred[bytes] = Deferred()
        reactor.callInThread(  # type: ignore[attr-defined]
            lambda: reactor.callFromThread(  # type: ignore[attr-defined]
                received.callback, read_all(client, len(expected))
            )
        )
        assert await received == expected
        assert writer.calls[-1] == "resume"
    finally:
        client.close()
        await port.stopListening()


def test_other_transports_write_through_twisted() -> None:
    """A transport that is not Twisted's plain TCP server (TLS, WebSocket,
    tests) gets every write."""
    transport = StringTransport()
    writer = DirectWriter(transport)
    assert not writer.direct
    writer.write(b"one")
    writer.write(b"two")
    assert transport.value() == b"onetwo"
