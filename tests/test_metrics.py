"""
Prometheus metrics (chat.metrics, C{--metrics}): the metrics themselves,
the hooks that feed them, the option, and scrapes of the real endpoint,
in this process and from a C{twistd chat} subprocess.
"""

from __future__ import annotations

import re
import signal
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.web.client import Agent, readBody

from chat import commands, tap
from chat.build import collect_metrics
from chat.lines import LineConnection as ChatProtocol
from chat.links import RealmLink
from chat.metrics import INVALID, Metrics, OutboxWatcher
from chat.service import ChatService
from chat.store.memory import MemoryStore
from tests.clients import AsyncClient
from tests.helpers import Server, result_of
from tests.test_end_to_end import chat_maker
from tests.twistd_helpers import LineClient, TwistdChat


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    sample: float | None = metrics.registry.get_sample_value(name, labels)
    return sample


# The metrics.


def test_every_command_is_exported_from_the_start() -> None:
    """Each known command word, and "invalid", is a series at 0 before any
    command runs, so that rates work from the first scrape."""
    metrics = Metrics()
    for verb in [*commands.VERBS, INVALID]:
        assert value(metrics, "chat_commands_total", command=verb) == 0.0
    assert value(metrics, "chat_commands_total", command="send") == 0.0
    assert value(metrics, "chat_commands_total", command="realm-msg") == 0.0


def test_commands_by_word() -> None:
    """Known words count under their name; anything else (a word no client
    should be able to add as a label) counts as invalid."""
    metrics = Metrics()
    metrics.command("send")
    metrics.command("send")
    metrics.command("inbox")
    metrics.command(None)
    metrics.command("DROP TABLE")
    metrics.command("")
    assert value(metrics, "chat_commands_total", command="send") == 2.0
    assert value(metrics, "chat_commands_total", command="inbox") == 1.0
    assert value(metrics, "chat_commands_total", command=INVALID) == 3.0
    assert value(metrics, "chat_commands_total", command="DROP TABLE") is None
    samples = [
        sample
        for family in metrics.registry.collect()
        if family.name == "chat_commands"
        for sample in family.samples
        if sample.name == "chat_commands_total"
    ]
    assert len(samples) == len(commands.VERBS) + 1


def test_commits() -> None:
    """A commit adds its batch size and its duration to their histograms."""
    metrics = Metrics()
    metrics.committed(1, 0.0004)
    metrics.committed(37, 0.003)
    size = "chat_commit_batch_size"
    seconds = "chat_commit_seconds"
    assert value(metrics, f"{size}_count") == 2.0
    assert value(metrics, f"{size}_sum") == 38.0
    assert value(metrics, f"{size}_bucket", le="1.0") == 1.0
    assert value(metrics, f"{size}_bucket", le="20.0") == 1.0
    assert value(metrics, f"{size}_bucket", le="50.0") == 2.0
    assert value(metrics, f"{size}_bucket", le="1000.0") == 2.0
    assert value(metrics, f"{seconds}_count") == 2.0
    assert value(metrics, f"{seconds}_sum") == pytest.approx(0.0034)
    assert value(metrics, f"{seconds}_bucket", le="0.0005") == 1.0
    assert value(metrics, f"{seconds}_bucket", le="0.0025") == 1.0
    assert value(metrics, f"{seconds}_bucket", le="0.005") == 2.0


def test_notify_lag() -> None:
    """The notification lag is a histogram, exported even while empty."""
    metrics = Metrics()
    assert value(metrics, "chat_notify_lag_seconds_count") == 0.0
    metrics.notify_lag(0.02)
    assert value(metrics, "chat_notify_lag_seconds_count") == 1.0
    assert value(metrics, "chat_notify_lag_seconds_bucket", le="0.01") == 0.0
    assert value(metrics, "chat_notify_lag_seconds_bucket", le="0.025") == 1.0


def test_connections_read_when_scraped() -> None:
    """The connections gauge reads the count it is given at each scrape."""
    metrics = Metrics()
    count = [3]
    metrics.watch_connections(lambda: count[0])
    assert value(metrics, "chat_connections") == 3.0
    count[0] = 1
    assert value(metrics, "chat_connections") == 1.0


