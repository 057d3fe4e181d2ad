"""
The cluster's parts without PostgreSQL: the fan-out fed by notifications,
presence across nodes, heartbeats and leases on fake connections, the
LISTEN reconnection on a fake clock, and subscriptions that hear of
messages out of id order. (With PostgreSQL: test_cluster_end_to_end.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from chat.build import Settings, build_chat
from chat.cluster import (
    Cluster,
    ClusterPresence,
    LinkLeases,
    Membership,
    PostgresFanout,
    new_node_id,
)
from chat.errors import StorageUnavailable
from chat.federation import FederationSettings
from chat.interfaces import IClusterConnection, IClusterStore, INotificationListener
from chat.model import Message
from chat.push import LocalFanout, Subscription
from chat.store.cluster import (
    MAX_PAYLOAD,
    MESSAGES_CHANNEL,
    OUTBOX_CHANNEL,
    PRESENCE_CHANNEL,
    SESSIONS_CHANNEL,
    SyncResult,
    expired_payloads,
    presence_payloads,
)
from chat.store.memory import MemoryStore
from tests.helpers import InlineHasher, demo_users, no_result, result_of


def message(id: int, recipient: str = "henderson", **kw: Any) -> Message:
    fields: dict[str, Any] = {
        "sender": "messi",
        "sender_name": "Lionel Messi",
        "recipient_name": "Jordan Henderson",
        "text": f"m{id}",
        "sent_at": 100.0,
    }
    fields.update(kw)
    return Message(id, recipient=recipient, **fields)


@implementer(IClusterStore)
class FakeStore:
    """
    messages_by_id answered by the test; the cluster's connections fake.
    """

    node_id = "a"
    url = "postgresql://nowhere/chat"

    def __init__(self) -> None:
        self.reads: list[tuple[list[int], Deferred[list[Message]]]] = []
        self.connection = FakeConnection()
        self.listener = FakeNotifications()

    def messages_by_id(self, ids: Any) -> Deferred[list[Message]]:
        d: Deferred[list[Message]] = Deferred()
        self.reads.append((list(ids), d))
        return d

    def cluster_connection(self, reactor: Any) -> FakeConnection:
        return self.connection

    def notification_listener(self, reactor: Any, clock: Any) -> FakeNotifications:
        return self.listener


class Events:
    """
    A mind (IChatClient) that records what it is told.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def message_received(self, message: Message) -> None:
        self.events.append(("message", message.id))

    def presence_changed(self, username: str, full_name: str, online: bool) -> None:
        self.events.append(("presence", (username, online)))

    def unsubscribed(self, reason: str) -> None:
        self.events.append(("unsubscribed", reason))

    def presence(self) -> list[tuple[object, object]]:
        return [value for kind, value in self.events if kind == "presence"]

    def pushed(self) -> list[object]:
        return [value for kind, value in self.events if kind == "message"]


# Payloads.


def test_new_node_ids_differ() -> None:
    """The default node id names the host and process, and is unique."""
    assert new_node_id() != new_node_id()


def test_presence_payloads_fit_and_reset_only_first() -> None:
    """Many users are split under the size limit; reset is on the first."""
    came = {f"user{i:04d}": f"Full Name Number {i}" for i in range(600)}
    payloads = presence_payloads("a", came, ["gone1", "gone2"], True)
    decoded = [json.loads(p) for p in payloads]
    assert len(payloads) > 2
    assert all(len(p.encode()) <= MAX_PAYLOAD for p in payloads)
    assert [d["reset"] for d in decoded] == [True] + [False] * (len(decoded) - 1)
    assert {u for d in decoded for u, _ in d["online"]} == set(came)
    assert [u for d in decoded for u in d["offline"]] == ["gone1", "gone2"]
    assert all(d["node"] == "a" for d in decoded)


