"""
The web client's HTTP side: the page's static files, its settings, and the
headers that lock the page down.

Routes::

    GET /              index.html
    GET /<file>        the files of chat/web/static (css, js modules, icons)
    GET /config.json   what the page needs to know about this server
    GET /ws            the WebSocket (chat.web.socket), same origin only

Every response carries a Content-Security-Policy that allows scripts,
styles and connections from the page's own origin only (no inline script,
no framing), C{X-Content-Type-Options: nosniff} and C{Referrer-Policy:
no-referrer}. Static files have an ETag from a hash of their content and
C{Cache-Control: no-cache}: browsers revalidate each time and get a 304
while the file is unchanged, so a new release is never mixed with cached
files of the old one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import attrs
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from chat.web.origins import OriginPolicy
from chat.web.plain import PlainResource
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


class SecureRequest(Request):
    """
    A request whose every response carries the security headers, whatever
    resource (or error page) answers it.
    """

    def process(self) -> None:
        host = self.getHeader("host")
        self.setHeader(
            "content-security-policy",
            content_security_policy(None if host is None else host.strip()),
        )
        self.setHeader("x-content-type-options", "nosniff")
        self.setHeader("referrer-policy", "no-referrer")
        self.setHeader("x-frame-options", "DENY")
        self.setHeader("cross-origin-opener-policy", "same-origin")
        super().process()


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
        digest = hashlib.sha256(body).hexdigest()[:32]
        files[path] = StaticFile(body, content_type, f'"{digest}"')
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
    What the page is told about the server (C{/config.json}).
    """

    max_file_size: int
    registration: bool

    def to_json(self) -> bytes:
        return json.dumps(
            {"max_file_size": self.max_file_size, "registration": self.registration}
        ).encode("ascii")


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
) -> Site:
    """
    The web client's site: the page, and WebSockets into C{chat_factory}
    (the factory that serves the TCP ports).

    @param reactor: for the HTTP timeouts; the global one by default.
    """
    root = WebRoot(
        StaticFiles(load_static() if files is None else files),
        {
            b"ws": ChatWebSocketResource(chat_factory, origins or OriginPolicy()),
            b"config.json": SettingsResource(settings),
        },
    )
    site = Site(root, requestFactory=SecureRequest, reactor=reactor)
    site.noisy = False
    return site
