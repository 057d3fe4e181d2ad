"""
Clients behind a trusted proxy (chat.proxy): PROXY protocol headers read
on --listen from trusted proxies only, admission and limits by the address
they carry, and X-Forwarded-For on --web from trusted proxies only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from chat.limits import Limits, Rate
from chat.lines import LineConnection
from chat.proxy import (
    V1_MAX,
    V2_MAX_BODY,
    V2_SIGNATURE,
    Header,
    HeaderReader,
    InvalidHeader,
    ProxiedConnection,
    ProxyFactory,
    TrustedProxies,
    forwarded_client,
    header_v1,
    header_v2,
    listening_factory,
    proxy_network,
)
from chat.web import OriginPolicy, WebSettings, make_site
from chat.web.site import ChatSite
from tests.helpers import Server
from tests.web_helpers import LOCAL, HTTPResponse, WebSocketClient

PROXY = "10.0.0.1"
NODE = IPv4Address("TCP", "10.0.0.9", 8889)
TRUSTED = TrustedProxies.parse(["10.0.0.0/29", "fd00::/64"])


def client(host: str, port: int = 50000) -> IPv4Address | IPv6Address:
    kind = IPv6Address if ":" in host else IPv4Address
    return kind("TCP", host, port)


# The headers.


def read_whole(data: bytes) -> tuple[Header, bytes]:
    found = HeaderReader().feed(data)
    assert found is not None
    return found


def test_v1_tcp4() -> None:
    """A version 1 TCP4 header gives the client's address and port, and the
    bytes after it."""
    header, rest = read_whole(b"PROXY TCP4 192.0.2.7 10.0.0.9 51234 8889\r\nping\r\n")
    assert header.source == IPv4Address("TCP", "192.0.2.7", 51234)
    assert rest == b"ping\r\n"


def test_v1_tcp6() -> None:
    """A version 1 TCP6 header gives an IPv6 client address."""
    header, rest = read_whole(b"PROXY TCP6 2001:db8::7 fd00::9 51234 8889\r\n")
    assert header.source == IPv6Address("TCP", "2001:db8::7", 51234)
    assert rest == b""


def test_v1_unknown_keeps_the_connections_address() -> None:
    """PROXY UNKNOWN (anything after it) carries no address."""
    assert read_whole(b"PROXY UNKNOWN whatever\r\n")[0].source is None


def test_v2_tcp4_and_tcp6() -> None:
    """Version 2 PROXY headers over TCP4 and TCP6 give the client's address."""
    for source in (client("192.0.2.7", 4242), client("2001:db8::7", 4242)):
        destination = client("fd00::9" if ":" in source.host else "10.0.0.9", 8889)
        header, rest = read_whole(header_v2(source, destination) + b"ping\r\n")
        assert header.source == source
        assert rest == b"ping\r\n"


def test_v2_skips_tlvs() -> None:
    """Extensions (TLVs) after a version 2 header's addresses are skipped."""
    data = header_v2(client("192.0.2.7", 1), client("10.0.0.9", 2))
    tlv = b"\x05\x00\x03abc"  # PP2_TYPE_UNIQUE_ID
    length = int.from_bytes(data[14:16], "big") + len(tlv)
    data = data[:14] + length.to_bytes(2, "big") + data[16:] + tlv
    header, rest = read_whole(data + b"x")
    assert header.source == client("192.0.2.7", 1)
    assert rest == b"x"


def test_v2_local_keeps_the_connections_address() -> None:
    """A version 2 LOCAL header (a health check) carries no address."""
    header, rest = read_whole(header_v2(None) + b"ping haproxy\r\n")
    assert header.source is None
    assert rest == b"ping haproxy\r\n"


def test_v2_unix_and_unspec_carry_no_address() -> None:
    """Version 2 PROXY headers of other families than TCP over IPv4/IPv6
    carry no address."""
    unix = V2_SIGNATURE + b"\x21\x31" + (216).to_bytes(2, "big") + b"\0" * 216
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert read_whole(unix)[0].source is None
    assert read_whole(unspec)[0].source is None