def test_presence_payloads_empty_reset_and_no_change() -> None:
    """A reset with nobody is one payload; no change is none."""
    assert [json.loads(p) for p in presence_payloads("a", {}, [], True)] == [
        {"node": "a", "reset": True, "online": [], "offline": []}
    ]
    assert presence_payloads("a", {}, [], False) == []


def test_expired_payloads() -> None:
    """Gone nodes are announced sorted in one payload; none gone, no payload."""
    assert [json.loads(p) for p in expired_payloads("b", ["z", "y"])] == [
        {"node": "b", "expired": ["y", "z"]}
    ]
    assert expired_payloads("b", []) == []


# Fan-out.


def fanout() -> tuple[PostgresFanout, FakeStore, Clock, list[Message]]:
    store = FakeStore()
    clock = Clock()
    clock.advance(1000.0)
    out = PostgresFanout(store, clock, "a")
    heard: list[Message] = []
    out.listen("henderson", heard.append)
    return out, store, clock, heard


def test_fanout_reads_and_publishes_other_nodes_messages() -> None:
    """Messages from node b for a local listener are read and published;
    others' recipients and node a's own are not read."""
    out, store, _clock, heard = fanout()
    lags: list[float] = []
    out.lag_observers.append(lags.append)
    out.committed({"node": "a", "messages": [[1, "henderson"]]})
    assert store.reads == []
    out.committed(
        {"node": "b", "at": 999.5, "messages": [[3, "henderson"], [2, "lineker"]]}
    )
    assert [ids for ids, _ in store.reads] == [[3]]
    store.reads[0][1].callback([message(3)])
    assert [m.id for m in heard] == [3]
    assert lags == [0.5]


def test_fanout_reads_one_at_a_time_and_batches_the_rest() -> None:
    """Notifications that arrive during a read are read together next, in
    id order; without a commit time the lag counts from sent_at."""
    out, store, _clock, heard = fanout()
    lags: list[float] = []
    out.lag_observers.append(lags.append)
    out.committed({"node": "b", "messages": [[1, "henderson"]]})
    out.committed({"node": "b", "messages": [[5, "henderson"]]})
    out.committed({"node": "c", "messages": [[4, "henderson"]]})
    assert [ids for ids, _ in store.reads] == [[1]]
    store.reads[0][1].callback([message(1)])
    assert [ids for ids, _ in store.reads] == [[1], [4, 5]]
    store.reads[1][1].callback([message(4), message(5)])
    assert [m.id for m in heard] == [1, 4, 5]
    assert lags == [900.0] * 3


def test_fanout_skips_the_senders_own_group_copy() -> None:
    """A group message's copy for its own sender is not pushed to the sender."""
    out, store, _clock, heard = fanout()
    out.listen("messi", heard.append)
    out.committed({"node": "b", "messages": [[7, "messi"]]})
    store.reads[0][1].callback([message(7, "messi", group="g")])
    assert heard == []


def test_fanout_read_failure_resyncs_listeners() -> None:
    """If the rows cannot be read, the listeners read from the store."""
    out, store, _clock, heard = fanout()
    resyncs: list[str] = []
    out.listen("lineker", heard.append, lambda: resyncs.append("lineker"))
    out.committed({"node": "b", "messages": [[1, "lineker"]]})
    store.reads[0][1].errback(StorageUnavailable("down"))
    assert resyncs == ["lineker"] and heard == []


def test_fanout_resync_and_unlisten() -> None:
    """resync calls every listener's resync; unlisten forgets it."""
    out, _store, _clock, heard = fanout()
    calls: list[str] = []

    def listener(m: Message) -> None:
        pass

    out.listen("lineker", listener, lambda: calls.append("l"))
    out.listen("messi", heard.append, lambda: calls.append("m"))
    out.resync()
    assert sorted(calls) == ["l", "m"]
    out.unlisten("lineker", listener)
    calls.clear()
    out.resync()
    assert calls == ["m"]
    assert not out.listening("lineker")
    out.publish(message(9, "messi"))
    assert [m.id for m in heard] == [9]


