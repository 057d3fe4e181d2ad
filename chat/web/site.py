"""
The web client's HTTP side: the page's static files, its settings, and the
headers that lock the page down.

Routes::

    GET /              index.html, with the settings in it
    GET /<file>        the files of chat/web/static (css, js modules, icons)
    GET /config.json   the settings: what the page needs to know about
                       this server (its limits, and its rules for names
                       from chat.web.rules)
    GET /ws            the WebSocket (chat.web.socket), same origin only

The page carries its settings in a C{<meta name="chat-settings">} element
(L{with_settings}): data, not script, so the policy below stays strict, and
the page knows them as it loads.

Every response carries a Content-Security-Policy that allows scripts,
styles and connections from the page's own origin only (no inline script,
no framing), C{X-Content-Type-Options: nosniff} and C{Referrer-Policy:
no-referrer}: the site's own answers (L{SecureRequest}), the errors
Twisted's HTTP parser answers by itself (C{400 Bad Request}, in
L{SecureChannel}), and the refusal of a connection over the limits
(L{refusal}). Static files have an ETag from a hash of their content and
C{Cache-Control: no-cache}: browsers revalidate each time and get a 304
while the file is unchanged, so a new release is never mixed with cached
files of the old one.

Before anything else, a request must name a host the site serves
(L{chat.web.hosts}, against DNS rebinding): otherwise C{421}.

Connections (L{ChatSite}): at most C{max_web_connections} plain HTTP
connections at once, and C{max_web_connections_per_address} from one
address; one more is answered C{503} and closed. A connection from a
trusted proxy (C{--trusted-proxy}) counts in the total only, until a
request on it names its client in C{X-Forwarded-For}: from then on it
counts as that client's, and the request's client address (the
WebSocket's too) is that one. A WebSocket, once open,
is a chat connection and counts against the chat's limits instead. Idle
connections are closed after a minute. None of this logs a line per
connection or per request at C{info}: refusals are summed up at most once
a minute, and each request's access line is logged at C{debug}.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, combinedLogFormatter, datetimeToLogString
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from chat.limits import ConnectionTracker, Limits, address_key
from chat.logs import debugging, make_logger
from chat.proxy import TrustedProxies, forwarded_client
from chat.web.hosts import HostPolicy, header_host
from chat.web.origins import OriginPolicy
from chat.web.plain import PlainResource
from chat.web.rules import page_rules
from chat.web.socket import ChatWebSocketResource

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json",
}

#: A Host header safe to repeat in the policy (name or address, maybe a port).
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def content_security_policy(host: str | None) -> str:
    """
    The page's policy. C{'self'} already covers same-origin WebSockets in
    current browsers; the ws:/wss: URLs of the host say so for older ones.
    """
    connect = "'self'"
    if host and _HOST.fullmatch(host):
        connect = f"'self' ws://{host} wss://{host}"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' blob:",
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(host: str | None) -> list[tuple[str, str]]:
    """
    The headers every response carries, for a request to C{host} (its
    C{Host} header; None if unknown).
    """
    return [
        ("content-security-policy", content_security_policy(host)),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
    ]


def raw_response(status: str, body: bytes, *extra: tuple[str, str]) -> bytes:
    """
    A whole C{HTTP/1.1} response with the security headers, for answers
    written straight to a connection (no request object to write them).
    """
    headers = [
        *security_headers(None),
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
        ("connection", "close"),
        *extra,
    ]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode("ascii") + body


def _host(address: Any) -> str:
    return str(getattr(address, "host", "") or "")


class SecureRequest(Request):
    """
    A request whose every response carries the security headers, whatever
    resource (or error page) answers it, and that is answered only for a
    host the site serves.
    """

    log = make_logger()

    def process(self) -> None:
        header = self.getHeader("host")
        for name, value in security_headers(None if header is None else header.strip()):
            self.setHeader(name, value)
        site = getattr(self.channel, "site", None)
        if site is not None and not self._from_forwarded_client(site):
            return
        hosts: HostPolicy | None = getattr(site, "hosts", None)
        if hosts is not None:
            host = header_host(header)
            if host is None:
                self._refuse(400, b"missing or malformed Host header\n")
                return
            if not hosts.allows(host):
                self.log.debug(
                    "Refused a web request from {peer} for host {host}",
                    peer=self.getClientAddress(),
                    host=host,
                )
                self._refuse(
                    421,
                    b"this server does not serve that host name"
                    b" (see twistd chat --web-host)\n",
                )
                return
        super().process()

    def _from_forwarded_client(self, site: ChatSite) -> bool:
        """
        A request from a trusted proxy is its client's, as named in
        C{X-Forwarded-For} (L{chat.proxy.forwarded_client}): the client's
        address is the request's, and the connection counts against the
        client's limit from now on.

        @return: whether to go on (False: refused, over the limits).
        """
        proxies = site.proxies
        if not proxies or not proxies.trusts(_host(self.channel.getPeer())):
            return True
        client = forwarded_client(
            self.requestHeaders.getRawHeaders(b"x-forwarded-for"), proxies
        )
        if client is None:
            return True
        kind = IPv6Address if ":" in client else IPv4Address
        self.client = kind("TCP", client, 0)
        channel: Any = self.channel
        refused = site.count_as(channel, address_key(client))
        if refused is None:
            return True
        self.setHeader("retry-after", "10")
        self.setHeader("connection", "close")
        self._refuse(503, f"{refused}; try again later\n".encode("ascii"))
        channel.loseConnection()  # no longer counted: closed
        return False

    def _refuse(self, code: int, body: bytes) -> None:
        self.setResponseCode(code)
        self.setHeader("content-type", "text/plain; charset=utf-8")
        self.setHeader("content-length", str(len(body)))
        self.write(body)
        self.finish()


class SecureChannel(HTTPChannel):
    """
    The HTTP channel of the web site: Twisted's, with the security headers
    on the errors its parser answers by itself, its idle timeout logged at
    debug only, and the site told when it closes (or becomes a WebSocket).
    """

    log = make_logger()
    site: ChatSite
    #: The address this connection counts against, until it is released.
    counted_as: str | None = None
    _abort: IDelayedCall | None = None

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own "400 Bad Request" (a malformed request line, headers
        # too long or malformed, a bad body length...) has no headers at all.
        self.transport.write(raw_response("400 Bad Request", b"bad request\n"))  # type: ignore[union-attr]
        self.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        # A request line or header longer than MAX_LENGTH: Twisted would
        # just close the connection.
        self._respondToBadRequestAndDisconnect()

    def timeoutConnection(self) -> None:
        self.log.debug(
            "Closing an idle web connection from {peer}",
            peer=self.transport.getPeer(),  # type: ignore[union-attr]
        )
        if self.abortTimeout is not None:
            self._abort = self.callLater(self.abortTimeout, self._abort_now)
        self.loseConnection()

    def _abort_now(self) -> None:
        self._abort = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def became_websocket(self) -> None:
        """
        The connection is a WebSocket from now on: it no longer counts as
        a web connection (the chat counts it as one of its own).
        """
        self.release()

    def release(self) -> None:
        if self.counted_as is not None:
            address, self.counted_as = self.counted_as, None
            self.site.connections.release(address)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None
        self.release()
        super().connectionLost(reason)


class Refusal(Protocol):
    """
    A connection over the limits: answered C{503}, with the security
    headers, and closed, without reading anything.
    """

    def __init__(self, why: str) -> None:
        self.why = why

    def connectionMade(self) -> None:
        body = f"{self.why}; try again later\n".encode("ascii")
        assert self.transport is not None
        self.transport.write(
            raw_response("503 Service Unavailable", body, ("retry-after", "10"))
        )
        self.transport.loseConnection()


class ChatSite(Site):
    """
    The web client's site: L{SecureChannel}s running L{SecureRequest}s,
    within the connection limits, answering the hosts of C{hosts}.

    @ivar connections: the open plain HTTP connections, in total and per
        address.
    @ivar refused: connections refused since the last log line about them.
    """

    protocol = SecureChannel  # type: ignore[assignment]
    log_events = make_logger()
    #: At most one log line about refused connections per this many seconds.
    refusal_log_interval = 60.0

    def __init__(
        self,
        resource: Resource,
        hosts: HostPolicy,
        limits: Limits,
        reactor: Any = None,
        proxies: TrustedProxies | None = None,
    ) -> None:
        super().__init__(resource, requestFactory=SecureRequest, reactor=reactor)
        self.noisy = False
        self.hosts = hosts
        self.proxies = proxies or TrustedProxies()
        self.connections = ConnectionTracker(
            limits.max_web_connections, limits.max_web_connections_per_address
        )
        self.refused = 0
        self._refusals_logged_at: float | None = None

    def buildProtocol(self, addr: Any) -> Any:
        host = _host(addr)
        address = address_key(host)
        connections = self.connections
        if self.proxies.trusts(host):
            # Many clients' connections: only the total limit applies,
            # until a request names its client (L{count_as}).
            why = None
            if connections.total >= connections.max_total:
                why = "too many connections"
            else:
                connections.add(address)
        else:
            why = connections.admit(address)
        if why is not None:
            self._refused(why)
            return Refusal(why)
        channel = super().buildProtocol(addr)
        channel.counted_as = address
        return channel

    def count_as(self, channel: SecureChannel, address: str) -> str | None:
        """
        Count C{channel}, a trusted proxy's connection, as one from
        C{address} (the client its request came from) from now on.

        @return: None, or why that is over the limits (then the connection
            is no longer counted: it is to be closed).
        """
        if channel.counted_as == address:
            return None
        channel.release()
        why = self.connections.admit(address)
        if why is None:
            channel.counted_as = address
        return why

    def _refused(self, why: str) -> None:
        self.refused += 1
        now = self.reactor.seconds()
        last = self._refusals_logged_at
        if last is not None and now - last < self.refusal_log_interval:
            return
        self._refusals_logged_at = now
        self.log_events.warn(
            "Refused {count} web connections ({why}): {total} open,"
            " at most {max_total} (--max-web-connections) and {max_per_address}"
            " per address (--max-web-connections-per-address)",
            count=self.refused,
            why=why,
            total=self.connections.total,
            max_total=self.connections.max_total,
            max_per_address=self.connections.max_per_address,
        )
        self.refused = 0

    def log(self, request: Any) -> None:
        """
        The access log, at debug level (Twisted's goes to the main log).
        """
        if debugging():
            self.log_events.debug(
                "{line}",
                line=combinedLogFormatter(
                    datetimeToLogString(self.reactor.seconds()), request
                ),
            )


@attrs.frozen
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _walk(directory: Traversable, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    for entry in directory.iterdir():
        name = f"{prefix}/{entry.name}"
        if entry.is_dir():
            yield from _walk(entry, name)
        elif not entry.name.startswith("."):
            yield name, entry.read_bytes()


def static_file(body: bytes, content_type: str) -> StaticFile:
    """
    A file to serve, its ETag a hash of its content.
    """
    digest = hashlib.sha256(body).hexdigest()[:32]
    return StaticFile(body, content_type, f'"{digest}"')


def load_static(
    package: str = "chat.web", folder: str = "static"
) -> dict[str, StaticFile]:
    """
    The files shipped in C{package}'s C{folder}, by URL path (C{/app.css});
    C{/} is C{index.html}.
    """
    files = {}
    for path, body in _walk(resources.files(package) / folder):
        suffix = path[path.rfind(".") :] if "." in path else ""
        content_type = CONTENT_TYPES.get(suffix, "application/octet-stream")
        files[path] = static_file(body, content_type)
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """
    Whether an C{If-None-Match} header names C{etag} (weak comparison, as
    RFC 9110 asks for If-None-Match), or is C{*}.
    """
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


class StaticFiles(PlainResource):
    """
    The page's files, from memory: loaded once, at startup.
    """

    isLeaf = True

    def __init__(self, files: dict[str, StaticFile]) -> None:
        super().__init__()
        self.files = files

    def render_GET(self, request: Request) -> bytes:
        path = request.path.decode("ascii", "replace")
        found = self.files.get(path)
        if found is None:
            request.setResponseCode(404)
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return b"not found\n"
        request.setHeader("etag", found.etag)
        request.setHeader("cache-control", "no-cache")
        if etag_matches(request.getHeader("if-none-match"), found.etag):
            request.setResponseCode(304)
            return b""
        request.setHeader("content-type", found.content_type)
        return found.body


@attrs.frozen
class WebSettings:
    """
    What the page is told about the server: in the page itself
    (L{with_settings}), and at C{/config.json}.
    """

    max_file_size: int
    registration: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "max_file_size": self.max_file_size,
            "registration": self.registration,
            "rules": page_rules(),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict()).encode("ascii")


#: The element of index.html that L{with_settings} fills in.
SETTINGS_ELEMENT = b'<meta name="chat-settings" content="{}">'


def with_settings(
    files: dict[str, StaticFile], settings: WebSettings
) -> dict[str, StaticFile]:
    """
    C{files} with C{settings} in the page: index.html's
    L{SETTINGS_ELEMENT} holds them as JSON (HTML-escaped, in an attribute).

    @raise ValueError: if index.html has no such element (a page without
        its settings cannot check a single name).
    """
    page = files.get("/index.html")
    if page is None:
        return files
    if page.body.count(SETTINGS_ELEMENT) != 1:
        raise ValueError(f"index.html must hold {SETTINGS_ELEMENT.decode()} once")
    content = html.escape(settings.to_json().decode("ascii"), quote=True)
    element = f'<meta name="chat-settings" content="{content}">'.encode("ascii")
    rendered = static_file(
        page.body.replace(SETTINGS_ELEMENT, element), page.content_type
    )
    return {**files, "/index.html": rendered, "/": rendered}


class SettingsResource(PlainResource):
    def __init__(self, settings: WebSettings) -> None:
        super().__init__()
        self.body = settings.to_json()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader("content-type", "application/json")
        request.setHeader("cache-control", "no-store")
        return self.body


class WebRoot(PlainResource):
    """
    C{/ws} and C{/config.json}; everything else is a static file.
    """

    def __init__(self, static: Resource, children: dict[bytes, Resource]) -> None:
        super().__init__()
        self.static = static
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self.static


def make_site(
    chat_factory: Any,
    settings: WebSettings,
    origins: OriginPolicy | None = None,
    files: dict[str, StaticFile] | None = None,
    reactor: Any = None,
    hosts: HostPolicy | None = None,
    limits: Limits | None = None,
    proxies: TrustedProxies | None = None,
) -> ChatSite:
    """
    The web client's site: the page, and WebSockets into C{chat_factory}
    (the factory that serves the TCP ports).

    @param reactor: for the HTTP timeouts; the global one by default.
    @param hosts: the host names it answers; by default those of
        C{origins}, and localhost.
    @param limits: its connection limits; L{Limits} defaults if None.
    @param proxies: the proxies whose C{X-Forwarded-For} is believed.
    """
    origins = origins or OriginPolicy()
    root = WebRoot(
        StaticFiles(with_settings(load_static() if files is None else files, settings)),
        {
            b"ws": ChatWebSocketResource(chat_factory, origins),
            b"config.json": SettingsResource(settings),
        },
    )
    if hosts is None:
        hosts = HostPolicy.build(origins.allowed)
    return ChatSite(root, hosts, limits or Limits(), reactor=reactor, proxies=proxies)
