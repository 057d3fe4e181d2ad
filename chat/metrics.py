"""
Prometheus metrics (C{twistd chat --metrics ENDPOINT}).

One L{Metrics} per service owns a registry of its own (never the client
library's global one, so several services in one process do not clash)
and the metric objects. The rest of the server calls its small methods;
nothing here reaches into the server:

 - the factory calls L{Metrics.command} for each command it runs;
 - the store calls L{Metrics.committed} after each commit (through its
   C{commit_observers});
 - a fan-out fed by database notifications calls L{Metrics.notify_lag}
   (through its C{lag_observers});
 - L{Metrics.watch_connections} reads the factory's connection count when
   scraped;
 - L{OutboxWatcher} reads the outbox sizes from the store every few
   seconds, off the scrape, so that a scrape never waits for the store.

L{metrics_site} serves the registry over HTTP with the client library's
Twisted resource.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.twisted import MetricsResource
from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.server import Site

from chat import commands
from chat.logs import make_logger
from chat.store.interfaces import IRealmStore

#: The C{command} label of a line that is not a valid command (an unknown
#: command word, missing or malformed arguments, invalid UTF-8...).
INVALID = "invalid"

#: Operations committed in one transaction (the store's group commit).
COMMIT_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

#: Seconds one commit took, from half a millisecond up.
COMMIT_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

#: Seconds from a commit on one node to its notification on another.
NOTIFY_LAG_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Seconds between two readings of the outbox sizes.
OUTBOX_INTERVAL = 5.0


class Metrics:
    """
    The server's metrics, in a registry of their own.

    @ivar registry: what L{metrics_site} serves.
    """

    def __init__(self, verbs: Iterable[str] = commands.VERBS) -> None:
        """
        @param verbs: the command words counted by name; any other is
            counted as L{INVALID}, so that clients cannot add labels.
        """
        self.registry = CollectorRegistry()
        registry = self.registry
        self.connections = Gauge(
            "chat_connections",
            "Open client connections (TCP, WebSocket, and links from other realms).",
            registry=registry,
        )
        self.commands = Counter(
            "chat_commands",
            "Commands run, by command word; lines that are not a valid "
            'command count as command="invalid".',
            ["command"],
            registry=registry,
        )
        self.commit_batch_size = Histogram(
            "chat_commit_batch_size",
            "Operations committed in one store transaction.",
            buckets=COMMIT_BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "chat_commit_seconds",
            "Seconds one store transaction took, from its first operation "
            "to its commit.",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.notify_lag_seconds = Histogram(
            "chat_notify_lag_seconds",
            "Seconds from a message's commit on another node to its "
            "notification here (empty with a single-node store).",
            buckets=NOTIFY_LAG_BUCKETS,
            registry=registry,
        )
        self.outbox_messages = Gauge(
            "chat_outbox_messages",
            "Messages queued for another realm, not yet acknowledged by it.",
            ["realm"],
            registry=registry,
        )
        # Every label exported from the start (at 0), and one lookup per
        # command instead of the client library's labels() call.
        self._commands = {
            verb: self.commands.labels(verb) for verb in [*verbs, INVALID]
        }
        self._invalid = self._commands[INVALID]
        self._outbox_realms: set[str] = set()

    def watch_connections(self, count: Callable[[], float]) -> None:
        """
        Report C{count()} as the open connections, read when scraped (on
        the scrape's thread: it must only read a number).
        """
        self.connections.set_function(count)

    def command(self, verb: str | None) -> None:
        """
        A command ran: C{verb} is its command word, or None for a line
        that is not a valid command.
        """
        self._commands.get(verb or INVALID, self._invalid).inc()

    def committed(self, batch_size: int, seconds: float) -> None:
        """
        The store committed C{batch_size} operations in one transaction
        that took C{seconds}.
        """
        self.commit_batch_size.observe(batch_size)
        self.commit_seconds.observe(seconds)

    def notify_lag(self, seconds: float) -> None:
        """
        A notification from another node arrived C{seconds} after its
        commit.
        """
        self.notify_lag_seconds.observe(seconds)

    def outbox(self, sizes: Mapping[str, int]) -> None:
        """
        The messages queued now for each other realm; realms left out are
        no longer reported.
        """
        for realm_id in self._outbox_realms - sizes.keys():
            self.outbox_messages.remove(realm_id)
        for realm_id, size in sizes.items():
            self.outbox_messages.labels(realm_id).set(size)
        self._outbox_realms = set(sizes)


@attrs.define(eq=False)
class OutboxWatcher:
    """
    Reads the outbox size of every linked realm from the store every
    C{interval} seconds into L{Metrics.outbox}.

    @ivar own_realm: this server's realm id (never its own outbox).
    """

    metrics: Metrics
    store: IRealmStore
    clock: IReactorTime
    own_realm: str
    interval: float = OUTBOX_INTERVAL
    _loop: LoopingCall | None = attrs.field(default=None, init=False)
    _failing: bool = attrs.field(default=False, init=False)

    log = make_logger()

    def start(self) -> None:
        loop = self._loop = LoopingCall(self.refresh)
        loop.clock = self.clock
        loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("The outbox metrics stopped", f)
        )

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def refresh(self) -> Deferred[None]:
        """
        Read the outbox sizes once.

        @return: fires when they are read (never fails: a store that is
            unavailable is logged once, until it answers again).
        """
        return ensureDeferred(self._refresh()).addErrback(self._failed)

    async def _refresh(self) -> None:
        links = await self.store.list_realm_links()
        realm_ids = [link.realm_id for link in links if link.realm_id != self.own_realm]
        sizes = await gatherResults(
            [self.store.outbox_size(realm_id) for realm_id in realm_ids],
            consumeErrors=True,
        )
        if self._loop is None:
            return  # stopped meanwhile
        self.metrics.outbox(dict(zip(realm_ids, sizes, strict=True)))
        self._failing = False

    def _failed(self, f: Failure) -> None:
        if self._loop is None or self._failing:
            return
        self._failing = True
        if isinstance(f.value, FirstError):
            f = f.value.subFailure
        self.log.warn("Could not read the outbox sizes: {why}", why=f.value)


class MetricsSite(Site):
    """
    A site that writes no access log: scrapes come every few seconds.
    """

    def log(self, request: Request) -> None:
        pass


def metrics_site(metrics: Metrics, reactor: Any = None) -> Site:
    """
    The HTTP site serving C{metrics} in Prometheus's text format, at any
    path (C{/metrics} by convention).

    @param reactor: for the HTTP timeouts; the global one by default. (The
        client library renders the page on the global reactor's threads.)
    """
    site = MetricsSite(MetricsResource(registry=metrics.registry), reactor=reactor)
    site.noisy = False
    return site