def test_malformed_entries_are_skipped() -> None:
    """Malformed entries of a messages notification are skipped, the good ones read."""
    out, store, _clock, _heard = fanout()
    out.committed({"node": "b", "messages": [["x"], None, [2, "henderson"]]})
    assert [ids for ids, _ in store.reads] == [[2]]


# Subscriptions hearing of messages out of order.


def subscription(window: int = 10) -> tuple[Subscription, MemoryStore, Events]:
    store = MemoryStore()
    for user in demo_users():
        result_of(store.add_user(user))
    client = Events()
    sub = Subscription(store, LocalFanout(), Clock(), client, "henderson", "h", window)
    sub.start()
    return sub, store, client


def stored(store: MemoryStore, text: str) -> Message:
    result: Message = result_of(store.store_message("messi", "henderson", text, 1.0))
    return result


def test_message_heard_of_after_a_newer_one_is_pushed() -> None:
    """A message committed after one with a higher id (another node's
    transaction) is still pushed, and only once."""
    sub, store, client = subscription()
    first, second = stored(store, "one"), stored(store, "two")
    sub.fanout.publish(second)
    assert client.pushed() == [second.id]
    sub.fanout.publish(first)
    assert client.pushed() == [second.id, first.id]
    sub.fanout.publish(first)  # heard of again while in flight
    assert client.pushed() == [second.id, first.id]
    result_of(store.mark_delivered("henderson", second.id, 2.0))
    sub.acknowledged(second.id)
    sub.fanout.publish(first)  # heard of again once delivered
    assert client.pushed() == [second.id, first.id]
    late = stored(store, "late")
    sub.fanout.publish(late)
    assert client.pushed() == [second.id, first.id, late.id]


def test_late_message_below_the_last_pushed_is_pushed() -> None:
    """Ids 1 and 3 pushed; 2 commits last: pushed when heard of."""
    sub, store, client = subscription()
    one, two, three = stored(store, "1"), stored(store, "2"), stored(store, "3")
    # 2 is not committed yet: invisible.
    hidden = store.messages.pop(1)
    sub.resync()
    assert client.pushed() == [one.id, three.id]
    store.messages.insert(1, hidden)
    sub.fanout.publish(two)
    assert client.pushed() == [one.id, three.id, two.id]
    sub.acknowledged(three.id)
    assert sub._in_flight == type(sub._in_flight)()


def test_resync_pushes_what_was_never_published() -> None:
    """Told to resync, a subscription pushes undelivered messages nobody
    published, and not those in flight."""
    sub, store, client = subscription()
    one = stored(store, "one")
    sub.fanout.publish(one)
    unpublished = stored(store, "silent")
    assert client.pushed() == [one.id]
    sub.resync()
    assert client.pushed() == [one.id, unpublished.id]


def test_resync_respects_the_window() -> None:
    """A resync with a full window pushes nothing until acks make room."""
    sub, store, client = subscription(window=2)
    messages = [stored(store, str(i)) for i in range(5)]
    sub.resync()
    assert client.pushed() == [messages[0].id, messages[1].id]
    result_of(store.mark_delivered("henderson", messages[1].id, 2.0))
    sub.acknowledged(messages[1].id)
    assert client.pushed() == [m.id for m in messages[:4]]


# Presence.


def presence() -> tuple[ClusterPresence, Events, list[str]]:
    changes: list[str] = []
    p = ClusterPresence(node_id="a", changed=lambda: changes.append("x"))
    watcher = Events()
    p.watch(watcher)
    return p, watcher, changes


def test_local_users_are_announced_and_written() -> None:
    """A local user is announced online at the first connection and offline after the
    last, each change written once."""
    p, watcher, changes = presence()
    p.attach("messi", "Lionel Messi", "conn1")
    p.attach("messi", "Lionel Messi", "conn2")
    assert watcher.presence() == [("messi", True)]
    assert len(changes) == 1
    p.detach("messi", "conn1")
    p.detach("messi", "conn2")
    assert watcher.presence() == [("messi", True), ("messi", False)]
    assert len(changes) == 2
    assert p.local() == {}


