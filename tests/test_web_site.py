"""
The web client's HTTP side (chat.web.site, chat.web.origins,
chat.web.rules): the origin check, the security headers on every response,
the static files with their content types and ETags, the settings and rules
the page gets, the options, and the service listening.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from chat import tap
from chat.errors import InvalidFileName
from chat.model import (
    MAX_FILE_NAME_BYTES,
    MAX_NAME_LENGTH,
    USERNAME_PATTERN,
    validate_file_name,
)
from chat.web.origins import OriginPolicy, format_origin, parse_origin
from chat.web.rules import page_rules
from chat.web.site import (
    SETTINGS_ELEMENT,
    WebSettings,
    content_security_policy,
    etag_matches,
    load_static,
    static_file,
    with_settings,
)
from tests.helpers import Server
from tests.web_helpers import ORIGIN, WebSocketClient, http, web_site

# The origin check.


class FakeRequest:
    def __init__(self, host: str | None, secure: bool = False) -> None:
        self.host = host
        self.secure = secure

    def isSecure(self) -> bool:
        return self.secure

    def getHeader(self, name: str) -> str | None:
        assert name == "host"
        return self.host


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("http://127.0.0.1:8080", ("http", "127.0.0.1", 8080)),
        ("https://Chat.Example.org", ("https", "chat.example.org", 443)),
        ("http://example.org:80", ("http", "example.org", 80)),
        ("https://example.org/", ("https", "example.org", 443)),
        ("http://[::1]:8080", ("http", "::1", 8080)),
    ],
)
def test_parse_origin(text: str, origin: tuple[str, str, int]) -> None:
    """Origins are normalised: lowercase host, default ports filled in."""
    assert parse_origin(text) == origin


@pytest.mark.parametrize(
    "text",
    [
        "null",
        "file://",
        "ftp://example.org",
        "example.org",
        "https://example.org/chat",
        "https://user@example.org",
        "https://example.org:99999",
        "https://example.org?x=1",
        "https://",
    ],
)
def test_parse_origin_refuses(text: str) -> None:
    """Anything but scheme://host[:port] over http(s) is not an origin."""
    with pytest.raises(ValueError):
        parse_origin(text)


def test_format_origin() -> None:
    """Default ports are left out; IPv6 hosts get their brackets back."""
    assert format_origin(("https", "example.org", 443)) == "https://example.org"
    assert format_origin(("http", "::1", 8080)) == "http://[::1]:8080"


def test_same_origin_only_by_default() -> None:
    """The page's own origin (scheme, Host header) is allowed; other hosts,
    ports and schemes, a missing Origin and "null" are not."""
    policy = OriginPolicy()
    request = FakeRequest("127.0.0.1:8080")
    assert policy.allows("http://127.0.0.1:8080", request)
    assert not policy.allows("https://127.0.0.1:8080", request)
    assert not policy.allows("http://127.0.0.1:8081", request)
    assert not policy.allows("http://localhost:8080", request)
    assert not policy.allows("http://evil.example", request)
    assert not policy.allows(None, request)
    assert not policy.allows("", request)
    assert not policy.allows("null", request)
    assert not policy.allows("http://127.0.0.1:8080", FakeRequest(None))
    assert policy.allows(
        "https://Chat.Example.org", FakeRequest("chat.example.org", True)
    )
    assert policy.allows("http://chat.example.org", FakeRequest("chat.example.org:80"))


def test_odd_origins_and_hosts() -> None:
    """An Origin that is not an origin, or a Host header that is not a
    host, allows nothing."""
    policy = OriginPolicy()
    assert not policy.allows("http://127.0.0.1:99999", FakeRequest("127.0.0.1:99999"))
    assert not policy.allows("http://a b", FakeRequest("a b"))
    assert not policy.allows("http://x", FakeRequest("x/evil"))


def test_listed_origins() -> None:
    """--web-origin adds origins (a page served elsewhere, a TLS proxy)."""
    policy = OriginPolicy.from_strings(["https://chat.example.org"])
    request = FakeRequest("127.0.0.1:8080")
    assert policy.allows("https://chat.example.org:443", request)
    assert not policy.allows("http://chat.example.org", request)


