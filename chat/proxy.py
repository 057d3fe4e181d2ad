"""
Clients behind a proxy (C{--trusted-proxy}): their own address, not the
proxy's, for the per-address limits, the failure limits and the logs.

Only a connection from a trusted proxy's address says who the client is;
anyone else's word for it is ignored, since a client could name any
address and escape every per-address limit.

 - C{--listen}: a connection from a trusted proxy begins with a PROXY
   protocol header (version 1, text, or version 2, binary: HAProxy's
   C{send-proxy} and C{send-proxy-v2}). L{ProxyFactory} reads it
   (L{HeaderReader}) before anything else, then has the chat factory build
   the connection for the address the header carries: it is admitted, and
   counted, as that client. A version 2 C{LOCAL} header (HAProxy's health
   checks) or a version 1 C{UNKNOWN} one keeps the proxy's own address. A
   header that is malformed or too long, or does not arrive within the
   line timeout, closes the connection. Until its header is read, a
   connection is not counted by the chat's limits (only a trusted proxy
   makes one, and the line timeout bounds how long it waits). Connections
   from other addresses are taken as they come, without reading a header.
 - C{--web}: a request from a trusted proxy names its client in
   C{X-Forwarded-For}; L{forwarded_client} finds it (the right-most address
   there that is not a trusted proxy itself).

Why a parser of our own rather than Twisted's
(C{twisted.protocols.haproxy}): its wrapper builds the chat's protocol when
the proxy connects, with the proxy's address, so admission cannot use the
carried one; and its parsers are private modules that let a malformed
header through as another exception (a port that is not a number), accept
any text as a version 1 address, cannot read a version 2 header split in
its first 16 bytes, and take a version 2 header of any length. The
protocol is short (https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt).

The header is read on plain TCP endpoints only: on a TLS endpoint it would
come before the TLS handshake, under the TLS layer Twisted's endpoint puts
below the chat. Behind a proxy, let the proxy terminate TLS.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.logs import make_logger

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = IPv4Address | IPv6Address

_log = make_logger("chat.proxy")

#: The start of a version 1 header, and of a version 2 one.
V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest version 1 header, CR LF included (the specification's).
V1_MAX = 107
#: The most bytes of addresses and extensions (TLVs) after a version 2
#: header's first 16: room for any address and HAProxy's usual TLVs.
V2_MAX_BODY = 2048


def proxy_network(text: str) -> str:
    """
    A trusted proxy's address or network (C{10.0.0.5}, C{10.0.0.0/24},
    C{fd00::/64}), as it will be compared.

    @raise ValueError: if it is neither.
    """
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f"not an IP address or network: {text!r} (examples: 10.0.0.5 "
            "10.0.0.0/24 fd00::/64)"
        ) from None


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    An IP address (an IPv4-mapped IPv6 one as IPv4), or None.
    """
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


@attrs.frozen
class TrustedProxies:
    """
    The addresses whose word about a client's address is believed.
    """

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(t, strict=False) for t in texts))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        """
        Whether C{host} (an address as text) is a trusted proxy's.
        """
        address = parse_ip(host)
        if address is None:
            return False
        return any(address in network for network in self.networks)


def forwarded_client(
    values: Sequence[bytes] | None, proxies: TrustedProxies
) -> str | None:
    """
    The client named by the C{X-Forwarded-For} headers of a request that a
    trusted proxy sent: the right-most address that is not a trusted proxy
    (each proxy appends the address it was connected from; what is left of
    the first one not trusted may be anything the client wrote). If all are
    trusted, the left-most.

    @return: None without an address, or if the one to take is not an IP
        address (the request then counts as the proxy's own).
    """
    entries = [
        entry.strip()
        for value in values or ()
        for entry in value.decode("latin-1").split(",")
    ]
    entries = [entry for entry in entries if entry]
    chosen = None
    for entry in reversed(entries):
        address = parse_ip(_without_port(entry))
        if address is None:
            return None
        chosen = str(address)
        if not proxies.trusts(chosen):
            break
    return chosen


def _without_port(entry: str) -> str:
    """
    C{[2001:db8::1]:443} and C{192.0.2.1:443} without the port.
    """
    if entry.startswith("["):
        return entry[1:].split("]", 1)[0]
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


class InvalidHeader(Exception):
    """
    Not a PROXY protocol header, or a malformed one; says why.
    """


@attrs.frozen
class Header:
    """
    What a PROXY header said.

    @ivar source: the client's address; None for the connection's own
        (a C{LOCAL} or C{UNKNOWN} header, or an address family other than
        TCP over IPv4 or IPv6).
    """

    source: Address | None