def test_remote_users_count_for_the_cluster() -> None:
    """A user online on b, then also here, then gone here: still online;
    gone on b as well: offline."""
    p, watcher, _changes = presence()
    p.node_changed("b", {"messi": "Lionel Messi"}, [], False)
    assert watcher.presence() == [("messi", True)]
    assert p.online() == [("messi", "Lionel Messi")]
    p.attach("messi", "Lionel Messi", "conn")
    p.detach("messi", "conn")
    assert watcher.presence() == [("messi", True)]
    p.node_changed("b", {}, ["messi"], False)
    assert watcher.presence() == [("messi", True), ("messi", False)]
    assert p.online() == []


def test_node_reset_and_nodes_gone() -> None:
    """A restarted node's snapshot replaces its users, and a gone node's users go
    offline."""
    p, watcher, _changes = presence()
    p.node_changed("b", {"messi": "M", "lineker": "L"}, [], False)
    p.node_changed("c", {"lineker": "L"}, [], False)
    p.node_changed("b", {"henderson": "H"}, [], True)  # b restarted
    assert sorted(watcher.presence()) == sorted(
        [("messi", True), ("lineker", True), ("henderson", True), ("messi", False)]
    )
    watcher.events.clear()
    p.nodes_gone(["c", "unknown"])
    assert watcher.presence() == [("lineker", False)]
    assert p.remote_users() == {"b": {"henderson": "H"}}


def test_own_node_is_ignored_and_snapshot_replaces() -> None:
    """This node's own presence is ignored, and a loaded snapshot replaces the other
    nodes' users."""
    p, watcher, changes = presence()
    p.node_changed("a", {"messi": "M"}, [], False)
    assert watcher.presence() == []
    p.node_changed("b", {"messi": "M"}, [], False)
    p.load({"a": {"ghost": "G"}, "c": {"lineker": "L"}, "d": {}})
    assert watcher.presence() == [("messi", True), ("lineker", True), ("messi", False)]
    assert p.online() == [("lineker", "L")]
    assert changes == []


# Heartbeats and presence writes.


