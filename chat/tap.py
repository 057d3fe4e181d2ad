"""
C{twistd chat}: command-line options and wiring, nothing else.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from chat import logs
from chat.errors import SchemaTooNew, StorageUnavailable
from chat.store import STORE_HELP, open_store

DEFAULT_LISTEN = "tcp:8889:interface=127.0.0.1"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """
    Seconds from C{90}, C{90s}, C{15m}, C{24h} or C{30d}.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(
            f"not a positive duration: {text!r} (examples: 90s 15m 24h 30d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be positive: {text}")
    return value


class Options(usage.Options):
    """
    Options of C{twistd chat}.
    """

    synopsis = "[options]"
    longdesc = (
        "A chat server speaking the course chat protocol (auth/send/inbox) "
        "with durable storage. Endpoints use Twisted's endpoint syntax, "
        "e.g. tcp:8889:interface=127.0.0.1 or "
        "ssl:8890:privateKey=key.pem:certKey=cert.pem."
    )

    optFlags = [
        [
            "demo",
            None,
            "Create the course's demo users (messi, henderson, "
            "lineker; password surabaya) if they do not exist.",
        ],
    ]
    optParameters: list[list[Any]] = [
        ["store", None, "sqlite:chat.sqlite", f"Where chat state lives: {STORE_HELP}."],
        [
            "max-line",
            None,
            16 * 1024,
            "Longest request line in bytes; a longer "
            "one is answered with an error and the connection is closed.",
            positive_int,
        ],
        [
            "session-idle",
            None,
            "24h",
            "A session ends after this long without a command (90s, 15m, 24h, 30d).",
            duration,
        ],
        [
            "session-max-age",
            None,
            "30d",
            "A session ends this long after login, however active.",
            duration,
        ],
        [
            "push-window",
            None,
            100,
            "Most pushed messages a subscriber may leave unacknowledged.",
            positive_int,
        ],
        [
            "hash-concurrency",
            None,
            2,
            "Most password hashes computed at once.",
            positive_int,
        ],
        [
            "log-level",
            None,
            "info",
            "Lowest level logged: debug (every command), info, warn, error.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on this Twisted endpoint (repeatable).
        [default: tcp:8889:interface=127.0.0.1]
        """
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for name in ("session-idle", "session-max-age"):
            if isinstance(self[name], str):
                self[name] = duration(self[name])
        if not self["store"].startswith("sqlite:") or self["store"] == "sqlite:":
            raise usage.UsageError(f"--store: expected {STORE_HELP}")
        try:
            logs.set_level(self["log-level"])
        except ValueError as e:
            raise usage.UsageError(f"--log-level: {e}") from None


def makeService(options: Options) -> IService:
    """
    Open the store and wire the chat service; twistd starts it.
    """
    from twisted.internet import reactor as global_reactor

    from chat.checkers import Argon2Hasher
    from chat.service import ChatService

    reactor: Any = global_reactor

    try:
        store = open_store(reactor, options["store"])
    except (SchemaTooNew, StorageUnavailable, ValueError) as e:
        raise SystemExit(f"chat: {e}") from None

    return ChatService(
        reactor,
        store,
        options["listen"],
        hasher=Argon2Hasher(reactor, options["hash-concurrency"]),
        demo=options["demo"],
        max_line=options["max-line"],
        session_idle=options["session-idle"],
        session_max_age=options["session-max-age"],
        push_window=options["push-window"],
    )
