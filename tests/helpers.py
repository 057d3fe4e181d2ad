"""
Shared test helpers: a fast synchronous hasher, an in-memory server on a
StringTransport, and Deferred inspection for plain pytest functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.build import Settings, build_chat
from chat.federation import FederationSettings
from chat.hashing import HashParameters, check_password
from chat.interfaces import IPasswordHasher
from chat.limits import Limits
from chat.lines import LineConnection as ChatProtocol
from chat.model import PasswordCheck, User
from chat.store.memory import MemoryStore
from tests.clients import Client, encoded

#: Cheap argon2id parameters: tests need the real algorithm, not its cost.
FAST_PARAMETERS = HashParameters(memory_kib=64, time_cost=1, parallelism=1)
FAST_ARGON2 = FAST_PARAMETERS.password_hasher()

DEMO = [
    ("messi", "Lionel Messi", "Argentina"),
    ("henderson", "Jordan Henderson", "Inggris"),
    ("lineker", "Gary Lineker", "Inggris"),
]


@implementer(IPasswordHasher)
class InlineHasher:
    """
    argon2id computed at once, for tests on a fake clock.
    """

    def hash(self, password: str, key: str = "") -> Deferred[str]:
        return succeed(FAST_ARGON2.hash(password))

    def check(
        self,
        password_hash: str,
        password: str,
        key: str = "",
        admit: Callable[[], None] | None = None,
    ) -> Deferred[PasswordCheck]:
        if admit is not None:
            try:
                admit()
            except Exception as e:
                return fail(e)
        return succeed(check_password(FAST_ARGON2, password_hash, password))


def demo_users() -> list[User]:
    password_hash = FAST_ARGON2.hash("surabaya")
    return [User(name, full, country, password_hash) for name, full, country in DEMO]


def result_of(d: Deferred[Any]) -> Any:
    """
    The result of a Deferred that has already succeeded.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: Deferred[Any], *kinds: type[BaseException]) -> Failure:
    """
    The Failure of a Deferred that has already failed with one of C{kinds}.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert isinstance(results[0], Failure), f"succeeded with {results[0]!r}"
    assert results[0].check(*kinds), results[0]
    return results[0]


def no_result(d: Deferred[Any]) -> None:
    results: list[Any] = []
    d.addBoth(results.append)
    assert not results, f"the Deferred fired with {results[0]!r}"
    d.addErrback(lambda f: None)


class CountingHasher(InlineHasher):
    """
    An L{InlineHasher} that counts the passwords it verifies (not those
    its C{admit} check refuses).
    """

    def __init__(self) -> None:
        self.verified = 0

    def check(
        self,
        password_hash: str,
        password: str,
        key: str = "",
        admit: Callable[[], None] | None = None,
    ) -> Deferred[PasswordCheck]:
        def counted() -> None:
            if admit is not None:
                admit()
            self.verified += 1

        return super().check(password_hash, password, key, counted)


class FaultyStore:
    """
    A store for tests: every call goes to the real store, except the
    operations told to wait (L{hold}), fail (L{fail_with}) or be watched
    (L{watch}). An operation is named without its C{_then}: holding
    C{store_message} holds C{store_message_then} too.
    """

    def __init__(self, store: Any) -> None:
        object.__setattr__(self, "real", store)
        object.__setattr__(self, "_faults", {})

    def hold(self, name: str) -> Deferred[None]:
        """
        Calls of C{name} from now on wait until the returned Deferred fires
        (then they run, in order).
        """
        release: Deferred[None] = Deferred()
        self._faults[name] = ("hold", release)
        return release

    def fail_with(self, name: str, error: Callable[[], Exception]) -> None:
        """
        Calls of C{name} from now on fail with C{error()}.
        """
        self._faults[name] = ("fail", error)

    def watch(self, name: str, observer: Callable[[tuple[Any, ...]], None]) -> None:
        """
        Tell C{observer} the arguments of each call of C{name}.
        """
        self._faults[name] = ("watch", observer)

    def clear(self, name: str) -> None:
        self._faults.pop(name, None)

    def __getattr__(self, attr: str) -> Any:
        real = getattr(self.real, attr)
        then = attr.endswith("_then")
        fault = self._faults.get(attr[: -len("_then")] if then else attr)
        if fault is None:
            return real
        kind, value = fault

        def faulty(*args: Any) -> Any:
            if kind == "watch":
                value(args[:-1] if then else args)
                return real(*args)
            if kind == "fail":
                if then:
                    args[-1](False, value())
                    return None
                return fail(value())
            return value.addCallback(lambda _: real(*args))

        return faulty

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self.real, attr, value)


class Server:
    """
    A whole server in memory, built as twistd builds it
    (L{chat.build.build_chat}): MemoryStore, fake clock, inline hashing.
    Registration is open, 5 attempts per address per hour.

    C{limits} are the server's limits (L{Limits} defaults if not given);
    every timer and rate runs on C{clock}. C{federation} (with C{connect},
    C{jitter} and C{new_uid}) makes it a realm with links
    (C{tests.realm_helpers}).
    """

    def __init__(
        self,
        store: Any = None,
        clock: Clock | None = None,
        idle: float = 3600.0,
        max_age: float = 86400.0,
        max_line: int | None = None,
        max_file_size: int = 1024 * 1024,
        max_recipients: int = 100,
        registration: bool = True,
        push_window: int = 100,
        limits: Limits | None = None,
        metrics: bool = False,
        federation: FederationSettings | None = None,
        hasher: Any = None,
        **federation_seams: Any,
    ) -> None:
        """
        @param hasher: the portal's password hasher (default: a
            L{CountingHasher}).
        """
        self.clock = clock or Clock()
        if store is None:
            store = MemoryStore()
            for user in demo_users():
                result_of(store.add_user(user))
        self.store = store = FaultyStore(store)
        self.hasher = CountingHasher() if hasher is None else hasher
        settings = Settings(
            limits=limits or Limits(),
            max_line=max_line,
            max_file_size=max_file_size,
            max_recipients=max_recipients,
            push_window=push_window,
            session_idle=idle,
            session_max_age=max_age,
            registration_open=registration,
            federation=federation,
            metrics=metrics,
        )
        chat = build_chat(self.clock, store, settings, self.hasher, **federation_seams)
        self.chat = chat
        self.sessions = chat.sessions
        self.realm = chat.realm
        self.portal = chat.portal
        self.registrar = chat.registrar
        self.factory = chat.factory
        self.federation = chat.federation
        self._next_port = 40000

    def connect(self, host: str = "127.0.0.1") -> Connection:
        """
        A new client connection from C{host}.
        """
        self._next_port += 1
        kind = IPv6Address if ":" in host else IPv4Address
        address = kind("TCP", host, self._next_port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return Connection(protocol, transport)


class Connection(Client):
    """
    One client on a StringTransport.
    """

    def __init__(self, protocol: ChatProtocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    @property
    def closed(self) -> bool:
        """
        Whether the server closed (or aborted) the connection.
        """
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        """
        The client goes away.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def replies(self) -> list[dict[str, Any]]:
        """
        The replies written since the last call, parsed.
        """
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\r\n\r\n"), data
        return [json.loads(chunk) for chunk in data.split(b"\r\n\r\n") if chunk]

    def events(self) -> list[dict[str, Any]]:
        """
        The replies and events written since the last call, parsed.
        """
        return self.replies()

    def write(self, line: str | bytes) -> None:
        """
        Send one line (CRLF added).
        """
        self.send(encoded(line) + b"\r\n")

    def read(self) -> dict[str, Any]:
        """
        The one reply written since the last call (and nothing else).
        """
        replies = self.replies()
        assert len(replies) == 1, replies
        return replies[0]
