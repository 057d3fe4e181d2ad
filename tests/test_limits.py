"""
The limit building blocks on a fake clock: token buckets, failure limits,
connection counts, idle timers.
"""

from __future__ import annotations

import resource

import pytest
from twisted.internet.task import Clock

from chat.errors import RateLimited
from chat.limits import (
    ConnectionTracker,
    FailureLimiter,
    IdleTimer,
    Limits,
    Rate,
    RateLimiter,
    address_key,
    raise_open_file_limit,
)


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


def test_charge_goes_into_debt() -> None:
    """Failures charged at once are all paid for, down to the debt floor."""
    clock = Clock()
    limiter = RateLimiter(clock, rate=1, burst=2, max_debt=2)
    for _ in range(5):
        limiter.charge("a")
    # 2 - 5 = -3 tokens: 4 seconds until one token is back.
    assert limiter.retry_after("a") == pytest.approx(4.0)
    for _ in range(100):
        limiter.charge("a")
    assert limiter.retry_after("a") == pytest.approx(5.0)


def test_forget() -> None:
    """A forgotten key starts again with a full bucket."""
    limiter = RateLimiter(Clock(), rate=1, burst=1)
    limiter.consume("a")
    limiter.forget("a")
    limiter.forget("never seen")
    assert limiter.consume("a") == 0


def test_rate_values() -> None:
    """A Rate is a burst of count, refilling count per `per` seconds."""
    rate = Rate(10, 60)
    assert rate.per_second == pytest.approx(1 / 6)
    assert str(rate) == "10/60s"
    limiter = RateLimiter.of(Clock(), rate)
    assert (limiter.rate, limiter.burst) == (pytest.approx(1 / 6), 10)


def test_failure_limiter_counts_only_failures() -> None:
    """check_* takes nothing; only reported failures use up attempts."""
    clock = Clock()
    limits = Limits(
        login_failures_per_user=Rate(2, 10),
        login_failures_per_address=Rate(3, 10),
        token_failures_per_address=Rate(1, 10),
    )
    failures = FailureLimiter.of(clock, limits)
    for _ in range(10):
        failures.check_login("messi", "10.0.0.1")
    failures.login_failed("messi", "10.0.0.1")
    failures.login_failed("messi", "10.0.0.1")
    with pytest.raises(RateLimited) as raised:
        failures.check_login("messi", "10.0.0.2")
    assert raised.value.retry_after == pytest.approx(5.0)
    failures.check_login("henderson", "10.0.0.2")
    failures.login_failed("henderson", "10.0.0.1")
    with pytest.raises(RateLimited):
        failures.check_login("lineker", "10.0.0.1")
    failures.check_token("10.0.0.1")
    failures.token_failed("10.0.0.1")
    with pytest.raises(RateLimited) as raised:
        failures.check_token("10.0.0.1")
    assert raised.value.retry_after == pytest.approx(10.0)
    clock.advance(10)
    failures.check_token("10.0.0.1")
    failures.check_login("messi", "10.0.0.1")


def test_connection_tracker() -> None:
    """Connections are counted in total and per address, and released."""
    tracker = ConnectionTracker(max_total=3, max_per_address=2)
    assert tracker.admit("a") is None
    assert tracker.admit("a") is None
    assert tracker.admit("a") == "too many connections from your address"
    assert tracker.admit("b") is None
    assert tracker.admit("c") == "too many connections"
    assert (tracker.total, tracker.count("a")) == (3, 2)
    tracker.release("a")
    tracker.release("b")
    assert (tracker.total, tracker.count("a"), tracker.count("b")) == (1, 1, 0)
    assert tracker.admit("c") is None


def test_idle_timer() -> None:
    """The timer fires after timeout without a touch; touches push it back."""
    clock = Clock()
    fired: list[float] = []
    timer = IdleTimer(clock, 10, lambda: fired.append(clock.seconds()))
    clock.advance(6)
    timer.touch()
    clock.advance(6)
    assert fired == []
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(4)
    assert fired == [16]
    assert clock.getDelayedCalls() == []


def test_idle_timer_cancel() -> None:
    """A cancelled timer never fires and leaves no call behind."""
    clock = Clock()
    timer = IdleTimer(clock, 10, lambda: pytest.fail("fired"))
    timer.cancel()
    timer.cancel()
    clock.advance(20)
    assert clock.getDelayedCalls() == []


def test_raise_open_file_limit() -> None:
    """The soft limit on open files is raised towards what is wanted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 4096) - 10
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        assert raise_open_file_limit(100) == lowered
        assert raise_open_file_limit(lowered + 5) == lowered + 5
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == lowered + 5
        if hard != resource.RLIM_INFINITY:
            assert raise_open_file_limit(hard + 1000) == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_flood_of_keys_stays_bounded() -> None:
    """Distinct keys that never refill cannot grow the limiter past max_keys."""
    limiter = RateLimiter(Clock(), rate=0.001, burst=1, max_keys=100)
    for key in range(1000):
        limiter.charge(key)
    assert len(limiter._buckets) <= 100
    assert limiter.retry_after(999) > 0


def test_address_keys() -> None:
    """IPv4 as is; IPv6 by /64; IPv4-mapped IPv6 as IPv4."""
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_key("::ffff:198.51.100.1") == "198.51.100.1"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("") == ""
    assert address_key("not:an:address") == "not:an:address"