def test_outbox_drops_realms_no_longer_reported() -> None:
    """Each realm's outbox is a series; a realm left out disappears."""
    metrics = Metrics()
    metrics.outbox({"realm-b": 3, "realm-c": 0})
    assert value(metrics, "chat_outbox_messages", realm="realm-b") == 3.0
    assert value(metrics, "chat_outbox_messages", realm="realm-c") == 0.0
    metrics.outbox({"realm-c": 5})
    assert value(metrics, "chat_outbox_messages", realm="realm-b") is None
    assert value(metrics, "chat_outbox_messages", realm="realm-c") == 5.0


def test_registries_are_separate() -> None:
    """Two services in one process have a registry each (the client
    library's global one would refuse the second set of names)."""
    first, second = Metrics(), Metrics()
    first.command("ping")
    assert value(first, "chat_commands_total", command="ping") == 1.0
    assert value(second, "chat_commands_total", command="ping") == 0.0


# The hooks.


def test_factory_counts_the_commands_it_runs() -> None:
    """Through the protocol: each line run counts once, under its command
    word or as invalid; a server without metrics counts nothing."""
    server = Server(metrics=True)
    metrics = server.factory.metrics
    assert metrics is not None
    client = server.connect()
    token = client.login()
    assert client.request(f"send {token} henderson hi")["status"] == "OK"
    assert client.request(f"send {token} henderson again")["status"] == "OK"
    assert client.request("send")["code"] == "missing_argument"
    assert client.request("frobnicate now")["code"] == "unknown_command"
    assert client.request(f"inbox {token}")["status"] == "OK"
    assert value(metrics, "chat_commands_total", command="auth") == 1.0
    assert value(metrics, "chat_commands_total", command="send") == 2.0
    assert value(metrics, "chat_commands_total", command="inbox") == 1.0
    assert value(metrics, "chat_commands_total", command=INVALID) == 2.0
    assert value(metrics, "chat_commands_total", command="frobnicate") is None
    assert Server().factory.metrics is None


def test_service_hooks() -> None:
    """With metrics, the service hooks the factory, the connection count,
    the store's commit observers and a fan-out's lag observers."""
    store = MemoryStore()
    store.commit_observers = []  # type: ignore[attr-defined]
    service = ChatService(Clock(), store, [], metrics="tcp:0:interface=127.0.0.1")
    metrics = service.chat.metrics
    assert metrics is not None
    assert service.factory.metrics is metrics
    assert store.commit_observers == [metrics.committed]  # type: ignore[attr-defined]
    service.factory.connections.admit("10.0.0.1")
    service.factory.connections.admit("10.0.0.2")
    assert value(metrics, "chat_connections") == 2.0

    # A fan-out fed by other nodes (PostgreSQL's) reports its lag.
    class LaggingFanout:
        def __init__(self) -> None:
            self.lag_observers: list[Any] = []

    fanout = LaggingFanout()
    metrics = Metrics()
    factory = Server().factory
    watcher = collect_metrics(metrics, factory, MemoryStore(), fanout, None)
    assert fanout.lag_observers == [metrics.notify_lag]
    assert watcher is None  # no realms without federation


def test_service_without_metrics() -> None:
    """Without --metrics nothing is hooked and nothing listens."""
    store = MemoryStore()
    store.commit_observers = []  # type: ignore[attr-defined]
    service = ChatService(Clock(), store, [])
    assert service.chat.metrics is None and service.factory.metrics is None
    assert store.commit_observers == []  # type: ignore[attr-defined]
    assert service.metrics_port is None


def test_protocol_gains_no_attribute() -> None:
    """Metrics live on the factory: a connection has no attribute for them."""
    assert not any("metric" in name for name in ChatProtocol.__slots__)
    connection = Server().connect().protocol
    assert not any("metric" in name for name in vars(connection))


# The outbox.


def linked_store() -> MemoryStore:
    store: MemoryStore = Server().store
    for realm_id in ("realm-b", "realm-c", "realm-a"):
        link = RealmLink(realm_id, f"tcp:{realm_id}:8889", "secret", 0)
        result_of(store.add_realm_link(link))
    return store


def queue(store: MemoryStore, realm_id: str, count: int) -> None:
    for i in range(count):
        batch = [(realm_id, ("henderson",), f"{realm_id}-{i}")]
        result_of(store.queue_outbound("messi", "hi", 1.0, batch, 100))


