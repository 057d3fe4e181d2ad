"""
What the web site refuses (chat.web.site, chat.web.hosts): host names it
does not serve (DNS rebinding), connections over its limits, and the
errors Twisted's HTTP parser answers by itself, all with the security
headers; and what it does not log.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from chat.limits import Limits
from chat.web import OriginPolicy, WebSettings, make_site
from chat.web.hosts import HostPolicy, header_host, host_name
from chat.web.site import ChatSite
from tests.helpers import Server
from tests.web_helpers import LOCAL, PEER, HTTPResponse, WebSocketClient, http


def site_of(
    server: Server,
    limits: Limits | None = None,
    hosts: HostPolicy | None = None,
    origins: list[str] | None = None,
) -> ChatSite:
    return make_site(
        server.factory,
        WebSettings(1024 * 1024, True),
        OriginPolicy.from_strings(origins or []),
        reactor=Clock(),
        hosts=hosts,
        limits=limits,
    )


def assert_locked_down(headers: dict[str, str]) -> None:
    """
    The security headers of every response (the policy without the
    request's host, which a refused request may not have).
    """
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"


def raw(site: ChatSite, data: bytes, peer: IPv4Address = PEER) -> HTTPResponse:
    """
    Bytes to a new connection; the response the site wrote.
    """
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=LOCAL)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    response = HTTPResponse(transport.value())
    channel.connectionLost(Failure(ConnectionDone()))
    return response


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


# Host names (DNS rebinding).


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("Chat.Example.org", "chat.example.org"),
        ("localhost.:8080", "localhost"),
        ("[::1]:8080", "::1"),
        ("", None),
        (None, None),
        ("evil.example:80:80", None),
        ("user@evil.example", None),
        ("evil example", None),
        ("[not-v6]", None),
        (".", None),
    ],
)
def test_header_host(header: str | None, host: str | None) -> None:
    """A Host header gives its host, normalised, or None if malformed."""
    assert header_host(header) == host


def test_host_policy() -> None:
    """Addresses, localhost, the machine's name, the hosts of the allowed
    origins and the extra hosts are served; other names are not."""
    policy = HostPolicy.build(
        OriginPolicy.from_strings(["https://chat.example.org"]).allowed,
        ["Public.Example.net."],
        machine="LabPC",
    )
    for host in [
        "127.0.0.1",
        "10.1.2.3",
        "::1",
        "localhost",
        "labpc",
        "chat.example.org",
        "public.example.net",
    ]:
        assert policy.allows(host), host
    for host in ["evil.example", "localhost.evil.example", "chat.example.org.evil"]:
        assert not policy.allows(host), host
    with pytest.raises(ValueError, match="not a host name"):
        host_name("http://x")


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"])
def test_served_hosts_are_answered(host: str) -> None:
    """The page is served to the addresses and names the site serves."""
    site = site_of(Server())
    response = raw(site, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert response.status == 200


def test_other_host_names_get_421_with_the_headers() -> None:
    """A request naming another host (a rebound DNS name) is answered 421,
    locked down like every response; without a Host header, 400."""
    site = site_of(Server())
    response = raw(site, b"GET / HTTP/1.1\r\nHost: evil.example:8080\r\n\r\n")
    assert response.status == 421
    assert b"--web-host" in response.body
    assert_locked_down(response.headers)
    for request in [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    ]:
        response = raw(site, request)
        assert response.status == 400
        assert_locked_down(response.headers)


def test_rebound_websocket_is_refused() -> None:
    """A page of a rebound name is same-origin to itself: its WebSocket
    passes the origin check, so the host check must refuse it, before any
    chat protocol exists."""
    server = Server()
    built: list[Any] = []
    build = server.factory.buildProtocol
    server.factory.buildProtocol = lambda addr: built.append(addr) or build(addr)  # type: ignore[method-assign,func-returns-value]
    client = WebSocketClient(
        site_of(server), origin="http://evil.example:8080", host="evil.example:8080"
    )
    assert client.rejected == 421
    assert built == []


def test_extra_hosts_are_served() -> None:
    """A name given with --web-host (or an origin's host) is served."""
    policy = HostPolicy.build(hosts=["chat.example.org"])
    site = site_of(Server(), hosts=policy)
    response = raw(site, b"GET / HTTP/1.1\r\nHost: chat.example.org\r\n\r\n")
    assert response.status == 200
    site = site_of(Server(), origins=["https://chat.example.org"])
    assert http(site, "/").status == 200  # 127.0.0.1:8080
    response = raw(site, b"GET / HTTP/1.1\r\nHost: chat.example.org:443\r\n\r\n")
    assert response.status == 200


# Twisted's own errors.


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"x" * 20_000 + b"\r\n\r\n",
        b"GET /" + b"x" * 20_000 + b" HTTP/1.1\r\n\r\n",
    ],
)
def test_twisteds_own_bad_request_is_locked_down(request_bytes: bytes) -> None:
    """The 400 Bad Request Twisted's HTTP parser answers by itself (a bad
    request line, header or length; a line too long) carries the security
    headers too."""
    response = raw(site_of(Server()), request_bytes)
    assert response.status == 400
    assert_locked_down(response.headers)
    assert response.headers["connection"] == "close"


