"""
Waiting for what another process, thread or the real reactor does "soon":
poll a condition until it holds, or fail when a deadline passes.

Tests never assert right away on something done elsewhere, and never sleep
a fixed time hoping it is done: on a loaded machine "soon" may be seconds.
The deadlines are generous because a passing test never waits for them.

L{wait_until} blocks (tests without a running reactor: subprocesses,
sockets); L{eventually} waits on the reactor (C{pytest_twisted} tests,
where blocking would stop the very thing being waited for).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: The default deadline, in seconds.
TIMEOUT = 30.0
#: How often the condition is checked, in seconds (often enough to add
#: little to a test's time; seldom enough that conditions which ask a
#: server or a browser do not load the machine).
INTERVAL = 0.05


def _describe(what: str | Callable[[], str] | None, condition: object) -> str:
    if callable(what):
        return what()
    return what or getattr(condition, "__name__", "the condition")


def wait_until(
    condition: Callable[[], T],
    timeout: float = TIMEOUT,
    what: str | Callable[[], str] | None = None,
    interval: float = INTERVAL,
) -> T:
    """
    Call C{condition} until it returns something true, and return that.

    @param what: what is awaited (or a function saying what was seen), for
        the failure message.
    @raise AssertionError: if it is still false after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {_describe(what, condition)}")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = TIMEOUT,
    what: str | Callable[[], str] | None = None,
    interval: float = INTERVAL,
) -> T:
    """
    Like L{wait_until}, letting the reactor run between checks;
    C{condition} may be a coroutine function.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while True:
        value: Any = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {_describe(what, condition)}")
        await deferLater(reactor, interval, lambda: None)  # type: ignore[arg-type]
