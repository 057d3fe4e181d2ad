"""
C{twistd chat}: command-line options and wiring, nothing else.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from chat import logs
from chat.errors import InvalidRealmId, SchemaTooNew, StorageUnavailable
from chat.federation import FederationSettings
from chat.links import realm_id_from_hostname, validate_realm_id
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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a positive number: {text}")
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
        [
            "realm-id",
            None,
            None,
            "This server's realm id, for links to other realms "
            "([a-z0-9.-], 1-63 characters). [default: from the host name]",
        ],
        [
            "realm-queue-max",
            None,
            10_000,
            "Most messages waiting for one other realm; more are refused.",
            positive_int,
        ],
        [
            "realm-rate",
            None,
            50.0,
            "Messages per second a linked realm may send to this one.",
            positive_float,
        ],
        [
            "realm-burst",
            None,
            200.0,
            "Messages a linked realm may send at once, above --realm-rate.",
            positive_float,
        ],
        [
            "realm-retry-min",
            None,
            "1s",
            "First delay before connecting to a realm again; it doubles "
            "after each failure, up to --realm-retry-max.",
            duration,
        ],
        [
            "realm-retry-max",
            None,
            "60s",
            "Longest delay between attempts to connect to a realm.",
            duration,
        ],
        [
            "realm-timeout",
            None,
            "30s",
            "A realm link that does not answer within this long is dropped "
            "and made again; an idle link is checked this often.",
            duration,
        ],
        [
            "realm-seen-ttl",
            None,
            "30d",
            "How long the ids of messages received from other realms are "
            "kept, to recognise a message sent again.",
            duration,
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
        for name in (
            "session-idle",
            "session-max-age",
            "realm-retry-min",
            "realm-retry-max",
            "realm-timeout",
            "realm-seen-ttl",
        ):
            if isinstance(self[name], str):
                self[name] = duration(self[name])
        if self["realm-id"] is None:
            self["realm-id"] = realm_id_from_hostname(socket.gethostname())
        try:
            validate_realm_id(self["realm-id"])
        except InvalidRealmId as e:
            raise usage.UsageError(f"--realm-id: {e}") from None
        if self["realm-retry-min"] > self["realm-retry-max"]:
            raise usage.UsageError("--realm-retry-min is above --realm-retry-max")
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
        federation=federation_settings(options),
    )


def federation_settings(options: Options) -> FederationSettings:
    """
    The C{--realm-*} options.
    """
    return FederationSettings(
        realm_id=options["realm-id"],
        max_queue=options["realm-queue-max"],
        rate=options["realm-rate"],
        burst=options["realm-burst"],
        retry_min=options["realm-retry-min"],
        retry_max=options["realm-retry-max"],
        timeout=options["realm-timeout"],
        seen_ttl=options["realm-seen-ttl"],
        max_text=options["max-line"],
    )