# Connection limits.


def connect(site: ChatSite, host: str = "127.0.0.1") -> tuple[Any, StringTransport]:
    peer = IPv4Address("TCP", host, 50000)
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=LOCAL)
    channel.makeConnection(transport)
    return channel, transport


def test_connections_over_the_limits_get_503() -> None:
    """Past the per-address and total limits a connection is answered 503
    (locked down) and closed; a closed connection makes room again."""
    site = site_of(
        Server(),
        Limits(max_web_connections=3, max_web_connections_per_address=2),
    )
    first, _ = connect(site)
    connect(site)
    _, transport = connect(site)
    response = HTTPResponse(transport.value())
    assert response.status == 503
    assert_locked_down(response.headers)
    assert b"too many connections from your address" in response.body
    assert transport.disconnecting
    connect(site, "10.0.0.2")
    _, transport = connect(site, "10.0.0.3")
    assert HTTPResponse(transport.value()).status == 503
    assert site.connections.total == 3
    first.connectionLost(Failure(ConnectionDone()))
    assert site.connections.total == 2
    _, transport = connect(site)
    assert transport.value() == b""  # admitted: waiting for its request


def test_a_websocket_counts_as_a_chat_connection() -> None:
    """Once a connection is a WebSocket it leaves the web limits (the chat
    connection limits count it), so open chats do not crowd out pages."""
    server = Server()
    site = site_of(
        server, Limits(max_web_connections=1, max_web_connections_per_address=1)
    )
    client = WebSocketClient(site)
    assert client.accepted
    assert site.connections.total == 0
    assert server.factory.connections.total == 1
    assert http(site, "/").status == 200
    client.lose()
    assert server.factory.connections.total == 0


def test_refusals_are_logged_once_a_minute(events: EventLoggingObserver) -> None:
    """Thousands of refused connections make one warning a minute, with
    their count, not a line each."""
    site = site_of(
        Server(), Limits(max_web_connections=1, max_web_connections_per_address=1)
    )
    clock: Clock = site.reactor
    connect(site)
    for _ in range(500):
        connect(site)
    clock.advance(61)
    for _ in range(20):
        connect(site)
    warnings = [e for e in events if "web connections" in e["log_format"]]
    assert [e["count"] for e in warnings] == [1, 499 + 1]
    assert all(e["log_level"] == LogLevel.warn for e in warnings)


def test_nothing_per_connection_at_info(events: EventLoggingObserver) -> None:
    """Requests, and connections closed for idling, log nothing at info or
    above (Twisted logs every request and every idle timeout at info)."""
    site = site_of(Server())
    clock: Clock = site.reactor
    site.startFactory()
    try:
        assert http(site, "/").status == 200
        _, transport = connect(site)
        clock.advance(61)
        assert transport.disconnecting
        clock.advance(16)
    finally:
        site.stopFactory()
    assert [e for e in events if e["log_level"] >= LogLevel.info] == []


def test_a_crash_in_a_resource_is_locked_down_too() -> None:
    """Twisted's own 500 page, for a resource that raised, carries the
    security headers (they are set before any resource runs)."""

    class Boom(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            raise RuntimeError("a bug")

    site = ChatSite(Boom(), HostPolicy.build(), Limits(), reactor=Clock())
    response = raw(site, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert response.status == 500
    assert_locked_down(response.headers)
    assert b"a bug" not in response.body
