"""
Logging for the chat server: every chat logger goes through one level filter
so that per-command events (debug) cost nothing unless asked for.

Never log a password or a token: log L{token_label} of a token instead.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

level_filter = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [level_filter])


def make_logger() -> Logger:
    """
    A L{Logger} for a class body (its namespace becomes the class name).
    """
    return Logger(observer=observer)


_debugging = False


def debugging() -> bool:
    """
    Whether debug events are logged: hot paths check this first, so that a
    filtered-out event costs a function call rather than building the event.
    """
    return _debugging


def set_level(name: str) -> None:
    """
    Set the lowest level logged: debug, info, warn, error or critical.

    @raise ValueError: for another name.
    """
    try:
        level = LogLevel.levelWithName(name)
    except Exception:
        raise ValueError(
            f"unknown log level {name!r} (debug, info, warn, error or critical)"
        ) from None
    level_filter.setLogLevelForNamespace("", level)
    global _debugging
    _debugging = level <= LogLevel.debug


def token_label(token_hash: str) -> str:
    """
    What may appear in a log about a token: a short prefix of its hash.
    """
    return token_hash[:8]
