"""
register and logout on the line protocol, with an in-memory store and a
fake clock.
"""

from __future__ import annotations

import uuid

import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from chat.limits import Limits
from chat.lines import ChatFactory
from chat.sessions import hash_token
from tests.helpers import Server


def test_register_creates_an_account() -> None:
    """register answers User Registered; the new user can log in and chat."""
    server = Server()
    client = server.connect()
    reply = client.request("register budi rahasia123  Budi  Santoso ")
    assert reply == {
        "status": "OK",
        "message": "User Registered",
        "username": "budi",
        "tokenid": reply["tokenid"],
        "token_id": reply["tokenid"],
        "realm_id": None,
    }
    user = server.store.users["budi"]
    assert user.full_name == "Budi  Santoso"
    assert user.password_hash.startswith("$argon2id$")
    assert "rahasia123" not in user.password_hash
    token = client.login("budi", "rahasia123")
    client.request(f"send {token} messi halo")
    messi = client.login("messi")
    (message,) = client.request(f"inbox {messi}")["messages"]["budi"]
    assert message["msg_from"] == "Budi  Santoso"


def test_register_logs_in() -> None:
    """register answers a session token, as auth would, that works at once."""
    client = Server().connect()
    reply = client.request("register budi rahasia123 Budi")
    token = reply["tokenid"]
    assert reply["token_id"] == token
    assert client.request(f"send {token} messi halo")["message"] == "Message Sent"
    assert client.request("auth budi wrongpassword")["message"] == "Password Salah"


def test_register_without_full_name() -> None:
    """register <user> <password> makes the username the full name."""
    server = Server()
    client = server.connect()
    client.send(b"register budi rahasia123 \r\n")
    (reply,) = client.replies()
    assert reply["message"] == "User Registered"
    assert server.store.users["budi"].full_name == "budi"
    client.request(f"send {reply['tokenid']} messi halo")
    messi = client.login("messi")
    (message,) = client.request(f"inbox {messi}")["messages"]["budi"]
    assert message["msg_from"] == "budi"


@pytest.mark.parametrize("registration", [False, None])
def test_registration_closed(registration: bool | None) -> None:
    """Without --registration open, register is refused and creates nothing."""
    server = Server(registration=bool(registration))
    if registration is None:
        server.factory = ChatFactory(server.portal)
    reply = server.connect().request("register budi rahasia123 Budi")
    assert reply == {
        "status": "ERROR",
        "message": "registration is disabled",
        "code": "registration_closed",
    }
    assert "budi" not in server.store.users


@pytest.mark.parametrize(
    "username",
    ["Budi", "budi!", "b" * 33, "budi/x", "di\u00e9", "\u0431\u0443\u0434\u0438"],
)
def test_register_invalid_username(username: str) -> None:
    """A username outside [a-z0-9_.-]{1,32} is refused, saying why."""
    server = Server()
    reply = server.connect().request(f"register {username} rahasia123 Budi")
    assert reply["status"] == "ERROR"
    assert reply["code"] == "invalid_username"
    assert reply["message"] == (
        "invalid username: usernames are 1-32 characters: lowercase letters, "
        "digits, '_', '-', '.', starting with a letter or digit"
    )
    assert len(server.store.users) == 3


def test_register_longest_username() -> None:
    """32 characters of the allowed set are a valid username."""
    name = "a.b_c-9" + "x" * 25
    reply = Server().connect().request(f"register {name} rahasia123 Budi")
    assert reply["username"] == name


def test_register_existing_username() -> None:
    """A taken username is refused; the existing account is untouched."""
    server = Server()
    before = server.store.users["messi"]
    reply = server.connect().request("register messi rahasia123 Someone Else")
    assert reply == {
        "status": "ERROR",
        "message": "user already exists",
        "code": "user_exists",
    }
    assert server.store.users["messi"] == before


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("register budi short Budi", "invalid_password"),
        ("register budi " + "p" * 1025 + " Budi", "invalid_password"),
        ("register budi rahasia123 " + "N" * 129, "invalid_full_name"),
        ("register budi rahasia123 Budi\tSantoso\x7f", "invalid_full_name"),
    ],
)
def test_register_invalid_password_or_name(line: str, code: str) -> None:
    """Short or huge passwords, and unprintable or long names, are refused."""
    server = Server()
    reply = server.connect().request(line)
    assert reply["code"] == code
    assert reply["message"].startswith(code.replace("_", " ") + ": ")
    assert "budi" not in server.store.users


def test_register_missing_arguments() -> None:
    """register needs a username and a password."""
    client = Server().connect()
    for line in [
        "register",
        "register budi",
        "register   budi   ",
    ]:
        assert client.request(line)["code"] == "missing_argument", line


