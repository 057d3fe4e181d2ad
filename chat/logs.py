"""
Logging for the chat server: every chat logger goes through one level filter
so that per-command events (debug) cost nothing unless asked for.

Never log a password or a token: log L{token_label} of a token instead.

Much of what is logged comes from clients (names, addresses, origins, what
another realm answered), so every event that passes the filter has the
control and formatting characters of its fields escaped
(L{chat.escapes.visible}) before any log file sees it: a client cannot
forge log lines or send escape sequences to the terminal of whoever reads
the log. A name that is not known to be a user's (a failed login) may be a
password typed in the wrong place: log it only as L{unverified_name}.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from zope.interface import implementer

from chat.escapes import visible


@implementer(ILogObserver)
class EscapingObserver:
    """
    Passes events on to C{observer} with their fields' control characters
    escaped: a text field is replaced by its escaped text, and so is any
    other value (an exception, an address) whose text has something to
    escape; numbers, and the event's own C{log_*} keys and format, are left
    alone.
    """

    def __init__(self, observer: ILogObserver) -> None:
        self.observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        changed: dict[str, Any] | None = None
        for key, value in event.items():
            if key.startswith("log_") or key == "format":
                continue
            if isinstance(value, str):
                text = value
            elif value is None or isinstance(value, (int, float)):
                continue
            else:
                text = str(value)
            escaped = visible(text)
            if escaped != text:
                if changed is None:
                    changed = {}
                changed[key] = escaped
        self.observer(event if changed is None else {**event, **changed})


level_filter = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(EscapingObserver(globalLogPublisher), [level_filter])


def make_logger(namespace: str | None = None) -> Logger:
    """
    A L{Logger} for a class body (its namespace becomes the class name), or
    for a module (give its namespace).
    """
    return Logger(namespace=namespace, observer=observer)


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


#: Keys the labels of unverified names: new at each start, so a label
#: cannot be checked against guessed passwords offline.
_NAME_KEY = secrets.token_bytes(32)


def unverified_name(name: str) -> str:
    """
    What may appear in a log about a name that is not known to be a user's:
    C{name #<8 hex digits>}, the same for the same name while the server
    runs (so repeated attempts can be told apart and counted), but useless
    to anyone who reads the log to recover a password someone typed as
    their username.
    """
    digest = hmac.new(_NAME_KEY, name.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return f"name #{digest.hexdigest()[:8]}"
