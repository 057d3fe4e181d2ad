"""
Token-bucket rate limits on a fake clock.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from chat.limits import RateLimiter


def test_burst_then_refill() -> None:
    """A key gets its burst at once, then one attempt per 1/rate seconds."""
    clock = Clock()
    limiter = RateLimiter(clock, rate=0.5, burst=3)
    assert [limiter.consume("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.consume("a") == pytest.approx(2.0)
    assert limiter.retry_after("a") == pytest.approx(2.0)
    clock.advance(1)
    assert limiter.consume("a") == pytest.approx(1.0)
    clock.advance(1)
    assert limiter.consume("a") == 0
    assert limiter.consume("b") == 0


def test_retry_after_takes_nothing() -> None:
    """Asking how long to wait does not use an attempt."""
    limiter = RateLimiter(Clock(), rate=1, burst=1)
    assert limiter.retry_after("a") == 0
    assert limiter.retry_after("a") == 0
    assert limiter.consume("a") == 0
    assert limiter.consume("a") == pytest.approx(1.0)


def test_full_buckets_are_forgotten() -> None:
    """Memory stays bounded: refilled buckets are pruned."""
    clock = Clock()
    limiter = RateLimiter(clock, rate=1, burst=2, max_keys=10)
    for key in range(10):
        limiter.consume(key)
    clock.advance(5)
    limiter.consume("new")
    assert len(limiter._buckets) == 1
