"""
The chat server as a twistd service: L{ChatService} builds the server's
parts (L{chat.build.build_chat}), listens on its endpoints, and starts and
stops the parts in order.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import attrs
from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    ensureDeferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from chat.build import Settings, build_chat
from chat.errors import NoSuchUser, UserExists
from chat.hashing import Argon2Hasher
from chat.interfaces import IPasswordHasher
from chat.limits import raise_open_file_limit
from chat.lines import ChatFactory
from chat.logs import make_logger
from chat.metrics import metrics_site
from chat.model import User
from chat.proxy import listening_factory
from chat.store.interfaces import IUserStore

#: Allocations of container objects between two collections of the
#: youngest generation (CPython's default is 700).
GC_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """
    Make the cyclic garbage collector cheaper for a server: what exists once
    the server has started (modules, classes, the realm, the store) moves to
    the permanent generation (C{gc.freeze}), so full collections no longer
    walk it; and the youngest generation is collected less often, so that
    the short-lived objects of a request have died by then. A profile of the
    request path under load showed about a tenth of the server's CPU in the
    collector before this.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)


#: The course's three users (rm77/progjar), created by C{--demo}.
DEMO_USERS = [
    ("messi", "Lionel Messi", "Argentina"),
    ("henderson", "Jordan Henderson", "Inggris"),
    ("lineker", "Gary Lineker", "Inggris"),
]
DEMO_PASSWORD = "surabaya"

#: Open files kept for other things than client connections: listening
#: sockets, the database and its journal, logs.
SPARE_FILES = 64


async def ensure_demo_users(store: IUserStore, hasher: IPasswordHasher) -> None:
    """
    Create the course's demo users that do not exist yet. They share one
    hash of their shared, well-known password (hashing is the cost of a
    start with C{--demo}; a salt per user would protect nothing here).
    """
    password_hash: str | None = None
    for username, full_name, country in DEMO_USERS:
        try:
            await store.get_user(username)
            continue
        except NoSuchUser:
            pass
        if password_hash is None:
            password_hash = await hasher.hash(DEMO_PASSWORD)
        try:
            await store.add_user(User(username, full_name, country, password_hash))
        except UserExists:
            pass  # created meanwhile, by chat-admin or another node


def page_url(description: str, address: Any) -> str:
    """
    Where a browser finds the web client listening at C{address}.
    """
    scheme = "https" if description.split(":", 1)[0] in ("ssl", "tls") else "http"
    host = str(getattr(address, "host", "localhost"))
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{getattr(address, 'port', '')}/"


