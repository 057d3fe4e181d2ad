"""
Password hashing (issue 14): the parameters, the fair and bounded queue in
front of the worker threads, the login deadline while a login waits for
it, and re-hashing at login. Unit tests on a fake clock, with the work
run inline or held until the test finishes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import argon2
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from chat.errors import RateLimited, ServerBusy
from chat.hashing import (
    INITIAL_SECONDS_PER_HASH,
    Argon2Hasher,
    FairQueue,
    HashParameters,
    check_password,
    usable_cpus,
)
from chat.limits import Limits, Rate
from chat.model import PasswordCheck
from tests.helpers import FAST_ARGON2, FAST_PARAMETERS, Server, failure_of, result_of

#: Other cheap parameters than the test users' (FAST_PARAMETERS).
NEWER = HashParameters(memory_kib=128, time_cost=1, parallelism=1)


class HeldRunner:
    """
    Stands in for the worker threads: each function runs only when the
    test says, so the test sees what is running and what waits.
    """

    def __init__(self) -> None:
        self.running: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]]
        self.running = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.running.append((f, args, d))
        return d

    def passwords(self) -> list[str]:
        """
        The passwords being hashed, oldest first.
        """
        return [args[-1] for _, args, _ in self.running]

    def finish(self, password: str | None = None) -> None:
        """
        Finish the oldest hash running (or the one of C{password}).
        """
        index = 0 if password is None else self.passwords().index(password)
        f, args, d = self.running.pop(index)
        d.callback(f(*args))

    def finish_all(self) -> int:
        """
        Finish every hash, those each one lets start included: how many.
        """
        finished = 0
        while self.running:
            finished += 1
            self.finish()
        return finished


def inline(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return succeed(f(*args))


def held_hasher(
    threads: int = 1, max_queued: int = 100, parameters: HashParameters | None = None
) -> tuple[Argon2Hasher, HeldRunner, Clock]:
    clock = Clock()
    runner = HeldRunner()
    hasher = Argon2Hasher(
        clock,  # type: ignore[arg-type]
        parameters or FAST_PARAMETERS,
        threads=threads,
        max_queued=max_queued,
        runner=runner,
    )
    return hasher, runner, clock


# Parameters.


def test_default_parameters_are_owasps() -> None:
    """By default: argon2id, 19 MiB, two passes, one lane."""
    parameters = HashParameters()
    assert (parameters.memory_kib, parameters.time_cost, parameters.parallelism) == (
        19456,
        2,
        1,
    )
    assert str(parameters) == "argon2id m=19456 KiB, t=2, p=1"
    made = parameters.password_hasher().hash("surabaya")
    assert made.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


@pytest.mark.parametrize(
    ("memory_kib", "time_cost", "parallelism"),
    [(7, 1, 1), (63, 1, 8), (4 * 1024 * 1024 + 1, 1, 1), (64, 0, 1), (64, 1, 0)],
)
def test_parameters_argon2_cannot_use_are_refused(
    memory_kib: int, time_cost: int, parallelism: int
) -> None:
    """Parameters argon2 cannot use are a ValueError saying so."""
    with pytest.raises(ValueError, match="must be"):
        HashParameters(memory_kib, time_cost, parallelism)


def test_usable_cpus_follow_the_affinity() -> None:
    """The worker count defaults to the CPUs this process may run on."""
    assert usable_cpus() == len(__import__("os").sched_getaffinity(0))
    assert Argon2Hasher(Clock(), runner=inline).threads == usable_cpus()  # type: ignore[arg-type]


def test_check_rehashes_only_a_matching_hash_of_other_parameters() -> None:
    """Only a match with a hash of other parameters brings a new hash."""
    old = FAST_ARGON2.hash("surabaya")
    newer = NEWER.password_hasher()
    checked = check_password(newer, old, "surabaya")
    assert checked.matches and checked.new_hash is not None
    assert checked.new_hash.startswith("$argon2id$v=19$m=128,t=1,p=1$")
    assert newer.verify(checked.new_hash, "surabaya")
    assert check_password(newer, old, "salah") == PasswordCheck(False)
    assert check_password(newer, checked.new_hash, "surabaya") == PasswordCheck(True)
    assert check_password(newer, "not-a-hash", "surabaya") == PasswordCheck(False)
    # argon2i, or argon2-cffi's own defaults: made again as argon2id.
    argon2i = argon2.PasswordHasher(1, 64, 1, type=argon2.Type.I).hash("surabaya")
    assert check_password(newer, argon2i, "surabaya").new_hash is not None


# The queue.


def test_fair_queue_takes_turns_across_keys() -> None:
    """First in, first out within a key; one item per key in turn across keys."""
    queue: FairQueue[str] = FairQueue()
    for key, item in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")]:
        queue.push(key, item)
    assert queue.pop() == "a1"
    queue.push("c", "c1")
    queue.push("c", "c2")
    assert len(queue) == 5
    assert [queue.pop() for _ in range(5)] == ["b1", "a2", "c1", "a3", "c2"]
    assert len(queue) == 0
    with pytest.raises(IndexError):
        queue.pop()


def test_at_most_one_hash_per_thread_at_once() -> None:
    """Hashes start as workers free up, never more than the threads at once."""
    hasher, runner, _ = held_hasher(threads=2)
    results = [hasher.hash(f"p{i}", "10.0.0.1") for i in range(5)]
    assert runner.passwords() == ["p0", "p1"]
    assert (hasher.running, hasher.waiting) == (2, 3)
    runner.finish("p1")
    assert runner.passwords() == ["p0", "p2"]
    assert result_of(results[1]).startswith("$argon2id$")
    for _ in range(4):
        runner.finish()
    assert (hasher.running, hasher.waiting) == (0, 0)
    assert all(result_of(d) for d in [results[0], *results[2:]])


def test_addresses_take_turns() -> None:
    """One address's burst does not starve another's login."""
    hasher, runner, _ = held_hasher(threads=1)
    for i in range(1, 5):
        hasher.hash(f"a{i}", "10.0.0.1")
    hasher.hash("b1", "10.0.0.2")
    started = []
    while runner.running:
        started.append(runner.passwords()[0])
        runner.finish()
    assert started == ["a1", "a2", "b1", "a3", "a4"]


def test_hash_time_is_measured_on_the_clock() -> None:
    """The estimate of a hash's time follows the measured ones."""
    hasher, runner, clock = held_hasher()
    assert hasher.seconds_per_hash == INITIAL_SECONDS_PER_HASH
    hasher.hash("p", "10.0.0.1")
    clock.advance(0.1)
    runner.finish()
    assert hasher.seconds_per_hash == pytest.approx(0.05 + 0.2 * (0.1 - 0.05))