@implementer(IClusterConnection)
class FakeConnection:
    """
    Records the writes asked for (by method name); the test fires their
    Deferreds.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[str, tuple[Any, ...], Deferred[Any]]] = []
        self.session = 1
        self.lost_observers: list[Callable[[], None]] = []
        self.state = "new"

    def start(self) -> None:
        self.state = "started"

    def close(self) -> Deferred[None]:
        self.state = "closed"
        return succeed(None)

    def _job(self, name: str, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((name, args, d))
        return d

    def sync_node(self, *args: Any) -> Deferred[Any]:
        return self._job("sync_node", *args)

    def leave_cluster(self, *args: Any) -> Deferred[Any]:
        return self._job("leave_cluster", *args)

    def take_leases(self, *args: Any) -> Deferred[Any]:
        d = self._job("take_leases", *args)
        return d.addCallback(lambda taken: (self.session, taken))

    def wake_link(self, *args: Any) -> Deferred[Any]:
        return self._job("wake_link", *args)

    def pop(self) -> tuple[str, tuple[Any, ...], Deferred[Any]]:
        return self.jobs.pop(0)


def membership() -> tuple[Membership, FakeConnection, Clock, ClusterPresence]:
    connection, clock = FakeConnection(), Clock()
    p = ClusterPresence(node_id="a")
    m = Membership(connection, clock, "a", p, heartbeat=2.0)
    p.changed = m.request
    return m, connection, clock, p


def test_heartbeat_writes_everything_first_then_changes() -> None:
    """The first heartbeat writes all local users, later ones the changes, one write at
    a time, and others are reaped only after three good heartbeats."""
    m, connection, clock, p = membership()
    m.start()
    job, args, d = connection.pop()
    assert job == "sync_node" and args == ("a", {}, None, None)
    p.attach("messi", "Lionel Messi", "conn")
    assert connection.jobs == []  # one write at a time
    d.callback(SyncResult(True, []))
    job, args, d = connection.pop()
    assert args == ("a", {"messi": "Lionel Messi"}, {}, None)
    d.callback(SyncResult(False, []))
    written = {"messi": "Lionel Messi"}
    # Others are judged once this node's own heartbeats went through for
    # three of them.
    for reaping in (None, None, 6.0):
        clock.advance(2.0)
        job, args, d = connection.pop()
        assert args == ("a", written, written, reaping)
        d.callback(SyncResult(False, []))


def test_expired_nodes_users_go_offline() -> None:
    """The users of a node the heartbeat found expired go offline."""
    m, connection, clock, p = membership()
    watcher = Events()
    p.watch(watcher)
    p.node_changed("dead", {"lineker": "L"}, [], False)
    m.start()
    connection.pop()[2].callback(SyncResult(True, []))
    for _ in range(3):
        clock.advance(2.0)
        connection.pop()[2].callback(SyncResult(False, []))
    clock.advance(2.0)
    _, args, d = connection.pop()
    assert args[3] == 6.0
    d.callback(SyncResult(False, ["dead"]))
    assert watcher.presence() == [("lineker", True), ("lineker", False)]


def test_failed_write_is_retried_whole_at_the_next_heartbeat() -> None:
    """After a failed write the next one writes everything again, and others are not
    reaped until healthy."""
    m, connection, clock, p = membership()
    m.start()
    connection.pop()[2].callback(SyncResult(True, []))
    p.attach("messi", "M", "conn")
    connection.pop()[2].errback(StorageUnavailable("down"))
    p.attach("lineker", "L", "conn")
    _, args, d = connection.pop()
    assert args == ("a", {"messi": "M", "lineker": "L"}, None, None)
    d.errback(StorageUnavailable("still down"))
    clock.advance(2.0)
    _, args, d = connection.pop()
    # Not healthy for long enough to judge the others.
    assert args == ("a", {"messi": "M", "lineker": "L"}, None, None)
    d.callback(SyncResult(False, []))
    p.detach("lineker", "conn")
    assert connection.pop()[1] == (
        "a",
        {"messi": "M"},
        {"messi": "M", "lineker": "L"},
        None,
    )


def test_rejoin_rewrites_everything() -> None:
    """Rejoining the cluster writes all local users again, as a first heartbeat."""
    m, connection, _clock, _p = membership()
    m.start()
    connection.pop()[2].callback(SyncResult(True, []))
    m.rejoin()
    assert connection.pop()[1] == ("a", {}, None, None)


def test_stop_waits_for_the_write_then_leaves() -> None:
    """Stopping waits for the write in flight, then leaves the cluster, and writes no
    more."""
    m, connection, clock, p = membership()
    m.start()
    job, args, d = connection.pop()
    stopped = m.stop()
    p.attach("messi", "M", "conn")
    assert connection.jobs == []
    d.callback(SyncResult(True, []))
    job, args, leave = connection.pop()
    assert job == "leave_cluster" and args == ("a",)
    no_result(stopped)
    leave.callback(None)
    assert result_of(stopped) is None
    clock.advance(10)
    assert connection.jobs == []


def test_stop_when_the_database_is_down_is_logged() -> None:
    """Stopping succeeds when leaving fails because the database is down."""
    m, connection, _clock, _p = membership()
    m.start()
    connection.pop()[2].callback(SyncResult(True, []))
    stopped = m.stop()
    connection.pop()[2].errback(StorageUnavailable("down"))
    assert result_of(stopped) is None


# Leases.


def leases() -> tuple[LinkLeases, FakeConnection, Clock, list[str]]:
    connection, clock = FakeConnection(), Clock()
    events: list[str] = []
    lease = LinkLeases(connection, clock, "a", 3.0)
    lease.gained = lambda r: events.append(f"+{r}")
    lease.lost = lambda r: events.append(f"-{r}")
    lease.held = lambda r: events.append(f"={r}")
    return lease, connection, clock, events


def test_leases_taken_released_and_lost() -> None:
    """Link leases are taken as wanted, released when no longer wanted, and lost when
    the connection was made again."""
    lease, connection, clock, events = leases()
    lease.start()
    job, args, d = connection.pop()
    assert job == "take_leases" and args == ([], [])
    lease.want({"x", "y"})
    d.callback([])
    job, args, d = connection.pop()
    assert args == (["x", "y"], [])
    d.callback(["x"])  # y is held by another node
    assert events == ["+x", "=x"] and lease.holds("x")
    events.clear()
    lease.want({"y"})
    job, args, d = connection.pop()
    assert args == (["y"], ["x"])
    d.callback(["y"])
    assert events == ["-x", "+y", "=y"]
    events.clear()
    connection.session = 2  # the connection was made again: locks are gone
    clock.advance(3.0)
    job, args, d = connection.pop()
    assert args == ([], [])
    d.callback([])
    assert events == ["-y"] and not lease.holds("y")


def test_leases_lost_when_the_connection_fails() -> None:
    """Held link leases are lost, once, when the connection fails."""
    lease, connection, clock, events = leases()
    lease.start()
    lease.want({"x"})
    connection.pop()[2].callback([])
    connection.pop()[2].callback(["x"])
    events.clear()
    clock.advance(3.0)
    connection.pop()[2].errback(StorageUnavailable("gone"))
    assert events == ["-x"]
    lease.connection_lost()
    assert events == ["-x"]


def test_queued_wakes_the_holder() -> None:
    """A message queued for a realm wakes the node holding its link; a failure is not
    raised."""
    lease, connection, _clock, _events = leases()
    lease.queued("x")
    job, args, d = connection.pop()
    assert job == "wake_link" and args == ("a", "x")
    d.errback(StorageUnavailable("down"))  # logged, not raised


# The LISTEN connection, reconnected.


@implementer(INotificationListener)
class FakeNotifications:
    def __init__(self) -> None:
        self.sessions: list[
            tuple[Callable[..., None], Callable[[str, str], None], Deferred[None]]
        ] = []
        self.stopped = False

    def listen(
        self, ready: Callable[..., None], notified: Callable[[str, str], None]
    ) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.sessions.append((ready, notified, d))
        return d

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


def cluster() -> tuple[Cluster, FakeNotifications, FakeConnection, Clock]:
    store, clock = FakeStore(), Clock()
    c = Cluster(store, clock, heartbeat=1.0, retry_min=0.5, retry_max=2.0)
    return c, store.listener, store.connection, clock


def test_listen_reconnects_with_backoff_and_resyncs() -> None:
    """A lost LISTEN connection is made again with growing backoff, and each new one
    resyncs presence and listeners."""
    c, notifications, _connection, clock = cluster()
    resyncs: list[int] = []
    c.fanout.listen("messi", lambda m: None, lambda: resyncs.append(1))
    c.start()
    ready, _notified, session = notifications.sessions[-1]
    ready({"b": {"lineker": "Gary Lineker"}})
    assert c.listening and resyncs == [1]
    assert c.presence.online() == [("lineker", "Gary Lineker")]
    for delay in (0.5, 1.0, 2.0, 2.0):
        session.errback(StorageUnavailable("terminated"))
        assert not c.listening
        clock.advance(delay - 0.01)
        count = len(notifications.sessions)
        clock.advance(0.01)
        assert len(notifications.sessions) == count + 1
        ready, _notified, session = notifications.sessions[-1]
    ready({})
    assert resyncs == [1, 1]
    assert c.presence.online() == []
    session.errback(StorageUnavailable("terminated"))
    clock.advance(0.5)  # backoff starts again after a success
    assert len(notifications.sessions) == 6


def test_notifications_are_dispatched() -> None:
    """Presence, outbox and messages notifications reach presence, federation and
    fan-out; this node's own and malformed ones are ignored."""
    c, notifications, _connection, _clock = cluster()
    woken: list[str] = []
    c.router.federation = type(
        "F", (), {"wake": lambda self, r: woken.append(r), "links": {}}
    )()  # type: ignore[assignment]
    c.start()
    ready, notified, _session = notifications.sessions[-1]
    ready({})
    watcher = Events()
    c.presence.watch(watcher)
    notified(PRESENCE_CHANNEL, json.dumps({"node": "b", "online": [["messi", "M"]]}))
    notified(PRESENCE_CHANNEL, json.dumps({"node": "a", "online": [["ghost", "G"]]}))
    notified(PRESENCE_CHANNEL, "not json")
    notified(PRESENCE_CHANNEL, "[]")
    notified(PRESENCE_CHANNEL, json.dumps({"node": "c", "expired": ["b"]}))
    assert watcher.presence() == [("messi", True), ("messi", False)]
    notified(OUTBOX_CHANNEL, json.dumps({"node": "b", "realm": "other"}))
    notified(OUTBOX_CHANNEL, json.dumps({"node": "a", "realm": "mine"}))
    assert woken == ["other"]
    heard: list[Message] = []
    c.fanout.listen("henderson", heard.append)
    notified(
        MESSAGES_CHANNEL, json.dumps({"node": "b", "messages": [[4, "henderson"]]})
    )
    store = c.store
    assert isinstance(store, FakeStore)
    store.reads[0][1].callback([message(4)])
    assert [m.id for m in heard] == [4]