def test_foreign_origin_refused_before_any_frame() -> None:
    """A WebSocket from another origin gets 403 and no upgrade, and no chat
    connection is admitted for it."""
    server = Server()
    built: list[Any] = []
    admit = server.factory.admit
    server.factory.admit = lambda door: built.append(door) or admit(door)  # type: ignore[method-assign,func-returns-value]
    site = web_site(server)
    for origin in ["http://evil.example", None, "null", "http://127.0.0.1:9999"]:
        client = WebSocketClient(site, origin=origin)
        assert client.rejected == 403
        assert not client.accepted
    assert built == []
    assert WebSocketClient(site, origin=ORIGIN).accepted
    assert len(built) == 1


def test_listed_origin_accepted() -> None:
    """An origin given with --web-origin may open a WebSocket."""
    site = web_site(Server(), origins=["https://chat.example.org"])
    client = WebSocketClient(site, origin="https://chat.example.org")
    assert client.accepted
    assert client.request("ping")["message"] == "PONG"


# Headers on every response.


def assert_locked_down(headers: dict[str, str]) -> None:
    policy = headers["content-security-policy"]
    directives = {}
    for part in policy.split(";"):
        name, _, value = part.strip().partition(" ")
        directives[name] = value
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "ws://127.0.0.1:8080" in directives["connect-src"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/js/main.js", 200),
        ("GET", "/config.json", 200),
        ("GET", "/nothing-here", 404),
        ("GET", "/ws/deeper", 404),
        ("GET", "/ws", 403),
        ("POST", "/", 405),
        ("HEAD", "/app.css", 200),
    ],
)
def test_every_response_is_locked_down(method: str, path: str, status: int) -> None:
    """Pages, files, errors and refusals all carry the CSP, nosniff and
    no-referrer headers."""
    response = http(web_site(Server()), path, method)
    assert response.status == status
    assert_locked_down(response.headers)


def test_policy_for_odd_hosts() -> None:
    """A Host header that is not a plain host[:port] is not repeated in the
    policy: 'self' alone then covers the WebSocket."""
    assert "connect-src 'self';" in content_security_policy("evil;script-src *")
    assert "connect-src 'self';" in content_security_policy(None)
    assert "ws://[::1]:8080" in content_security_policy("[::1]:8080")


# Static files.


def shipped() -> dict[str, bytes]:
    folder = resources.files("chat.web") / "static"
    files = {}
    for path in Path(str(folder)).rglob("*"):
        if path.is_file():
            files["/" + path.relative_to(str(folder)).as_posix()] = path.read_bytes()
    return files


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
        ("/js/main.js", "text/javascript; charset=utf-8"),
        ("/js/connection.js", "text/javascript; charset=utf-8"),
        ("/icons.svg", "image/svg+xml"),
        ("/favicon.svg", "image/svg+xml"),
    ],
)
def test_static_content_types(path: str, content_type: str) -> None:
    """Files are served with their types (JS modules as text/javascript)
    and exactly their bytes (the page with its settings filled in)."""
    response = http(web_site(Server()), path)
    assert response.status == 200
    assert response.headers["content-type"] == content_type
    body = response.body
    if path in ("/", "/index.html"):
        path = "/index.html"
        body = re.sub(
            rb'<meta name="chat-settings" content="[^"]*">', SETTINGS_ELEMENT, body
        )
    assert body == shipped()[path]


def test_every_shipped_file_is_served() -> None:
    """Every file in chat/web/static is served, with a known content type."""
    files = load_static()
    assert set(shipped()) | {"/"} == set(files)
    for file in files.values():
        assert file.content_type != "application/octet-stream"