def test_past_the_bound_requests_are_refused_at_once() -> None:
    """Past max_queued waiting, a request fails at once with the expected wait."""
    hasher, runner, _ = held_hasher(threads=2, max_queued=2)
    hasher.seconds_per_hash = 0.03
    accepted = [hasher.hash(f"p{i}", "10.0.0.1") for i in range(4)]
    refused = hasher.hash("p4", "10.0.0.2")
    # Two running and two waiting, on two threads: 4 * 30 ms / 2.
    assert failure_of(refused, ServerBusy).value.retry_after == pytest.approx(0.06)
    runner.finish()
    again = hasher.hash("p5", "10.0.0.2")
    runner.finish_all()
    assert all(result_of(d) for d in [*accepted, again])


def test_refusals_are_logged_once_per_episode() -> None:
    """The log says once that the hasher is full, and once that it has room again."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        hasher, runner, _ = held_hasher(threads=1, max_queued=1)
        hasher.hash("p0")
        hasher.hash("p1")
        for _ in range(3):
            failure_of(hasher.hash("p2"), ServerBusy)
        runner.finish()
        hasher.hash("p3")
    finally:
        globalLogPublisher.removeObserver(observer)
    formats = [e.get("log_format", "") for e in observer]
    assert sum("is full" in f for f in formats) == 1
    assert [e["count"] for e in observer if "accepts" in e.get("log_format", "")] == [3]
    assert not any("p0" in repr(e) or "p1" in repr(e) for e in observer)


def test_a_request_refused_when_its_turn_comes_is_not_hashed() -> None:
    """A request's admit check runs when its turn comes; if it raises, the
    request fails with that, unhashed, and the next one takes its place."""
    hasher, runner, _ = held_hasher(threads=1)
    checked: list[str] = []

    def admit(name: str, allowed: bool) -> Callable[[], None]:
        def check() -> None:
            checked.append(name)
            if not allowed:
                raise RateLimited(7.0)

        return check

    stored = FAST_ARGON2.hash("p")
    first = hasher.check(stored, "p", "10.0.0.1", admit("first", True))
    refused = hasher.check(stored, "p", "10.0.0.1", admit("refused", False))
    third = hasher.check(stored, "p", "10.0.0.1", admit("third", True))
    assert checked == ["first"]
    runner.finish()
    assert checked == ["first", "refused", "third"]
    assert failure_of(refused, RateLimited).value.retry_after == 7.0
    assert len(runner.running) == 1
    runner.finish()
    assert result_of(first).matches and result_of(third).matches
    assert (hasher.running, hasher.waiting) == (0, 0)


def test_stop_refuses_what_waits() -> None:
    """Stopping fails the waiting requests and new ones with ServerBusy."""
    hasher, runner, _ = held_hasher(threads=1)
    hasher.hash("p0")
    waiting = hasher.hash("p1")
    hasher.stop()
    failure_of(waiting, ServerBusy)
    failure_of(hasher.hash("p2"), ServerBusy)
    runner.finish()
    assert runner.running == []


# Through a connection.


def busy_server(**limits: Any) -> tuple[Server, HeldRunner]:
    hasher, runner, clock = held_hasher(threads=1, max_queued=1)
    server = Server(clock=clock, hasher=hasher, limits=Limits(**limits))
    return server, runner


def test_auth_past_the_bound_is_answered_server_busy() -> None:
    """A login that finds the hasher full is answered at once, and is no failure."""
    server, runner = busy_server()
    first, second, third = (server.connect() for _ in range(3))
    first.send(b"auth messi surabaya\r\n")
    second.send(b"auth henderson surabaya\r\n")
    assert third.request("auth lineker surabaya") == {
        "status": "ERROR",
        "message": "server busy",
        "code": "server_busy",
        "retry_after_ms": 100,
    }
    runner.finish()
    runner.finish()
    assert first.replies()[0]["status"] == "OK"
    assert second.replies()[0]["status"] == "OK"
    assert server.factory.failures.by_user.retry_after("lineker") == 0
    third.send(b"auth lineker surabaya\r\n")
    runner.finish()
    assert third.replies()[0]["status"] == "OK"


def test_waiting_for_the_hasher_does_not_count_against_the_login_deadline() -> None:
    """The login deadline stops while the connection's auth waits, and resumes after."""
    server, runner = busy_server(login_timeout=30)
    client = server.connect()
    server.clock.advance(20)
    client.send(b"auth messi salah\r\n")
    server.clock.advance(300)
    assert client.replies() == [] and not client.closed
    runner.finish()
    assert client.replies()[0]["code"] == "wrong_password"
    # The 10 s it had left when it sent auth.
    server.clock.advance(9)
    assert not client.closed
    server.clock.advance(1)
    assert client.replies()[0]["code"] == "login_timeout"
    assert client.closed


