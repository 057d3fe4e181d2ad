"""
A cluster on a real PostgreSQL: two (or three) chat services in this
process, each with its own PostgresStore on one database, talking the
course protocol over loopback TCP; and two real C{twistd chat} nodes, one
killed with SIGKILL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from chat.build import Settings
from chat.checkers import Argon2Hasher
from chat.federation import FederationSettings
from chat.links import RealmLink
from chat.service import ChatService
from chat.store.postgres import PostgresStore
from chat.store.sqlite import SQLiteStore
from tests.clients import AsyncClient
from tests.helpers import FAST_ARGON2
from tests.twistd_helpers import LineClient, TwistdChat
from tests.waiting import TIMEOUT, eventually, wait_until

HEARTBEAT = 0.5
SECRET = "secret-shared-by-one-and-two-0123"


class Nodes:
    """
    Chat services in this process, stopped at the end.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.services: list[ChatService] = []

    async def start(
        self, name: str, federation: FederationSettings | None = None
    ) -> ChatService:
        store = PostgresStore(reactor, self.url, node_id=name)
        service = ChatService(
            reactor,
            store,
            ["tcp:0:interface=127.0.0.1"],
            Settings(heartbeat=HEARTBEAT, federation=federation),
            hasher=Argon2Hasher(reactor, hasher=FAST_ARGON2),
            demo=True,
        )
        service.startService()
        await service.ready
        self.services.append(service)
        return service

    async def stop(self, service: ChatService) -> None:
        if service.running:
            await service.stopService()

    async def stop_all(self) -> None:
        for service in self.services:
            await self.stop(service)


@pytest_twisted.async_yield_fixture
async def nodes(postgres_db: str) -> AsyncIterator[Nodes]:
    made = Nodes(postgres_db)
    yield made
    await made.stop_all()


async def connect(service: ChatService) -> AsyncClient:
    port = service.ports[0].getHost().port
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await connectProtocol(endpoint, AsyncClient())


def terminate(url: str, application_name: str) -> int:
    """
    End the backends of one of the nodes' connections, as a network
    failure would.
    """
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (application_name,),
        ).fetchall()
    return len(rows)


@pytest_twisted.ensureDeferred
async def test_message_sent_on_a_reaches_subscriber_on_b(nodes: Nodes) -> None:
    """A message committed through node A is pushed to a subscriber of
    node B, once; a token made on A works on B."""
    a, b = await nodes.start("a"), await nodes.start("b")
    sender, subscriber = await connect(a), await connect(b)
    token = await sender.login("messi")
    other = await subscriber.login("henderson")
    assert (await subscriber.request(f"subscribe {other}"))["status"] == "OK"
    lags: list[float] = []
    assert b.chat.cluster is not None
    b.chat.cluster.lag_observers.append(lags.append)
    await eventually(lambda: b.chat.cluster is not None and b.chat.cluster.listening)
    for text in ("one", "two", "three"):
        reply = await sender.request(f"send {token} henderson {text}")
        assert reply["status"] == "OK", reply
    await subscriber.wait_for(lambda: len(subscriber.messages()) == 3)
    assert [m["msg"] for m in subscriber.messages()] == ["one", "two", "three"]
    assert len(lags) == 3 and all(lag >= 0 for lag in lags)
    # The token made on A, used on B.
    on_b = await connect(b)
    reply = await on_b.request(f"send {token} henderson four")
    assert reply == {"status": "OK", "message": "Message Sent"}
    # Anything pushed twice would come before a message sent after it.
    await sender.request(f"send {token} henderson five")
    await subscriber.wait_for(lambda: len(subscriber.messages()) >= 5)
    assert [m["msg"] for m in subscriber.messages()] == [
        "one",
        "two",
        "three",
        "four",
        "five",
    ]
    for client in (sender, subscriber, on_b):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_logout_on_a_ends_the_session_on_b(nodes: Nodes) -> None:
    """A session B has cached ends on B as soon as it is logged out on A:
    its subscription on B ends, and B refuses the token."""
    a, b = await nodes.start("a"), await nodes.start("b")
    on_a, on_b = await connect(a), await connect(b)
    token = await on_a.login("henderson")
    assert (await on_b.request(f"subscribe {token}"))["status"] == "OK"
    assert (await on_b.request(f"inbox {token}"))["status"] == "OK"
    assert (await on_a.request(f"logout {token}"))["status"] == "OK"
    await on_b.wait_for(lambda: any(e["event"] == "unsubscribed" for e in on_b.events))
    reply = await on_b.request(f"inbox {token}")
    assert reply["message"] == "Session Tidak Ditemukan"
    await on_a.close()
    await on_b.close()


