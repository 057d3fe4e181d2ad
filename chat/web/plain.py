"""
Plain-text errors for the web client's resources.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request


class PlainResource(Resource):
    """
    A resource whose errors are short plain-text answers: an unknown child
    is a 404, an unsupported method a 405 (Twisted's own error pages are
    HTML made for another era).
    """

    def getChild(self, path: bytes, request: Any) -> Resource:
        return NotFound()

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"
        if getattr(self, f"render_{method}", None) is None:
            allowed = sorted(
                name.removeprefix("render_")
                for name in dir(self)
                if name.startswith("render_") and name != "render_HEAD"
            )
            request.setResponseCode(405)
            request.setHeader("allow", ", ".join([*allowed, "HEAD"]))
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return b"method not allowed\n"
        result: bytes | int = super().render(request)
        return result


class NotFound(PlainResource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader("content-type", "text/plain; charset=utf-8")
        return b"not found\n"