@pytest.mark.parametrize(
    "data",
    [
        header_v1(client("192.0.2.7", 51234), client("10.0.0.9", 8889)),
        header_v2(client("2001:db8::7", 51234), client("fd00::9", 8889)),
        header_v2(None),
    ],
)
def test_split_anywhere(data: bytes) -> None:
    """A header that arrives a byte at a time is read once complete, and
    not before."""
    reader = HeaderReader()
    for byte in data[:-1]:
        assert reader.feed(bytes([byte])) is None
    found = reader.feed(data[-1:] + b"rest")
    assert found is not None
    assert found[1] == b"rest"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"ping\r\n", "no PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.9 51234\r\n", "malformed"),
        (b"PROXY TCP5 192.0.2.7 10.0.0.9 1 2\r\n", "malformed"),
        (b"PROXY TCP4 example.org 10.0.0.9 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 2001:db8::7 10.0.0.9 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 192.0.2.7 fd00::9 1 2\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.9 65536 2\r\n", "not a port"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.9 -1 2\r\n", "not a port"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.9 \xd9\xa1 2\r\n", "malformed"),
        (b"PROXY " + b"x" * V1_MAX, "too long"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\0" * 12, "version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\0" * 12, "command 2"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4, "too short"),
        (V2_SIGNATURE + b"\x21\x11" + (V2_MAX_BODY + 1).to_bytes(2, "big"), "long"),
    ],
)
def test_invalid_headers(data: bytes, why: str) -> None:
    """A malformed, unsupported or too long header is refused, saying why."""
    with pytest.raises(InvalidHeader, match=why):
        HeaderReader().feed(data)


def test_trusted_proxies() -> None:
    """Addresses in the trusted networks are trusted (IPv4-mapped IPv6 as
    IPv4); others, and non-addresses, are not."""
    assert TRUSTED.trusts("10.0.0.1")
    assert TRUSTED.trusts("::ffff:10.0.0.7")
    assert TRUSTED.trusts("fd00::1234")
    assert not TRUSTED.trusts("10.0.0.8")
    assert not TRUSTED.trusts("fd00:0:0:1::1")
    assert not TRUSTED.trusts("")
    assert not TrustedProxies().trusts("10.0.0.1")
    assert proxy_network("10.0.0.5") == "10.0.0.5/32"
    assert proxy_network("10.0.0.5/24") == "10.0.0.0/24"
    with pytest.raises(ValueError, match="not an IP address or network"):
        proxy_network("proxy.example.org")


# Admission by the carried address.


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


class Proxied:
    """
    One connection to a --listen port's factory, from C{peer}.
    """

    _port = 40000

    def __init__(self, factory: ProxyFactory, peer: str = PROXY) -> None:
        Proxied._port += 1
        address = client(peer, Proxied._port)
        self.protocol = factory.buildProtocol(address)
        assert self.protocol is not None
        self.transport = StringTransport(peerAddress=address, hostAddress=NODE)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    @property
    def line(self) -> LineConnection:
        protocol = self.protocol
        if isinstance(protocol, ProxiedConnection):
            assert isinstance(protocol.inner, LineConnection)
            return protocol.inner
        assert isinstance(protocol, LineConnection)
        return protocol

    def replies(self) -> list[dict[str, Any]]:
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(chunk) for chunk in data.split(b"\r\n\r\n") if chunk]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def proxied_server(**limits: Any) -> tuple[Server, ProxyFactory]:
    server = Server(limits=Limits(**limits))
    server.factory.open()
    return server, ProxyFactory(server.factory, TRUSTED)


def header_from(host: str, version: int = 2) -> bytes:
    make = header_v1 if version == 1 else header_v2
    return make(client(host, 51234), client("10.0.0.9", 8889))


@pytest.mark.parametrize("version", [1, 2])
def test_the_carried_address_is_the_clients(version: int) -> None:
    """Through a trusted proxy, the connection is the client's: its address,
    its peer, the reply to what followed the header."""
    server, factory = proxied_server()
    connection = Proxied(factory)
    assert server.factory.connections.total == 0  # not before the header
    connection.send(header_from("192.0.2.7", version) + b"ping hello\r\n")
    assert connection.replies() == [
        {"status": "OK", "message": "PONG", "echo": "hello"}
    ]
    assert connection.line.address == "192.0.2.7"
    assert connection.line.peer == "192.0.2.7:51234"
    assert server.factory.connections.count("192.0.2.7") == 1
    assert server.factory.connections.count(PROXY) == 0
    connection.lose()
    assert server.factory.connections.total == 0


