"""
Tests for L{chat.trim}: memory of released buffers is given back to the
system a moment after enough of it was let go.
"""

from __future__ import annotations

import sys

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from chat.trim import Trimmer, malloc_trim
from tests.test_connection_limits import _not_reading, limited


def test_trims_once_enough_was_released_after_the_delay() -> None:
    """Nothing is trimmed below the threshold; past it, one trim follows
    after the delay however many releases came meanwhile, and the count
    starts again from zero."""
    clock = Clock()
    trims: list[float] = []
    trimmer = Trimmer(
        clock, lambda: trims.append(clock.seconds()), threshold=100, delay=1.0
    )
    trimmer.released(60)
    clock.advance(5)
    assert trims == []
    trimmer.released(60)
    trimmer.released(500)
    clock.advance(0.5)
    assert trims == []
    clock.advance(0.5)
    assert trims == [6.0]
    assert trimmer.trims == 1
    trimmer.released(99)
    clock.advance(5)
    assert trims == [6.0]


def test_stop_cancels_a_pending_trim() -> None:
    """A trim still waiting when the server stops is not run."""
    clock = Clock()
    trims: list[int] = []
    trimmer = Trimmer(clock, lambda: trims.append(1), threshold=1)
    trimmer.released(10)
    trimmer.stop()
    clock.advance(10)
    assert trims == []
    assert clock.getDelayedCalls() == []


def test_without_malloc_trim_nothing_is_scheduled() -> None:
    """Where the C library has no malloc_trim, releases schedule nothing."""
    clock = Clock()
    trimmer = Trimmer(clock, None, threshold=1)
    trimmer.released(10**9)
    assert clock.getDelayedCalls() == []


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim")
def test_glibc_malloc_trim_is_found_and_runs() -> None:
    """On Linux with glibc the real malloc_trim is found and can be called."""
    trim = malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)


def test_output_let_go_by_clients_is_trimmed() -> None:
    """Replies held for clients that did not read count towards a trim
    once they are let go: here, when the connections close."""
    server = limited()
    trims: list[int] = []
    factory = server.factory
    factory.trimmer = Trimmer(
        server.clock, lambda: trims.append(1), threshold=5000, delay=1.0
    )
    held = [_not_reading(server, 50200 + i) for i in range(2)]
    assert factory.output_bytes >= 5000
    for transport in held:
        # The door registered itself as its transport's producer.
        transport.producer.connectionLost(Failure(ConnectionDone()))
    assert factory.output_bytes == 0
    server.clock.advance(1)
    assert trims == [1]