def test_outbox_watcher() -> None:
    """The outbox of every linked realm but this one is read at start and
    every interval, on the service's clock."""
    store = linked_store()
    queue(store, "realm-b", 2)
    metrics = Metrics()
    clock = Clock()
    watcher = OutboxWatcher(metrics, store, clock, "realm-a", interval=5.0)
    watcher.start()
    assert value(metrics, "chat_outbox_messages", realm="realm-b") == 2.0
    assert value(metrics, "chat_outbox_messages", realm="realm-c") == 0.0
    assert value(metrics, "chat_outbox_messages", realm="realm-a") is None
    queue(store, "realm-c", 3)
    clock.advance(4.9)
    assert value(metrics, "chat_outbox_messages", realm="realm-c") == 0.0
    clock.advance(0.1)
    assert value(metrics, "chat_outbox_messages", realm="realm-c") == 3.0
    result_of(store.remove_realm_link("realm-b", 2.0))
    clock.advance(5.0)
    assert value(metrics, "chat_outbox_messages", realm="realm-b") is None
    watcher.stop()
    queue(store, "realm-c", 1)
    clock.advance(10.0)
    assert value(metrics, "chat_outbox_messages", realm="realm-c") == 3.0
    assert clock.getDelayedCalls() == []


def test_outbox_watcher_survives_the_store() -> None:
    """A store that fails keeps the last sizes, is logged once however
    long it fails, and the sizes are read again once it answers."""
    store = linked_store()
    queue(store, "realm-b", 2)
    metrics = Metrics()
    clock = Clock()
    watcher = OutboxWatcher(metrics, store, clock, "realm-a", interval=5.0)
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        watcher.start()
        store.broken = True
        clock.advance(5.0)
        clock.advance(5.0)
        assert value(metrics, "chat_outbox_messages", realm="realm-b") == 2.0
        warnings = [e for e in events if "outbox sizes" in e.get("log_format", "")]
        assert len(warnings) == 1
        assert "database or disk is full" in str(warnings[0]["why"])
        store.broken = False
        queue(store, "realm-b", 1)
        clock.advance(5.0)
        assert value(metrics, "chat_outbox_messages", realm="realm-b") == 3.0
    finally:
        globalLogPublisher.removeObserver(events)
        watcher.stop()


# The option.


def test_metrics_option() -> None:
    """--metrics is off by default, takes a server endpoint, and refuses
    one that is not."""
    options = tap.Options()
    options.parseOptions([])
    assert options["metrics"] is None
    options = tap.Options()
    options.parseOptions(["--metrics", "tcp:9100:interface=127.0.0.1"])
    assert options["metrics"] == "tcp:9100:interface=127.0.0.1"
    for bad in ("9100:127.0.0.1", "tcp:abc", "tcp", "tcp:9100:host=x", "nope:1"):
        with pytest.raises(usage.UsageError, match="--metrics"):
            tap.Options().parseOptions(["--metrics", bad])


# Scraping the endpoint.


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of a scrape, by name and sorted labels.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """
    The --store of each kind (PostgreSQL: the tests' throwaway server).
    """
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'chat.sqlite'}"
    url: str = request.getfixturevalue("postgres_db")
    return url