def test_sessions_ended_elsewhere_end_here() -> None:
    """Sessions and users ended on another node or by chat-admin end here; this node's
    own notifications are ignored."""
    c, notifications, _connection, _clock = cluster()
    ended: list[tuple[str, str]] = []

    class Sessions:
        def ended_elsewhere(self, token_hash: str, why: str) -> None:
            ended.append((token_hash, why))

        def user_changed_elsewhere(self, username: str, why: str) -> None:
            ended.append((username, why))

    c.serve_sessions(Sessions())  # type: ignore[arg-type]
    c.start()
    notified = notifications.sessions[-1][1]
    notified(SESSIONS_CHANNEL, json.dumps({"node": "b", "session": "abc"}))
    notified(SESSIONS_CHANNEL, json.dumps({"node": "", "user": "messi"}))  # chat-admin
    notified(SESSIONS_CHANNEL, json.dumps({"node": "a", "session": "mine"}))
    assert ended == [
        ("abc", "logged out on another node"),
        ("messi", "password changed or user deleted"),
    ]


def test_sessions_ended_while_not_listening_end_when_listening_again() -> None:
    """Each time LISTEN is in effect (at start, after a reconnect), the
    cached sessions are checked against the store: one another node ended
    while this one could not hear it ends here too. A failed check is
    logged, not raised."""
    c, notifications, _connection, clock = cluster()
    checks: list[str] = []
    results: list[Deferred[int]] = [succeed(1), fail(StorageUnavailable("down"))]

    class Sessions:
        def revalidate(self, why: str) -> Deferred[int]:
            checks.append(why)
            return results.pop(0)

    c.serve_sessions(Sessions())  # type: ignore[arg-type]
    c.start()
    ready, _notified, session = notifications.sessions[-1]
    ready({})
    assert checks == ["ended on another node"]
    session.errback(StorageUnavailable("terminated"))
    clock.advance(0.5)
    notifications.sessions[-1][0]({})
    assert checks == ["ended on another node"] * 2


