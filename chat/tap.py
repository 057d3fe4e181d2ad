"""
C{twistd chat}: command-line options and wiring, nothing else.
"""

from __future__ import annotations

import os
import re
import socket
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from chat import commands, logs
from chat.cluster import new_node_id
from chat.errors import InvalidRealmId, SchemaTooNew, StorageUnavailable
from chat.federation import FederationSettings
from chat.hashing import (
    DEFAULT_MAX_QUEUED,
    PARAMETER_CONVERTERS,
    PARAMETER_OPTIONS,
    Argon2Hasher,
    parameters_from,
)
from chat.limits import Limits, Quotas, Rate
from chat.links import realm_id_from_hostname, validate_realm_id
from chat.options import ChatOptions
from chat.proxy import proxy_network
from chat.store import STORE_HELP, open_store, valid_store
from chat.web.hosts import host_name
from chat.web.origins import parse_origin

if TYPE_CHECKING:
    from chat.build import Settings

#: A backlog of 1024 (Twisted's default is 50) so that a storm of new
#: connections is queued by the kernel rather than refused.
DEFAULT_LISTEN = "tcp:8889:interface=127.0.0.1:backlog=1024"

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
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"expected a positive whole number, not {text!r}")
    return value


_SIZE = re.compile(r"(\d+)([km]?)(i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2}


def size(text: str) -> int:
    """
    Bytes from C{1048576}, C{512K}, C{1M} or C{1MiB} (binary units).
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"not a positive size: {text!r} (examples: 65536 512K 1M)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def rate(text: str) -> tuple[int, float]:
    """
    C{(count, seconds)} from C{COUNT/DURATION}, e.g. C{5/1h}: bursts of
    COUNT, refilled at COUNT per DURATION.
    """
    count, slash, period = text.partition("/")
    if not slash:
        raise ValueError(f"not a rate: {text!r} (example: 5/1h)")
    return positive_int(count), duration(period)


def limit_rate(text: str) -> Rate:
    """
    A L{Rate} from C{COUNT/DURATION}: C{10/1m} is bursts of up to 10,
    refilling at 10 per minute.
    """
    count, slash, per = text.partition("/")
    try:
        value = float(count)
    except ValueError:
        value = 0
    if not slash or value <= 0:
        raise ValueError(f"not a rate: {text!r} (examples: 10/1m 1000/1s)")
    return Rate(value, duration(per))


def duration_or_off(text: str) -> float | None:
    """
    Seconds from a duration, or None for C{off}.
    """
    return None if text.strip().lower() == "off" else duration(text)


def limit_rate_or_off(text: str) -> Rate | None:
    """
    Like L{limit_rate}, or None for C{off}.
    """
    return None if text.strip().lower() == "off" else limit_rate(text)


def retention(text: str) -> float | None:
    """
    Seconds from a duration, or None for C{forever}.
    """
    if text.strip() == "forever":
        return None
    return duration(text)


def registration(text: str) -> str:
    if text not in ("open", "closed"):
        raise ValueError(f"expected open or closed, not {text!r}")
    return text


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected a positive number, not {text!r}")
    return value


def log_level(text: str) -> str:
    logs.set_level(text)
    return text


_DEFAULTS = Limits()
_QUOTAS = Quotas()


class Options(ChatOptions):
    """
    Options of C{twistd chat}.
    """

    synopsis = "[options]"
    longdesc = (
        "A chat server speaking the course chat protocol (auth/send/inbox, "
        "and register, groups, files, history) with durable storage. "
        "Endpoints use Twisted's endpoint syntax, "
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
        [
            "skip-integrity-check",
            None,
            "Start without checking a SQLite database for damage (the check "
            "reads the whole file: about a second per gigabyte).",
        ],
    ]
    optParameters: list[list[Any]] = [
        ["store", None, "sqlite:chat.sqlite", f"Where chat state lives: {STORE_HELP}."],
        [
            "max-line",
            None,
            None,
            "Longest request line in bytes; a longer one is answered with an "
            "error and the connection is closed. [default: room for a file of "
            "--max-file-size in base64, plus 16384]",
        ],
        [
            "max-file-size",
            None,
            "1M",
            "Largest file sendfile and sendgroupfile accept, in bytes "
            "(512K, 1M, ...), decoded.",
        ],
        [
            "max-recipients",
            None,
            "100",
            "Most distinct users one sendgroup or sendgroupfile may name.",
        ],
        [
            "registration",
            None,
            "closed",
            "open: anyone may create an account with register; closed: "
            "only chat-admin creates accounts.",
        ],
        [
            "registration-rate",
            None,
            "5/1h",
            "Registration attempts per client address: COUNT/DURATION allows "
            "bursts of COUNT, refilled at COUNT per DURATION.",
        ],
        [
            "retention",
            None,
            "forever",
            "Delete messages (delivered or not) and files this long after "
            "they were sent (90s, 15m, 24h, 30d), or keep them forever.",
        ],
        [
            "session-idle",
            None,
            "24h",
            "A session ends after this long without a command (90s, 15m, 24h, 30d).",
        ],
        [
            "session-max-age",
            None,
            "30d",
            "A session ends this long after login, however active.",
        ],
        [
            "push-window",
            None,
            "100",
            "Most pushed messages a subscriber may leave unacknowledged.",
        ],
        *PARAMETER_OPTIONS,
        [
            "hash-concurrency",
            None,
            None,
            "Password hashes computed at once, each on a thread of its own. "
            "[default: the CPUs this process may run on]",
        ],
        [
            "hash-queue-max",
            None,
            str(DEFAULT_MAX_QUEUED),
            "Most logins and registrations waiting for the password hasher; "
            "more are answered 'server busy' with retry_after_ms at once.",
        ],
        [
            "login-timeout",
            None,
            "off",
            "A connection that has not logged in this long after connecting is "
            "closed (a duration, or off: at the connection limits, the "
            "connection idle longest without logging in makes room instead).",
        ],
        [
            "idle-timeout",
            None,
            "off",
            "A logged-in connection that sends nothing this long is closed (a "
            "duration, or off: TCP keepalive finds clients that went away).",
        ],
        [
            "line-timeout",
            None,
            "30s",
            "A request line in progress must grow by 1 KiB this often, or the "
            "connection is closed (slow senders holding connections open).",
        ],
        [
            "max-partial-total",
            None,
            "64M",
            "Bytes of unfinished lines held for all the connections that have "
            "not logged in together (each holds at most 16K); past it they "
            "are refused with 'server busy'.",
        ],
        [
            "login-failures-per-user",
            None,
            "10/1m",
            "Failed logins allowed per username, as COUNT/DURATION (bursts of "
            "COUNT, refilled at COUNT per DURATION); beyond it every login for "
            "that user gets 'too many attempts' without checking the password.",
        ],
        [
            "login-failures-per-address",
            None,
            "30/1m",
            "Failed logins allowed per client address (COUNT/DURATION).",
        ],
        [
            "token-failures-per-address",
            None,
            "60/1m",
            "Commands with an invalid token allowed per client address "
            "(COUNT/DURATION).",
        ],
        [
            "command-rate",
            None,
            "1000/1s",
            "Commands per connection (COUNT/DURATION, or off); beyond it the "
            "server reads the connection more slowly.",
        ],
        [
            "max-connections",
            None,
            str(_DEFAULTS.max_connections),
            "Most open connections; more get an error and are closed.",
        ],
        [
            "max-connections-per-address",
            None,
            str(_DEFAULTS.max_connections_per_address),
            "Most open connections from one client address.",
        ],
        [
            "max-output",
            None,
            "1M",
            "Bytes of replies that may pile up for a client that does not read "
            "them before it is disconnected (64k, 1M, ...).",
        ],
        [
            "max-output-total",
            None,
            "256M",
            "Bytes of replies and events held for all the clients that are "
            "not reading, together; past it, the connection holding the most "
            "is disconnected.",
        ],
        [
            "max-output-per-user",
            None,
            "32M",
            "The same for the connections of one user.",
        ],
        [
            "max-mailbox",
            None,
            str(_DEFAULTS.max_mailbox),
            "Most undelivered messages stored per user; more are refused "
            "with 'mailbox full'.",
        ],
        [
            "max-unread-per-sender",
            None,
            None,
            "Most undelivered messages one sender may have in one user's "
            "mailbox, so that one sender cannot fill it for everyone. "
            "[default: a tenth of --max-mailbox]",
        ],
        [
            "max-files-per-user",
            None,
            str(_QUOTAS.max_files),
            "Most files one user may keep stored (sent, and not yet deleted "
            "with their messages); a file sent again counts once.",
        ],
        [
            "max-file-bytes-per-user",
            None,
            "200M",
            "Most bytes of files one user may keep stored (64M, 1024M, ...).",
        ],
        [
            "max-groups-per-user",
            None,
            str(_QUOTAS.max_groups),
            "Most groups one user may belong to, as owner or member.",
        ],
        [
            "max-web-connections",
            None,
            str(_DEFAULTS.max_web_connections),
            "Most open HTTP connections to --web (an open WebSocket counts as "
            "a chat connection instead); more are answered 503.",
        ],
        [
            "max-web-connections-per-address",
            None,
            str(_DEFAULTS.max_web_connections_per_address),
            "Most open HTTP connections to --web from one client address.",
        ],
        [
            "log-level",
            None,
            "info",
            "Lowest level logged: debug (also every command), info "
            "(connections, logins, failures), warn, error or critical.",
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
            "10000",
            "Most messages waiting for one other realm; more are refused.",
        ],
        [
            "realm-rate",
            None,
            "50",
            "Messages per second a linked realm may send to this one.",
        ],
        [
            "realm-burst",
            None,
            "200",
            "Messages a linked realm may send at once, above --realm-rate.",
        ],
        [
            "realm-retry-min",
            None,
            "1s",
            "First delay before connecting to a realm again; it doubles "
            "after each failure, up to --realm-retry-max.",
        ],
        [
            "realm-retry-max",
            None,
            "60s",
            "Longest delay between attempts to connect to a realm.",
        ],
        [
            "realm-timeout",
            None,
            "30s",
            "A realm link that does not answer within this long is dropped "
            "and made again; an idle link is checked this often.",
        ],
        [
            "node-id",
            None,
            None,
            "With a PostgreSQL store shared by several nodes: this node's id, "
            "unique among them (1-100 characters). [default: host name, "
            "process id and a random suffix]",
        ],
        [
            "heartbeat",
            None,
            "5s",
            "With a PostgreSQL store: how often this node tells the others it "
            "is alive; a node silent for three heartbeats is taken for dead and "
            "its users go offline.",
        ],
        [
            "realm-seen-ttl",
            None,
            "30d",
            "How long the ids of messages received from other realms are "
            "kept, to recognise a message sent again.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["web"] = []
        self["web-origin"] = []
        self["web-host"] = []
        self["trusted-proxy"] = []
        self["metrics"] = None

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on this Twisted endpoint (repeatable); add backlog=1024 to
        your own. [default: tcp:8889:interface=127.0.0.1:backlog=1024]
        """
        self["listen"].append(_server_endpoint("--listen", endpoint))

    def opt_web(self, endpoint: str) -> None:
        """
        Serve the web client on this endpoint (repeatable).
        [default: off]
        """
        self["web"].append(_server_endpoint("--web", endpoint))

    def opt_metrics(self, endpoint: str) -> None:
        """
        Serve Prometheus metrics over HTTP on this endpoint, e.g.
        tcp:9100:interface=127.0.0.1. [default: off]
        """
        self["metrics"] = _server_endpoint("--metrics", endpoint)

    def opt_web_origin(self, origin: str) -> None:
        """
        Accept WebSockets from this origin too (repeatable).
        [default: only the page's own]
        """
        try:
            parse_origin(origin)
        except ValueError as e:
            raise usage.UsageError(f"--web-origin: {e}") from None
        self["web-origin"].append(origin)

    def opt_web_host(self, host: str) -> None:
        """
        Also serve the web client under this host name (the Host header),
        e.g. the public name behind a proxy (repeatable). [default: IP
        addresses, localhost, this machine's name, the --web-origin hosts]
        """
        try:
            host_name(host)
        except ValueError as e:
            raise usage.UsageError(f"--web-host: {e}") from None
        self["web-host"].append(host)

    def opt_trusted_proxy(self, address: str) -> None:
        """
        Believe a proxy at this IP address or network (10.0.0.5,
        10.0.0.0/24) about its clients' addresses: its connections to
        --listen must begin with a PROXY protocol header (v1 or v2), and
        its requests to --web name the client in X-Forwarded-For
        (repeatable). [default: none]
        """
        try:
            self["trusted-proxy"].append(proxy_network(address))
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy: {e}") from None

    #: Each option's text to its value (defaults too), with errors that
    #: name the option (see L{ChatOptions.convert}).
    converters = {
        "max-line": positive_int,
        "max-file-size": size,
        "max-recipients": positive_int,
        "registration": registration,
        "registration-rate": rate,
        "retention": retention,
        "session-idle": duration,
        "session-max-age": duration,
        "push-window": positive_int,
        **PARAMETER_CONVERTERS,
        "hash-concurrency": positive_int,
        "hash-queue-max": positive_int,
        "login-timeout": duration_or_off,
        "idle-timeout": duration_or_off,
        "line-timeout": duration,
        "max-partial-total": size,
        "login-failures-per-user": limit_rate,
        "login-failures-per-address": limit_rate,
        "token-failures-per-address": limit_rate,
        "command-rate": limit_rate_or_off,
        "max-connections": positive_int,
        "max-connections-per-address": positive_int,
        "max-output": size,
        "max-output-total": size,
        "max-output-per-user": size,
        "max-mailbox": positive_int,
        "max-unread-per-sender": positive_int,
        "max-files-per-user": positive_int,
        "max-file-bytes-per-user": size,
        "max-groups-per-user": positive_int,
        "max-web-connections": positive_int,
        "max-web-connections-per-address": positive_int,
        "log-level": log_level,
        "realm-queue-max": positive_int,
        "realm-rate": positive_float,
        "realm-burst": positive_float,
        "realm-retry-min": duration,
        "realm-retry-max": duration,
        "realm-timeout": duration,
        "heartbeat": duration,
        "realm-seen-ttl": duration,
    }

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        self.convert()
        needed = commands.max_line_for_file(self["max-file-size"])
        if self["max-line"] is None:
            self["max-line"] = needed
        elif self["max-line"] < needed:
            raise usage.UsageError(
                f"--max-line {self['max-line']} cannot carry a file of "
                f"--max-file-size {self['max-file-size']} bytes: use at least "
                f"{needed}, or a smaller --max-file-size"
            )
        if self["realm-id"] is None:
            self["realm-id"] = realm_id_from_hostname(socket.gethostname())
        try:
            validate_realm_id(self["realm-id"])
        except InvalidRealmId as e:
            raise usage.UsageError(f"--realm-id: {e}") from None
        if self["node-id"] is None:
            self["node-id"] = new_node_id()
        elif not 0 < len(self["node-id"]) <= 100 or not self["node-id"].isprintable():
            raise usage.UsageError("--node-id: 1-100 printable characters")
        if self["realm-retry-min"] > self["realm-retry-max"]:
            raise usage.UsageError("--realm-retry-min is above --realm-retry-max")
        self["hash-parameters"] = parameters_from(self)
        if not valid_store(self["store"]):
            raise usage.UsageError(f"--store: expected {STORE_HELP}")


def _server_endpoint(option: str, endpoint: str) -> str:
    """
    C{endpoint}, if Twisted can make a server endpoint of it (for TLS, that
    loads the certificate and key).

    @raise usage.UsageError: if it cannot, saying why.
    """
    from twisted.internet import reactor

    try:
        serverFromString(reactor, endpoint)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise usage.UsageError(
            f"{option}: not a server endpoint: {endpoint!r} ({e})"
        ) from None
    return endpoint


def makeService(options: Options) -> IService:
    """
    Open the store and wire the chat service; twistd starts it.
    """
    from twisted.internet import reactor as global_reactor

    from chat.service import ChatService

    reactor: Any = global_reactor

    limits = limits_from(options)
    try:
        store = open_store(
            reactor,
            options["store"],
            max_mailbox=limits.max_mailbox,
            max_per_sender=max_unread_per_sender(options),
            quotas=quotas_from(options),
            node_id=options["node-id"],
            server=True,
            check=not options["skip-integrity-check"],
        )
    except (SchemaTooNew, StorageUnavailable, ValueError) as e:
        raise SystemExit(f"chat: {e}") from None

    service = ChatService(
        reactor,
        store,
        options["listen"],
        settings(options, limits),
        hasher=Argon2Hasher(
            reactor,
            options["hash-parameters"],
            threads=options["hash-concurrency"],
            max_queued=options["hash-queue-max"],
        ),
        demo=options["demo"],
        web=options["web"],
        metrics=options["metrics"],
    )
    pidfile = _pidfile(options)
    if pidfile:
        # twistd removes its pid file when the server stops, but not when it
        # cannot start (a port in use): a stale one would remain.
        service.failed_start_observers.append(lambda: _remove(pidfile))
    return service


def settings(options: Options, limits: Limits) -> Settings:
    """
    How the server behaves, from the options.
    """
    from chat.build import Settings

    return Settings(
        limits=limits,
        max_line=options["max-line"],
        max_file_size=options["max-file-size"],
        max_recipients=options["max-recipients"],
        push_window=options["push-window"],
        session_idle=options["session-idle"],
        session_max_age=options["session-max-age"],
        registration_open=options["registration"] == "open",
        registration_rate=options["registration-rate"],
        retention=options["retention"],
        federation=federation_settings(options),
        heartbeat=options["heartbeat"],
        web_origins=options["web-origin"],
        web_hosts=options["web-host"],
        trusted_proxies=options["trusted-proxy"],
    )


def _pidfile(options: Options) -> str | None:
    """
    The pid file twistd writes (C{--pidfile}), when run by twistd.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    pidfile = parent.get("pidfile")
    return str(pidfile) if pidfile else None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


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
        max_file_size=options["max-file-size"],
    )


def max_unread_per_sender(options: Options) -> int:
    """
    C{--max-unread-per-sender}, or its default: a tenth of the mailbox.
    """
    given: int | None = options["max-unread-per-sender"]
    if given is not None:
        return given
    return max(1, options["max-mailbox"] // 10)


def limits_from(options: Options) -> Limits:
    """
    The L{Limits} given by parsed options.
    """
    return Limits(
        login_timeout=options["login-timeout"],
        idle_timeout=options["idle-timeout"],
        line_timeout=options["line-timeout"],
        max_partial_total=options["max-partial-total"],
        login_failures_per_user=options["login-failures-per-user"],
        login_failures_per_address=options["login-failures-per-address"],
        token_failures_per_address=options["token-failures-per-address"],
        command_rate=options["command-rate"],
        max_connections=options["max-connections"],
        max_connections_per_address=options["max-connections-per-address"],
        max_output=options["max-output"],
        max_output_total=options["max-output-total"],
        max_output_per_user=options["max-output-per-user"],
        max_mailbox=options["max-mailbox"],
        max_web_connections=options["max-web-connections"],
        max_web_connections_per_address=options["max-web-connections-per-address"],
    )


def quotas_from(options: Options) -> Quotas:
    """
    The L{Quotas} given by parsed options.
    """
    return Quotas(
        max_files=options["max-files-per-user"],
        max_file_bytes=options["max-file-bytes-per-user"],
        max_groups=options["max-groups-per-user"],
    )
