"""
The fault suite: black-box tests against real C{twistd chat} subprocesses
on loopback, under load, abuse and faults.

Each test prints its figures (run with C{pytest -s -m fault} to see them).
The quick profile (the default) runs in the normal suite; set
C{CHAT_FAULT_PROFILE=long} for more rounds, messages and connections.
"""

from __future__ import annotations

import collections
import os
import random
import resource
import selectors
import signal
import socket
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.store import schema
from tests.test_sqlite_file import damage
from tests.twistd_helpers import REPO, TWISTD, LineClient, TwistdChat
from tests.waiting import wait_until

pytestmark = pytest.mark.fault

LONG = os.environ.get("CHAT_FAULT_PROFILE", "quick") == "long"
PROFILE: dict[str, Any] = {
    "kill_rounds": 20 if LONG else 3,
    "senders": 4,
    "drain_messages": 5000 if LONG else 600,
    "drainers": 4,
    "slowloris": 200 if LONG else 20,
    "storm": 10_000 if LONG else 2_000,
    "storm_control": 500 if LONG else 50,
    "brute_attempts": 200 if LONG else 30,
    "unread_lines": 10_000 if LONG else 3_000,
}

SENT = {"status": "OK", "message": "Message Sent"}


def report(name: str, **figures: object) -> None:
    shown = ", ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[fault] {name}: {shown}")


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[Callable[..., TwistdChat]]:
    """
    Make (and afterwards kill) twistd chat servers in C{tmp_path}.
    """
    servers: list[TwistdChat] = []

    def make(*arguments: str, **options: Any) -> TwistdChat:
        server = TwistdChat(tmp_path, "--demo", *arguments, **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


# Load with a ledger.


class Sender(threading.Thread):
    """
    Pipelines C{send} commands (C{window} in flight) with unique texts,
    keeping a ledger: acked, answered with an error, never answered.
    """

    def __init__(
        self,
        port: int,
        token: str,
        recipient: str,
        prefix: str,
        stop: threading.Event,
        window: int = 8,
        count: int | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.token = token
        self.recipient = recipient
        self.prefix = prefix
        self.stop = stop
        self.window = window
        self.count = count
        self.acked: list[str] = []
        self.errored: list[tuple[str, str]] = []
        self.unanswered: list[str] = []

    def run(self) -> None:
        try:
            client = LineClient(self.port)
        except OSError:
            return
        in_flight: collections.deque[str] = collections.deque()
        sequence = 0
        try:
            while not self.stop.is_set() or in_flight:
                while (
                    not self.stop.is_set()
                    and len(in_flight) < self.window
                    and (self.count is None or sequence < self.count)
                ):
                    text = f"{self.prefix}-{sequence}"
                    sequence += 1
                    client.write(f"send {self.token} {self.recipient} {text}")
                    in_flight.append(text)
                if not in_flight:
                    break
                reply = client.read()
                text = in_flight.popleft()
                if reply == SENT:
                    self.acked.append(text)
                else:
                    self.errored.append((text, str(reply.get("code"))))
        except (OSError, ConnectionError):
            pass
        finally:
            self.unanswered.extend(in_flight)
            client.close()


def acked_at_least(senders: list[Sender], count: int) -> None:
    """
    Wait until C{senders} have had C{count} acknowledgements in all (the
    load is on), or one of them has ended.
    """
    wait_until(
        lambda: (
            sum(len(s.acked) for s in senders) >= count
            or not all(s.is_alive() for s in senders)
        ),
        what=lambda: f"{count} acks: {[len(s.acked) for s in senders]}",
    )


def drain(port: int, username: str = "lineker") -> list[dict[str, Any]]:
    """
    Every message waiting for C{username}, in inbox order.
    """
    client = LineClient(port)
    token = client.login(username)
    messages: list[dict[str, Any]] = []
    while True:
        reply = client.request(f"inbox {token}")
        assert reply["status"] == "OK", reply
        batch = [m for group in reply["messages"].values() for m in group]
        if not batch:
            break
        messages.extend(batch)
    client.close()
    return messages


def check_ledger(
    senders: list[Sender], stored: list[str], errors_may_be_stored: int = 0
) -> tuple[int, int, int, int]:
    """
    No acked message lost or duplicated, nothing answered with an error
    stored (but at most C{errors_may_be_stored}: a database connection lost
    during COMMIT leaves the outcome unknown, so the reply is an error),
    nothing stored that was never sent.

    @return: acked, errored, unanswered and unanswered-but-stored counts.
    """
    counts = collections.Counter(stored)
    duplicated = [text for text, n in counts.items() if n > 1]
    assert not duplicated, f"duplicated: {duplicated[:10]}"
    acked = {text for s in senders for text in s.acked}
    errored = {text for s in senders for text, _ in s.errored}
    unanswered = {text for s in senders for text in s.unanswered}
    lost = acked - counts.keys()
    assert not lost, f"{len(lost)} acked messages lost: {sorted(lost)[:10]}"
    assert len(errored & counts.keys()) <= errors_may_be_stored, (
        "a message answered with ERROR was stored"
    )
    answered = acked | unanswered | (errored if errors_may_be_stored else set())
    assert counts.keys() <= answered, "a message nobody sent was stored"
    return len(acked), len(errored), len(unanswered), len(unanswered & counts.keys())


def test_kill9_in_a_loop_loses_no_acked_message(
    chat: Callable[..., TwistdChat],
) -> None:
    """SIGKILL under load, again and again: every acked message arrives exactly once."""
    server = chat("--max-mailbox", "10000000")
    port = server.start()
    server.wait_ready()
    token = LineClient(port).login("messi")
    senders: list[Sender] = []
    rng = random.Random(5)
    started = time.monotonic()
    for round_ in range(PROFILE["kill_rounds"]):
        if round_:
            port = server.start()
        stop = threading.Event()
        group = [
            Sender(port, token, "lineker", f"r{round_}-s{i}", stop)
            for i in range(PROFILE["senders"])
        ]
        for sender in group:
            sender.start()
        # Killed at a random point of the load, whatever the machine's speed.
        acked_at_least(group, rng.randint(20, 300))
        server.stop(signal.SIGKILL)
        stop.set()
        for sender in group:
            sender.join(timeout=30)
            assert not sender.is_alive()
        senders.extend(group)
    port = server.start()
    stored = [m["msg"] for m in drain(port)]
    acked, errored, unanswered, unanswered_stored = check_ledger(senders, stored)
    assert acked > 0
    assert errored == 0
    report(
        "kill -9 loop",
        rounds=PROFILE["kill_rounds"],
        acked=acked,
        errors=errored,
        in_flight_at_kill=unanswered,
        of_which_stored=unanswered_stored,
        stored=len(stored),
        seconds=round(time.monotonic() - started, 1),
    )


def test_sigterm_under_load_keeps_every_ack(
    chat: Callable[..., TwistdChat], tmp_path: Path
) -> None:
    """SIGTERM under load: exits (within a deadline; the time is reported);
    every acked message is in the file."""
    server = chat("--max-mailbox", "10000000")
    port = server.start()
    server.wait_ready()
    token = LineClient(port).login("messi")
    stop = threading.Event()
    senders = [
        Sender(port, token, "lineker", f"term-s{i}", stop)
        for i in range(PROFILE["senders"])
    ]
    for sender in senders:
        sender.start()
    acked_at_least(senders, 200)
    signalled = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=30)
    exit_seconds = time.monotonic() - signalled
    stop.set()
    for sender in senders:
        sender.join(timeout=30)
    assert code == -signal.SIGTERM
    # Sends that came in after the store closed were refused, not acked.
    assert {code for s in senders for _, code in s.errored} <= {"storage_unavailable"}
    connection = sqlite3.connect(tmp_path / "chat.sqlite")
    stored = [row[0] for row in connection.execute("SELECT body FROM messages")]
    connection.close()
    acked, errored, unanswered, unanswered_stored = check_ledger(senders, stored)
    assert acked > 0
    assert "Traceback" not in server.log_text()
    report(
        "SIGTERM under load",
        acked=acked,
        errors_during_shutdown=errored,
        unanswered=unanswered,
        of_which_stored=unanswered_stored,
        exit_seconds=round(exit_seconds, 2),
    )


def test_concurrent_drains_deliver_each_message_once(
    chat: Callable[..., TwistdChat],
) -> None:
    """One user draining from several connections at once gets each message once."""
    server = chat()
    port = server.start()
    server.wait_ready()
    token = LineClient(port).login("messi")
    stop = threading.Event()
    sender = Sender(
        port, token, "lineker", "drain", stop, count=PROFILE["drain_messages"]
    )
    received: list[list[dict[str, Any]]] = []
    drains = collections.Counter[str]()
    errors: list[BaseException] = []

    def drainer() -> None:
        mine: list[dict[str, Any]] = []
        received.append(mine)
        try:
            client = LineClient(port)
            reader = client.login("lineker")
            while True:
                done = not sender.is_alive()
                reply = client.request(f"inbox {reader}")
                assert reply["status"] == "OK", reply
                batch = [m for group in reply["messages"].values() for m in group]
                mine.extend(batch)
                drains["nonempty" if batch else "empty"] += 1
                if done and not batch:
                    break
            client.close()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [
        threading.Thread(target=drainer, daemon=True)
        for _ in range(PROFILE["drainers"])
    ]
    sender.start()
    for thread in threads:
        thread.start()
    sender.join(timeout=120)
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(sender.acked) == PROFILE["drain_messages"]
    ids = [m["id"] for mine in received for m in mine]
    texts = [m["msg"] for mine in received for m in mine]
    assert len(ids) == len(set(ids))
    assert sorted(texts) == sorted(sender.acked)
    for mine in received:
        assert [m["id"] for m in mine] == sorted(m["id"] for m in mine)
    report(
        "concurrent drains",
        messages=len(texts),
        drainers=PROFILE["drainers"],
        per_drainer=[len(mine) for mine in received],
        nonempty_drains=drains["nonempty"],
        empty_drains=drains["empty"],
    )


# Abuse.


def test_megabyte_line_hides_no_command(chat: Callable[..., TwistdChat]) -> None:
    """A 1 MiB line is refused then the server closes; a command after it never runs."""
    # Files up to 512 KiB: the longest line is then about 700 KB (by default
    # it fits a 1 MiB file in base64, so a 1 MiB line would be a valid one).
    server = chat("--max-file-size", "512k")
    port = server.start()
    server.wait_ready()
    client = LineClient(port)
    token = client.login("messi")
    payload = (
        b"ping before\r\n"
        + b"x" * (1 << 20)
        + f"\r\nsend {token} henderson hidden\r\n".encode()
    )
    started = time.monotonic()
    try:
        client.sock.sendall(payload)
    except OSError:
        pass  # the server closed while we were still sending
    replies, reset = client.read_until_closed()
    seconds = time.monotonic() - started
    client.close()
    assert replies[0] == {"status": "OK", "message": "PONG", "echo": "before"}
    assert replies[1:] == [
        {"status": "ERROR", "message": "line too long", "code": "line_too_long"}
    ]
    assert drain(port, "henderson") == []
    report(
        "1 MiB line",
        replies=len(replies),
        connection_reset=reset,
        seconds_to_close=round(seconds, 2),
    )


def test_slowloris_hits_login_deadline(chat: Callable[..., TwistdChat]) -> None:
    """Connections trickling bytes (never a whole line) are closed at the
    login deadline, which their bytes do not extend; others carry on."""
    server = chat("--login-timeout", "2s")
    port = server.start()
    server.wait_ready()

    def logged_in() -> tuple[LineClient, str] | None:
        # Within 2 s of connecting, which a loaded machine may miss.
        client = LineClient(port)
        try:
            reply = client.request("auth messi surabaya")
        except ConnectionError:
            reply = {}
        if reply.get("status") == "OK":
            return client, str(reply["tokenid"])
        client.close()
        return None

    control, token = wait_until(logged_in, what="a control connection logged in")
    sockets: dict[socket.socket, float] = {}
    for _ in range(PROFILE["slowloris"]):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        sockets[sock] = time.monotonic()
    received: dict[socket.socket, bytes] = {sock: b"" for sock in sockets}
    closed_after: list[float] = []
    # A byte every 0.2 s, for as long as the connection is open: were the
    # deadline counted from the last byte, it would never close.
    trickle = b"auth messi surabaya" * 100
    step = 0
    deadline = time.monotonic() + 30
    while sockets:
        assert time.monotonic() < deadline, f"{len(sockets)} connections still open"
        for sock, opened in list(sockets.items()):
            # Read first: a send into a connection the server just closed
            # fails, and must not hide the reply that came before.
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data:
                received[sock] += data
                continue
            if data is not None:
                closed_after.append(time.monotonic() - opened)
                del sockets[sock]
                sock.close()
                continue
            try:
                sock.send(trickle[step : step + 1])
            except OSError:
                pass  # closed: the next recv says so
        step += 1
        time.sleep(0.2)
    expected = b'{"status":"ERROR","message":"login timeout","code":"login_timeout"}'
    assert all(data == expected + b"\r\n\r\n" for data in received.values())
    # From the client's connect, which comes before the server's accept.
    assert min(closed_after) > 1.8
    # The logged-in control connection outlived the deadline.
    assert control.request(f"send {token} henderson still here") == SENT
    control.close()
    report(
        "slowloris",
        connections=len(closed_after),
        closed_after_min_s=round(min(closed_after), 2),
        closed_after_max_s=round(max(closed_after), 2),
    )


def _raise_own_file_limit(wanted: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, hard


def _ping_all(port: int, count: int, addresses: list[str]) -> tuple[int, float]:
    """
    Open C{count} connections (spread over C{addresses}), send each a
    C{ping} and wait for every C{PONG}. Returns the sockets' count and the
    seconds it took; the sockets stay open in C{_ping_all.sockets}.
    """
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    pending: dict[socket.socket, bytes] = {}
    for i in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((addresses[i % len(addresses)], 0))
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE)
        pending[sock] = b""
    answered: list[socket.socket] = []
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for key, events in selector.select(timeout=1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if events & selectors.EVENT_WRITE:
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                assert error == 0, os.strerror(error)
                sock.send(b"ping\r\n")
                selector.modify(sock, selectors.EVENT_READ)
                continue
            data = sock.recv(4096)
            assert data, "a storm connection was closed"
            pending[sock] += data
            if pending[sock].endswith(b"\r\n\r\n"):
                assert b"PONG" in pending[sock], pending[sock]
                selector.unregister(sock)
                del pending[sock]
                answered.append(sock)
    selector.close()
    assert not pending, f"{len(pending)} connections unanswered"
    _ping_all.sockets = answered  # type: ignore[attr-defined]
    return len(answered), time.monotonic() - started


def test_connection_storm_with_working_control(chat: Callable[..., TwistdChat]) -> None:
    """Thousands of connections from several addresses; a logged-in client works on."""
    count = PROFILE["storm"]
    addresses = [f"127.0.0.{i}" for i in range(2, 2 + count // 500 + 1)]
    saved = _raise_own_file_limit(count + 200)
    server = chat("--max-connections", str(count + 100))
    port = server.start()
    server.wait_ready()
    rss_before = server.rss_kib()
    control = LineClient(port)
    token = control.login("messi")
    latencies: list[float] = []
    failures: list[object] = []
    stop = threading.Event()

    def keep_working() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                reply = control.request(f"send {token} henderson control")
            except OSError as e:
                failures.append(e)
                return
            latencies.append(time.monotonic() - started)
            if reply != SENT:
                failures.append(reply)
            time.sleep(0.02)

    worker = threading.Thread(target=keep_working, daemon=True)
    worker.start()
    try:
        opened, seconds = _ping_all(port, count, addresses)
        # The control connection keeps working while they are all open.
        during = len(latencies)
        wait_until(
            lambda: len(latencies) >= during + PROFILE["storm_control"] or failures,
            what="control requests while the storm's connections are open",
        )
        rss_with = server.rss_kib()
    finally:
        for sock in getattr(_ping_all, "sockets", []):
            sock.close()
        stop.set()
        worker.join(timeout=30)
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)
    assert not failures, failures[:3]
    assert opened == count
    latencies.sort()
    report(
        "connection storm",
        connections=opened,
        source_addresses=len(addresses),
        seconds_to_connect_and_pong=round(seconds, 2),
        control_requests=len(latencies),
        control_p50_ms=round(1000 * latencies[len(latencies) // 2], 1),
        control_p99_ms=round(1000 * latencies[int(len(latencies) * 0.99)], 1),
        control_max_ms=round(1000 * latencies[-1], 1),
        rss_mib_before=round(rss_before / 1024, 1),
        rss_mib_with_connections=round(rss_with / 1024, 1),
    )


def test_connection_limits_refuse_with_one_error(
    chat: Callable[..., TwistdChat],
) -> None:
    """Over the per-address or total limit, with every connection logged in:
    one ERROR line, then the server closes. A connection not logged in makes
    room instead."""
    server = chat("--max-connections", "5", "--max-connections-per-address", "3")
    port = server.start()
    server.wait_ready()
    waiting = LineClient(port, source="127.0.0.2")
    assert waiting.request("ping")["message"] == "PONG"
    kept = [LineClient(port, source="127.0.0.2") for _ in range(3)]
    replies, _ = waiting.read_until_closed()
    assert replies == [
        {
            "status": "ERROR",
            "message": "too many connections",
            "code": "too_many_connections",
        }
    ]
    for client in kept:
        client.login()
    refused = LineClient(port, source="127.0.0.2")
    replies, _ = refused.read_until_closed()
    assert replies == [
        {
            "status": "ERROR",
            "message": "too many connections from your address",
            "code": "too_many_connections",
        }
    ]
    kept += [LineClient(port, source="127.0.0.3") for _ in range(2)]
    for client in kept[3:]:
        client.login()
    replies, _ = LineClient(port, source="127.0.0.4").read_until_closed()
    assert replies[0]["message"] == "too many connections"
    kept.pop().close()
    # Once the server has seen the close, there is room again.
    admitted: list[LineClient] = []

    def room_again() -> bool:
        client = LineClient(port, source="127.0.0.4")
        if client.request("ping").get("message") == "PONG":
            admitted.append(client)
            return True
        client.close()
        return False

    wait_until(room_again, what="room for a connection after one closed")
    for client in [*kept, *admitted]:
        client.close()


def test_brute_force_is_limited_and_cheap(chat: Callable[..., TwistdChat]) -> None:
    """Guessing is refused unhashed; strangers' guesses do not lock the user out."""
    # Refilled slowly (one every 12 and 3 minutes): a slow machine does not
    # get an attempt back during the test.
    server = chat(
        "--login-failures-per-user",
        "5/1h",
        "--login-failures-per-address",
        "20/1h",
    )
    port = server.start()
    server.wait_ready()
    attempts = PROFILE["brute_attempts"]

    def attempt(username: str, password: str, source: str) -> tuple[str, float]:
        client = LineClient(port, source=source)
        started = time.monotonic()
        reply = client.request(f"auth {username} {password}")
        seconds = time.monotonic() - started
        client.close()
        return str(reply.get("code", "ok")), seconds

    # One user, from one address.
    results = [attempt("messi", f"guess{i}", "127.0.8.1") for i in range(attempts)]
    codes = collections.Counter(code for code, _ in results)
    assert codes["wrong_password"] == 5
    assert codes["rate_limited"] == attempts - 5
    # How cheap a refusal is, reported (timings are never asserted).
    hashed = statistics.median(s for c, s in results if c == "wrong_password")
    refused = statistics.median(s for c, s in results if c == "rate_limited")
    # From many addresses, with the user's limit used up: each address's
    # first guess is checked, its next one refused unhashed.
    sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(attempts)]
    first = [attempt("messi", f"spread{i}", s)[0] for i, s in enumerate(sources)]
    second = [attempt("messi", f"again{i}", s)[0] for i, s in enumerate(sources)]
    assert set(first) == {"wrong_password"}
    assert set(second) == {"rate_limited"}
    # Meanwhile messi logs in from an address that has not failed: the
    # strangers cannot lock him out. The guessing addresses stay refused,
    # even with the right password.
    assert attempt("messi", "surabaya", "127.0.9.1")[0] == "ok"
    assert attempt("messi", "surabaya", "127.0.8.1")[0] == "rate_limited"
    # One address, many usernames.
    by_address = [attempt(f"nobody{i}", "x", "127.0.10.1")[0] for i in range(attempts)]
    assert by_address[:20] == ["unknown_user"] * 20
    assert set(by_address[20:]) == {"rate_limited"}
    assert attempt("henderson", "surabaya", "127.0.10.1")[0] == "rate_limited"
    assert attempt("henderson", "surabaya", "127.0.10.2")[0] == "ok"
    # Refused attempts never reached the password check.
    log = server.log_text()
    assert log.count("Failed login for messi") == 5 + attempts
    report(
        "brute force",
        attempts_one_user_one_address=attempts,
        hashed=codes["wrong_password"],
        refused=codes["rate_limited"],
        median_hashed_ms=round(1000 * hashed, 1),
        median_refused_ms=round(1000 * refused, 2),
        addresses_one_user=attempts,
        hashed_spread=first.count("wrong_password"),
        refused_spread=second.count("rate_limited"),
        attempts_one_address=attempts,
        refused_one_address=by_address.count("rate_limited"),
    )


def test_a_burst_of_guesses_is_limited_before_hashing(
    chat: Callable[..., TwistdChat],
) -> None:
    """Guesses sent at once on many connections wait for the hasher together;
    each is checked against the failure limits again when its turn comes,
    so no more are hashed than the limit allows (plus one per thread)."""
    server = chat(
        "--login-failures-per-user",
        "5/1h",
        "--login-failures-per-address",
        "20/1h",
        "--hash-concurrency",
        "2",
    )
    port = server.start()
    server.wait_ready()
    clients = [LineClient(port, source="127.0.8.1") for _ in range(100)]
    for i, client in enumerate(clients):
        client.write(f"auth messi guess{i}")
    codes = collections.Counter(str(c.read().get("code")) for c in clients)
    for client in clients:
        client.close()
    assert codes["wrong_password"] + codes["rate_limited"] == len(clients)
    assert 5 <= codes["wrong_password"] <= 5 + 2
    assert server.log_text().count("Failed login for messi") == codes["wrong_password"]
    report("guess burst", sent=len(clients), hashed=codes["wrong_password"])


def _receive_queue(local_port: int, remote_port: int) -> int:
    """
    The bytes waiting to be read on this machine's IPv4 TCP connection from
    C{local_port} to C{remote_port} (0 if there is none).
    """
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
            local_port,
            remote_port,
        ):
            return int(fields[4].split(":")[1], 16)
    return 0


def test_client_that_never_reads(chat: Callable[..., TwistdChat]) -> None:
    """A client that pipelines without reading pauses its input; nothing is lost."""
    server = chat()
    port = server.start()
    server.wait_ready()
    count = PROFILE["unread_lines"]
    word = "w" * 10_000
    greedy = LineClient(port)
    written = threading.Event()

    def write_all() -> None:
        greedy.sock.sendall(f"ping {word}\r\n".encode() * count)
        written.set()

    writer = threading.Thread(target=write_all, daemon=True)
    rss_before = server.rss_kib()
    writer.start()
    # The server stops reading: what it has not read stays in its socket's
    # receive queue, unchanged (rather than a fixed sleep, hoping it did).
    client_port = greedy.sock.getsockname()[1]
    seen = {"queue": -1, "since": 0.0}

    def stopped_reading() -> bool:
        queue = _receive_queue(port, client_port)
        now = time.monotonic()
        if queue != seen["queue"]:
            seen.update(queue=queue, since=now)
        return queue > 0 and now - seen["since"] >= 1.0

    wait_until(stopped_reading, what="the server to stop reading the greedy client")
    rss_paused = server.rss_kib()
    # The server stopped reading: the requests do not fit in the kernel's
    # socket buffers, so the writer is still blocked.
    assert not written.is_set()
    control = LineClient(port)
    assert control.request("ping")["message"] == "PONG"
    control.close()
    replies = 0
    while replies < count:
        replies += 1
        assert greedy.read()["echo"] == word
    writer.join(timeout=30)
    greedy.close()
    assert written.is_set()
    assert rss_paused - rss_before < 20 * 1024
    report(
        "client not reading",
        lines=count,
        request_mib=round(count * 10_007 / 2**20, 1),
        replies=replies,
        rss_growth_mib_while_paused=round((rss_paused - rss_before) / 1024, 1),
    )


# Storage faults.


def test_disk_full_refuses_then_recovers(
    chat: Callable[..., TwistdChat], tmp_path: Path
) -> None:
    """Disk full: 'storage unavailable', no false ack; recovers when space returns."""
    server = chat(log_through_pipe=True)
    port = server.start()
    server.wait_ready()
    client = LineClient(port)
    token = client.login("messi")
    wal = tmp_path / "chat.sqlite-wal"
    limit = wal.stat().st_size + 300_000
    resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    acked: list[str] = []
    refused: list[str] = []
    padding = "x" * 10_000
    for i in range(200):
        text = f"full-{i} {padding}"
        reply = client.request(f"send {token} henderson {text}")
        if reply == SENT:
            acked.append(text)
        else:
            assert reply["code"] == "storage_unavailable", reply
            refused.append(text)
            if len(refused) == 5:
                break
    assert refused, "the disk never filled"
    assert client.request("ping")["message"] == "PONG"
    resource.prlimit(
        server.pid,
        resource.RLIMIT_FSIZE,
        (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
    )
    freed = time.monotonic()
    wait_until(
        lambda: client.request(f"send {token} henderson after") == SENT,
        what="a send acknowledged once space returned",
    )
    recovered = time.monotonic() - freed
    client.close()
    stored = [m["msg"] for m in drain(port, "henderson")]
    assert stored == [*acked, "after"]
    assert server.process is not None and server.process.poll() is None
    report(
        "disk full",
        acked_before_full=len(acked),
        refused=len(refused),
        seconds_to_recover=round(recovered, 3),
    )


def _run_twistd(workdir: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            *TWISTD,
            "--nodaemon",
            "--pidfile=",
            "chat",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        cwd=workdir,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize("kind", ["not_sqlite", "newer_schema", "not_chat", "damaged"])
def test_bad_database_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    """Not a chat database, a newer one, or a damaged one: exit non-zero
    with one clear line, the file and its folder unchanged."""
    database = tmp_path / "chat.sqlite"
    if kind == "damaged":
        schema.prepare(str(database))
        damage(database, "users")
        expected = "chat.sqlite is damaged (SQLite quick_check: "
    elif kind == "not_sqlite":
        database.write_bytes(os.urandom(8192))
        expected = "not a chat database"
    elif kind == "newer_schema":
        schema.prepare(str(database))
        connection = sqlite3.connect(database)
        connection.execute("UPDATE schema_version SET version = 99")
        connection.commit()
        connection.close()
        expected = "schema version 99"
    else:
        connection = sqlite3.connect(database)
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.execute("INSERT INTO notes VALUES ('mine')")
        connection.commit()
        connection.close()
        expected = "not a chat database"
    before = database.read_bytes()
    modified = database.stat().st_mtime_ns
    files = sorted(os.listdir(tmp_path))
    result = _run_twistd(tmp_path)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert expected in output
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1].startswith("chat: ")
    assert database.read_bytes() == before
    assert database.stat().st_mtime_ns == modified
    assert sorted(os.listdir(tmp_path)) == files
    report(kind, exit_code=result.returncode, message=output.strip().splitlines()[-1])