def test_ipv6_clients_by_their_network() -> None:
    """An IPv6 client carried by a proxy counts by its /64, as a direct one."""
    _server, factory = proxied_server()
    connection = Proxied(factory, "fd00::2")
    connection.send(header_from("2001:db8::7"))
    assert connection.line.address == "2001:db8::/64"


def test_local_keeps_the_proxys_address() -> None:
    """A LOCAL header (HAProxy's health check) is the proxy's own connection."""
    _server, factory = proxied_server()
    connection = Proxied(factory)
    connection.send(header_v2(None))
    connection.send(b"ping haproxy\r\n")
    assert connection.replies()[0]["echo"] == "haproxy"
    assert connection.line.address == PROXY


def test_per_address_limit_counts_the_carried_address() -> None:
    """The per-address limit counts each client the proxy carries, not the
    proxy: a second connection from one (logged-in) client is refused, one
    from another client is not."""
    _server, factory = proxied_server(max_connections_per_address=1)
    first = Proxied(factory)
    first.send(header_from("192.0.2.7") + b"auth messi surabaya\r\n")
    assert first.replies()[0]["status"] == "OK"  # logged in: no room to make
    second = Proxied(factory)
    second.send(header_from("192.0.2.7") + b"ping\r\n")
    assert second.replies() == [
        {
            "status": "ERROR",
            "message": "too many connections from your address",
            "code": "too_many_connections",
        }
    ]
    assert second.closed
    other = Proxied(factory)
    other.send(header_from("192.0.2.8") + b"ping\r\n")
    assert other.replies()[0]["message"] == "PONG"
    assert not other.closed and not first.closed


def test_login_failures_count_by_the_carried_address() -> None:
    """Failed logins are limited per carried address: one client's failures
    do not lock out another behind the same proxy."""
    _server, factory = proxied_server(login_failures_per_address=Rate(2, 60))
    guesser = Proxied(factory)
    guesser.send(header_from("192.0.2.7"))
    for _ in range(3):
        guesser.send(b"auth messi wrong\r\n")
    assert guesser.replies()[-1]["code"] == "rate_limited"
    other = Proxied(factory)
    other.send(header_from("192.0.2.8") + b"auth messi wrong\r\n")
    assert other.replies()[0]["code"] == "wrong_password"


@pytest.mark.parametrize(
    "data", [b"ping\r\n", b"PROXY TCP4 nonsense\r\n", V2_SIGNATURE + b"\x11\x11\0\0"]
)
def test_invalid_header_closes(data: bytes, events: EventLoggingObserver) -> None:
    """A connection from a trusted proxy without a valid header is closed,
    with one log line and no traceback, and never counted."""
    server, factory = proxied_server()
    connection = Proxied(factory)
    connection.send(data)
    assert connection.closed
    assert connection.transport.value() == b""
    assert server.factory.connections.total == 0
    warnings = [
        e for e in events if "Closing a connection from proxy" in e["log_format"]
    ]
    assert len(warnings) == 1
    assert not [e for e in events if "log_failure" in e]
    connection.send(b"ping\r\n")  # whatever follows is ignored
    connection.lose()
    assert server.factory.connections.total == 0


def test_header_too_slow_closes(events: EventLoggingObserver) -> None:
    """A header not complete within the line timeout closes the connection."""
    server, factory = proxied_server(line_timeout=5.0)
    connection = Proxied(factory)
    connection.send(b"PROXY TCP4 192.0")
    server.clock.advance(4.9)
    assert not connection.closed
    server.clock.advance(0.2)
    assert connection.closed
    assert any("no PROXY header in time" in str(e.get("why")) for e in events)
    connection.lose()


def test_header_in_time_cancels_the_timer() -> None:
    """Once the header is read, its deadline is gone."""
    server, factory = proxied_server(line_timeout=5.0)
    connection = Proxied(factory)
    connection.send(header_from("192.0.2.7"))
    assert not any(
        call.func == connection.protocol._refuse
        for call in server.clock.getDelayedCalls()
    )
    server.clock.advance(60)
    assert not connection.closed