def test_etag_and_304() -> None:
    """The ETag is a hash of the content; If-None-Match with it (strong,
    weak or in a list) gets 304 without a body; another ETag gets the file."""
    site = web_site(Server())
    first = http(site, "/js/main.js")
    digest = hashlib.sha256(shipped()["/js/main.js"]).hexdigest()
    etag = first.headers["etag"]
    assert etag == f'"{digest[:32]}"'
    assert first.headers["cache-control"] == "no-cache"
    for header in [etag, f"W/{etag}", f'"other", {etag}', "*"]:
        again = http(site, "/js/main.js", headers={"If-None-Match": header})
        assert again.status == 304
        assert again.body == b""
        assert again.headers["etag"] == etag
    changed = http(site, "/js/main.js", headers={"If-None-Match": '"other"'})
    assert changed.status == 200
    assert changed.body == first.body
    assert http(site, "/app.css").headers["etag"] != etag


def test_etag_matching() -> None:
    """If-None-Match parsing: lists, weak tags, *, and nothing."""
    assert etag_matches('"a", W/"b"', '"b"')
    assert not etag_matches('"a"', '"b"')
    assert not etag_matches(None, '"b"')
    assert not etag_matches("", '"b"')


def test_head_has_no_body() -> None:
    """HEAD gets the headers of GET and no body."""
    response = http(web_site(Server()), "/app.css", "HEAD")
    assert response.status == 200
    assert response.body == b""
    assert int(response.headers["content-length"]) == len(shipped()["/app.css"])


def test_settings() -> None:
    """/config.json tells the file size limit, whether the page may offer
    registration, and the server's rules for names; it is never cached."""
    response = http(web_site(Server(), registration=False), "/config.json")
    assert json.loads(response.body) == {
        "max_file_size": 1024 * 1024,
        "registration": False,
        "rules": page_rules(),
    }
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"


