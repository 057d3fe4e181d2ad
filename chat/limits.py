"""
Rate limits: token buckets per key (a username, an address, a connection),
on an injected clock.

A bucket holds at most C{burst} tokens and refills at C{rate} tokens per
second; each attempt takes one. Buckets that have refilled completely are
forgotten, so memory stays proportional to the keys seen recently.
"""

from __future__ import annotations

from collections.abc import Hashable

import attrs
from twisted.internet.interfaces import IReactorTime


@attrs.define
class RateLimiter:
    """
    Keyed token buckets: C{rate} attempts per second, bursts of C{burst}.
    """

    clock: IReactorTime
    rate: float
    burst: float
    max_keys: int = 100_000
    _buckets: dict[Hashable, tuple[float, float]] = attrs.field(
        factory=dict, init=False
    )

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, updated_at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - updated_at) * self.rate)

    def retry_after(self, key: Hashable) -> float:
        """
        Seconds until C{key} may try again; 0 if it may now. Takes nothing.
        """
        tokens = self._tokens(key, self.clock.seconds())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def consume(self, key: Hashable) -> float:
        """
        Take one attempt for C{key} if it has one.

        @return: 0 if the attempt is allowed, else the seconds to wait.
        """
        now = self.clock.seconds()
        tokens = self._tokens(key, now)
        if tokens < 1:
            return (1 - tokens) / self.rate
        if len(self._buckets) >= self.max_keys:
            self.prune()
        self._buckets[key] = (tokens - 1, now)
        return 0.0

    def prune(self) -> None:
        """
        Forget every bucket that has refilled completely.
        """
        now = self.clock.seconds()
        for key in list(self._buckets):
            if self._tokens(key, now) >= self.burst:
                del self._buckets[key]
