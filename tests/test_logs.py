"""
What the server's log may contain: escaped fields (chat.logs), and never a
name that failed to log in as itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from chat import logs
from chat.logs import EscapingObserver, make_logger, unverified_name
from tests.helpers import Server


@pytest.fixture
def level() -> Iterator[None]:
    """
    Let a test set the log level; the level the tests run at comes back
    after it (tests/conftest.py: debug).
    """
    before = "debug" if logs.debugging() else "info"
    try:
        yield
    finally:
        logs.set_level(before)


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


def test_fields_are_escaped_before_any_log_sees_them(
    events: EventLoggingObserver,
) -> None:
    """Text fields, and objects whose text has control characters, reach
    the log escaped; numbers and harmless objects are passed as they are."""
    address = ("127.0.0.1", 4000)
    error = ValueError("bad\r\nINFO forged line")
    make_logger().info(
        "{a} {b} {c} {d} {e}",
        a="\x1b]0;title\x07",
        b=error,
        c=address,
        d=42,
        e="plain",
    )
    (event,) = [e for e in events if e.get("log_format") == "{a} {b} {c} {d} {e}"]
    assert event["a"] == "\\x1b]0;title\\x07"
    assert event["b"] == "bad\\x0d\\x0aINFO forged line"
    assert event["c"] is address and event["d"] == 42 and event["e"] == "plain"
    text = formatEvent(event)
    assert "\x1b" not in text and "\n" not in text and "\r" not in text


def test_escaping_keeps_the_event_when_nothing_needs_it() -> None:
    """An event with nothing to escape is passed on as the very same dict."""
    seen: list[dict[str, Any]] = []
    observer = EscapingObserver(seen.append)
    event = {"log_format": "{x}", "x": "fine", "log_namespace": "a\nb"}
    observer(event)
    assert seen == [event] and seen[0] is event


def test_filtered_out_events_are_not_escaped(
    monkeypatch: pytest.MonkeyPatch, level: None
) -> None:
    """An event below the log level stops at the level filter: escaping
    costs nothing for the per-command debug events of a server at info."""
    escaped: list[str] = []

    def visible(text: str, keep: str = "") -> str:
        escaped.append(text)
        return text

    monkeypatch.setattr(logs, "visible", visible)
    logs.set_level("info")
    make_logger().debug("{x}", x="\x1b[2K")
    assert escaped == []
    make_logger().info("{x}", x="\x1b[2K")
    assert escaped == ["\x1b[2K"]


def test_unverified_names_are_keyed_hashes() -> None:
    """The same name gets the same short label while the server runs; the
    label shows nothing of the name."""
    label = unverified_name("hunter2")
    assert label == unverified_name("hunter2") != unverified_name("hunter3")
    assert label.startswith("name #") and len(label) == len("name #") + 8
    assert "hunter2" not in label


def test_failed_login_never_logs_an_unknown_name(
    events: EventLoggingObserver,
) -> None:
    """A login as a user that does not exist (perhaps a password typed as the
    username) logs a label, not the name; a wrong password for a real user
    logs the user, and neither logs the password."""
    server = Server()
    client = server.connect()
    typed = "my-s3cret-passw0rd"
    assert client.request(f"auth {typed} messi")["code"] == "unknown_user"
    assert client.request("auth messi wrong-guess")["code"] == "wrong_password"
    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert typed not in text and "wrong-guess" not in text
    assert f"Failed login for {unverified_name(typed)} from 127.0.0.1" in text
    assert "Failed login for messi from 127.0.0.1" in text


def test_rate_limited_login_logs_no_name(
    events: EventLoggingObserver, level: None
) -> None:
    """A login refused before its password is checked (too many failures)
    logs a label, since the name was never checked either."""
    logs.set_level("debug")
    server = Server()
    client = server.connect()
    for _ in range(12):
        client.request("auth not-a-user nope")
    refused = [formatEvent(e) for e in events if "too many failures" in formatEvent(e)]
    assert refused
    assert all("not-a-user" not in line for line in refused)
    assert f"Refused login for {unverified_name('not-a-user')}" in refused[0]