def test_a_connection_closed_while_its_auth_waits_leaves_no_deadline() -> None:
    """A connection that goes away during its auth's wait leaves no deadline behind."""
    server, runner = busy_server()
    client = server.connect()
    client.send(b"auth messi surabaya\r\n")
    client.lose()
    runner.finish()
    assert len(server.factory.deadlines) == 0
    assert server.clock.getDelayedCalls() == []


def test_login_rehashes_with_the_session_in_one_store_operation() -> None:
    """A login whose hash has other parameters stores a new one with its session."""
    clock = Clock()
    hasher = Argon2Hasher(clock, NEWER, threads=1, runner=inline)  # type: ignore[arg-type]
    server = Server(clock=clock, hasher=hasher)
    old = result_of(server.store.get_user("messi")).password_hash
    operations: list[str] = []
    for name in ("create_session", "set_password_hash", "add_user"):
        server.store.watch(name, lambda _, name=name: operations.append(name))
    client = server.connect()
    token = client.login("messi")
    assert operations == ["create_session"]
    new = result_of(server.store.get_user("messi")).password_hash
    assert new != old and new.startswith("$argon2id$v=19$m=128,t=1,p=1$")
    assert NEWER.password_hasher().verify(new, "surabaya")
    # The session (and any other) lives on; the next login changes nothing.
    assert client.request(f"inbox {token}")["status"] == "OK"
    server.connect().login("messi")
    assert result_of(server.store.get_user("messi")).password_hash == new
    # Other users are untouched until they log in.
    assert result_of(server.store.get_user("henderson")).password_hash == old