@pytest_twisted.ensureDeferred
async def test_scrape_after_commands(store: str) -> None:
    """The plugin's service with --metrics serves the registry over HTTP:
    the commands clients ran, the connections open, the store's commits
    and the outbox of a linked realm, with either store; it stops
    listening with the service."""
    maker = chat_maker()
    options = maker.options()
    options.parseOptions(
        [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--metrics",
            "tcp:0:interface=127.0.0.1",
            "--store",
            store,
            "--demo",
            "--realm-id",
            "realm-a",
        ]
    )
    service = maker.makeService(options)
    service.startService()
    try:
        await service.ready
        # A linked realm that is down: its messages stay in the outbox.
        await service.store.add_realm_link(
            RealmLink("realm-b", "tcp:127.0.0.1:1", "secret", 0)
        )
        port = service.ports[0].getHost().port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        messi = await connectProtocol(endpoint, AsyncClient())
        henderson = await connectProtocol(endpoint, AsyncClient())
        token = (await messi.request("auth messi surabaya"))["tokenid"]
        for text in ("one", "two"):
            reply = await messi.request(f"send {token} henderson {text}")
            assert reply["status"] == "OK", reply
        reply = await messi.request(f"send {token} lineker@realm-b far")
        assert reply["status"] == "OK", reply
        reply = await henderson.request("bogus")
        assert reply["code"] == "unknown_command"
        assert service.chat.outbox_watcher is not None
        await service.chat.outbox_watcher.refresh()

        metrics_port = service.metrics_port.getHost().port
        text = await http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'chat_commands_total{command="send"} 3.0' in text.splitlines()
        scraped = samples(text)
        assert scraped[("chat_commands_total", (("command", "auth"),))] == 1.0
        assert scraped[("chat_commands_total", (("command", "invalid"),))] == 1.0
        assert scraped[("chat_commands_total", (("command", "inbox"),))] == 0.0
        assert scraped[("chat_connections", ())] == 2.0
        # The demo users, the session and three messages were committed.
        commits = scraped[("chat_commit_seconds_count", ())]
        assert commits >= 4
        assert scraped[("chat_commit_batch_size_count", ())] == commits
        assert scraped[("chat_commit_batch_size_sum", ())] >= 4 + 3
        lag = scraped[("chat_notify_lag_seconds_count", ())]
        if store.startswith("sqlite:"):
            assert lag == 0.0  # one node: no notifications from others
        assert scraped[("chat_outbox_messages", (("realm", "realm-b"),))] == 1.0
        assert ("chat_outbox_messages", (("realm", "realm-a"),)) not in scraped

        # quit: the server closes (and counts) the connection before the
        # client sees it closed.
        for client in (messi, henderson):
            assert (await client.request("quit"))["message"] == "bye"
            await client.closed
        text = await http_get(f"http://127.0.0.1:{metrics_port}/")
        assert samples(text)[("chat_connections", ())] == 0.0
    finally:
        await service.stopService()
    assert service.metrics_port is None
    with pytest.raises(error.ConnectionRefusedError):
        await http_get(f"http://127.0.0.1:{metrics_port}/metrics")


async def http_get(url: str) -> str:
    d: Deferred[Any] = Agent(reactor).request(b"GET", url.encode())
    response = await d
    with warnings.catch_warnings():
        # Twisted warns about its own Agent's transport here.
        warnings.simplefilter("ignore", DeprecationWarning)
        body: bytes = await readBody(response)
    assert response.code == 200, body
    content_type = response.headers.getRawHeaders(b"content-type")[0]
    assert content_type.startswith(b"text/plain"), content_type
    return body.decode("utf-8")


_METRICS_PORT = re.compile(
    r"Prometheus metrics on IPv4Address\(type='TCP', host='127.0.0.1', "
    r"port=(\d+)\).*scrape (http://\S+)"
)


@pytest.fixture
def twistd(tmp_path: Path) -> Any:
    server = TwistdChat(tmp_path, "--demo", "--metrics", "tcp:0:interface=127.0.0.1")
    server.log.touch()
    yield server
    server.kill()


@pytest.mark.slow
def test_twistd_serves_metrics(twistd: TwistdChat) -> None:
    """twistd chat --metrics logs where to scrape, and a scrape there shows
    what clients did."""
    port = twistd.start()
    twistd.wait_ready()
    match = _METRICS_PORT.search(twistd.log_text())
    assert match, twistd.log_text()
    url = match.group(2)
    assert url == f"http://127.0.0.1:{match.group(1)}/metrics"
    client = LineClient(port)
    try:
        token = client.login()
        for text in ("one", "two"):
            assert client.request(f"send {token} henderson {text}")["status"] == "OK"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode("utf-8")
    finally:
        client.close()
    lines = text.splitlines()
    assert 'chat_commands_total{command="send"} 2.0' in lines
    assert 'chat_commands_total{command="ping"} 1.0' in lines  # wait_ready's
    assert "chat_connections 1.0" in lines
    scraped = samples(text)
    assert scraped[("chat_commit_seconds_count", ())] >= 3
    assert twistd.stop() == -signal.SIGTERM  # a clean stop, as without
    assert "Traceback" not in twistd.log_text()
