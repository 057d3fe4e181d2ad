"""
The line connection and its door (chat.lines, chat.door): framing, the
limits on lines in progress, half-close, the classroom defaults, and the
per-connection session cache, on StringTransports with a fake clock.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from chat import replies
from chat.door import State
from chat.limits import Limits
from chat.lines import UNAUTHENTICATED_LINE, _tune
from chat.model import Message
from tests.helpers import Server

LINE_TOO_LONG = {"status": "ERROR", "message": "line too long", "code": "line_too_long"}


def limited(**changes: Any) -> Server:
    return Server(limits=Limits(**changes))


# Integer arguments and one bad value.


def test_huge_message_id_is_refused_by_the_parser() -> None:
    """An ack with an id past 64 bits is an invalid argument, answered
    before it reaches the store; other commands go on."""
    server = Server()
    client = server.connect()
    token = client.login()
    reply = client.request(f"ack {token} 99999999999999999999")
    assert reply["code"] == "invalid_argument"
    assert client.request(f"send {token} henderson still fine")["status"] == "OK"


def test_a_stored_time_no_datetime_holds_still_reaches_the_inbox() -> None:
    """A message whose stored time a datetime cannot hold (a link's
    sent_at of 4e12, stored before links were validated) is still
    formatted: the inbox that took it out of the mailbox answers with
    every message, and the connection goes on."""
    server = Server()
    store = server.store
    store.store_message_then("messi", "henderson", "local", 1764037200.0, _ignore)
    store.store_message_then("messi", "henderson", "far", 4e12, _ignore)
    store.store_message_then("messi", "henderson", "nan", math.nan, _ignore)
    client = server.connect()
    token = client.login("henderson")
    reply = client.request(f"inbox {token}")
    messages = reply["messages"]["messi"]
    assert [m["msg"] for m in messages] == ["local", "far", "nan"]
    assert messages[1]["sent_at"].startswith("9999-12-31T23:59:59.")
    assert messages[2]["sent_at"] == "1970-01-01T00:00:00.000Z"
    assert client.request("ping")["message"] == "PONG"


def _ignore(succeeded: bool, value: object) -> None:
    assert succeeded, value


# Half-close.


def test_half_close_gets_every_reply_then_the_close() -> None:
    """A client that sends two lines and shuts down its sending side (as
    printf ... | nc -N does) gets both replies, in order, then the close."""
    server = Server()
    token = server.connect().login()
    client = server.connect()
    slow = server.store.hold("store_message")
    client.send(f"send {token} henderson one\nsend {token} henderson two\n".encode())
    client.protocol.readConnectionLost()
    assert not client.closed
    slow.callback(None)
    assert [r["message"] for r in client.replies()] == ["Message Sent"] * 2
    assert client.closed
    assert [s.message.text for s in server.store.messages] == ["one", "two"]


def test_half_close_with_nothing_pending_closes() -> None:
    """Half-closed with every line answered: the server closes at once."""
    client = Server().connect()
    assert client.request("ping")["message"] == "PONG"
    client.protocol.readConnectionLost()
    assert client.closed


# Lines in progress.


def test_unauthenticated_lines_are_short() -> None:
    """Before logging in, a line may hold only a command's worth of bytes:
    more is line too long, and the connection closes."""
    client = Server().connect()
    client.send(b"x" * (UNAUTHENTICATED_LINE + 100))
    assert client.replies() == [LINE_TOO_LONG]
    assert client.closed


def test_after_login_lines_may_carry_files() -> None:
    """Logged in, the same connection may send a line as long as a file."""
    server = Server()
    client = server.connect()
    token = client.login()
    content = base64.b64encode(b"z" * 100_000).decode()
    reply = client.request(f"sendfile {token} henderson big.bin {content}")
    assert reply["message"] == "File Sent"


def test_a_long_line_naming_a_live_session_on_a_fresh_connection() -> None:
    """A client that opens a new connection for each command (as some of
    the course family's do) may send a file on it: the line names a live
    session."""
    server = Server()
    token = server.connect().login()
    fresh = server.connect()
    content = base64.b64encode(b"z" * 100_000).decode()
    line = f"sendfile {token} henderson big.bin {content}\r\n".encode()
    for start in range(0, len(line), 4096):
        fresh.send(line[start : start + 4096])
    assert fresh.replies()[0]["message"] == "File Sent"


def test_a_long_line_with_a_stranger_token_is_too_long() -> None:
    """A long line on a fresh connection naming no session is refused at
    the small limit."""
    server = Server()
    fresh = server.connect()
    fresh.send(b"sendfile nosuchtoken henderson a.bin " + b"A" * 40_000)
    assert fresh.replies() == [LINE_TOO_LONG]
    assert fresh.closed


def test_total_held_for_strangers_is_bounded() -> None:
    """All the connections not logged in together hold at most
    max_partial_total bytes of lines in progress: past it, server busy."""
    server = limited(max_partial_total=20_000)
    first, second = server.connect(), server.connect()
    first.send(b"x" * 12_000)
    second.send(b"y" * 12_000)
    assert second.replies() == [
        {"status": "ERROR", "message": "server busy", "code": "server_busy"}
    ]
    assert second.closed and not first.closed
    second.lose()
    first.send(b"\n")
    assert first.replies()[0]["code"] == "unknown_command"
    assert server.factory.partial_bytes == 0


def test_line_in_progress_must_keep_coming() -> None:
    """A line that stops growing (slowloris) closes the connection after
    line_timeout; one that keeps growing by 1 KiB in time does not."""
    server = limited(line_timeout=30)
    slow, steady = server.connect(), server.connect()
    token = server.connect().login()
    steady.request("auth messi surabaya")
    slow.send(b"pin")
    steady.send(f"send {token} henderson ".encode())
    for _ in range(5):
        server.clock.advance(20)
        steady.send(b"x" * 1024)
    assert slow.replies() == [
        {"status": "ERROR", "message": "line timeout", "code": "line_timeout"}
    ]
    assert slow.closed
    steady.send(b"\r\n")
    assert steady.replies() == [{"status": "OK", "message": "Message Sent"}]
    assert not steady.closed


# The classroom defaults.


def test_a_student_may_think_before_auth_and_between_commands() -> None:
    """With the default limits, five minutes before auth and an hour between
    commands are fine."""
    server = Server()
    client = server.connect()
    server.clock.advance(300)
    token = client.login()
    server.clock.advance(3600)
    assert (
        client.request(f"send {token} henderson sorry, was thinking")["status"] == "OK"
    )
    assert not client.closed


def test_keepalive_finds_dead_peers() -> None:
    """Connections ask TCP for keepalive (and no Nagle delay)."""

    class Transport(StringTransport):
        keepalive = nodelay = False

        def setTcpKeepAlive(self, enabled: bool) -> None:
            self.keepalive = enabled

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.nodelay = enabled

    transport = Transport()
    _tune(transport)
    assert transport.keepalive and transport.nodelay


# The session cache.


def test_a_session_ended_elsewhere_stops_at_once_on_every_connection() -> None:
    """Two connections use one token from their caches; when the session
    ends (here: the user's password changed in another process), the next
    command on either is refused at once."""
    server = Server()
    one, two = server.connect(), server.connect()
    token = one.login()
    assert two.request(f"inbox {token}")["status"] == "OK"
    assert one.request(f"inbox {token}")["status"] == "OK"
    server.store.sessions.clear()  # what chat-admin passwd did
    server.sessions.user_changed_elsewhere("messi", "password changed")
    assert one.request(f"inbox {token}")["code"] == "no_session"
    assert two.request(f"send {token} henderson hi")["code"] == "no_session"


def test_state_is_one_enum() -> None:
    """A connection's life is one state: new, active, closing, closed."""
    server = Server()
    client = server.connect()
    assert client.protocol.state is State.NEW
    client.login()
    assert client.protocol.state is State.ACTIVE
    client.request("quit")
    assert client.protocol.state is State.CLOSING
    client.lose()
    assert client.protocol.state is State.CLOSED


# The formatting of messages (built as text, for speed) is json.dumps's.


def reference(message: Message) -> str:
    wire: dict[str, object] = {
        "msg_from": message.sender_name,
        "msg_to": message.recipient_name,
        "msg": message.text,
        "id": message.id,
        "sent_at": replies._iso_slow(message.sent_at),
        "from": message.sender,
        "to": message.recipient,
    }
    if message.group is not None:
        wire["group"] = message.group
    if message.file_name is not None:
        wire["file_name"] = message.file_name
        wire["file_size"] = message.file_size
        wire["file_sha256"] = message.file_sha256
        if message.file_content is not None:
            wire["file_content"] = base64.b64encode(message.file_content).decode()
    if message.realm is not None:
        wire["realm"] = message.realm
    return json.dumps(wire, separators=(",", ":"))


names = st.text(min_size=1, max_size=20)
moments = st.floats(min_value=0, max_value=253402300799, allow_nan=False).filter(
    lambda t: not math.isinf(t)
)


@given(
    st.builds(
        Message,
        id=st.integers(min_value=1, max_value=2**63 - 1),
        sender=st.one_of(names, names.map(lambda n: n + "@realm-b")),
        recipient=names,
        sender_name=names,
        recipient_name=names,
        text=st.text(min_size=1),
        sent_at=moments,
        group=st.none() | names,
        file_name=st.none() | names,
        file_size=st.none() | st.integers(0, 2**40),
        file_sha256=st.none() | st.text(alphabet="0123456789abcdef", max_size=64),
        file_content=st.none() | st.binary(max_size=64),
    )
)
def test_message_json_is_json_dumps(message: Message) -> None:
    """The directly built JSON of a message is exactly json.dumps's, for
    any text (quotes, controls, non-BMP characters) and any time."""
    assert replies.message_json(message) == reference(message)


def test_connection_from_ipv6_host_counts_by_network() -> None:
    """The door's address is the per-address key (an IPv6 /64)."""
    server = Server()
    protocol = server.factory.buildProtocol(None)
    address = IPv4Address("TCP", "10.0.0.1", 1234)
    protocol.makeConnection(StringTransport(peerAddress=address))
    assert protocol.address == "10.0.0.1" and protocol.peer == "10.0.0.1:1234"
