"""
history on the line protocol, and message retention, on a fake clock.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from chat import realm
from chat.limits import Limits
from chat.retention import MessagePurger
from tests.helpers import Connection, Server, result_of


def _logged_in(server: Server) -> tuple[Connection, dict[str, str]]:
    client = server.connect()
    return client, {n: client.login(n) for n in ("messi", "henderson", "lineker")}


def _texts(reply: dict[str, Any]) -> list[str]:
    assert reply["status"] == "OK", reply
    return [m["msg"] for m in reply["messages"]]


def test_history_is_the_conversation_newest_first() -> None:
    """history shows both directions, newest first, in the inbox's shape."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"send {tokens['messi']} henderson one")
    server.clock.advance(1)
    client.request(f"send {tokens['henderson']} messi two")
    client.request(f"send {tokens['lineker']} messi elsewhere")
    client.request(f"sendgroup {tokens['messi']} henderson,lineker three")
    inbox = client.request(f"inbox {tokens['henderson']}")["messages"]["messi"]
    reply = client.request(f"history {tokens['messi']} henderson")
    assert set(reply) == {"status", "messages", "next_before_id"}
    assert _texts(reply) == ["three", "two", "one"]
    assert reply["next_before_id"] is None
    assert reply["messages"][0] == inbox[-1]
    assert reply["messages"][1]["from"] == "henderson"
    other_side = client.request(f"history {tokens['henderson']} messi")
    assert other_side["messages"] == reply["messages"]