class HeaderReader:
    """
    Reads a PROXY protocol header, version 1 or 2, from the first bytes of
    a connection, however they are split.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[Header, bytes] | None:
        """
        @return: None until the header is complete; then it and the bytes
            after it.
        @raise InvalidHeader: if the bytes cannot be the start of a header.
        """
        buffer = self._buffer = self._buffer + data
        start = buffer[: len(V2_SIGNATURE)]
        if V2_SIGNATURE.startswith(start):
            return self._v2()
        if V1_SIGNATURE.startswith(buffer[: len(V1_SIGNATURE)]):
            return self._v1()
        raise InvalidHeader("no PROXY protocol header")

    def _v1(self) -> tuple[Header, bytes] | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX:
                raise InvalidHeader("version 1 header too long")
            return None
        return parse_v1(buffer[:end]), buffer[end + 2 :]

    def _v2(self) -> tuple[Header, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 16:
            return None
        (length,) = struct.unpack("!H", buffer[14:16])
        if length > V2_MAX_BODY:
            raise InvalidHeader(f"version 2 header too long ({16 + length} bytes)")
        if len(buffer) < 16 + length:
            return None
        return parse_v2(buffer[: 16 + length]), buffer[16 + length :]


def parse_v1(line: bytes) -> Header:
    """
    A version 1 header, without its CR LF: C{PROXY TCP4 <source> <dest>
    <source port> <dest port>}, the same with C{TCP6}, or C{PROXY UNKNOWN}
    (followed by anything).
    """
    words = line.split(b" ")
    if len(words) >= 2 and words[:2] == [b"PROXY", b"UNKNOWN"]:
        return Header(None)
    if len(words) != 6 or words[1] not in (b"TCP4", b"TCP6"):
        raise InvalidHeader("malformed version 1 header")
    try:
        text = [word.decode("ascii") for word in words[2:]]
    except UnicodeDecodeError:
        raise InvalidHeader("malformed version 1 header") from None
    source, _, source_port, _ = text
    if words[1] == b"TCP4":
        return Header(IPv4Address("TCP", _ip(source, 4), _port(source_port)))
    return Header(IPv6Address("TCP", _ip(source, 6), _port(source_port)))


def _ip(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None or address.version != version:
        raise InvalidHeader(f"not an IPv{version} address in the header")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > 65535:
        raise InvalidHeader("not a port in the header")
    return int(text)


#: Version 2's address families with a TCP address: the address block's
#: format, and the address's type.
_V2_TCP: dict[int, tuple[str, Any]] = {
    0x11: ("!4s4sHH", IPv4Address),
    0x21: ("!16s16sHH", IPv6Address),
}


def parse_v2(header: bytes) -> Header:
    """
    A whole version 2 header: 16 bytes (signature, version and command,
    family and protocol, length), then the addresses and any TLVs.
    """
    if header[:12] != V2_SIGNATURE:
        raise InvalidHeader("no PROXY protocol header")
    version, command = header[12] >> 4, header[12] & 0x0F
    if version != 2:
        raise InvalidHeader(f"PROXY protocol version {version} is not supported")
    if command == 0:  # LOCAL: the proxy speaking for itself
        return Header(None)
    if command != 1:
        raise InvalidHeader(f"unknown version 2 command {command}")
    found = _V2_TCP.get(header[13])
    if found is None:
        return Header(None)  # UNSPEC, UDP, UNIX: the connection's own address
    layout, kind = found
    size = struct.calcsize(layout)
    if len(header) < 16 + size:
        raise InvalidHeader("version 2 header too short for its addresses")
    source, _, source_port, _ = struct.unpack(layout, header[16 : 16 + size])
    return Header(kind("TCP", str(ipaddress.ip_address(source)), source_port))


def header_v1(source: Address, destination: Address) -> bytes:
    """
    The version 1 header a proxy sends for a connection from C{source} to
    C{destination} (for tests and tools).
    """
    family = "TCP6" if isinstance(source, IPv6Address) else "TCP4"
    return (
        f"PROXY {family} {source.host} {destination.host} "
        f"{source.port} {destination.port}\r\n"
    ).encode("ascii")


def header_v2(source: Address | None, destination: Address | None = None) -> bytes:
    """
    The version 2 header a proxy sends for a connection from C{source} to
    C{destination}; C{LOCAL} without a source (for tests and tools).
    """
    if source is None or destination is None:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    six = isinstance(source, IPv6Address)
    layout = "!16s16sHH" if six else "!4s4sHH"
    body = struct.pack(
        layout,
        ipaddress.ip_address(source.host).packed,
        ipaddress.ip_address(destination.host).packed,
        source.port,
        destination.port,
    )
    family = 0x21 if six else 0x11
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


@implementer(IHalfCloseableProtocol)
class ProxiedConnection(Protocol):
    """
    A connection from a trusted proxy: reads the PROXY header, then has the
    wrapped factory build the connection's protocol for the address the
    header carries, and passes everything on to it. That protocol gets the
    connection's own transport (so what it does below Twisted's API, like
    L{chat.directwrite}, works as on a direct connection).
    """

    log = make_logger()

    def __init__(self, factory: ProxyFactory, proxy: Any) -> None:
        self.factory = factory
        self.proxy = proxy
        self.inner: Protocol | None = None
        self._reader: HeaderReader | None = HeaderReader()
        self._timeout: IDelayedCall | None = None

    def _proxy_name(self) -> str:
        proxy = self.proxy
        return f"{getattr(proxy, 'host', proxy)}:{getattr(proxy, 'port', '')}"

    def connectionMade(self) -> None:
        wrapped = self.factory.wrapped
        self._timeout = wrapped.clock.callLater(
            wrapped.limits.line_timeout, self._refuse, "no PROXY header in time"
        )

    def dataReceived(self, data: bytes) -> None:
        inner = self.inner
        if inner is not None:
            inner.dataReceived(data)
            return
        if self._reader is None:
            return  # refused, closing
        try:
            found = self._reader.feed(data)
        except InvalidHeader as e:
            self._refuse(str(e))
            return
        if found is None:
            return
        header, rest = found
        self._reader = None
        self._cancel_timeout()
        client = header.source if header.source is not None else self.proxy
        inner = self.inner = self.factory.wrapped.buildProtocol(client)
        if header.source is not None:
            self.log.debug(
                "Proxy {proxy} carries a connection from {client}",
                proxy=self._proxy_name(),
                client=f"{client.host}:{client.port}",
            )
        assert self.transport is not None
        inner.makeConnection(self.transport)
        if rest:
            inner.dataReceived(rest)

    def _refuse(self, why: str) -> None:
        self._cancel_timeout()
        self._reader = None
        self.log.warn(
            "Closing a connection from proxy {proxy}: {why}",
            proxy=self._proxy_name(),
            why=why,
        )
        assert self.transport is not None
        self.transport.loseConnection()

    def _cancel_timeout(self) -> None:
        timeout, self._timeout = self._timeout, None
        if timeout is not None and timeout.active():
            timeout.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timeout()
        if self.inner is not None:
            self.inner.connectionLost(reason)

    def readConnectionLost(self) -> None:
        inner = self.inner
        if inner is not None and IHalfCloseableProtocol.providedBy(inner):
            inner.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        inner = self.inner
        if inner is not None and IHalfCloseableProtocol.providedBy(inner):
            inner.writeConnectionLost()


class ProxyFactory(Factory):
    """
    Wraps the chat factory of a C{--listen} port: a connection from a
    trusted proxy is a L{ProxiedConnection} until its header is read; any
    other is built by the chat factory at once, as without proxies.
    """

    noisy = False

    def __init__(self, wrapped: Any, proxies: TrustedProxies) -> None:
        self.wrapped = wrapped
        self.proxies = proxies

    def logPrefix(self) -> str:
        prefix: str = self.wrapped.logPrefix()
        return prefix

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self.proxies.trusts(str(getattr(addr, "host", "") or "")):
            return ProxiedConnection(self, addr)
        built: Protocol | None = self.wrapped.buildProtocol(addr)
        return built


def is_tls(description: str) -> bool:
    """
    Whether an endpoint description is a TLS one.
    """
    return description.split(":", 1)[0] in ("ssl", "tls")


def listening_factory(factory: Any, proxies: TrustedProxies, description: str) -> Any:
    """
    The factory to listen with on the C{--listen} endpoint C{description}:
    C{factory}, wrapped to read PROXY headers from trusted proxies on a
    plain TCP endpoint.
    """
    if not proxies:
        return factory
    if is_tls(description):
        _log.warn(
            "--trusted-proxy: PROXY headers are not read on the TLS endpoint "
            "{description} (let the proxy terminate TLS): its connections are "
            "taken as they come",
            description=description,
        )
        return factory
    return ProxyFactory(factory, proxies)