@pytest_twisted.ensureDeferred
async def test_group_message_across_nodes(nodes: Nodes) -> None:
    """A group message sent on A reaches a member subscribed on B, and the
    sender's own copy is not pushed to the sender's subscription on B."""
    a, b = await nodes.start("a"), await nodes.start("b")
    sender, messi_b, lineker_b = await connect(a), await connect(b), await connect(b)
    token = await sender.login("messi")
    for client, user in ((messi_b, "messi"), (lineker_b, "lineker")):
        user_token = await client.login(user)
        assert (await client.request(f"subscribe {user_token}"))["status"] == "OK"
    lineker_token = await lineker_b.login("lineker")
    assert (await sender.request(f"creategroup {token} team"))["status"] == "OK"
    assert (await lineker_b.request(f"joingroup {lineker_token} team"))[
        "status"
    ] == "OK"
    reply = await sender.request(f"sendgroup {token} #team halo")
    assert reply["status"] == "OK", reply
    await lineker_b.wait_for(lambda: len(lineker_b.messages()) == 1)
    # A copy pushed to messi on B would come before a message sent to him
    # after B pushed the group message.
    reply = await lineker_b.request(f"send {lineker_token} messi after the group")
    assert reply["status"] == "OK", reply
    await messi_b.wait_for(lambda: len(messi_b.messages()) >= 1)
    assert [m["msg"] for m in messi_b.messages()] == ["after the group"]
    for client in (sender, messi_b, lineker_b):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_inbox_drains_take_each_message_once(nodes: Nodes) -> None:
    """Sends on both nodes while inbox drains race on both: every message
    is taken exactly once."""
    a, b = await nodes.start("a"), await nodes.start("b")
    senders = [await connect(a), await connect(b)]
    drainers = [await connect(a), await connect(b), await connect(a), await connect(b)]
    tokens = [await s.login("messi") for s in senders]
    drain_tokens = [await d.login("henderson") for d in drainers]
    count = 300
    sends = [
        senders[i % 2].request(f"send {tokens[i % 2]} henderson m{i}")
        for i in range(count)
    ]
    taken: list[str] = []

    async def drain(client: AsyncClient, token: str) -> None:
        idle = 0
        deadline = time.monotonic() + TIMEOUT
        while idle < 3:
            assert time.monotonic() < deadline, f"{len(taken)} of {count} taken"
            reply = await client.request(f"inbox {token}")
            assert reply["status"] == "OK", reply
            got = [m["msg"] for msgs in reply["messages"].values() for m in msgs]
            taken.extend(got)
            idle = idle + 1 if not got and len(taken) >= count else 0
            if not got:
                await deferLater(reactor, 0.01, lambda: None)

    drains = [
        Deferred.fromCoroutine(drain(c, t))
        for c, t in zip(drainers, drain_tokens, strict=True)
    ]
    replies = await gatherResults(sends)
    assert all(r["status"] == "OK" for r in replies)
    await gatherResults(drains)
    assert len(taken) == count
    assert sorted(taken) == sorted(f"m{i}" for i in range(count))
    for client in senders + drainers:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_presence_across_nodes(nodes: Nodes) -> None:
    """A user connected to A is online on B (who, and a presence event);
    connected to both then leaving A, still online; gone from both,
    offline."""
    a, b = await nodes.start("a"), await nodes.start("b")
    watcher = await connect(b)
    token = await watcher.login("henderson")
    assert (await watcher.request(f"subscribe {token}"))["status"] == "OK"
    messi_a = await connect(a)
    await messi_a.login("messi")
    await watcher.wait_for(lambda: ("messi", True) in watcher.presence())
    who = await watcher.request(f"who {token}")
    assert {"username": "messi", "full_name": "Lionel Messi"} in who["users"]
    messi_b = await connect(b)
    await messi_b.login("messi")
    await messi_a.close()
    # A tells the cluster that messi left before lineker, who logs in on
    # A afterwards, arrived: a wrong "messi offline" would come first.
    lineker_a = await connect(a)
    await lineker_a.login("lineker")
    await watcher.wait_for(lambda: ("lineker", True) in watcher.presence())
    assert watcher.presence().count(("messi", True)) == 1
    assert ("messi", False) not in watcher.presence()
    await messi_b.close()
    await watcher.wait_for(lambda: ("messi", False) in watcher.presence())
    messi_a = await connect(a)
    await messi_a.login("messi")
    await watcher.wait_for(lambda: watcher.presence().count(("messi", True)) == 2)
    # A stops cleanly: its users go offline at once.
    await nodes.stop(a)
    await watcher.wait_for(lambda: watcher.presence().count(("messi", False)) == 2)
    await lineker_a.close()
    who = await watcher.request(f"who {token}")
    assert [u["username"] for u in who["users"]] == ["henderson"]
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_lost_listen_connection_misses_nothing(nodes: Nodes) -> None:
    """B's LISTEN connection is terminated; a message committed on A before
    B listens again still reaches B's subscriber (read from the store)."""
    a, b = await nodes.start("a"), await nodes.start("b")
    assert b.chat.cluster is not None
    cluster = b.chat.cluster
    await eventually(lambda: cluster.listening)
    sender, subscriber = await connect(a), await connect(b)
    token = await sender.login("messi")
    other = await subscriber.login("henderson")
    assert (await subscriber.request(f"subscribe {other}"))["status"] == "OK"
    lags: list[float] = []
    cluster.lag_observers.append(lags.append)
    assert terminate(nodes.url, "chat b listen") == 1
    await eventually(lambda: not cluster.listening)
    reply = await sender.request(f"send {token} henderson during the gap")
    assert reply["status"] == "OK"
    await subscriber.wait_for(lambda: len(subscriber.messages()) == 1)
    assert subscriber.messages()[0]["msg"] == "during the gap"
    assert cluster.listening
    assert lags == []  # not heard of: read after listening again
    reply = await sender.request(f"send {token} henderson after")
    await subscriber.wait_for(lambda: len(subscriber.messages()) == 2)
    assert len(lags) == 1
    await sender.close()
    await subscriber.close()