def test_untrusted_peer_is_direct() -> None:
    """A PROXY header from an address that is not a trusted proxy is not
    honoured: it is an unknown command from that address."""
    server, factory = proxied_server(max_connections_per_address=1)
    connection = Proxied(factory, "192.0.2.50")
    assert isinstance(connection.protocol, LineConnection)
    connection.send(header_from("192.0.2.7", 1))
    (reply,) = connection.replies()
    assert reply["status"] == "ERROR"
    assert connection.line.address == "192.0.2.50"
    assert server.factory.connections.count("192.0.2.7") == 0


def test_half_close_passes_through() -> None:
    """A client that half-closes through the proxy still gets its replies,
    then the close."""
    _server, factory = proxied_server()
    connection = Proxied(factory)
    connection.send(header_from("192.0.2.7") + b"ping a\r\nping b\r\n")
    connection.protocol.readConnectionLost()  # type: ignore[attr-defined]
    assert [r["echo"] for r in connection.replies()] == ["a", "b"]
    assert connection.closed


def test_half_close_before_the_header_closes() -> None:
    """A proxy connection that half-closes before its header is closed,
    never counted."""
    server, factory = proxied_server()
    connection = Proxied(factory)
    connection.send(b"PROXY TCP4")
    connection.protocol.readConnectionLost()  # type: ignore[attr-defined]
    assert connection.closed
    connection.lose()
    assert server.factory.connections.total == 0


def test_no_proxies_no_wrapping(events: EventLoggingObserver) -> None:
    """Without trusted proxies, and on TLS endpoints (with a warning), the
    chat factory listens as it is."""
    server = Server()
    assert listening_factory(server.factory, TrustedProxies(), "tcp:0") is (
        server.factory
    )
    assert listening_factory(server.factory, TRUSTED, "ssl:0:privateKey=k") is (
        server.factory
    )
    assert isinstance(listening_factory(server.factory, TRUSTED, "tcp:0"), ProxyFactory)
    (warning,) = [e for e in events if "TLS endpoint" in e["log_format"]]
    assert warning["description"] == "ssl:0:privateKey=k"


