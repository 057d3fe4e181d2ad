"""
The limit building blocks on a fake clock: token buckets, failure limits,
connection counts, deadlines.
"""

from __future__ import annotations

import resource

import pytest
from twisted.internet.task import Clock

from chat.errors import RateLimited
from chat.limits import (
    ConnectionTracker,
    Deadlines,
    FailureLimiter,
    Limits,
    Rate,
    RateLimiter,
    address_key,
    raise_open_file_limit,
    take_token,
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
        failures.check_login("messi", "10.0.0.1")
    assert raised.value.retry_after == pytest.approx(5.0)
    # Another address, which has not failed for messi, may still try.
    failures.check_login("messi", "10.0.0.2")
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


def test_user_limit_stops_only_the_addresses_that_failed_for_the_user() -> None:
    """Over a user's limit, addresses that failed for them lately wait; others try."""
    clock = Clock()
    failures = FailureLimiter.of(clock, Limits(login_failures_per_user=Rate(2, 60)))
    failures.login_failed("messi", "10.0.0.1")
    failures.login_failed("messi", "10.0.0.2")
    failures.login_failed("messi", "10.0.0.2")
    # 2 - 3 = -1: 60 s until the user has room; 10.0.0.1 failed once (60 s),
    # 10.0.0.2 twice (120 s): each waits for whichever comes first.
    for address, wait in [("10.0.0.1", 60.0), ("10.0.0.2", 60.0)]:
        with pytest.raises(RateLimited) as raised:
            failures.check_login("messi", address)
        assert raised.value.retry_after == pytest.approx(wait)
    failures.check_login("messi", "10.0.0.3")
    failures.check_login("henderson", "10.0.0.1")
    failures.login_succeeded("messi", "10.0.0.2")
    failures.check_login("messi", "10.0.0.2")
    clock.advance(30)
    with pytest.raises(RateLimited) as raised:
        failures.check_login("messi", "10.0.0.1")
    assert raised.value.retry_after == pytest.approx(30.0)
    clock.advance(30)
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


class Item:
    """
    A deadline holder that records when it was told, and may ask again.
    """

    def __init__(self, deadlines: Deadlines, again: float | None = None) -> None:
        self.deadlines = deadlines
        self.again = again
        self.passed: list[float] = []
        self.slot = 0

    def deadline_passed(self, now: float) -> None:
        self.passed.append(now)
        if self.again is not None:
            self.slot = self.deadlines.add(self, now + self.again)
            self.again = None


def test_deadlines_fire_in_order_on_one_timer() -> None:
    """Many deadlines share one timer and each fires once it is due."""
    clock = Clock()
    deadlines = Deadlines(clock)
    items = [Item(deadlines) for _ in range(100)]
    for i, item in enumerate(items):
        item.slot = deadlines.add(item, 10 + i % 3)
    assert len(clock.getDelayedCalls()) == 1
    assert len(deadlines) == 100
    clock.advance(9.5)
    assert not any(item.passed for item in items)
    clock.advance(0.5)
    assert [bool(item.passed) for item in items[:3]] == [True, False, False]
    clock.advance(2)
    assert all(item.passed for item in items)
    assert clock.getDelayedCalls() == [] and len(deadlines) == 0


def test_deadlines_round_up_to_their_slot() -> None:
    """A deadline between slots fires at the next slot, never early."""
    clock = Clock()
    deadlines = Deadlines(clock, resolution=1.0)
    item = Item(deadlines)
    deadlines.add(item, 2.3)
    clock.advance(2.9)
    assert item.passed == []
    clock.advance(0.1)
    assert item.passed == [3.0]


def test_deadline_removed_never_fires() -> None:
    """A removed item is not told; with nothing left, no timer remains."""
    clock = Clock()
    deadlines = Deadlines(clock)
    kept, gone = Item(deadlines), Item(deadlines)
    kept.slot = deadlines.add(kept, 5)
    gone.slot = deadlines.add(gone, 5)
    deadlines.remove(gone, gone.slot)
    deadlines.remove(gone, gone.slot)
    clock.advance(5)
    assert (kept.passed, gone.passed) == ([5], [])
    late = Item(deadlines)
    late.slot = deadlines.add(late, 20)
    deadlines.remove(late, late.slot)
    assert clock.getDelayedCalls() == []


def test_deadline_added_again_and_earlier() -> None:
    """An item may add itself again when told; an earlier slot re-arms the timer."""
    clock = Clock()
    deadlines = Deadlines(clock)
    repeating = Item(deadlines, again=7)
    repeating.slot = deadlines.add(repeating, 10)
    early = Item(deadlines)
    early.slot = deadlines.add(early, 3)
    clock.advance(3)
    assert early.passed == [3]
    clock.advance(7)
    assert repeating.passed == [10]
    clock.advance(7)
    assert repeating.passed == [10, 17]
    # A deadline already past waits for the next slot, not forever.
    past = Item(deadlines)
    past.slot = deadlines.add(past, 0)
    clock.advance(1)
    assert past.passed == [18]


def test_take_token() -> None:
    """A bucket in two floats: takes a token, or says how long to wait."""
    rate = Rate(2, 1)
    tokens, wait = take_token(2, 0, 0, rate)
    assert (tokens, wait) == (1, 0)
    tokens, wait = take_token(tokens, 0, 0, rate)
    assert (tokens, wait) == (0, 0)
    tokens, wait = take_token(tokens, 0, 0.25, rate)
    assert tokens == pytest.approx(0.5) and wait == pytest.approx(0.25)
    assert take_token(0, 0, 100, rate) == (1, 0)


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
