"""
Which web pages may open a WebSocket to the chat.

A browser sends the C{Origin} of the page that opens a WebSocket, and lets
any page open one to any server: without a check, a page on any site the
user visits could talk to the chat in the user's name from the user's
network position. So an upgrade is accepted only from the page's own
origin (the scheme, host and port the request itself came to: its C{Host}
header, over TLS or not) or from an origin listed with C{--web-origin}.
A missing C{Origin}, or C{null} (sandboxed frames, C{file:} pages), is
refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import attrs

Origin = tuple[str, str, int]

DEFAULT_PORTS = {"http": 80, "https": 443}

#: A host name (IDNs in their xn-- form), an IPv4 address, or an IPv6
#: address without its brackets.
_HOST = re.compile(r"[a-z0-9_.-]+|[0-9a-f:.]+")


def parse_origin(text: str) -> Origin:
    """
    C{(scheme, host, port)} of an origin such as C{https://chat.example.org}
    or C{http://127.0.0.1:8080}; the host lowercased, without IPv6 brackets.

    @raise ValueError: if it is not an http(s) origin: a scheme, a host,
        maybe a port, and nothing else.
    """
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"not an http:// or https:// origin: {text!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in origin {text!r}") from None
    if (
        not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"an origin is scheme://host[:port] only, not {text!r}")
    host = parts.hostname.lower()
    if not _HOST.fullmatch(host):
        raise ValueError(f"not a host name or address in origin {text!r}")
    return scheme, host, port or DEFAULT_PORTS[scheme]


def format_origin(origin: Origin) -> str:
    scheme, host, port = origin
    if ":" in host:
        host = f"[{host}]"
    if port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def request_origin(request: Any) -> Origin | None:
    """
    The origin a request came to: its scheme and its C{Host} header, or
    None without a usable C{Host}.
    """
    scheme = "https" if request.isSecure() else "http"
    host = request.getHeader("host")
    if not host:
        return None
    try:
        return parse_origin(f"{scheme}://{host}")
    except ValueError:
        return None


@attrs.frozen
class OriginPolicy:
    """
    The origins allowed besides the page's own.
    """

    allowed: frozenset[Origin] = frozenset()

    @classmethod
    def from_strings(cls, origins: Iterable[str]) -> OriginPolicy:
        """
        @raise ValueError: for a string that is not an origin.
        """
        return cls(frozenset(parse_origin(origin) for origin in origins))

    def allows(self, origin: str | None, request: Any) -> bool:
        """
        Whether a page of C{origin} may open a WebSocket with C{request}.
        """
        if not origin or origin.strip() == "null":
            return False
        try:
            parsed = parse_origin(origin)
        except ValueError:
            return False
        return parsed in self.allowed or parsed == request_origin(request)