@pytest_twisted.ensureDeferred
async def test_node_found_dead_by_its_heartbeat(nodes: Nodes) -> None:
    """A node whose heartbeats stop (as if frozen) is removed by the
    others: its users go offline (within four heartbeats:
    test_cluster.test_expired_nodes_users_go_offline times it on a fake
    clock); when it comes back it joins again with its users."""
    a, b = await nodes.start("a"), await nodes.start("b")
    watcher = await connect(b)
    token = await watcher.login("henderson")
    assert (await watcher.request(f"subscribe {token}"))["status"] == "OK"
    messi = await connect(a)
    await messi.login("messi")
    await watcher.wait_for(lambda: ("messi", True) in watcher.presence())
    assert a.chat.cluster is not None
    membership = a.chat.cluster.membership
    loop = membership._loop
    assert loop is not None
    loop.stop()  # frozen: no more heartbeats, nothing else changes
    await watcher.wait_for(lambda: ("messi", False) in watcher.presence())
    # A hears it was removed, and writes itself and messi again.
    await watcher.wait_for(lambda: watcher.presence().count(("messi", True)) == 2)
    await messi.close()
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_federation_lease_one_node_delivers_in_order(
    postgres_db: str, tmp_path: Path
) -> None:
    """Nodes A and B of realm one both queue messages for realm two; one
    node delivers them all, once, in order. When its lease connection dies
    it loses the lease, and a node takes it again (either: the holder on a
    new connection may win); when the delivering node stops, the other
    takes over. Nothing is lost or doubled."""
    fast = {"retry_min": 0.1, "retry_max": 0.5, "sync_interval": 1.0}
    two_store = SQLiteStore(reactor, str(tmp_path / "two.sqlite"))
    two = ChatService(
        reactor,
        two_store,
        ["tcp:0:interface=127.0.0.1"],
        Settings(federation=FederationSettings("two", **fast)),  # type: ignore[arg-type]
        hasher=Argon2Hasher(reactor, hasher=FAST_ARGON2),
        demo=True,
    )
    two.startService()
    await two.ready
    two_port = two.ports[0].getHost().port
    nodes = Nodes(postgres_db)
    try:
        one_store = PostgresStore(reactor, postgres_db, node_id="setup")
        one_store.start()
        await one_store.add_realm_link(
            RealmLink("two", f"tcp:host=127.0.0.1:port={two_port}", SECRET, 0.0)
        )
        await one_store.close()
        settings = FederationSettings("one", **fast)  # type: ignore[arg-type]
        a = await nodes.start("a", settings)
        b = await nodes.start("b", settings)
        await two_store.add_realm_link(
            RealmLink(
                "one",
                f"tcp:host=127.0.0.1:port={a.ports[0].getHost().port}",
                SECRET,
                0.0,
            )
        )
        on_a, on_b = await connect(a), await connect(b)
        tokens = [await on_a.login("messi"), await on_b.login("messi")]
        clients = [on_a, on_b]
        sent: list[str] = []

        async def send(start: int, end: int, only: int | None = None) -> None:
            for i in range(start, end):
                text = f"m{i:03d}"
                k = i % 2 if only is None else only
                reply = await clients[k].request(
                    f"send {tokens[k]} henderson@two {text}"
                )
                assert reply["status"] == "OK", reply
                sent.append(text)

        def holders() -> list[ChatService]:
            return [
                n
                for n in (a, b)
                if n.chat.federation and "two" in n.chat.federation.links
            ]

        await send(0, 20)
        received: list[str] = []
        reader = await connect(two)
        reader_token = await reader.login("henderson")

        async def read_until(n: int) -> None:
            async def enough() -> bool:
                reply = await reader.request(f"inbox {reader_token}")
                for msgs in reply["messages"].values():
                    received.extend(m["msg"] for m in msgs)
                return len(received) >= n

            await eventually(enough, what=lambda: f"{n} messages in {received}")

        await read_until(20)
        assert received == sent
        (holder,) = holders()
        name = "a" if holder is a else "b"
        assert holder.chat.cluster is not None
        leases = holder.chat.cluster.leases
        lost: list[str] = []
        lose = leases.lost

        def record(realm_id: str) -> None:
            lost.append(realm_id)
            lose(realm_id)

        leases.lost = record
        assert terminate(postgres_db, f"chat {name} cluster") == 1
        await eventually(lambda: "two" in lost, what="the holder lost its lease")
        await send(20, 40)
        await read_until(40)
        # Anything delivered twice would arrive before one more message.
        await send(40, 41)
        await read_until(41)
        assert received == sent, (received, sent)
        # The node that delivers now stops: the other takes over.
        (current,) = await eventually(
            lambda: holders() if len(holders()) == 1 else None,
            what="one node holding the lease",
        )
        survivor = b if current is a else a
        await nodes.stop(current)
        await send(41, 51, only=0 if survivor is a else 1)
        await eventually(lambda: holders() == [survivor], what="the other took over")
        await read_until(51)
        assert received == sent, (received, sent)
        for client in (clients[0 if survivor is a else 1], reader):
            await client.close()
    finally:
        await nodes.stop_all()
        await two.stopService()


# Real twistd nodes.


def test_kill9_node_users_go_offline_on_the_other(
    twistd_node: Callable[..., TwistdChat],
) -> None:
    """Two twistd nodes; a user on A is in who on B; A killed with SIGKILL:
    the user goes offline on B (after about four heartbeats)."""
    servers = [
        twistd_node(name, "--node-id", name, "--heartbeat", str(HEARTBEAT))
        for name in ("a", "b")
    ]
    a, b = servers
    for server in servers:
        server.start()
        server.wait_ready()
    on_a = LineClient(a.port)
    on_a.login("messi")
    on_b = LineClient(b.port)
    token = on_b.login("henderson")

    def who() -> list[str]:
        return [u["username"] for u in on_b.request(f"who {token}")["users"]]

    wait_until(lambda: "messi" in who(), what="messi online on B")
    a.kill()
    wait_until(lambda: "messi" not in who(), what="messi offline on B")
    assert "Traceback" not in b.log_text()