def test_a_connection_whose_auth_waits_is_not_closed_to_make_room() -> None:
    """At the connection limit, a connection waiting for the hasher is not the
    one closed to make room, however long it has waited."""
    server, runner = busy_server(max_connections=3)
    waiting = server.connect("10.0.0.1")
    waiting.send(b"auth messi surabaya\r\n")
    server.clock.advance(5)
    idle = server.connect("10.0.0.2")
    server.clock.advance(5)
    server.connect("10.0.0.3")
    newcomer = server.connect("10.0.0.4")
    assert idle.closed
    assert not waiting.closed and not newcomer.closed
    runner.finish()
    assert waiting.replies()[0]["status"] == "OK"


def test_the_login_clock_counts_again_from_where_it_stopped() -> None:
    """After a wait for the hasher, the connection is the most recently active,
    with the login time it had left: later lines do not restart its clock."""
    server, runner = busy_server(login_timeout=30, max_connections=2)
    client = server.connect("10.0.0.1")
    server.clock.advance(10)
    client.send(b"auth messi salah\r\n")
    server.clock.advance(100)
    runner.finish()
    assert client.replies()[0]["code"] == "wrong_password"
    # Older, but idle since before the wait ended: it makes room first.
    other = server.connect("10.0.0.2")
    server.clock.advance(1)
    assert client.request("ping")["message"] == "PONG"
    server.connect("10.0.0.3")
    assert other.closed and not client.closed
    server.clock.advance(18)
    assert not client.closed
    server.clock.advance(1)
    assert client.replies()[0]["code"] == "login_timeout"


def test_a_successful_login_after_a_wait_has_no_login_deadline() -> None:
    """A login that waited for the hasher ends the login deadline for good."""
    server, runner = busy_server(login_timeout=30)
    client = server.connect()
    server.clock.advance(29)
    client.send(b"auth messi surabaya\r\n")
    server.clock.advance(60)
    runner.finish()
    token = client.replies()[0]["tokenid"]
    server.clock.advance(3600)
    assert not client.closed
    assert client.request(f"inbox {token}")["status"] == "OK"


def test_failure_limits_are_checked_again_before_hashing() -> None:
    """Guesses sent at once on many connections are checked against the
    failure limits again when the hasher comes to them: once the earlier
    ones have used up the limit, the rest are refused without hashing."""
    hasher, runner, clock = held_hasher()
    limits = Limits(login_failures_per_user=Rate(2, 60))
    server = Server(clock=clock, hasher=hasher, limits=limits)
    clients = [server.connect() for _ in range(5)]
    for i, client in enumerate(clients):
        client.send(f"auth messi guess{i}\r\n".encode())
    runner_calls = runner.finish_all()
    codes = [client.replies()[0]["code"] for client in clients]
    assert codes == ["wrong_password"] * 2 + ["rate_limited"] * 3
    assert runner_calls == 2
    # Another address, which has not failed for messi, still gets in.
    other = server.connect("10.9.8.7")
    other.send(b"auth messi surabaya\r\n")
    runner.finish()
    assert other.replies()[0]["status"] == "OK"


def test_a_login_whose_connection_closed_is_not_hashed() -> None:
    """A client that gives up while its auth waits for the hasher costs no
    hash: when its turn comes it is skipped, and the next one runs."""
    hasher, runner, clock = held_hasher()
    server = Server(clock=clock, hasher=hasher)
    first, gone, last = (server.connect() for _ in range(3))
    for client in (first, gone, last):
        client.send(b"auth messi surabaya\r\n")
    gone.lose()
    assert runner.finish_all() == 2
    assert first.replies()[0]["status"] == "OK"
    assert last.replies()[0]["status"] == "OK"
    assert gone.replies() == []


def test_register_hashes_the_password_once() -> None:
    """register hashes the new password once, then logs in as the account
    it made (its new hash is the proof) without verifying it again."""
    hasher, runner, clock = held_hasher()
    server = Server(clock=clock, hasher=hasher)
    client = server.connect()
    client.send(b"register budi rahasia123 Budi\r\n")
    assert runner.finish_all() == 1
    (reply,) = client.replies()
    assert reply["message"] == "User Registered"
    token = reply["tokenid"]
    client.send(f"send {token} messi halo\r\n".encode())
    assert client.replies() == [{"status": "OK", "message": "Message Sent"}]
