"""
The web client: the chat in a browser, served by the chat process itself.

C{twistd chat --web ENDPOINT} serves a L{twisted.web.server.Site}
(L{chat.web.site.make_site}): the page's static files at C{/} and a
WebSocket at C{/ws} (L{chat.web.socket}) that speaks the v1 protocol, one
request line per text frame, through the same L{chat.lines.ChatFactory}
as the TCP ports.
"""

from __future__ import annotations

from chat.web.origins import OriginPolicy, parse_origin
from chat.web.site import WebSettings, make_site

__all__ = ["OriginPolicy", "WebSettings", "make_site", "parse_origin"]