class Reader(Protocol):
    """
    A client that sends C{data} and fires C{answered} with the first reply.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.answered: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.endswith(b"\r\n\r\n") and not self.answered.called:
            self.answered.callback(self.received)


@pytest_twisted.ensureDeferred
async def test_direct_writes_through_a_real_proxy_connection() -> None:
    """Over real loopback TCP, a connection whose header carries another
    address is admitted as that address, answers, and still writes to its
    socket directly (chat.directwrite)."""
    server, _ = proxied_server()
    local = ProxyFactory(server.factory, TrustedProxies.parse(["127.0.0.1"]))
    port = reactor.listenTCP(0, local, interface="127.0.0.1")  # type: ignore[attr-defined]
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    reader = Reader(header_from("192.0.2.7") + b"ping direct\r\n")
    try:
        await connectProtocol(endpoint, reader)
        answered = reader.answered
        answered.addTimeout(30, reactor)  # type: ignore[arg-type]
        data = await answered
        assert json.loads(data[:-4])["echo"] == "direct"
        (line,) = list(server.factory._new)
        assert isinstance(line, LineConnection)
        assert line.address == "192.0.2.7"
        assert line._writer is not None and line._writer.direct
    finally:
        if reader.transport is not None:
            reader.transport.loseConnection()
        await port.stopListening()


# X-Forwarded-For on --web.


def test_forwarded_client() -> None:
    """The client is the right-most address that is not a trusted proxy;
    ports and brackets are dropped; garbage gives nothing."""
    assert forwarded_client([b"192.0.2.7"], TRUSTED) == "192.0.2.7"
    assert forwarded_client([b"6.6.6.6, 192.0.2.7, 10.0.0.2"], TRUSTED) == ("192.0.2.7")
    assert forwarded_client([b"6.6.6.6", b"192.0.2.7:443"], TRUSTED) == "192.0.2.7"
    assert forwarded_client([b"[2001:db8::7]:443"], TRUSTED) == "2001:db8::7"
    assert forwarded_client([b"10.0.0.3, 10.0.0.2"], TRUSTED) == "10.0.0.3"
    assert forwarded_client([b"unknown"], TRUSTED) is None
    assert forwarded_client([b""], TRUSTED) is None
    assert forwarded_client(None, TRUSTED) is None


def web(server: Server, **limits: Any) -> ChatSite:
    return make_site(
        server.factory,
        WebSettings(1024 * 1024, True),
        OriginPolicy(),
        reactor=server.clock,
        limits=Limits(**limits),
        proxies=TRUSTED,
    )


def request(site: ChatSite, peer: IPv4Address, forwarded: str | None) -> Any:
    """
    A connection from C{peer} with one request naming C{forwarded}; the
    channel, still open, and its transport.
    """
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=LOCAL)
    channel.makeConnection(transport)
    headers = "Host: 127.0.0.1:8080\r\n"
    if forwarded is not None:
        headers += f"X-Forwarded-For: {forwarded}\r\n"
    channel.dataReceived(f"GET /config.json HTTP/1.1\r\n{headers}\r\n".encode())
    return channel, transport


def test_web_trusted_proxy_counts_each_client() -> None:
    """Requests through a trusted proxy count against their clients' limits:
    a third connection of one client is refused with 503, another client's
    is served."""
    server = Server()
    site = web(server, max_web_connections_per_address=2)
    proxy = client(PROXY, 1)
    for _ in range(2):
        channel, transport = request(site, proxy, "192.0.2.7")
        assert HTTPResponse(transport.value()).status == 200
        assert channel.counted_as == "192.0.2.7"
    _, transport = request(site, proxy, "192.0.2.7")
    refused = HTTPResponse(transport.value())
    assert refused.status == 503
    assert refused.headers["retry-after"] == "10"
    assert transport.disconnecting
    assert site.connections.count("192.0.2.7") == 2
    _, transport = request(site, proxy, "192.0.2.8")
    assert HTTPResponse(transport.value()).status == 200
    assert site.connections.count("192.0.2.8") == 1
    assert site.connections.count(PROXY) == 0


def test_web_untrusted_peer_header_ignored() -> None:
    """X-Forwarded-For from a peer that is not a trusted proxy is ignored:
    the connection counts as the peer's."""
    server = Server()
    site = web(server, max_web_connections_per_address=1)
    peer = client("192.0.2.50", 1)
    channel, transport = request(site, peer, "192.0.2.7")
    assert HTTPResponse(transport.value()).status == 200
    assert channel.counted_as == "192.0.2.50"
    _, transport = request(site, peer, "192.0.2.8")
    assert HTTPResponse(transport.value()).status == 503


def test_web_proxy_without_header_is_the_proxy() -> None:
    """A trusted proxy's connection without X-Forwarded-For stays the
    proxy's, exempt from the per-address limit but not from the total."""
    server = Server()
    site = web(server, max_web_connections=3, max_web_connections_per_address=1)
    for _ in range(3):
        channel, transport = request(site, client(PROXY, 1), None)
        assert HTTPResponse(transport.value()).status == 200
        assert channel.counted_as == PROXY
    _, transport = request(site, client(PROXY, 1), None)
    assert HTTPResponse(transport.value()).status == 503


def test_websocket_through_a_trusted_proxy_is_the_clients() -> None:
    """A WebSocket through a trusted proxy is a chat connection of the
    client X-Forwarded-For names; through another peer, of that peer."""
    server = Server()
    server.factory.open()
    site = web(server)
    ws = WebSocketClient(
        site, peer=client(PROXY, 2), headers={"x-forwarded-for": "192.0.2.7"}
    )
    assert ws.request("ping")["message"] == "PONG"
    assert server.factory.connections.count("192.0.2.7") == 1
    other = WebSocketClient(
        site, peer=client("192.0.2.50", 2), headers={"x-forwarded-for": "192.0.2.7"}
    )
    assert other.request("ping")["message"] == "PONG"
    assert server.factory.connections.count("192.0.2.50") == 1
    assert server.factory.connections.count("192.0.2.7") == 1