def test_history_pages_back_by_id() -> None:
    """limit and before_id page back; next_before_id says where to go on."""
    server = Server()
    client, tokens = _logged_in(server)
    for i in range(7):
        client.request(f"send {tokens['messi']} henderson m{i}")
    seen = []
    before = ""
    while True:
        reply = client.request(f"history {tokens['henderson']} messi 3 {before}")
        seen.append(_texts(reply))
        if reply["next_before_id"] is None:
            break
        assert reply["next_before_id"] == reply["messages"][-1]["id"]
        before = str(reply["next_before_id"])
    assert seen == [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"]]
    first_id = client.request(f"history {tokens['messi']} henderson 500")["messages"][
        -1
    ]["id"]
    empty = client.request(f"history {tokens['messi']} henderson 5 {first_id}")
    assert empty == {"status": "OK", "messages": [], "next_before_id": None}


def test_history_default_limit() -> None:
    """Without a limit, history returns 50 messages."""
    server = Server()
    client, tokens = _logged_in(server)
    for i in range(51):
        client.request(f"send {tokens['messi']} henderson m{i}")
    reply = client.request(f"history {tokens['messi']} henderson")
    assert len(reply["messages"]) == 50
    assert reply["messages"][-1]["msg"] == "m1"
    assert reply["next_before_id"] == reply["messages"][-1]["id"]


def test_history_keeps_delivered_messages() -> None:
    """Draining the inbox does not remove messages from history."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"send {tokens['messi']} henderson kept")
    client.request(f"inbox {tokens['henderson']}")
    assert client.request(f"inbox {tokens['henderson']}")["messages"] == {}
    assert _texts(client.request(f"history {tokens['henderson']} messi")) == ["kept"]


def test_history_of_a_group() -> None:
    """A member's group history: what it sent and received while a member."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} team")
    client.request(f"joingroup {tokens['henderson']} team")
    client.request(f"sendgroup {tokens['messi']} #team one")
    client.request(f"sendgroup {tokens['henderson']} #team two")
    client.request(f"send {tokens['messi']} henderson private")
    client.request(f"joingroup {tokens['lineker']} team")
    client.request(f"sendgroup {tokens['lineker']} #team three")
    for name in ("messi", "henderson"):
        reply = client.request(f"history {tokens[name]} #team")
        assert _texts(reply) == ["three", "two", "one"]
        assert {m["group"] for m in reply["messages"]} == {"team"}
    assert _texts(client.request(f"history {tokens['lineker']} #team")) == ["three"]
    page = client.request(f"history {tokens['messi']} #team 2")
    assert _texts(page) == ["three", "two"]
    older = client.request(
        f"history {tokens['messi']} #team 2 {page['next_before_id']}"
    )
    assert _texts(older) == ["one"]
    assert _texts(client.request(f"history {tokens['messi']} henderson")) == ["private"]


def test_history_errors() -> None:
    """Non-members, unknown groups and users, bad pages and tokens are errors."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} team")
    token = tokens["lineker"]
    assert client.request(f"history {token} #team")["code"] == "not_a_member"
    assert client.request(f"history {token} #nope")["code"] == "no_such_group"
    assert client.request(f"history {token} ronaldo") == {
        "status": "ERROR",
        "message": "User Tidak Ditemukan",
        "code": "no_such_user",
    }
    assert client.request("history nope messi")["code"] == "no_session"
    for line in ["history", f"history {token}"]:
        assert client.request(line)["code"] == "missing_argument"
    for arguments, what in [
        ("0", "limit"),
        ("501", "limit"),
        ("ten", "limit"),
        ("-1", "limit"),
        ("10 0", "before id"),
        ("10 x", "before id"),
    ]:
        reply = client.request(f"history {token} messi {arguments}")
        assert reply["code"] == "invalid_argument", arguments
        assert reply["message"].startswith(f"invalid {what}: expected 1-")


def test_history_carries_files_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files come with their content; a page stops at the reply budget."""
    monkeypatch.setattr(realm, "REPLY_BUDGET", 2500)
    server = Server()
    client, tokens = _logged_in(server)
    for i in range(3):
        content = base64.b64encode(bytes([i]) * 1000).decode()
        client.request(f"sendfile {tokens['messi']} henderson f{i}.bin {content}")
    reply = client.request(f"history {tokens['henderson']} messi 10")
    assert _texts(reply) == ["f2.bin", "f1.bin"]
    assert base64.b64decode(reply["messages"][0]["file_content"]) == b"\x02" * 1000
    rest = client.request(
        f"history {tokens['henderson']} messi 10 {reply['next_before_id']}"
    )
    assert _texts(rest) == ["f0.bin"] and rest["next_before_id"] is None


def test_retention_purges_old_messages() -> None:
    """With a retention, messages older than it leave inbox and history."""
    # One connection for hours of fake time: no idle timeout.
    server = Server(idle=86400, limits=Limits(idle_timeout=86400))
    client, tokens = _logged_in(server)
    purger = MessagePurger(
        server.store, server.clock, retention=3600, interval=60, batch=2
    )
    client.request(f"send {tokens['messi']} henderson delivered")
    client.request(f"inbox {tokens['henderson']}")
    for i in range(3):
        client.request(f"send {tokens['messi']} henderson old{i}")
    server.clock.advance(1800)
    client.request(f"send {tokens['messi']} henderson recent")
    purger.start()
    assert len(server.store.messages) == 5
    server.clock.advance(1801)
    assert _texts(client.request(f"history {tokens['messi']} henderson")) == ["recent"]
    assert [
        m["msg"]
        for m in client.request(f"inbox {tokens['henderson']}")["messages"]["messi"]
    ] == ["recent"]
    server.clock.advance(1800)
    assert client.request(f"history {tokens['messi']} henderson")["messages"] == []
    purger.stop()
    purger.stop()


def test_retention_survives_storage_errors() -> None:
    """A failing purge is logged and tried again next time."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"send {tokens['messi']} henderson old")
    purger = MessagePurger(server.store, server.clock, retention=10, interval=60)
    server.clock.advance(20)
    server.store.broken = True
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        assert result_of(purger.purge()) == 0
    finally:
        globalLogPublisher.removeObserver(events)
    assert any("Could not purge" in formatEvent(e) for e in events)
    server.store.broken = False
    assert result_of(purger.purge()) == 1