def test_found_dead_rejoins() -> None:
    """A node another node removed as dead writes itself again."""
    c, notifications, connection, _clock = cluster()
    c.start()
    connection.pop()[2].callback(SyncResult(True, []))  # first heartbeat
    connection.pop()  # first lease tick
    notifications.sessions[-1][0]({})
    notifications.sessions[-1][1](
        PRESENCE_CHANNEL, json.dumps({"node": "b", "expired": ["a"]})
    )
    job, args, _d = connection.pop()
    assert job == "sync_node" and args[2] is None


def test_stop_cancels_the_retry_and_leaves() -> None:
    """Stopping cancels the LISTEN retry, removes this node, then closes
    the cluster connection."""
    c, notifications, connection, clock = cluster()
    c.start()
    assert connection.state == "started"
    connection.pop()[2].callback(SyncResult(True, []))
    connection.pop()[2].callback([])
    notifications.sessions[-1][2].errback(StorageUnavailable("gone"))
    stopped = c.stop()
    assert notifications.stopped
    job, _args, d = connection.pop()
    assert job == "leave_cluster"
    assert connection.state == "started"
    d.callback(None)
    assert connection.state == "closed"
    assert result_of(stopped) is None
    clock.advance(60)
    assert len(notifications.sessions) == 1


def test_lost_cluster_connection_loses_the_leases() -> None:
    """When the cluster connection breaks, the leases it held are lost."""
    c, _notifications, connection, _clock = cluster()
    events: list[str] = []
    c.leases.lost = lambda r: events.append(f"-{r}")
    c.start()
    connection.pop()[2].callback(SyncResult(True, []))
    c.leases.want({"x"})
    connection.pop()[2].callback([])  # the first tick
    connection.pop()[2].callback(["x"])
    assert c.leases.holds("x")
    for observer in connection.lost_observers:
        observer()
    assert events == ["-x"] and not c.leases.holds("x")