class SettingsElement(HTMLParser):
    """
    The contents of the page's settings element(s), unescaped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "meta" and names.get("name") == "chat-settings":
            self.found.append(names.get("content"))


def page_settings(body: bytes) -> Any:
    parser = SettingsElement()
    parser.feed(body.decode("utf-8"))
    (content,) = parser.found
    assert content is not None
    return json.loads(content)


def test_page_carries_its_settings() -> None:
    """The page holds the settings of /config.json in its chat-settings
    element (data, not script), escaped for HTML, so it knows them as it
    loads; its ETag changes with them."""
    closed = http(web_site(Server(), registration=False), "/")
    assert page_settings(closed.body) == {
        "max_file_size": 1024 * 1024,
        "registration": False,
        "rules": page_rules(),
    }
    assert b":&lt;&gt;?" in closed.body and b":<>?" not in closed.body
    opened = http(web_site(Server(), registration=True), "/index.html")
    assert page_settings(opened.body)["registration"] is True
    assert opened.headers["etag"] != closed.headers["etag"]
    digest = hashlib.sha256(opened.body).hexdigest()[:32]
    assert opened.headers["etag"] == f'"{digest}"'


def test_page_without_settings_element_refused() -> None:
    """A page without the settings element (or with two) is refused when
    the site is built, not served unable to check a name."""
    settings = WebSettings(1024, False)
    for body in [b"<html></html>", SETTINGS_ELEMENT * 2]:
        files = {"/index.html": static_file(body, "text/html; charset=utf-8")}
        with pytest.raises(ValueError, match="chat-settings"):
            with_settings(files, settings)
    assert with_settings({}, settings) == {}


def test_page_rules_are_the_servers() -> None:
    """The rules the page gets are the server's: its username pattern and
    limits; every character it is told to keep out of file names, every
    device name and every unsafe character is refused by the server; the
    joiners it is told to keep are accepted."""
    rules = page_rules()
    assert rules["username"] == USERNAME_PATTERN.pattern
    assert rules["max_name_length"] == MAX_NAME_LENGTH
    files: Any = rules["file_name"]
    assert files["max_bytes"] == MAX_FILE_NAME_BYTES
    assert "/" in files["forbidden"] and "\\" in files["forbidden"]
    for character in files["forbidden"]:
        with pytest.raises(InvalidFileName):
            validate_file_name(f"a{character}b.txt")
    for character in ["\x00", "\x1f", "\x85", "\u200b", "\u202e", "\u2028", "\u2029"]:
        with pytest.raises(InvalidFileName):
            validate_file_name(f"a{character}b.txt")
    for name in ["con", "NUL.txt", "com\u00b9.log", "conin$"]:
        assert re.fullmatch(files["devices"], name.split(".")[0], re.IGNORECASE)
        with pytest.raises(InvalidFileName):
            validate_file_name(name)
    for character in files["allowed_formatting"]:
        assert validate_file_name(f"a{character}b.txt")
    assert sorted(files["unsafe_categories"]) == ["Cc", "Cf", "Cs", "Zl", "Zp"]


class MarkupCheck(HTMLParser):
    """
    Collects what a strict CSP would block in the page's HTML.
    """

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.testids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and "src" not in names:
            self.problems.append("inline script")
        if tag == "style":
            self.problems.append("inline style element")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"{name} handler")
            if name == "style":
                self.problems.append("style attribute")
            if name in ("src", "href") and value and re.match(r"(https?:)?//", value):
                self.problems.append(f"external {value}")
            if name == "data-testid" and value:
                self.testids.add(value)


def test_page_works_under_its_policy() -> None:
    """The page has no inline script, handlers or styles, loads nothing
    from elsewhere (it works offline), and keeps the test hooks."""
    check = MarkupCheck()
    check.feed(shipped()["/index.html"].decode("utf-8"))
    assert check.problems == []
    assert {
        "login-username",
        "login-password",
        "login-submit",
        "compose-to",
        "compose-text",
        "compose-send",
        "logout",
        "conn-state",
    } <= check.testids
    for path, body in shipped().items():
        if path.endswith((".js", ".css")):
            text = body.decode("utf-8")
            text = text.replace("http://www.w3.org/2000/svg", "")
            assert not re.search(r"https?://", text), path
            assert "innerHTML" not in text and "insertAdjacentHTML" not in text, path
            assert "eval(" not in text, path


# Options and the service.


def test_web_options() -> None:
    """--web and --web-origin are repeatable; the web client is off by
    default; a malformed origin is refused."""
    options = tap.Options()
    options.parseOptions([])
    assert options["web"] == [] and options["web-origin"] == []
    options = tap.Options()
    options.parseOptions(
        [
            "--web",
            "tcp:8080:interface=127.0.0.1",
            "--web",
            r"tcp:8081:interface=\:\:1",
            "--web-origin",
            "https://chat.example.org",
            "--web-origin",
            "http://localhost:3000",
        ]
    )
    assert options["web"] == [
        "tcp:8080:interface=127.0.0.1",
        r"tcp:8081:interface=\:\:1",
    ]
    assert options["web-origin"] == [
        "https://chat.example.org",
        "http://localhost:3000",
    ]
    with pytest.raises(usage.UsageError, match="--web-origin"):
        tap.Options().parseOptions(["--web-origin", "chat.example.org"])


@pytest_twisted.ensureDeferred
async def test_service_serves_the_page(tmp_path: Path) -> None:
    """twistd chat --web listens, serves the page with its headers from the
    plugin's service, and stops listening with the service."""
    from tests.test_end_to_end import chat_maker

    maker = chat_maker()
    options = maker.options()
    options.parseOptions(
        [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--web",
            "tcp:0:interface=127.0.0.1",
            "--store",
            f"sqlite:{tmp_path / 'chat.sqlite'}",
        ]
    )
    service = maker.makeService(options)
    service.startService()
    try:
        await service.ready
        (port,) = service.web_ports
        address = port.getHost()
        agent = Agent(reactor)
        d: Deferred[Any] = agent.request(
            b"GET",
            f"http://127.0.0.1:{address.port}/".encode(),
            Headers({b"host": [f"127.0.0.1:{address.port}".encode()]}),
        )
        response = await d
        with warnings.catch_warnings():
            # Twisted warns about its own Agent's transport here.
            warnings.simplefilter("ignore", DeprecationWarning)
            body = await readBody(response)
        assert response.code == 200
        assert b'data-testid="compose-to"' in body
        policy = response.headers.getRawHeaders(b"content-security-policy")[0]
        assert b"frame-ancestors 'none'" in policy
    finally:
        await service.stopService()
    assert service.web_ports == []
