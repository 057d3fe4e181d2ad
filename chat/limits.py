"""
Limits that keep one client, or many, from taking the server down.

Everything here runs on an injected clock (any L{IReactorTime}), never on
the wall clock, so tests drive it with L{twisted.internet.task.Clock}.

 - L{RateLimiter}: token buckets per key (a username, an address, a
   connection). A bucket holds at most C{burst} tokens and refills at
   C{rate} tokens per second. Buckets that have refilled completely are
   forgotten, so memory stays proportional to the keys seen recently.
 - L{FailureLimiter}: failed logins per username and per address, and
   invalid tokens per address. Only failures cost tokens; the check runs
   before any password hashing, so a refused attempt costs no KDF; and a
   user's limit stops only the addresses that failed for that user, so a
   stranger cannot lock the user out.
 - L{ConnectionTracker}: connections in total and per address
   (L{address_key}: IPv6 clients by their /64).
 - L{take_token}: one connection's own token bucket, kept in two floats.
 - L{Deadlines}: every connection's next deadline (login, idle) on one
   timer, in slots of a second: adding and removing is O(1) and costs a
   set entry, so 10,000 idle connections do not mean 10,000 timers.
 - L{Limits}: every limit's value, with the defaults of C{twistd chat}.
 - L{Quotas}: what one user may keep stored (files, groups), which the
   store checks in the transaction that would go past it.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import resource
from collections.abc import Hashable
from typing import Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from chat.errors import RateLimited

#: Undelivered messages a mailbox holds by default (see L{Limits}).
DEFAULT_MAX_MAILBOX = 10_000


@attrs.frozen
class Quotas:
    """
    What one user may keep stored; the defaults are C{twistd chat}'s, far
    beyond what a class uses.

    @ivar max_files: distinct files a user has sent that are still stored
        (a file sent again, or to many, or to a group, counts once; a file
        goes when the last message carrying it does: C{--retention}, or its
        recipients' deletion).
    @ivar max_file_bytes: the bytes of those files.
    @ivar max_groups: groups a user belongs to, as owner or member.
    """

    max_files: int = 1_000
    max_file_bytes: int = 200 * 1024 * 1024
    max_groups: int = 100


@attrs.frozen
class Rate:
    """
    C{count} attempts per C{per} seconds, in bursts of up to C{count}.
    """

    count: float
    per: float

    @property
    def per_second(self) -> float:
        return self.count / self.per

    def __str__(self) -> str:
        return f"{self.count:g}/{self.per:g}s"


@attrs.frozen
class Limits:
    """
    The value of every limit; the defaults are C{twistd chat}'s.

    @ivar login_timeout: seconds from connect to a successful login, or None
        for no deadline (the default: the connection limits close the
        longest idle connections not logged in when room is needed).
    @ivar idle_timeout: seconds a logged-in connection may send nothing, or
        None for no limit (the default: TCP keepalive finds dead peers).
    @ivar line_timeout: seconds a line in progress may go without growing
        by L{chat.lines.LINE_PROGRESS} bytes (slowloris).
    @ivar max_partial_total: bytes of lines in progress held for all the
        connections not logged in together.
    @ivar login_failures_per_user: failed logins allowed per username.
    @ivar login_failures_per_address: failed logins allowed per address.
    @ivar token_failures_per_address: commands with an invalid token
        allowed per address.
    @ivar command_rate: commands per connection, or None for no limit.
    @ivar max_connections: open connections in total.
    @ivar max_connections_per_address: open connections per address.
    @ivar max_output: bytes of replies queued for a client that is not
        reading before it is disconnected.
    @ivar max_output_total: bytes of replies and events held for clients
        that are not reading, all connections together; past it, the
        connection holding the most is dropped.
    @ivar max_output_per_user: the same for the connections of one user.
    @ivar max_mailbox: undelivered messages stored per recipient.
    @ivar max_web_connections: open HTTP connections to the web client in
        total (a WebSocket, once open, counts as a chat connection instead).
    @ivar max_web_connections_per_address: the same, per client address.
    """

    login_timeout: float | None = None
    idle_timeout: float | None = None
    line_timeout: float = 30.0
    max_partial_total: int = 64 * 1024 * 1024
    login_failures_per_user: Rate = Rate(10, 60)
    login_failures_per_address: Rate = Rate(30, 60)
    token_failures_per_address: Rate = Rate(60, 60)
    command_rate: Rate | None = Rate(1000, 1)
    max_connections: int = 10_000
    max_connections_per_address: int = 1_000
    max_output: int = 1024 * 1024
    max_output_total: int = 256 * 1024 * 1024
    max_output_per_user: int = 32 * 1024 * 1024
    max_mailbox: int = DEFAULT_MAX_MAILBOX
    max_web_connections: int = 2_000
    max_web_connections_per_address: int = 500


@attrs.define
class RateLimiter:
    """
    Keyed token buckets: C{rate} attempts per second, bursts of C{burst}.
    """

    clock: IReactorTime
    rate: float
    burst: float
    max_keys: int = 100_000
    #: How far below zero L{charge} may take a bucket, in bursts.
    max_debt: float = 10.0
    _buckets: dict[Hashable, tuple[float, float]] = attrs.field(
        factory=dict, init=False
    )

    @classmethod
    def of(cls, clock: IReactorTime, rate: Rate) -> RateLimiter:
        return cls(clock, rate.per_second, rate.count)

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, updated_at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - updated_at) * self.rate)

    def _set(self, key: Hashable, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self.prune()
            if len(self._buckets) >= self.max_keys:
                # Still full (a flood of distinct keys): forget the oldest
                # tenth rather than grow without bound.
                for old in list(self._buckets)[: max(1, self.max_keys // 10)]:
                    del self._buckets[old]
        self._buckets[key] = (tokens, now)

    def retry_after(self, key: Hashable) -> float:
        """
        Seconds until C{key} may try again; 0 if it may now. Takes nothing.
        """
        if key not in self._buckets:
            return 0.0  # the common case, without asking the clock
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
        self._set(key, tokens - 1, now)
        return 0.0

    def charge(self, key: Hashable) -> None:
        """
        Take one token for an attempt that already happened, even if that
        leaves the bucket in debt (down to C{max_debt} bursts below zero).

        Attempts that were allowed at the same moment (several connections
        at once) are all paid for, so they buy no extra rate.
        """
        now = self.clock.seconds()
        tokens = self._tokens(key, now) - 1
        self._set(key, max(tokens, -self.max_debt * self.burst), now)

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)

    def prune(self) -> None:
        """
        Forget every bucket that has refilled completely.
        """
        now = self.clock.seconds()
        for key in list(self._buckets):
            if self._tokens(key, now) >= self.burst:
                del self._buckets[key]


@attrs.define
class FailureLimiter:
    """
    Failed logins per username and per address, invalid tokens per address.

    Check before the expensive or guessable step (L{check_login} before the
    password is hashed, L{check_token} before a token is looked up), and
    report failures afterwards: only failures use up attempts, so a user
    who logs in successfully is never limited by it, and an attempt that
    is refused costs no KDF.

    The rule for logins (issue 15, item 8: a stranger must not be able to
    lock a user out):

     - An address that failed too often (for any users: C{by_address}) is
       refused.
     - A user's failures from all addresses are counted (C{by_user}). While
       they are within the limit, any address may try. Once they are over
       it, only addresses that have not failed for that user lately may
       still try: each failure from an address keeps that address away from
       that user for the per-user limit's period (C{by_user_address}), or
       until the user's limit has room again, whichever comes first. A
       successful login forgets the address's failures for that user.

    So one address guessing one user is held to the per-user rate, as
    before; guessers spread over many addresses get one attempt per
    address and period once the user's limit is used up; and the user,
    from an address that has not failed lately (or with the right
    password, after failures from elsewhere), always gets in.
    """

    by_user: RateLimiter
    by_address: RateLimiter
    tokens_by_address: RateLimiter
    by_user_address: RateLimiter

    @classmethod
    def of(cls, clock: IReactorTime, limits: Limits) -> FailureLimiter:
        per_user = limits.login_failures_per_user
        return cls(
            RateLimiter.of(clock, per_user),
            RateLimiter.of(clock, limits.login_failures_per_address),
            RateLimiter.of(clock, limits.token_failures_per_address),
            RateLimiter(clock, rate=1 / per_user.per, burst=1),
        )

    def check_login(self, username: str, address: str) -> None:
        """
        @raise RateLimited: if this address failed too often, or this user
            failed too often and this address failed for them lately.
        """
        wait = self.by_user.retry_after(username)
        if wait > 0:
            wait = min(wait, self.by_user_address.retry_after((username, address)))
        wait = max(wait, self.by_address.retry_after(address))
        if wait > 0:
            raise RateLimited(wait)

    def login_failed(self, username: str, address: str) -> None:
        self.by_user.charge(username)
        self.by_address.charge(address)
        self.by_user_address.charge((username, address))

    def login_succeeded(self, username: str, address: str) -> None:
        """
        The address proved it knows the password: forget its failures for
        this user (not the user's, nor the address's).
        """
        self.by_user_address.forget((username, address))

    def check_token(self, address: str) -> None:
        """
        @raise RateLimited: if this address presented invalid tokens too often.
        """
        wait = self.tokens_by_address.retry_after(address)
        if wait > 0:
            raise RateLimited(wait)

    def token_failed(self, address: str) -> None:
        self.tokens_by_address.charge(address)


@attrs.define
class ConnectionTracker:
    """
    Counts open connections, in total and per address.
    """

    max_total: int
    max_per_address: int
    total: int = 0
    _by_address: dict[str, int] = attrs.field(factory=dict, init=False)

    def admit(self, address: str) -> str | None:
        """
        Count a new connection from C{address}.

        @return: None if it is admitted (call L{release} when it ends), or
            why it is refused (then it was not counted).
        """
        if self.total >= self.max_total:
            return "too many connections"
        count = self._by_address.get(address, 0)
        if count >= self.max_per_address:
            return "too many connections from your address"
        self.total += 1
        self._by_address[address] = count + 1
        return None

    def add(self, address: str) -> None:
        """
        Count a connection from C{address} whatever the limits (one that
        made room by closing another, still counted until it is gone).
        """
        self.total += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1

    def release(self, address: str) -> None:
        self.total -= 1
        count = self._by_address[address] - 1
        if count:
            self._by_address[address] = count
        else:
            del self._by_address[address]

    def count(self, address: str) -> int:
        return self._by_address.get(address, 0)


def take_token(
    tokens: float, updated_at: float, now: float, rate: Rate
) -> tuple[float, float]:
    """
    Take one token from a bucket of C{rate} that held C{tokens} at
    C{updated_at}.

    @return: the tokens the bucket holds now, and 0 if one was taken, or
        else the seconds until one can be.
    """
    tokens = min(rate.count, tokens + (now - updated_at) * rate.per_second)
    if tokens >= 1:
        return tokens - 1, 0.0
    return tokens, (1 - tokens) / rate.per_second


class HasDeadline(Protocol):
    def deadline_passed(self, now: float) -> None:
        """
        Its deadline passed: act on it (perhaps L{Deadlines.add} it again).
        """


class Deadlines:
    """
    Deadlines of many items on one timer.

    Items wait in slots of C{resolution} seconds, so a deadline is acted on
    up to C{resolution} late. When a slot is due, each of its items is told
    (L{HasDeadline.deadline_passed}); an item with another deadline adds
    itself again. L{add} and L{remove} are O(1), and an item costs one set
    entry.
    """

    def __init__(self, clock: IReactorTime, resolution: float = 1.0) -> None:
        self._clock = clock
        self.resolution = resolution
        self._slots: dict[int, set[HasDeadline]] = {}
        self._due: list[int] = []  # a heap of slots, perhaps emptied since
        self._call: IDelayedCall | None = None
        self._call_slot = 0

    def __len__(self) -> int:
        return sum(len(items) for items in self._slots.values())

    def add(self, item: HasDeadline, when: float) -> int:
        """
        Call C{item.deadline_passed} once C{when} has passed.

        @return: the slot, for L{remove}.
        """
        now_slot = math.floor(self._clock.seconds() / self.resolution)
        slot = max(math.ceil(when / self.resolution), now_slot + 1)
        items = self._slots.get(slot)
        if items is None:
            items = self._slots[slot] = set()
            heapq.heappush(self._due, slot)
            self._arm()
        items.add(item)
        return slot

    def remove(self, item: HasDeadline, slot: int) -> None:
        items = self._slots.get(slot)
        if items is None:
            return
        items.discard(item)
        if not items:
            del self._slots[slot]
            if not self._slots:
                self._due.clear()
                if self._call is not None:
                    self._call.cancel()
                    self._call = None

    def _arm(self) -> None:
        while self._due and self._due[0] not in self._slots:
            heapq.heappop(self._due)
        if not self._due:
            return
        first = self._due[0]
        if self._call is not None:
            if self._call_slot <= first:
                return
            self._call.cancel()
        delay = max(0.0, first * self.resolution - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._fire)
        self._call_slot = first

    def _fire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        while self._due and self._due[0] * self.resolution <= now:
            slot = heapq.heappop(self._due)
            for item in self._slots.pop(slot, ()):
                item.deadline_passed(now)
        if not self._slots:
            self._due.clear()
        self._arm()


def address_key(host: str) -> str:
    """
    The key for per-address limits: an IPv4 address as it is, an IPv6
    address by its /64 network (one site's share, which a single client
    can fill with addresses), an IPv4-mapped IPv6 address as IPv4.
    """
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def raise_open_file_limit(wanted: int) -> int:
    """
    Raise this process's soft limit on open files towards C{wanted} (never
    above the hard limit, never lower than it is).

    @return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft
        return wanted
    return wanted if soft == resource.RLIM_INFINITY else soft
