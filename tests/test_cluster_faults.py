"""
Faults of a cluster: two real C{twistd chat} nodes on one throwaway
PostgreSQL, under load with a ledger of acknowledged messages (see
L{tests.test_faults}).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from twisted.internet import reactor

from chat.store.postgres import PostgresStore
from tests.postgres import ThrowawayPostgres, free_port
from tests.test_faults import (
    PROFILE,
    Sender,
    acked_at_least,
    check_ledger,
    drain,
    report,
)
from tests.twistd_helpers import REPO, TWISTD, LineClient, TwistdChat
from tests.waiting import wait_until

pytestmark = pytest.mark.fault

#: No mailbox limit gets in the way of the load.
BIG_MAILBOX = ("--max-mailbox", "10000000")


def _start(*nodes: TwistdChat) -> list[int]:
    ports = []
    for server in nodes:
        ports.append(server.start())
        server.wait_ready()
    return ports


def _load(
    port: int, token: str, prefix: str, stop: threading.Event, count: int = 4
) -> list[Sender]:
    senders = [
        Sender(port, token, "lineker", f"{prefix}-{i}", stop) for i in range(count)
    ]
    for sender in senders:
        sender.start()
    return senders


def _join(senders: list[Sender]) -> None:
    for sender in senders:
        sender.join(timeout=60)
        assert not sender.is_alive()


def test_kill9_of_a_node_loses_no_acked_message(
    twistd_node: Callable[..., TwistdChat],
) -> None:
    """Node A killed under load, again and again: every message A acked is
    read back through node B, exactly once."""
    a, b = twistd_node("a", *BIG_MAILBOX), twistd_node("b", *BIG_MAILBOX)
    port_a, port_b = _start(a, b)
    token = LineClient(port_a).login("messi")
    senders: list[Sender] = []
    started = time.monotonic()
    for round_ in range(PROFILE["kill_rounds"]):
        if round_:
            port_a = a.start()
        stop = threading.Event()
        group = _load(port_a, token, f"r{round_}", stop)
        acked_at_least(group, 100 + 50 * round_)
        a.kill()
        stop.set()
        _join(group)
        senders.extend(group)
    stored = [m["msg"] for m in drain(port_b)]
    acked, errored, unanswered, unanswered_stored = check_ledger(senders, stored)
    assert acked > 0
    assert errored == 0
    report(
        "cluster kill -9",
        rounds=PROFILE["kill_rounds"],
        acked=acked,
        in_flight_at_kill=unanswered,
        of_which_stored=unanswered_stored,
        read_back_through_b=len(stored),
        seconds=round(time.monotonic() - started, 1),
    )


def test_postgresql_stopped_and_started_under_load(
    twistd_node: Callable[..., TwistdChat], postgres: ThrowawayPostgres
) -> None:
    """PostgreSQL stopped mid-load: ERROR replies (never a false
    acknowledgement), connections stay open; started again: both nodes
    acknowledge again without a restart, and every ack is stored."""
    a, b = twistd_node("a", *BIG_MAILBOX), twistd_node("b", *BIG_MAILBOX)
    port_a, port_b = _start(a, b)
    token = LineClient(port_a).login("messi")
    stop = threading.Event()
    senders = _load(port_a, token, "a", stop, 2) + _load(port_b, token, "b", stop, 2)
    acked_at_least(senders, 100)
    before = sum(len(s.acked) for s in senders)
    postgres.stop("fast")
    try:
        # Every connection is refused while PostgreSQL is down.
        wait_until(
            lambda: all(s.errored for s in senders),
            what=lambda: f"errors on every connection: {_errors(senders)}",
        )
        during = [len(s.errored) for s in senders]
    finally:
        postgres.start()
    restarted = time.monotonic()
    recovered_after = _wait_for_acks(senders)
    acked_at_recovery = sum(len(s.acked) for s in senders)
    acked_at_least(senders, acked_at_recovery + 100)
    stop.set()
    _join(senders)
    codes = {code for s in senders for _, code in s.errored}
    assert codes == {"storage_unavailable"}, codes
    assert all(n > 0 for n in during), during
    assert not any(s.unanswered for s in senders), "a connection was dropped"
    assert sum(len(s.acked) for s in senders) > acked_at_recovery
    stored = [m["msg"] for m in drain(port_b)]
    # The batch whose COMMIT was cut by the shutdown may have committed:
    # its senders were told "storage unavailable" (at most one window each).
    window = sum(s.window for s in senders)
    acked, errored, _, _ = check_ledger(senders, stored, errors_may_be_stored=window)
    for server in (a, b):
        assert "Traceback" not in server.log_text()
    report(
        "PostgreSQL stopped and started",
        acked_before=before,
        refused_while_down=errored,
        recovered_seconds=round(recovered_after - restarted, 2),
        acked=acked,
        stored=len(stored),
    )


def _wait_for_acks(senders: list[Sender]) -> float:
    """
    Wait until every sender has had a new acknowledgement.

    @return: when the last one came.
    """
    counts = [len(s.acked) for s in senders]
    wait_until(
        lambda: all(len(s.acked) > n for s, n in zip(senders, counts, strict=True)),
        what=lambda: f"recovery: {_errors(senders)}",
    )
    return time.monotonic()


def _errors(senders: list[Sender]) -> Any:
    return [s.errored[-3:] for s in senders]


@pytest.mark.parametrize("kind", ["newer_schema", "unreachable"])
def test_node_refuses_to_start(tmp_path: Path, postgres_url: str, kind: str) -> None:
    """A schema newer than the code, or no PostgreSQL: exit status 1 with a
    clear message (and no password in it)."""
    if kind == "newer_schema":
        PostgresStore(reactor, postgres_url)
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute("UPDATE schema_version SET version = 99")
        url, expected = postgres_url, "schema version 99"
    else:
        url = f"postgresql://chat:s3cret@127.0.0.1:{free_port()}/chat"
        expected = "cannot connect to PostgreSQL at postgresql://chat:***@"
    result = subprocess.run(
        [*TWISTD, "--nodaemon", "--pidfile=", "chat", "--store", url],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=60,
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 1, output
    assert expected in output
    assert "s3cret" not in output
    assert "Traceback" not in output
