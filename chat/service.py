"""
Wiring: one L{ChatService} owns the store, the password hasher, the
sessions and the listening ports, and starts and stops them in order.

With a store that several nodes share (L{chat.interfaces.IClusterStore}:
PostgreSQL), the realm's fan-out and presence and the federation's link
leases come from a L{chat.cluster.Cluster}; otherwise they are this
process's own.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NoReturn

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
from twisted.web.server import Site

from chat import commands
from chat.checkers import Argon2Hasher, SessionChecker, StoreChecker
from chat.cluster import DEFAULT_HEARTBEAT, Cluster
from chat.errors import NoSuchUser, UserExists
from chat.federation import Federation, FederationSettings
from chat.interfaces import IClusterStore, IPasswordHasher
from chat.limits import Limits, RateLimiter, raise_open_file_limit
from chat.lines import ChatFactory
from chat.logs import make_logger
from chat.metrics import Metrics, OutboxWatcher, metrics_site
from chat.model import User
from chat.realm import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_RECIPIENTS, ChatRealm
from chat.registration import Registrar
from chat.retention import MessagePurger
from chat.sessions import ChangeWatcher, SessionManager
from chat.store.interfaces import IExternalChanges, IUserStore
from chat.web import OriginPolicy, WebSettings, make_site
from chat.web.hosts import HostPolicy

#: Default of C{--registration-rate}: 5 attempts per address, then one more
#: every 12 minutes (5 per hour).
DEFAULT_REGISTRATION_RATE = (5, 3600.0)

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
        max_line: int | None = None,
        session_idle: float = 86400.0,
        session_max_age: float = 30 * 86400.0,
        push_window: int = 100,
        registration_open: bool = False,
        registration_rate: tuple[int, float] = DEFAULT_REGISTRATION_RATE,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        max_recipients: int = DEFAULT_MAX_RECIPIENTS,
        retention: float | None = None,
        federation: FederationSettings | None = None,
        limits: Limits | None = None,
        web: Sequence[str] = (),
        web_origins: Sequence[str] = (),
        web_hosts: Sequence[str] = (),
        heartbeat: float = DEFAULT_HEARTBEAT,
        metrics: str | None = None,
    ) -> None:
        """
        @param max_line: the longest request line; by default the shortest
            that carries a file of C{max_file_size} bytes.
        @param registration_rate: C{(count, seconds)}: each client address
            may try C{count} registrations at once, then C{count} more per
            C{seconds}.
        @param retention: seconds after which messages are deleted; None
            keeps them forever.
        @param web: endpoints serving the web client (L{chat.web}), whose
            WebSockets reach the same factory as C{endpoints}.
        @param web_origins: origins besides the page's own whose pages may
            open a WebSocket (C{https://chat.example.org}).
        @param web_hosts: host names the web client is served under besides
            IP addresses, localhost, this machine's name and the hosts of
            C{web_origins} (L{chat.web.hosts}).
        @param heartbeat: with a shared store, seconds between this node's
            heartbeats; a node silent for three of them is taken for dead.
        @param metrics: the endpoint serving Prometheus metrics
            (L{chat.metrics}); None collects none.
        """
        self.reactor = reactor
        self.store = store
        self.endpoints = endpoints
        self.hasher = hasher or Argon2Hasher(reactor)
        self.demo = demo
        self.registration_open = registration_open
        self.sessions = SessionManager(store, reactor, session_idle, session_max_age)
        # What chat-admin changes in a SQLite file (new passwords, deleted
        # users) ends the sessions here at once; PostgreSQL tells the
        # cluster instead.
        self.watcher: ChangeWatcher | None = None
        if IExternalChanges.providedBy(store):
            self.watcher = ChangeWatcher(store, self.sessions, reactor)
        self.cluster: Cluster | None = None
        # On a store shared by several nodes, push and presence go through
        # the cluster; otherwise the realm keeps them in this process.
        shared: dict[str, Any] = {}
        if IClusterStore.providedBy(store):
            self.cluster = Cluster(store, reactor, heartbeat=heartbeat)
            self.cluster.serve_sessions(self.sessions)
            shared = {
                "fanout": self.cluster.fanout,
                "presence": self.cluster.presence,
            }
        self.realm = ChatRealm(
            store,
            reactor,
            self.sessions,
            max_file_size=max_file_size,
            max_recipients=max_recipients,
            push_window=push_window,
            **shared,
        )
        self.portal = Portal(
            self.realm,
            [StoreChecker(store, self.hasher), SessionChecker(self.sessions)],
        )
        count, seconds = registration_rate
        self.registrar = Registrar(
            store,
            self.hasher,
            RateLimiter(reactor, rate=count / seconds, burst=count),
            open=registration_open,
        )
        if max_line is None:
            max_line = commands.max_line_for_file(max_file_size)
        self.factory = ChatFactory(
            self.portal,
            max_line,
            self.registrar,
            limits=limits,
            clock=reactor,
            sessions=self.sessions,
        )
        self.purger = (
            None if retention is None else MessagePurger(store, reactor, retention)
        )
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
            if self.cluster is not None:
                self.cluster.serve_federation(self.federation)
        self.web_endpoints = list(web)
        self.site: Site | None = None
        if self.web_endpoints:
            origins = OriginPolicy.from_strings(web_origins)
            self.site = make_site(
                self.factory,
                WebSettings(max_file_size, registration_open),
                origins,
                reactor=reactor,
                hosts=HostPolicy.build(
                    origins.allowed, web_hosts, machine=socket.gethostname()
                ),
                limits=self.factory.limits,
            )
        self.metrics_endpoint = metrics
        self.metrics: Metrics | None = None
        self.outbox_watcher: OutboxWatcher | None = None
        if metrics is not None:
            self._collect_metrics(Metrics())
        self.ports: list[IListeningPort] = []
        self.web_ports: list[IListeningPort] = []
        self.metrics_port: IListeningPort | None = None
        self.ready: Deferred[None] = Deferred()
        #: Called when the service cannot start (a port in use), before the
        #: process exits: twistd's pid file is removed this way.
        self.failed_start_observers: list[Callable[[], None]] = []

    def _collect_metrics(self, metrics: Metrics) -> None:
        """
        Hook C{metrics} to the parts that report to it: the factory's
        commands and connections, the store's commits, the fan-out's
        notification lag (a fan-out fed by another node), the outbox.
        """
        self.metrics = metrics
        self.factory.metrics = metrics
        connections = self.factory.connections
        metrics.watch_connections(lambda: connections.total)
        commit_observers = getattr(self.store, "commit_observers", None)
        if commit_observers is not None:
            commit_observers.append(metrics.committed)
        lag_observers = getattr(self.realm.fanout, "lag_observers", None)
        if lag_observers is not None:
            lag_observers.append(metrics.notify_lag)
        if self.federation is not None:
            self.outbox_watcher = OutboxWatcher(
                metrics, self.store, self.reactor, self.federation.realm_id
            )

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint now, so that a port in use stops twistd
        with a clear message instead of a server listening nowhere.
        """
        super().privilegedStartService()
        self._ensure_open_files()
        for description in self.endpoints:
            port = self._listen(description, self.factory)
            self.ports.append(port)
            self.log.info(
                "Chat server listening on {address} ({description})",
                address=port.getHost(),
                description=description,
            )
        for description in self.web_endpoints:
            assert self.site is not None
            port = self._listen(description, self.site)
            self.web_ports.append(port)
            self.log.info(
                "Web client on {address} ({description}): open {url}",
                address=port.getHost(),
                description=description,
                url=page_url(description, port.getHost()),
            )
        if self.metrics_endpoint is not None:
            assert self.metrics is not None
            description = self.metrics_endpoint
            port = self._listen(description, metrics_site(self.metrics, self.reactor))
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
        self.store.start()
        self.hasher.start()
        self.sessions.start()
        if self.watcher is not None:
            self.watcher.start()
        if self.cluster is not None:
            self.log.info(
                "Node {node} of a cluster (heartbeat every {heartbeat}s)",
                node=self.cluster.node_id,
                heartbeat=self.cluster.heartbeat,
            )
            self.cluster.start()
        if self.registration_open:
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
            if self.purger is not None:
                self.purger.start()
            self.factory.open()
            if self.federation is not None:
                self.log.info(
                    "This server is realm {realm}", realm=self.federation.realm_id
                )
                self.federation.start()
            if self.outbox_watcher is not None:
                self.outbox_watcher.start()
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
        if self.purger is not None:
            self.purger.stop()
        if self.outbox_watcher is not None:
            self.outbox_watcher.stop()
        d = self._stop_listening()
        federation = self.federation
        if federation is not None:
            d.addBoth(lambda _: federation.stop())
        cluster = self.cluster
        if cluster is not None:
            d.addBoth(lambda _: cluster.stop())
        d.addBoth(lambda _: self.sessions.stop())
        watcher = self.watcher
        if watcher is not None:
            d.addBoth(lambda _: watcher.stop())
        d.addBoth(lambda _: self.store.close())
        d.addBoth(lambda _: self.hasher.stop())
        return d
