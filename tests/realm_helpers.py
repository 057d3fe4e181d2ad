"""
Realms in memory, for federation tests: several L{Server}s, each a realm
with a L{Federation}, on one fake clock, joined by a fake network of
StringTransports that the test pumps by hand.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.federation import FederationSettings
from chat.links import RealmLink
from tests.helpers import Server, result_of

SECRET = "correct-horse-battery-staple"

_ports = itertools.count(40000)


class Wire:
    """
    One connection: a client protocol and a server protocol on two
    StringTransports. C{log} records what crossed it, in order.
    """

    def __init__(self, client: Any, server: Any, origin: str, target: str) -> None:
        self.client = client
        self.server = server
        self.origin = origin
        self.target = target
        port = next(_ports)
        self.client_transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 8889)
        )
        self.server_transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", port)
        )
        self.closed = False
        self.log: list[tuple[str, bytes]] = []
        server.makeConnection(self.server_transport)
        client.makeConnection(self.client_transport)

    def step(self) -> bool:
        """
        Move what each side wrote to the other once; close the connection
        if a side closed it and nothing is left to move.

        @return: whether anything happened.
        """
        if self.closed:
            return False
        moved = False
        data = self.client_transport.value()
        if data:
            self.client_transport.clear()
            self.log.append(("client", data))
            self.server.dataReceived(data)
            moved = True
        data = self.server_transport.value()
        if data:
            self.server_transport.clear()
            self.log.append(("server", data))
            self.client.dataReceived(data)
            moved = True
        if not moved and (
            self.client_transport.disconnecting or self.server_transport.disconnecting
        ):
            self.cut()
            moved = True
        return moved

    def client_to_server(self) -> bytes:
        """
        Move only what the client wrote.
        """
        data = self.client_transport.value()
        self.client_transport.clear()
        self.log.append(("client", data))
        self.server.dataReceived(data)
        return data

    def cut(self) -> None:
        """
        The network fails: what is in flight is lost, both sides hear.
        """
        if self.closed:
            return
        self.closed = True
        self.client_transport.clear()
        self.server_transport.clear()
        self.server.connectionLost(Failure(ConnectionLost()))
        self.client.connectionLost(Failure(ConnectionDone()))

    def sent_by_client(self) -> list[bytes]:
        """
        The lines the client sent.
        """
        data = b"".join(d for who, d in self.log if who == "client")
        return [line for line in data.split(b"\r\n") if line]


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    def __init__(self, network: Network, description: str, origin: str) -> None:
        if not description.startswith("tcp:"):
            raise ValueError(f"unknown endpoint type: {description}")
        self.network = network
        self.description = description
        self.origin = origin

    def connect(self, factory: Any) -> Deferred[Any]:
        server = self.network.servers.get(self.description)
        if server is None:
            return fail(ConnectionRefusedError("nobody listens there"))
        client = factory.buildProtocol(None)
        wire = Wire(
            client,
            server.factory.buildProtocol(None),
            self.origin,
            server.federation.realm_id,
        )
        self.network.wires.append(wire)
        return succeed(client)


class Network:
    """
    Realms by endpoint string; a realm that is down refuses connections.
    """

    def __init__(self) -> None:
        self.servers: dict[str, Any] = {}
        self.wires: list[Wire] = []

    def pump(self) -> None:
        """
        Move bytes until every connection is quiet.
        """
        for _ in range(100_000):
            if not any([wire.step() for wire in list(self.wires)]):
                return
        raise AssertionError("the network never went quiet")

    def live(self, origin: str | None = None, target: str | None = None) -> list[Wire]:
        return [
            w
            for w in self.wires
            if not w.closed
            and (origin is None or w.origin == origin)
            and (target is None or w.target == target)
        ]


def endpoint_of(realm_id: str) -> str:
    return f"tcp:host={realm_id}.test:port=8889"


def realm_server(
    realm_id: str, network: Network, clock: Clock, **settings: Any
) -> Server:
    """
    A L{Server} (with the demo users) that is realm C{realm_id}, on
    C{network}. Message ids are C{<realm>-1}, C{<realm>-2}, ...
    """
    uids = itertools.count(1)
    defaults: dict[str, Any] = {"retry_min": 1.0, "retry_max": 8.0, "timeout": 30.0}
    server = Server(
        clock=clock,
        federation=FederationSettings(realm_id, **{**defaults, **settings}),
        connect=lambda description: FakeEndpoint(network, description, realm_id),
        jitter=lambda: 0.0,
        new_uid=lambda: f"{realm_id}-{next(uids)}",
    )
    network.servers[endpoint_of(realm_id)] = server
    return server


def link(
    a: Server, b: Server, secret: str = SECRET, b_secret: str | None = None
) -> None:
    """
    Configure the link between two realms on both (as chat-admin would).
    """
    fa, fb = a.federation, b.federation
    assert fa is not None and fb is not None
    result_of(
        a.store.add_realm_link(
            RealmLink(fb.realm_id, endpoint_of(fb.realm_id), secret, 0.0)
        )
    )
    result_of(
        b.store.add_realm_link(
            RealmLink(fa.realm_id, endpoint_of(fa.realm_id), b_secret or secret, 0.0)
        )
    )


def take_down(network: Network, server: Server) -> None:
    """
    A realm stops: it refuses connections, its connections break, and it
    stops connecting out.
    """
    federation = server.federation
    assert federation is not None
    network.servers.pop(endpoint_of(federation.realm_id), None)
    for wire in network.wires:
        if federation.realm_id in (wire.origin, wire.target):
            wire.cut()
    federation.stop()


def bring_up(network: Network, server: Server) -> None:
    federation = server.federation
    assert federation is not None
    network.servers[endpoint_of(federation.realm_id)] = server
    federation.start()