def test_register_rate_limited_per_address() -> None:
    """Five attempts per address, then one more every twelve minutes;
    malformed requests cost no attempt, refused ones do."""
    # Connections wait minutes of fake time without logging in.
    server = Server(limits=Limits(login_timeout=3600))
    client = server.connect("10.0.0.1")
    assert client.request("register Bad rahasia123 X")["code"] == "invalid_username"
    assert client.request("register messi rahasia123 X")["code"] == "user_exists"
    for i in range(4):
        assert client.request(f"register user{i} rahasia123 X")["status"] == "OK"
    assert client.request("register user4 rahasia123 X") == {
        "status": "ERROR",
        "message": "too many attempts",
        "code": "rate_limited",
        "retry_after_ms": 720000,
    }
    assert "user4" not in server.store.users
    other = server.connect("10.0.0.2")
    assert other.request("register other rahasia123 X")["status"] == "OK"
    again = server.connect("10.0.0.1")
    assert again.request("register user4 rahasia123 X")["code"] == "rate_limited"
    server.clock.advance(720)
    assert again.request("register user4 rahasia123 X")["status"] == "OK"
    assert again.request("register user5 rahasia123 X")["code"] == "rate_limited"


def test_register_rate_limited_per_ipv6_network() -> None:
    """An IPv6 client cannot escape the registration rate by changing
    addresses within its /64: the addresses of one network share it."""
    server = Server(limits=Limits(login_timeout=3600))
    for i in range(5):
        client = server.connect(f"2001:db8::{i + 1}")
        assert client.request(f"register user{i} rahasia123 X")["status"] == "OK"
    late = server.connect("2001:db8::99")
    assert late.request("register user5 rahasia123 X")["code"] == "rate_limited"
    elsewhere = server.connect("2001:db8:0:1::1")
    assert elsewhere.request("register user6 rahasia123 X")["status"] == "OK"


def test_register_never_logs_the_password() -> None:
    """The password of a registration appears in no log event."""
    server = Server()
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        server.connect().request("register budi sangatrahasia Budi")
        server.connect().request("register budi sangatrahasia Budi")
    finally:
        globalLogPublisher.removeObserver(events)
    assert any("budi registered" in formatEvent(e) for e in events)
    for event in events:
        assert "sangatrahasia" not in formatEvent(event) + repr(event)


def test_logout_ends_the_session_everywhere() -> None:
    """After logout the token fails on every connection; other sessions live."""
    server = Server()
    first, second = server.connect(), server.connect()
    token = first.login("messi")
    other = second.login("messi")
    assert second.request(f"inbox {token}")["status"] == "OK"
    assert first.request(f"logout {token}") == {
        "status": "OK",
        "message": "Logged Out",
    }
    assert hash_token(token) not in server.store.sessions
    assert hash_token(other) in server.store.sessions
    for client in (first, second):
        for line in [f"send {token} henderson hi", f"inbox {token}", f"logout {token}"]:
            assert client.request(line) == {
                "status": "ERROR",
                "message": "Session Tidak Ditemukan",
                "code": "no_session",
            }
    assert second.request(f"send {other} henderson still here")["status"] == "OK"


def test_logout_unknown_token() -> None:
    """logout with an unknown token answers Session Tidak Ditemukan."""
    client = Server().connect()
    assert client.request(f"logout {uuid.uuid4()}")["code"] == "no_session"
    assert client.request("logout")["code"] == "missing_argument"


def test_logout_storage_unavailable() -> None:
    """If the store cannot delete the session, logout says so."""
    server = Server()
    client = server.connect()
    token = client.login()
    server.store.broken = True
    assert client.request(f"logout {token}")["code"] == "storage_unavailable"


@pytest.mark.parametrize("username", ["postmaster", "admin", "root", ".", "..", "-rf"])
def test_register_refuses_names_that_impersonate(username: str) -> None:
    """Names of the system and names that look like paths or options are refused."""
    server = Server()
    reply = server.connect().request(f"register {username} rahasia123 Budi")
    assert reply["code"] == "invalid_username"
    assert username not in server.store.users


@pytest.mark.parametrize(
    "full_name",
    ["Budi\u0085Santoso", "Budi \u202eosotnaS", "Bu\u200bdi", "Budi\u2028X"],
)
def test_register_refuses_invisible_characters_in_full_names(full_name: str) -> None:
    """A full name with a C1 control, bidi override, zero-width space or line
    separator is refused."""
    server = Server()
    reply = server.connect().request(f"register budi rahasia123 {full_name}")
    assert reply["code"] == "invalid_full_name"
    assert "budi" not in server.store.users
