"""
Every limit of issue 5 on the in-memory server: StringTransport, a fake
clock, no sleeps. Login deadline, idle timeout, failed logins and invalid
tokens, command rate, connection counts, unsent output, mailbox size.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from chat.door import State
from chat.limits import Limits, Rate
from chat.model import PasswordCheck
from chat.store.memory import MemoryStore
from tests.helpers import Connection, Server, demo_users, result_of

LOGIN_TIMEOUT = {"status": "ERROR", "message": "login timeout", "code": "login_timeout"}
IDLE_TIMEOUT = {"status": "ERROR", "message": "idle timeout", "code": "idle_timeout"}


def limited(**changes: Any) -> Server:
    return Server(limits=Limits(**changes))


def assert_rate_limited(reply: dict[str, Any], retry_after_ms: int) -> None:
    assert reply == {
        "status": "ERROR",
        "message": "too many attempts",
        "code": "rate_limited",
        "retry_after_ms": retry_after_ms,
    }


# Login deadline and idle timeout.


def test_login_deadline_ignores_trickled_bytes() -> None:
    """Bytes trickled in (even whole commands) do not extend the login deadline."""
    server = limited(login_timeout=30)
    client = server.connect()
    line = b"ping " + b"x" * 24
    for byte in line:
        server.clock.advance(1)
        client.send(bytes([byte]))
    client.send(b"\r\n")
    assert client.replies() == [{"status": "OK", "message": "PONG", "echo": "x" * 24}]
    server.clock.advance(0.9)
    assert not client.closed
    server.clock.advance(0.1)
    assert client.replies() == [LOGIN_TIMEOUT]
    assert client.closed
    client.send(b"auth messi surabaya\r\n")
    assert client.replies() == []


def test_auth_cancels_login_deadline() -> None:
    """After a successful auth the login deadline no longer applies."""
    server = limited(login_timeout=30, idle_timeout=600)
    client = server.connect()
    server.clock.advance(20)
    client.login()
    server.clock.advance(100)
    assert client.replies() == []
    assert not client.closed


def test_failed_auth_does_not_cancel_login_deadline() -> None:
    """A wrong password is not a login: the deadline still closes the connection."""
    server = limited(login_timeout=30)
    client = server.connect()
    assert client.request("auth messi salah")["code"] == "wrong_password"
    server.clock.advance(30)
    assert client.replies() == [LOGIN_TIMEOUT]


def test_valid_token_counts_as_login() -> None:
    """A command with a valid token logs the connection in (the course client's way)."""
    server = limited(login_timeout=30, idle_timeout=600)
    token = server.connect().login()
    client = server.connect()
    server.clock.advance(10)
    assert client.request(f"inbox {token}")["status"] == "OK"
    server.clock.advance(100)
    assert not client.closed
    other = server.connect()
    assert other.request(f"inbox {uuid.uuid4()}")["code"] == "no_session"
    server.clock.advance(30)
    assert other.replies() == [LOGIN_TIMEOUT]


def test_idle_timeout_after_login() -> None:
    """A logged-in connection is closed after idle_timeout without a line."""
    server = limited(idle_timeout=600)
    client = server.connect()
    client.login()
    server.clock.advance(599)
    assert client.request("ping")["message"] == "PONG"
    server.clock.advance(599)
    assert not client.closed
    server.clock.advance(1)
    assert client.replies() == [IDLE_TIMEOUT]
    assert client.closed


def test_subscribed_connection_is_not_idle() -> None:
    """A connection subscribed to events may stay quiet past the idle timeout."""
    server = limited(idle_timeout=600)
    listener = server.connect()
    token = listener.login("henderson")
    listener.send(f"subscribe {token}\r\n".encode())
    listener.replies()
    quiet = server.connect()
    quiet.login("lineker")
    server.clock.advance(1800)
    assert quiet.replies() == [IDLE_TIMEOUT]
    assert not listener.closed
    messi = server.connect()
    messi.request(f"send {messi.login()} henderson still listening")
    events = [e for e in listener.replies() if e.get("event") == "message"]
    assert [e["msg"] for e in events] == ["still listening"]


def test_closed_connection_leaves_no_timers() -> None:
    """A connection that goes away cancels its deadline and idle timer."""
    server = limited()
    waiting = server.connect()
    active = server.connect()
    active.login()
    waiting.lose()
    active.lose()
    assert server.clock.getDelayedCalls() == []


# Failed logins and invalid tokens.


def test_failed_logins_per_user_refused_before_hashing() -> None:
    """Past the per-user failures, the address that failed is refused, unhashed."""
    server = limited(login_failures_per_user=Rate(3, 60))
    client = server.connect()
    for _ in range(3):
        assert client.request("auth messi salah")["code"] == "wrong_password"
    assert server.hasher.verified == 3
    # 20 s until the user's limit has room; the address failed 3 times, so
    # it is kept away from messi for 3 minutes, or those 20 s.
    assert_rate_limited(client.request("auth messi salah"), 20000)
    assert_rate_limited(server.connect().request("auth messi surabaya"), 20000)
    assert server.hasher.verified == 3
    # Other users are not affected.
    client.login("henderson")
    server.clock.advance(20)
    client.login("messi")


def test_stranger_cannot_lock_a_user_out() -> None:
    """Failures from one address do not keep the user out from another."""
    server = limited(login_failures_per_user=Rate(3, 60))
    stranger = server.connect("10.0.0.66")
    for _ in range(5):
        stranger.request("auth messi salah")
    assert stranger.request("auth messi surabaya")["code"] == "rate_limited"
    # The user, from an address that has not failed: the password is checked.
    user = server.connect("10.0.0.7")
    hashed = server.hasher.verified
    user.login("messi")
    assert server.hasher.verified == hashed + 1


def test_user_with_a_typo_gets_in_after_a_strangers_attack() -> None:
    """A user's own typo costs one period at most, whatever strangers keep doing."""
    server = limited(login_failures_per_user=Rate(3, 60))
    user = server.connect("10.0.0.7")
    assert user.request("auth messi typo")["code"] == "wrong_password"
    for i in range(10):
        server.connect(f"10.0.1.{i}").request("auth messi salah")
    # 3 - 11 failures: 180 s until the user's limit has room. But this
    # address failed once, 60 s ago at most: it waits for that, not the rest.
    assert_rate_limited(user.request("auth messi surabaya"), 60000)
    server.clock.advance(60)
    server.connect("10.0.0.7").login("messi")
    # The strangers' addresses get one more guess each per period, no more.
    stranger = server.connect("10.0.1.1")
    assert stranger.request("auth messi x")["code"] == "wrong_password"
    assert stranger.request("auth messi y")["code"] == "rate_limited"


def test_successful_login_forgets_the_address_failures() -> None:
    """A successful login forgets the address's earlier failures for that user."""
    server = limited(login_failures_per_user=Rate(2, 60))
    user = server.connect("10.0.0.7")
    assert user.request("auth messi typo")["code"] == "wrong_password"
    user.login("messi")
    for _ in range(4):
        server.connect("10.0.0.66").request("auth messi salah")
    user.login("messi")


def test_many_guessing_addresses_get_one_attempt_per_period() -> None:
    """Spread over addresses, guessers get one hashed attempt each per period."""
    server = limited(
        login_failures_per_user=Rate(3, 60), login_failures_per_address=Rate(100, 60)
    )
    addresses = [f"10.0.1.{i}" for i in range(1, 11)]
    first = [server.connect(a).request("auth messi salah")["code"] for a in addresses]
    assert first == ["wrong_password"] * 10
    again = [server.connect(a).request("auth messi salah")["code"] for a in addresses]
    assert again == ["rate_limited"] * 10
    assert server.hasher.verified == 10


def test_successful_logins_use_no_attempts() -> None:
    """A user who keeps logging in successfully is never limited."""
    server = limited(
        login_failures_per_user=Rate(2, 60), login_failures_per_address=Rate(2, 60)
    )
    client = server.connect()
    for _ in range(50):
        client.login()
    assert client.request("auth messi salah")["code"] == "wrong_password"
    client.login()


def test_failed_logins_per_address() -> None:
    """One address failing for many usernames is limited; others are not."""
    server = limited(
        login_failures_per_user=Rate(100, 60), login_failures_per_address=Rate(4, 60)
    )
    attacker = server.connect("10.0.0.1")
    for username in ("messi", "henderson", "lineker", "ronaldo"):
        reply = attacker.request(f"auth {username} salah")
        assert reply["code"] in {"wrong_password", "unknown_user"}
    assert_rate_limited(attacker.request("auth lineker surabaya"), 15000)
    assert_rate_limited(server.connect("10.0.0.1").request("auth x y"), 15000)
    server.connect("10.0.0.2").login("lineker")


def test_concurrent_failures_are_all_charged() -> None:
    """Attempts started together all pay: a burst from many connections buys nothing."""
    server = limited(login_failures_per_address=Rate(2, 60))
    pending: list[Deferred[PasswordCheck]] = []
    server.hasher.check = lambda *args: pending.append(Deferred()) or pending[-1]  # type: ignore[method-assign]
    clients = [server.connect("10.0.0.1") for _ in range(6)]
    for client in clients:
        client.send(b"auth messi salah\r\n")
    assert len(pending) == 6
    for d in pending:
        d.callback(PasswordCheck(False))
    assert [c.replies()[0]["code"] for c in clients] == ["wrong_password"] * 6
    # 2 - 6 = -4 tokens at 1 per 30 s: 150 s until the next attempt.
    assert_rate_limited(clients[0].request("auth messi salah"), 150000)


def test_invalid_tokens_per_address() -> None:
    """Invalid tokens are limited per address; then even a valid one waits."""
    server = limited(token_failures_per_address=Rate(3, 3))
    client = server.connect("10.0.0.1")
    token = client.login()
    for _ in range(3):
        assert client.request(f"inbox {uuid.uuid4()}")["code"] == "no_session"
    assert_rate_limited(client.request(f"inbox {uuid.uuid4()}"), 1000)
    assert_rate_limited(client.request(f"send {token} henderson hi"), 1000)
    assert server.store.messages == []
    assert server.connect("10.0.0.2").request(f"inbox {token}")["status"] == "OK"
    server.clock.advance(1)
    assert client.request(f"send {token} henderson hi")["status"] == "OK"


# Command rate.


def test_command_rate_pauses_reading_and_loses_nothing() -> None:
    """Beyond the command rate, reading pauses; every command still runs, in order."""
    server = limited(command_rate=Rate(4, 1))
    client = server.connect()
    client.send(b"".join(b"ping %d\r\n" % i for i in range(12)))
    assert [r["echo"] for r in client.replies()] == ["0", "1", "2", "3"]
    assert client.transport.producerState == "paused"
    server.clock.advance(0.25)
    assert [r["echo"] for r in client.replies()] == ["4"]
    server.clock.advance(0.25)
    assert [r["echo"] for r in client.replies()] == ["5"]
    server.clock.advance(1)
    assert [r["echo"] for r in client.replies()] == ["6", "7", "8", "9"]
    assert client.transport.producerState == "paused"
    server.clock.advance(1)
    assert [r["echo"] for r in client.replies()] == ["10", "11"]
    assert client.transport.producerState == "producing"


def test_partial_line_while_paused_is_kept() -> None:
    """Bytes of a line that arrive while reading is paused are not lost."""
    server = limited(command_rate=Rate(1, 1))
    client = server.connect()
    client.send(b"ping a\r\nping b\r\n")
    assert [r["echo"] for r in client.replies()] == ["a"]
    client.send(b"ping")
    client.send(b" c")
    client.send(b"\r\nping d\r\n")
    for expected in ["b", "c", "d"]:
        server.clock.advance(1)
        assert [r["echo"] for r in client.replies()] == [expected]


def test_command_rate_is_per_connection() -> None:
    """One connection at its command rate does not slow another."""
    server = limited(command_rate=Rate(2, 1))
    busy = server.connect()
    busy.send(b"ping\r\n" * 5)
    assert len(busy.replies()) == 2
    assert server.connect().request("ping")["message"] == "PONG"


def test_command_rate_off() -> None:
    """With no command rate, a thousand pipelined commands run at once."""
    server = limited(command_rate=None)
    client = server.connect()
    for _ in range(20):
        client.send(b"ping\r\n" * 50)
    assert len(client.replies()) == 1000


# Connection counts.


TOO_MANY = {
    "status": "ERROR",
    "message": "too many connections",
    "code": "too_many_connections",
}


def test_max_connections_total() -> None:
    """Over the total limit, with every connection logged in, a new
    connection gets one error and is closed."""
    server = limited(max_connections=2)
    first, second = server.connect("10.0.0.1"), server.connect("10.0.0.2")
    first.login()
    second.login("henderson")
    third = server.connect("10.0.0.3")
    assert third.replies() == [
        {
            "status": "ERROR",
            "message": "too many connections",
            "code": "too_many_connections",
        }
    ]
    assert third.closed
    third.send(b"ping\r\n")
    assert third.replies() == []
    third.lose()
    assert server.factory.connections.total == 2
    first.lose()
    fourth = server.connect("10.0.0.3")
    assert not fourth.closed
    assert fourth.request("ping")["message"] == "PONG"
    assert not second.closed


def test_longest_idle_not_logged_in_makes_room() -> None:
    """At the total limit, the connection that has been idle longest
    without logging in is closed to make room, not the new one; logged-in
    connections are never chosen."""
    server = limited(max_connections=3)
    logged_in = server.connect("10.0.0.1")
    logged_in.login()
    server.clock.advance(1)
    oldest, recent = server.connect("10.0.0.2"), server.connect("10.0.0.3")
    server.clock.advance(5)
    assert oldest.request("ping")["message"] == "PONG"  # now the most recent
    newcomer = server.connect("10.0.0.4")
    assert recent.replies() == [TOO_MANY]
    assert recent.closed
    recent.lose()
    assert not newcomer.closed and not oldest.closed and not logged_in.closed
    assert newcomer.request("ping")["message"] == "PONG"
    assert server.factory.connections.total == 3


def test_ipv6_clients_counted_by_network() -> None:
    """IPv6 clients of one /64 share the per-address limits."""
    server = limited(max_connections_per_address=2)
    server.connect("2001:db8::1").login()
    server.connect("2001:db8::2").login()
    assert server.connect("2001:db8::3").closed
    assert not server.connect("2001:db8:0:1::1").closed


def test_max_connections_per_address() -> None:
    """Over the per-address limit only that address is refused (when none
    of its connections can make room)."""
    server = limited(max_connections_per_address=2)
    clients = [server.connect("10.0.0.1") for _ in range(2)]
    for client in clients:
        client.login()
    refused = server.connect("10.0.0.1")
    assert refused.replies()[0]["message"] == "too many connections from your address"
    assert refused.closed
    assert server.connect("10.0.0.2").request("ping")["message"] == "PONG"
    clients[0].lose()
    assert not server.connect("10.0.0.1").closed


# Unsent output.


class BufferedTransport(StringTransport):
    """
    A transport that, like Twisted's TCP transport, pauses its streaming
    producer when more than C{buffer_size} bytes are unsent and resumes it
    when the client has read everything.
    """

    def __init__(self, buffer_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.buffer_size = buffer_size
        self.unsent = 0
        self.producer_paused = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        if self.producer is not None and self.streaming and not self.producer_paused:
            if self.unsent > self.buffer_size:
                self.producer_paused = True
                self.producer.pauseProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def read_all(self) -> bytes:
        """
        The client reads everything; the producer is resumed.
        """
        data = self.value()
        self.clear()
        self.unsent = 0
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data


def buffered_client(server: Server, buffer_size: int) -> Connection:
    from twisted.internet.address import IPv4Address

    address = IPv4Address("TCP", "127.0.0.1", 50000)
    protocol = server.factory.buildProtocol(address)
    transport = BufferedTransport(buffer_size, peerAddress=address)
    protocol.makeConnection(transport)
    return Connection(protocol, transport)


def test_client_not_reading_pauses_its_input() -> None:
    """While the client does not read its replies, its requests are not read either."""
    server = limited()
    client = buffered_client(server, buffer_size=200)
    transport: BufferedTransport = client.transport  # type: ignore[assignment]
    assert transport.producer is client.protocol and transport.streaming
    word = "w" * 80
    client.send(f"ping {word}\r\n".encode() * 20)
    assert transport.producerState == "paused"
    before_reading = transport.value().count(b"PONG")
    assert 0 < before_reading < 20
    # Nothing more happens until the client reads.
    client.send(b"")
    assert transport.value().count(b"PONG") == before_reading
    total, reads = 0, 0
    while total < 20:
        total += transport.read_all().count(b"PONG")
        reads += 1
    assert total == 20
    assert reads > 2
    assert transport.producerState == "producing"
    assert not transport.disconnecting


def test_queued_commands_wait_for_a_client_that_does_not_read() -> None:
    """Commands queued by a client that does not read wait; none piles up or is lost."""
    server = limited(max_output=5000)
    client = buffered_client(server, buffer_size=2000)
    transport: BufferedTransport = client.transport  # type: ignore[assignment]
    token = client.login()
    transport.read_all()
    slow = server.store.hold("store_message")
    word = "w" * 1000
    # A slow command, and many big replies queued behind it.
    client.send(f"send {token} henderson hi\r\n".encode())
    client.send(f"ping {word}\r\n".encode() * 40)
    slow.callback(None)
    assert not transport.aborted
    # The transport's buffer, and no more: the rest waits for the client.
    assert len(transport.value()) <= 2000 + 1100
    replies = 0
    while True:
        data = transport.read_all()
        if not data:
            break
        replies += data.count(b"\r\n\r\n")
    assert replies == 41
    assert not transport.aborted


def test_too_many_events_disconnect_a_client_that_does_not_read() -> None:
    """Pushed events piling up past max_output for a non-reading subscriber: dropped."""
    server = limited(max_output=5000)
    henderson = buffered_client(server, buffer_size=2000)
    transport: BufferedTransport = henderson.transport  # type: ignore[assignment]
    token = henderson.login("henderson")
    henderson.send(f"subscribe {token}\r\n".encode())
    transport.read_all()
    messi = server.connect()
    sender = messi.login("messi")
    sent = 0
    while not transport.aborted and sent < 50:
        messi.request(f"send {sender} henderson {sent} {'x' * 1000}")
        sent += 1
    assert transport.aborted
    assert 2 < sent < 10
    # Pushed but unacknowledged: still undelivered, so nothing is lost.
    assert [s.delivered_at for s in server.store.messages] == [None] * sent


def _not_reading(server: Server, port: int, username: str | None = None) -> Any:
    """
    A client that logs in (as C{username}, if given), asks for a reply of
    about 3000 bytes and does not read it: its transport.
    """
    from twisted.internet.address import IPv4Address

    address = IPv4Address("TCP", "127.0.0.1", port)
    protocol = server.factory.buildProtocol(address)
    transport = BufferedTransport(100, peerAddress=address)
    protocol.makeConnection(transport)
    client = Connection(protocol, transport)
    if username is not None:
        client.login(username)
        transport.read_all()
    client.send(f"ping {'p' * 3000}\r\n".encode())
    assert transport.producer_paused
    return transport


def test_output_held_for_all_clients_not_reading_is_bounded() -> None:
    """Clients that do not read hold at most max_output_total bytes of
    replies together: past it, the connection holding the most is dropped,
    whoever they are; what a client reads is no longer counted."""
    server = limited(max_output_total=10_000)
    factory = server.factory
    held = [_not_reading(server, 50000 + i) for i in range(3)]
    assert not any(t.aborted for t in held)
    assert 9000 <= factory.output_bytes <= 10_000
    fourth = _not_reading(server, 50010)
    assert [t.aborted for t in [*held, fourth]].count(True) == 1
    assert factory.output_bytes <= 10_000
    for transport in [*held, fourth]:
        if not transport.aborted:
            transport.read_all()
    assert factory.output_bytes == 0


def test_output_held_for_one_user_is_bounded() -> None:
    """The connections of one user that do not read hold at most
    max_output_per_user bytes together; another user's are not touched."""
    server = limited(max_output_per_user=7000)
    henderson = _not_reading(server, 50100, "henderson")
    first = _not_reading(server, 50101, "messi")
    second = _not_reading(server, 50102, "messi")
    assert not (first.aborted or second.aborted)
    third = _not_reading(server, 50103, "messi")
    assert [first.aborted, second.aborted, third.aborted].count(True) == 1
    assert not henderson.aborted


def test_output_limits_are_options() -> None:
    """--max-output-total and --max-output-per-user: sizes, with defaults
    no classroom reaches."""
    from chat.tap import Options, limits_from

    options = Options()
    options.parseOptions([])
    limits = limits_from(options)
    assert limits.max_output_total == 256 * 1024 * 1024
    assert limits.max_output_per_user == 32 * 1024 * 1024
    options = Options()
    options.parseOptions(["--max-output-total", "64M", "--max-output-per-user", "8M"])
    limits = limits_from(options)
    assert (limits.max_output_total, limits.max_output_per_user) == (64 << 20, 8 << 20)


def test_timeout_while_client_not_reading_aborts() -> None:
    """A timeout on a connection whose client is not reading aborts it at once."""
    server = limited(login_timeout=30)
    client = buffered_client(server, buffer_size=100)
    transport: BufferedTransport = client.transport  # type: ignore[assignment]
    client.send(b"ping " + b"x" * 200 + b"\r\n")
    server.clock.advance(30)
    assert transport.aborted


def test_quit_unregisters_producer() -> None:
    """Closing unregisters the protocol as producer, so the transport can close."""
    client = Server().connect()
    assert client.transport.producer is client.protocol
    client.request("quit")
    assert client.transport.producer is None
    assert client.closed


# Mailbox size.


def test_mailbox_full() -> None:
    """A full mailbox refuses more messages until its owner reads them."""
    store = MemoryStore(max_mailbox=3)
    for user in demo_users():
        result_of(store.add_user(user))
    server = Server(store=store)
    client = server.connect()
    messi = client.login("messi")
    for i in range(3):
        assert client.request(f"send {messi} henderson m{i}")["status"] == "OK"
    assert client.request(f"send {messi} henderson m3") == {
        "status": "ERROR",
        "message": "mailbox full",
        "code": "mailbox_full",
        "username": "henderson",
    }
    assert client.request(f"send {messi} lineker other")["status"] == "OK"
    henderson = client.login("henderson")
    messages = client.request(f"inbox {henderson}")["messages"]["messi"]
    assert [m["msg"] for m in messages] == ["m0", "m1", "m2"]
    assert client.request(f"send {messi} henderson m4")["status"] == "OK"


#: A token no session has (fixed, so that every xdist worker collects the
#: same test ids).
UNKNOWN_TOKEN = "0b3f8a52-6a1e-4c1f-9a4e-2f1d7c8e9b10"


@pytest.mark.parametrize("line", ["auth messi salah", f"inbox {UNKNOWN_TOKEN}"])
def test_limits_apply_per_factory(line: str) -> None:
    """Two servers (factories) keep separate failure counts."""
    tight = Limits(
        login_failures_per_user=Rate(1, 60),
        login_failures_per_address=Rate(1, 60),
        token_failures_per_address=Rate(1, 60),
    )
    first, second = Server(limits=tight), Server(limits=tight)
    first.connect().request(line)
    assert first.connect().request(line)["code"] == "rate_limited"
    assert second.connect().request(line)["code"] != "rate_limited"


def test_per_address_room_is_made_from_that_address() -> None:
    """At the per-address limit, only a connection from that address makes
    room."""
    server = limited(max_connections_per_address=1)
    other = server.connect("10.0.0.2")
    waiting = server.connect("10.0.0.1")
    newcomer = server.connect("10.0.0.1")
    assert waiting.replies() == [TOO_MANY]
    assert not other.closed and not newcomer.closed


def test_default_limits() -> None:
    """Without limits given, the server uses the documented defaults: no
    login deadline and no idle timeout (a student may think for an hour),
    a deadline on lines in progress instead."""
    factory = Server().factory
    assert factory.limits == Limits()
    assert factory.limits.login_timeout is None
    assert factory.limits.idle_timeout is None
    assert factory.limits.line_timeout == 30
    assert factory.limits.max_output == 1024 * 1024
    assert factory.limits.max_mailbox == 10_000


# Edges.


def test_reply_after_close_is_dropped_but_message_kept() -> None:
    """A command still running when the client goes is finished, unanswered."""
    server = limited(idle_timeout=60)
    client = server.connect()
    token = client.login()
    slow = server.store.hold("store_message")
    client.send(f"send {token} henderson late\r\n".encode())
    server.clock.advance(60)
    assert client.replies() == []  # not idle: its command is running
    client.lose()
    slow.callback(None)
    assert client.replies() == []
    assert [s.message.text for s in server.store.messages] == ["late"]


def test_storage_errors_are_not_token_failures() -> None:
    """A token that cannot be checked (storage failing) does not count as invalid."""
    server = limited(token_failures_per_address=Rate(1, 60))
    client = server.connect()
    server.store.broken = True
    for _ in range(3):
        assert client.request(f"inbox {uuid.uuid4()}")["code"] == "storage_unavailable"
    server.store.broken = False
    assert client.request(f"inbox {uuid.uuid4()}")["code"] == "no_session"


def test_reading_resumes_only_when_every_reason_is_gone() -> None:
    """Output drained while the command rate still holds: reading stays paused."""
    server = limited(command_rate=Rate(2, 1))
    client = buffered_client(server, buffer_size=10_000)
    client.send(b"ping\r\n" * 4)
    assert len(client.transport.value().split(b"\r\n\r\n")) == 3  # 2 replies
    assert client.transport.producerState == "paused"
    client.protocol.pauseProducing()  # the transport's buffer filled up too
    client.protocol.resumeProducing()  # and was flushed
    assert client.transport.producerState == "paused"
    server.clock.advance(1)
    assert client.transport.producerState == "producing"
    assert client.transport.value().count(b"PONG") == 4


def test_factory_defaults_to_global_reactor() -> None:
    """Without a clock, the factory's timers run on the global reactor."""
    from twisted.internet import reactor

    from chat.lines import ChatFactory

    assert ChatFactory(Server().portal).clock is reactor


def test_realm_link_is_not_cut_by_login_or_idle_deadlines() -> None:
    """A link from another realm logs in with realm-auth and is never idle."""
    from tests.test_federation import Realms, lines_of

    realms = Realms()
    (wire,) = realms.network.live(origin="realm-a")
    assert wire.server.state is State.ACTIVE
    realms.settle(3600)
    assert realms.network.live(origin="realm-a") == [wire]
    assert wire.server.state is State.ACTIVE
    codes = {reply.get("code") for reply in lines_of(wire, "server")}
    assert not codes & {"login_timeout", "idle_timeout"}


def test_connection_state_stays_compact() -> None:
    """A logged-in connection keeps at most 30 attributes in its dict.

    Past 30, CPython stops sharing the keys of instance dicts and each of
    ten thousand idle connections pays about 1.3 KB more (DESIGN: under
    80 MB for 10,000 idle authenticated connections). Put new state in
    __slots__ or in an object of its own.
    """
    server = Server()
    client = server.connect()
    token = client.login()
    client.request(f"inbox {token}")
    client.request("ping")
    assert len(vars(client.protocol)) <= 30, sorted(vars(client.protocol))