class ChatService(Service):
    """
    The chat server as a twistd service: the parts L{build_chat} makes, the
    ports they listen on, started and stopped in order.

    @ivar chat: the server's parts (L{Chat}).
    @ivar ready: fires when the server runs commands (after the demo users
        exist, with C{demo}); commands that arrive earlier wait for it.
    @ivar ports: the listening ports, once started.
    """

    log = make_logger()

    def __init__(
        self,
        reactor: Any,
        store: Any,
        endpoints: Sequence[str],
        settings: Settings | None = None,
        *,
        hasher: Argon2Hasher | None = None,
        demo: bool = False,
        web: Sequence[str] = (),
        metrics: str | None = None,
    ) -> None:
        """
        @param endpoints: where the chat protocol listens.
        @param settings: how the server behaves (L{Settings} defaults if
            not given; the web client and metrics are made when C{web} and
            C{metrics} are given).
        @param hasher: hashes passwords; L{Argon2Hasher} defaults if not
            given.
        @param demo: create the course's demo users at start.
        @param web: endpoints serving the web client (L{chat.web}), whose
            WebSockets reach the same factory as C{endpoints}.
        @param metrics: the endpoint serving Prometheus metrics
            (L{chat.metrics}); None collects none.
        """
        settings = attrs.evolve(
            settings or Settings(),
            web_client=bool(web),
            metrics=metrics is not None,
        )
        self.reactor = reactor
        self.store = store
        self.endpoints = list(endpoints)
        self.web_endpoints = list(web)
        self.metrics_endpoint = metrics
        self.hasher = hasher or Argon2Hasher(reactor)
        self.demo = demo
        self.chat = build_chat(reactor, store, settings, self.hasher)
        self.chat.factory.hold()
        self.ports: list[IListeningPort] = []
        self.web_ports: list[IListeningPort] = []
        self.metrics_port: IListeningPort | None = None
        self.ready: Deferred[None] = Deferred()
        #: Called when the service cannot start (a port in use), before the
        #: process exits: twistd's pid file is removed this way.
        self.failed_start_observers: list[Callable[[], None]] = []

    @property
    def factory(self) -> ChatFactory:
        return self.chat.factory

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint now, so that a port in use stops twistd
        with a clear message instead of a server listening nowhere.
        """
        super().privilegedStartService()
        self._ensure_open_files()
        for description in self.endpoints:
            factory = listening_factory(self.factory, self.chat.proxies, description)
            port = self._listen(description, factory)
            self.ports.append(port)
            self.log.info(
                "Chat server listening on {address} ({description})",
                address=port.getHost(),
                description=description,
            )
        for description in self.web_endpoints:
            assert self.chat.site is not None
            port = self._listen(description, self.chat.site)
            self.web_ports.append(port)
            self.log.info(
                "Web client on {address} ({description}): open {url}",
                address=port.getHost(),
                description=description,
                url=page_url(description, port.getHost()),
            )
        if self.metrics_endpoint is not None:
            assert self.chat.metrics is not None
            description = self.metrics_endpoint
            port = self._listen(
                description, metrics_site(self.chat.metrics, self.reactor)
            )
            self.metrics_port = port
            self.log.info(
                "Prometheus metrics on {address} ({description}): scrape {url}",
                address=port.getHost(),
                description=description,
                url=page_url(description, port.getHost()) + "metrics",
            )

    def _listen(self, description: str, factory: Any) -> IListeningPort:
        outcome: list[Any] = []
        serverFromString(self.reactor, description).listen(factory).addBoth(
            outcome.append
        )
        if outcome and isinstance(outcome[0], Failure):
            self._cannot_start(
                f"chat: cannot listen on {description}: {outcome[0].value}"
            )
        if not outcome:
            self._cannot_start(f"chat: {description} did not listen at once")
        port: IListeningPort = outcome[0]
        return port

    def _cannot_start(self, message: str) -> NoReturn:
        self._stop_listening()
        for observer in self.failed_start_observers:
            observer()
        raise SystemExit(message)

    def _ensure_open_files(self) -> None:
        """
        Raise the open-file limit to fit max-connections; if the system does
        not allow that many, accept fewer connections instead of failing to
        accept (EMFILE) under load.
        """
        connections = self.factory.connections
        available = raise_open_file_limit(connections.max_total + SPARE_FILES)
        if available - SPARE_FILES < connections.max_total:
            fitting = max(1, available - SPARE_FILES)
            self.log.warn(
                "The open-file limit is {available}: accepting at most {fitting} "
                "connections instead of {wanted} (raise 'ulimit -n')",
                available=available,
                fitting=fitting,
                wanted=connections.max_total,
            )
            connections.max_total = fitting

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        chat = self.chat
        self.store.start()
        self.hasher.start()
        chat.sessions.start()
        if chat.watcher is not None:
            chat.watcher.start()
        if chat.cluster is not None:
            self.log.info(
                "Node {node} of a cluster (heartbeat every {heartbeat}s)",
                node=chat.cluster.node_id,
                heartbeat=chat.cluster.heartbeat,
            )
            chat.cluster.start()
        if chat.settings.registration_open:
            self.log.info("Registration is open: anyone may create an account")
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
            tune_garbage_collector()
            if chat.purger is not None:
                chat.purger.start()
            chat.factory.open()
            if chat.federation is not None:
                self.log.info(
                    "This server is realm {realm}", realm=chat.federation.realm_id
                )
                chat.federation.start()
            if chat.outbox_watcher is not None:
                chat.outbox_watcher.start()
            self.ready.callback(None)

        def failed(f: Failure) -> None:
            self.log.failure("Could not start the chat server", f)
            self.reactor.stop()

        d.addCallbacks(started, failed)

    def _stop_listening(self) -> Deferred[Any]:
        ports, self.ports = self.ports + self.web_ports, []
        self.web_ports = []
        if self.metrics_port is not None:
            ports.append(self.metrics_port)
            self.metrics_port = None
        return DeferredList([maybeDeferred(port.stopListening) for port in ports])

    def stopService(self) -> Deferred[None]:
        super().stopService()
        chat = self.chat
        if chat.purger is not None:
            chat.purger.stop()
        if chat.outbox_watcher is not None:
            chat.outbox_watcher.stop()
        d = self._stop_listening()
        federation = chat.federation
        if federation is not None:
            d.addBoth(lambda _: federation.stop())
        cluster = chat.cluster
        if cluster is not None:
            d.addBoth(lambda _: cluster.stop())
        d.addBoth(lambda _: chat.sessions.stop())
        watcher = chat.watcher
        if watcher is not None:
            d.addBoth(lambda _: watcher.stop())
        d.addBoth(lambda _: self.store.close())
        d.addBoth(lambda _: self.hasher.stop())
        return d
