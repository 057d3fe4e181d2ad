"""
chat-admin passwd and userdel against a running twistd chat (two processes):
the user's old tokens stop working at once, and a subscribed connection is
told, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.twistd_helpers import REPO, LineClient, TwistdChat

pytestmark = pytest.mark.slow


def chat_admin(store: str, *argv: str, stdin: str = "") -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chat.admin", "--store", store, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr


def next_event(client: LineClient, timeout: float = 20) -> dict[str, Any]:
    """
    The next frame the server pushes, waiting at most C{timeout} seconds.
    """
    client.sock.settimeout(timeout)
    try:
        return client.read()
    except TimeoutError:
        raise AssertionError(f"no event within {timeout}s") from None


def revocation_is_immediate(server: TwistdChat, store: str) -> None:
    server.start()
    server.wait_ready()
    listener, other, bystander = (LineClient(server.port) for _ in range(3))
    try:
        token = listener.login("messi")
        assert listener.request(f"subscribe {token}")["message"] == "Subscribed"
        second = other.login("messi")
        assert other.request(f"inbox {second}")["status"] == "OK"
        henderson = bystander.login("henderson")
        assert bystander.request(f"subscribe {henderson}")["message"] == "Subscribed"
        started = time.monotonic()
        chat_admin(store, "passwd", "messi", stdin="a-new-password\n")
        ran = time.monotonic() - started
        # Presence events may come first; the session's end comes.
        event = next_event(listener)
        while event.get("event") == "presence":
            event = next_event(listener)
        told = time.monotonic() - started
        assert event == {
            "event": "unsubscribed",
            "reason": "password changed or user deleted",
        }
        print(f"chat-admin passwd ran {ran:.2f}s; subscriber told after {told:.2f}s")
        # Once told, every token of messi fails, on every connection.
        for client, old in [(other, second), (listener, token)]:
            assert client.request(f"send {old} henderson hi")["code"] == "no_session"
        assert bystander.request("ping after")["echo"] == "after"
        chat_admin(store, "userdel", "henderson")
        event = next_event(bystander)
        while event.get("event") == "presence":
            event = next_event(bystander)
        assert event["event"] == "unsubscribed"
        assert bystander.request(f"inbox {henderson}")["code"] == "no_session"
        fresh = LineClient(server.port)
        assert fresh.login("messi", "a-new-password")
        fresh.close()
    finally:
        for client in (listener, other, bystander):
            client.close()
    log = server.log_text()
    assert "Traceback" not in log and "a-new-password" not in log


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[TwistdChat]:
    server = TwistdChat(tmp_path, "--demo")
    server.log.touch()
    yield server
    server.kill()


def test_chat_admin_ends_sessions_at_once_on_sqlite(
    sqlite_server: TwistdChat, tmp_path: Path
) -> None:
    """On SQLite, the server notices chat-admin's write to the file within a
    poll (half a second), ends the user's sessions and tells subscribers."""
    revocation_is_immediate(sqlite_server, f"sqlite:{tmp_path / 'chat.sqlite'}")


def test_chat_admin_ends_sessions_at_once_on_postgresql(
    twistd_node: Callable[..., TwistdChat], postgres_url: str
) -> None:
    """On PostgreSQL, chat-admin's transaction notifies chat_sessions, and the
    running node ends the user's sessions and tells subscribers."""
    revocation_is_immediate(twistd_node("a"), postgres_url)
