"""
Wiring: one L{ChatService} owns the store, the password hasher, the
sessions and the listening ports, and starts and stops them in order.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.cred.portal import Portal
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    ensureDeferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from chat.checkers import Argon2Hasher, SessionChecker, StoreChecker
from chat.errors import NoSuchUser, UserExists
from chat.federation import Federation, FederationSettings
from chat.interfaces import IChatStore, IPasswordHasher
from chat.logs import make_logger
from chat.model import User
from chat.protocol import ChatFactory
from chat.realm import ChatRealm
from chat.sessions import SessionManager

#: The course's three users (rm77/progjar), created by C{--demo}.
DEMO_USERS = [
    ("messi", "Lionel Messi", "Argentina"),
    ("henderson", "Jordan Henderson", "Inggris"),
    ("lineker", "Gary Lineker", "Inggris"),
]
DEMO_PASSWORD = "surabaya"


async def ensure_demo_users(store: IChatStore, hasher: IPasswordHasher) -> None:
    """
    Create the course's demo users that do not exist yet.
    """
    for username, full_name, country in DEMO_USERS:
        try:
            await store.get_user(username)
            continue
        except NoSuchUser:
            pass
        password_hash = await hasher.hash(DEMO_PASSWORD)
        try:
            await store.add_user(User(username, full_name, country, password_hash))
        except UserExists:
            pass  # created meanwhile, by chat-admin or another node


class ChatService(Service):
    """
    The chat server as a twistd service.

    @ivar ready: fires when the server runs commands (after the demo users
        exist, with C{demo}); commands that arrive earlier wait for it.
    @ivar ports: the listening ports, once started.
    """

    log = make_logger()

    def __init__(
        self,
        reactor: Any,
        store: Any,
        endpoints: list[str],
        *,
        hasher: Argon2Hasher | None = None,
        demo: bool = False,
        max_line: int = 16 * 1024,
        session_idle: float = 86400.0,
        session_max_age: float = 30 * 86400.0,
        push_window: int = 100,
        federation: FederationSettings | None = None,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.endpoints = endpoints
        self.hasher = hasher or Argon2Hasher(reactor)
        self.demo = demo
        self.sessions = SessionManager(store, reactor, session_idle, session_max_age)
        self.realm = ChatRealm(store, reactor, self.sessions, push_window=push_window)
        self.portal = Portal(
            self.realm,
            [StoreChecker(store, self.hasher), SessionChecker(self.sessions)],
        )
        self.factory = ChatFactory(self.portal, max_line)
        self.factory.hold()
        self.federation: Federation | None = None
        if federation is not None:
            self.federation = Federation(
                federation,
                store,
                reactor,
                self.realm.fanout,
                connect=partial(clientFromString, reactor),
            )
            self.realm.federation = self.factory.federation = self.federation
        self.ports: list[IListeningPort] = []
        self.ready: Deferred[None] = Deferred()

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint now, so that a port in use stops twistd
        with a clear message instead of a server listening nowhere.
        """
        super().privilegedStartService()
        for description in self.endpoints:
            outcome: list[Any] = []
            serverFromString(self.reactor, description).listen(self.factory).addBoth(
                outcome.append
            )
            if outcome and isinstance(outcome[0], Failure):
                self._stop_listening()
                raise SystemExit(
                    f"chat: cannot listen on {description}: {outcome[0].value}"
                )
            if not outcome:
                raise SystemExit(f"chat: {description} did not listen at once")
            port = outcome[0]
            self.ports.append(port)
            self.log.info(
                "Chat server listening on {address} ({description})",
                address=port.getHost(),
                description=description,
            )

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        self.store.start()
        self.hasher.start()
        self.sessions.start()
        if self.demo:
            self.log.warn(
                "Demo accounts are enabled: messi, henderson and lineker with "
                "the course's well-known password. Never use --demo on a "
                "server others can reach."
            )
            d = ensureDeferred(ensure_demo_users(self.store, self.hasher))
        else:
            d = succeed(None)

        def started(_: Any) -> None:
            self.factory.open()
            if self.federation is not None:
                self.log.info(
                    "This server is realm {realm}", realm=self.federation.realm_id
                )
                self.federation.start()
            self.ready.callback(None)

        def failed(f: Failure) -> None:
            self.log.failure("Could not start the chat server", f)
            self.reactor.stop()

        d.addCallbacks(started, failed)

    def _stop_listening(self) -> Deferred[Any]:
        ports, self.ports = self.ports, []
        return DeferredList([maybeDeferred(port.stopListening) for port in ports])

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d = self._stop_listening()
        federation = self.federation
        if federation is not None:
            d.addBoth(lambda _: federation.stop())
        d.addBoth(lambda _: self.sessions.stop())
        d.addBoth(lambda _: self.store.close())
        d.addBoth(lambda _: self.hasher.stop())
        return d