# Federation with leases.


class FakeLeases:
    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.held: set[str] = set()
        self.queued_for: list[str] = []

    def want(self, realm_ids: Any) -> None:
        self.wanted = set(realm_ids)

    def holds(self, realm_id: str) -> bool:
        return realm_id in self.held

    def queued(self, realm_id: str) -> None:
        self.queued_for.append(realm_id)


def test_build_makes_federation_with_the_nodes_leases() -> None:
    """With a shared store, build_chat makes the federation with this
    node's link leases (nothing patches it afterwards), and the cluster
    tells the federation of leases gained, lost and held."""
    settings = Settings(federation=FederationSettings("realm-a"))
    chat = build_chat(Clock(), FakeStore(), settings, InlineHasher())
    cluster, federation = chat.cluster, chat.federation
    assert cluster is not None and federation is not None
    assert federation.leases is cluster.leases
    assert cluster.leases.gained == federation.lease_gained
    assert cluster.leases.lost == federation.lease_lost
    assert cluster.leases.held == federation.wake
    assert cluster.router.federation is federation


def test_federation_runs_only_leased_links() -> None:
    """Without the lease a node queues but does not connect; gaining it
    connects and delivers; losing it stops the link."""
    from tests.test_federation import Realms, inbox

    realms = Realms(start=False)
    a = realms["realm-a"]
    fake = FakeLeases()
    a.federation.leases = fake  # type: ignore[assignment]
    realms.link_all()
    realms.start()
    assert fake.wanted == {"realm-b"} and a.federation.links == {}
    messi, token = realms.login("realm-a", "messi")
    assert messi.request(f"send {token} henderson@realm-b hi")["status"] == "OK"
    assert fake.queued_for == ["realm-b"]
    realms.settle()
    assert not inbox(realms, "realm-b", "henderson")
    fake.held.add("realm-b")
    a.federation.lease_gained("realm-b")
    realms.settle()
    texts = inbox(realms, "realm-b", "henderson")
    assert [m["msg"] for m in texts["messi@realm-a"]] == ["hi"]
    a.federation.lease_lost("realm-b")
    assert a.federation.links == {}
    a.federation.wake("realm-b")  # no link here: nothing to do


def test_realm_with_default_fanout_never_resyncs() -> None:
    """LocalFanout takes the resync callback and never needs it."""
    local = LocalFanout()
    local.listen(
        "messi", lambda m: None, lambda: (_ for _ in ()).throw(AssertionError())
    )
    assert local.listening("messi")
