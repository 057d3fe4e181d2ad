"""
The composition root: L{build_chat} makes every part of a chat server from
a store, a clock and one frozen L{Settings}, each part given what it needs
when it is made. L{chat.service.ChatService} (twistd) and the tests
(C{tests.helpers.Server}) both build their server here, so there is one
way the parts fit together.

Nothing here listens, starts a timer or touches the store: that is the
service's job, in order (L{chat.service.ChatService.startService}).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
from twisted.cred.portal import Portal
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from chat import commands
from chat.checkers import NewAccountChecker, SessionChecker, StoreChecker
from chat.cluster import DEFAULT_HEARTBEAT, Cluster
from chat.federation import Federation, FederationSettings
from chat.interfaces import IClusterStore, IFanout, IPasswordHasher
from chat.limits import Limits, RateLimiter
from chat.lines import ChatFactory
from chat.metrics import Metrics, OutboxWatcher
from chat.proxy import TrustedProxies
from chat.push import LocalFanout, Presence
from chat.realm import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_RECIPIENTS, ChatRealm
from chat.registration import Registrar
from chat.retention import MessagePurger
from chat.sessions import ChangeWatcher, SessionManager
from chat.store.interfaces import IExternalChanges
from chat.web import OriginPolicy, WebSettings, make_site
from chat.web.hosts import HostPolicy
from chat.web.site import ChatSite

#: Default of C{--registration-rate}: 5 attempts per address, then one more
#: every 12 minutes (5 per hour).
DEFAULT_REGISTRATION_RATE = (5, 3600.0)


@attrs.frozen
class Settings:
    """
    How the server behaves: every option of C{twistd chat} but the
    endpoints it listens on, the store and the password hashing.

    @ivar limits: the limits against abuse (L{Limits}).
    @ivar max_line: the longest request line; None for the shortest that
        carries a file of C{max_file_size} bytes (L{line_limit}).
    @ivar max_file_size: the largest file a message carries, in bytes.
    @ivar max_recipients: the most recipients of one message.
    @ivar push_window: the most pushed messages a subscriber may leave
        unacknowledged.
    @ivar session_idle: seconds a session lasts unused.
    @ivar session_max_age: seconds a session lasts at most.
    @ivar registration_open: whether anyone may create an account.
    @ivar registration_rate: C{(count, seconds)}: each client address may
        try C{count} registrations at once, then C{count} more per
        C{seconds}.
    @ivar retention: seconds after which messages are deleted; None keeps
        them forever.
    @ivar federation: the links to other realms; None for none.
    @ivar heartbeat: with a shared store, seconds between this node's
        heartbeats; a node silent for three of them is taken for dead.
    @ivar web_client: whether to make the web client's site.
    @ivar web_origins: origins besides the page's own whose pages may open
        a WebSocket (C{https://chat.example.org}).
    @ivar web_hosts: host names the web client is served under besides IP
        addresses, localhost, this machine's name and the hosts of
        C{web_origins} (L{chat.web.hosts}).
    @ivar metrics: whether to collect Prometheus metrics (L{chat.metrics}).
    @ivar trusted_proxies: addresses and networks of proxies whose word
        about a client's address is believed: a PROXY header on C{--listen},
        C{X-Forwarded-For} on C{--web} (L{chat.proxy}).
    """

    limits: Limits = attrs.field(factory=Limits)
    max_line: int | None = None
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    push_window: int = 100
    session_idle: float = 86400.0
    session_max_age: float = 30 * 86400.0
    registration_open: bool = False
    registration_rate: tuple[int, float] = DEFAULT_REGISTRATION_RATE
    retention: float | None = None
    federation: FederationSettings | None = None
    heartbeat: float = DEFAULT_HEARTBEAT
    web_client: bool = False
    web_origins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    web_hosts: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    metrics: bool = False
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    @property
    def line_limit(self) -> int:
        """
        The longest request line the connections accept.
        """
        if self.max_line is not None:
            return self.max_line
        return commands.max_line_for_file(self.max_file_size)


@attrs.frozen
class Chat:
    """
    The parts of one chat server, made and fitted together by
    L{build_chat}.

    @ivar watcher: ends sessions when chat-admin changes a SQLite file
        (a store with L{IExternalChanges}); None otherwise.
    @ivar cluster: this node's part of a cluster (a store shared by several
        nodes: L{IClusterStore}); None otherwise.
    @ivar federation: the links to other realms, if configured.
    @ivar purger: deletes old messages, with a retention.
    @ivar site: the web client's site, if wanted.
    @ivar metrics: the Prometheus metrics, if wanted.
    @ivar outbox_watcher: reads the realms' outbox sizes into the metrics,
        with metrics and federation.
    @ivar proxies: the proxies trusted to say who their clients are.
    """

    settings: Settings
    store: Any
    hasher: IPasswordHasher
    sessions: SessionManager
    realm: ChatRealm
    portal: Portal
    registrar: Registrar
    factory: ChatFactory
    watcher: ChangeWatcher | None = None
    cluster: Cluster | None = None
    federation: Federation | None = None
    purger: MessagePurger | None = None
    site: ChatSite | None = None
    metrics: Metrics | None = None
    outbox_watcher: OutboxWatcher | None = None
    proxies: TrustedProxies = attrs.field(factory=TrustedProxies)


def build_chat(
    reactor: IReactorTime,
    store: Any,
    settings: Settings,
    hasher: IPasswordHasher,
    *,
    connect: Callable[[str], IStreamClientEndpoint] | None = None,
    jitter: Callable[[], float] | None = None,
    new_uid: Callable[[], str] | None = None,
) -> Chat:
    """
    Make a chat server's parts on C{store}, every timer on C{reactor}.

    With a store that several nodes share (L{IClusterStore}: PostgreSQL),
    the realm's fan-out and presence and the federation's link leases come
    from a L{Cluster}; otherwise they are this process's own.

    @param hasher: hashes and checks passwords (logins, registrations).
    @param connect: makes the client endpoint of a realm link from its
        endpoint description; C{clientFromString} on C{reactor} by default.
    @param jitter: the federation's randomness for its backoff (tests make
        it 0).
    @param new_uid: the federation's message ids (tests make them
        predictable).
    """
    sessions = SessionManager(
        store, reactor, settings.session_idle, settings.session_max_age
    )
    watcher = None
    if IExternalChanges.providedBy(store):
        watcher = ChangeWatcher(store, sessions, reactor)

    cluster = None
    fanout: IFanout = LocalFanout()
    presence = Presence()
    if IClusterStore.providedBy(store):
        cluster = Cluster(store, reactor, heartbeat=settings.heartbeat)
        cluster.serve_sessions(sessions)
        fanout = cluster.fanout
        presence = cluster.presence

    federation = None
    if settings.federation is not None:
        federation = Federation(
            settings.federation,
            store,
            reactor,
            fanout,
            connect=connect or partial(clientFromString, reactor),
            leases=None if cluster is None else cluster.leases,
            **_given(jitter=jitter, new_uid=new_uid),
        )
        if cluster is not None:
            cluster.serve_federation(federation)

    realm = ChatRealm(
        store,
        reactor,
        sessions,
        max_file_size=settings.max_file_size,
        max_recipients=settings.max_recipients,
        fanout=fanout,
        push_window=settings.push_window,
        presence=presence,
        federation=federation,
    )
    portal = Portal(
        realm,
        [
            StoreChecker(store, hasher),
            SessionChecker(sessions),
            NewAccountChecker(store),
        ],
    )
    count, seconds = settings.registration_rate
    registrar = Registrar(
        store,
        hasher,
        RateLimiter(reactor, rate=count / seconds, burst=count),
        open=settings.registration_open,
    )
    metrics = Metrics() if settings.metrics else None
    factory = ChatFactory(
        portal,
        settings.line_limit,
        registrar,
        limits=settings.limits,
        clock=reactor,
        sessions=sessions,
        metrics=metrics,
        federation=federation,
    )
    outbox_watcher = None
    if metrics is not None:
        outbox_watcher = collect_metrics(metrics, factory, store, fanout, federation)

    proxies = TrustedProxies.parse(settings.trusted_proxies)
    site = None
    if settings.web_client:
        origins = OriginPolicy.from_strings(settings.web_origins)
        site = make_site(
            factory,
            WebSettings(settings.max_file_size, settings.registration_open),
            origins,
            reactor=reactor,
            hosts=HostPolicy.build(
                origins.allowed, settings.web_hosts, machine=socket.gethostname()
            ),
            limits=settings.limits,
            proxies=proxies,
        )
    purger = None
    if settings.retention is not None:
        purger = MessagePurger(store, reactor, settings.retention)

    return Chat(
        settings=settings,
        store=store,
        hasher=hasher,
        sessions=sessions,
        realm=realm,
        portal=portal,
        registrar=registrar,
        factory=factory,
        watcher=watcher,
        cluster=cluster,
        federation=federation,
        purger=purger,
        site=site,
        metrics=metrics,
        outbox_watcher=outbox_watcher,
        proxies=proxies,
    )


def collect_metrics(
    metrics: Metrics,
    factory: ChatFactory,
    store: Any,
    fanout: Any,
    federation: Federation | None,
) -> OutboxWatcher | None:
    """
    Hook C{metrics} to the parts that report to it: the connection count,
    the store's commits, the notification lag of a fan-out fed by other
    nodes; and, with C{federation}, the watcher of the realms' outboxes
    (returned; the service starts it).
    """
    connections = factory.connections
    metrics.watch_connections(lambda: connections.total)
    commit_observers = getattr(store, "commit_observers", None)
    if commit_observers is not None:
        commit_observers.append(metrics.committed)
    lag_observers = getattr(fanout, "lag_observers", None)
    if lag_observers is not None:
        lag_observers.append(metrics.notify_lag)
    if federation is None:
        return None
    return OutboxWatcher(metrics, store, factory.clock, federation.realm_id)


def _given(**values: Any) -> dict[str, Any]:
    """
    The keyword arguments of C{values} that are not None, so that a default
    applies to the others.
    """
    return {name: value for name, value in values.items() if value is not None}
