"""
The store contract, run against the in-memory store and SQLite on a real
file; then what only SQLite does: group commit, faults, schema versions.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from zope.interface.verify import verifyObject

from chat.errors import NoSuchUser, SchemaTooNew, StorageUnavailable, UserExists
from chat.interfaces import IChatStore
from chat.model import Session, User
from chat.store import open_store, schema
from chat.store.memory import MemoryStore
from chat.store.sqlite import SQLiteStore

MESSI = User("messi", "Lionel Messi", "Argentina", "$argon2id$fake1")
HENDERSON = User("henderson", "Jordan Henderson", "Inggris", "$argon2id$fake2")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sqlite_store = SQLiteStore(reactor, str(tmp_path / "chat.sqlite"))
    sqlite_store.start()
    yield sqlite_store
    pytest_twisted.blockon(sqlite_store.close())


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(reactor, str(tmp_path / "chat.sqlite"))
    store.start()
    yield store
    pytest_twisted.blockon(store.close())


async def _with_users(store: Any) -> None:
    await store.add_user(MESSI)
    await store.add_user(HENDERSON)


def test_provides_interface(store: Any) -> None:
    """Both stores provide IChatStore."""
    assert verifyObject(IChatStore, store)


@pytest_twisted.ensureDeferred
async def test_users(store: Any) -> None:
    """Users can be added, read, listed, re-hashed and deleted."""
    await _with_users(store)
    assert await store.get_user("messi") == MESSI
    with pytest.raises(UserExists):
        await store.add_user(MESSI)
    assert [u.username for u in await store.list_users()] == ["henderson", "messi"]
    await store.set_password_hash("messi", "$argon2id$new")
    assert (await store.get_user("messi")).password_hash == "$argon2id$new"
    await store.delete_user("messi")
    with pytest.raises(NoSuchUser):
        await store.get_user("messi")
    with pytest.raises(NoSuchUser):
        await store.delete_user("messi")
    with pytest.raises(NoSuchUser):
        await store.set_password_hash("messi", "x")


@pytest_twisted.ensureDeferred
async def test_sessions(store: Any) -> None:
    """Sessions are stored, touched, expired and deleted."""
    await _with_users(store)
    await store.create_session(Session("h1", "messi", 100.0, 100.0))
    await store.create_session(Session("h2", "henderson", 100.0, 100.0))
    assert await store.get_session("h1") == Session("h1", "messi", 100.0, 100.0)
    assert await store.get_session("nope") is None
    assert await store.touch_session("h1", 150.0) is True
    assert await store.touch_session("h1", 120.0) is True
    assert (await store.get_session("h1")).last_seen_at == 150.0
    assert await store.touch_session("nope", 150.0) is False
    assert await store.delete_expired_sessions(140.0, 0.0) == 1
    assert await store.get_session("h2") is None
    await store.delete_session("h1")
    assert await store.get_session("h1") is None
    with pytest.raises(NoSuchUser):
        await store.create_session(Session("h3", "ronaldo", 1.0, 1.0))


@pytest_twisted.ensureDeferred
async def test_password_change_ends_sessions(store: Any) -> None:
    """Changing a password deletes that user's sessions."""
    await _with_users(store)
    await store.create_session(Session("h1", "messi", 1.0, 1.0))
    await store.set_password_hash("messi", "$argon2id$new")
    assert await store.get_session("h1") is None


@pytest_twisted.ensureDeferred
async def test_messages_drain_once_in_order(store: Any) -> None:
    """Messages come out of the inbox once, oldest first, with names."""
    await _with_users(store)
    first = await store.store_message("messi", "henderson", "one", 10.0)
    second = await store.store_message("messi", "henderson", "two", 11.0)
    await store.store_message("henderson", "messi", "back", 12.0)
    assert first.id < second.id
    assert first.sender_name == "Lionel Messi"
    assert first.recipient_name == "Jordan Henderson"
    drained = await store.drain_inbox("henderson", 20.0)
    assert [(m.text, m.sent_at) for m in drained] == [("one", 10.0), ("two", 11.0)]
    assert await store.drain_inbox("henderson", 21.0) == []
    assert [m.text for m in await store.drain_inbox("messi", 21.0)] == ["back"]


@pytest_twisted.ensureDeferred
async def test_unknown_recipient_or_sender(store: Any) -> None:
    """A message to or from an unknown user is refused and not stored."""
    await _with_users(store)
    with pytest.raises(NoSuchUser) as raised:
        await store.store_message("messi", "ronaldo", "hi", 1.0)
    assert raised.value.username == "ronaldo"
    with pytest.raises(NoSuchUser) as raised:
        await store.store_message("ronaldo", "messi", "hi", 1.0)
    assert raised.value.username == "ronaldo"
    assert await store.drain_inbox("messi", 2.0) == []


@pytest_twisted.ensureDeferred
async def test_deleting_user_keeps_their_sent_messages(store: Any) -> None:
    """Deleting a sender keeps its messages in others' mailboxes."""
    await _with_users(store)
    await store.store_message("messi", "henderson", "still here", 1.0)
    await store.store_message("henderson", "messi", "gone", 1.0)
    await store.delete_user("messi")
    drained = await store.drain_inbox("henderson", 2.0)
    assert [(m.text, m.sender_name) for m in drained] == [
        ("still here", "Lionel Messi")
    ]


@pytest_twisted.ensureDeferred
async def test_group_commit(sqlite_store: SQLiteStore) -> None:
    """Many concurrent sends share few commits, and all are acknowledged."""
    await _with_users(sqlite_store)
    before = sqlite_store.commits
    sends = [
        sqlite_store.store_message("messi", "henderson", f"m{i}", float(i))
        for i in range(200)
    ]
    messages = await gatherResults(sends)
    assert [m.text for m in messages] == [f"m{i}" for i in range(200)]
    assert sqlite_store.commits - before <= 2
    drained = await sqlite_store.drain_inbox("henderson", 999.0)
    assert [m.text for m in drained] == [f"m{i}" for i in range(200)]


@pytest_twisted.ensureDeferred
async def test_domain_error_undoes_only_its_operation(
    sqlite_store: SQLiteStore,
) -> None:
    """In one batch, a refused send does not undo its neighbours."""
    await _with_users(sqlite_store)
    results = await gatherResults(
        [
            sqlite_store.store_message("messi", "henderson", "a", 1.0),
            sqlite_store.store_message("messi", "ronaldo", "b", 1.0).addErrback(
                lambda f: f.trap(NoSuchUser) and "refused"
            ),
            sqlite_store.store_message("messi", "henderson", "c", 1.0),
        ]
    )
    assert results[1] == "refused"
    drained = await sqlite_store.drain_inbox("henderson", 2.0)
    assert [m.text for m in drained] == ["a", "c"]


@pytest_twisted.ensureDeferred
async def test_concurrent_drains_deliver_once(sqlite_store: SQLiteStore) -> None:
    """Two drains at once split the messages, never duplicating one."""
    await _with_users(sqlite_store)
    for i in range(20):
        await sqlite_store.store_message("messi", "henderson", f"m{i}", 1.0)
    first, second = await gatherResults(
        [
            sqlite_store.drain_inbox("henderson", 2.0),
            sqlite_store.drain_inbox("henderson", 2.0),
        ]
    )
    assert [m.text for m in first + second] == [f"m{i}" for i in range(20)]


@pytest_twisted.ensureDeferred
async def test_messages_durable_across_reopen(tmp_path: Path) -> None:
    """Committed messages are in the file when it is opened again."""
    path = str(tmp_path / "chat.sqlite")
    store = SQLiteStore(reactor, path)
    store.start()
    await _with_users(store)
    await store.store_message("messi", "henderson", "kept", 1.0)
    await store.close()
    reopened = SQLiteStore(reactor, path)
    reopened.start()
    try:
        assert [m.text for m in await reopened.drain_inbox("henderson", 2.0)] == [
            "kept"
        ]
    finally:
        await reopened.close()


@pytest_twisted.ensureDeferred
async def test_disk_full_is_not_acknowledged_and_recovers(tmp_path: Path) -> None:
    """A full database fails sends with StorageUnavailable, then recovers."""
    path = str(tmp_path / "chat.sqlite")
    store = SQLiteStore(reactor, path)
    store.start()
    try:
        await _with_users(store)
        await store._run(lambda c: c.execute("PRAGMA max_page_count=1").fetchall())
        with pytest.raises(StorageUnavailable):
            await store.store_message("messi", "henderson", "x" * 20000, 1.0)
        assert await _count_messages(path) == 0
        await store._run(
            lambda c: c.execute("PRAGMA max_page_count=1000000").fetchall()
        )
        message = await store.store_message("messi", "henderson", "x" * 20000, 2.0)
        assert message.text == "x" * 20000
        assert await _count_messages(path) == 1
    finally:
        await store.close()


async def _count_messages(path: str) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_closed_store_refuses(tmp_path: Path) -> None:
    """After close, operations fail with StorageUnavailable."""
    store = SQLiteStore(reactor, str(tmp_path / "chat.sqlite"))
    store.start()
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.get_user("messi")


@pytest_twisted.ensureDeferred
async def test_close_finishes_queued_work(tmp_path: Path) -> None:
    """close() commits operations queued before it."""
    path = str(tmp_path / "chat.sqlite")
    store = SQLiteStore(reactor, path)
    store.start()
    await _with_users(store)
    sends = [store.store_message("messi", "henderson", str(i), 1.0) for i in range(50)]
    closing = store.close()
    await gatherResults(sends)
    await closing
    assert await _count_messages(path) == 50


def test_sqlite_settings(tmp_path: Path) -> None:
    """The database is in WAL mode with foreign keys and full sync on use."""
    path = str(tmp_path / "chat.sqlite")
    store = SQLiteStore(reactor, path)
    connection = store._connect()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    connection.close()


def test_schema_created_fresh(tmp_path: Path) -> None:
    """A missing file is created at the current schema version, atomically."""
    path = str(tmp_path / "sub" / "chat.sqlite")
    assert schema.prepare(path) == 0
    assert os.listdir(tmp_path / "sub") == ["chat.sqlite"]
    connection = sqlite3.connect(path)
    assert schema.read_version(connection) == schema.SCHEMA_VERSION
    tables = {
        r[0]
        for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {"users", "sessions", "messages", "schema_version"} <= tables
    connection.close()
    assert schema.prepare(path) == schema.SCHEMA_VERSION


def test_schema_refuses_newer(tmp_path: Path) -> None:
    """A database from a newer chat is refused with a clear message."""
    path = str(tmp_path / "chat.sqlite")
    schema.prepare(path)
    connection = sqlite3.connect(path)
    connection.execute("UPDATE schema_version SET version = 99")
    connection.commit()
    connection.close()
    with pytest.raises(SchemaTooNew, match="schema version 99"):
        SQLiteStore(reactor, path)


def test_not_a_chat_database(tmp_path: Path) -> None:
    """A file that is not a chat database is refused."""
    path = tmp_path / "chat.sqlite"
    path.write_bytes(b"hello, I am not SQLite" * 100)
    with pytest.raises(StorageUnavailable, match="not a chat database"):
        schema.prepare(str(path))


def test_schema_upgrade_backs_up_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older database is backed up, then upgraded one step at a time."""
    path = str(tmp_path / "chat.sqlite")
    schema.prepare(path)
    steps: list[str] = []
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)

    def fake_sql(name: str) -> str:
        steps.append(name)
        return "CREATE TABLE extra (x INTEGER); UPDATE schema_version SET version = 2;"

    monkeypatch.setattr(schema, "_sql", fake_sql)
    assert schema.prepare(path) == 1
    assert steps == ["upgrade-to-v2.sql"]
    assert os.path.exists(path + ".v1.bak")
    connection = sqlite3.connect(path)
    assert schema.read_version(connection) == 2
    connection.close()
    backup = sqlite3.connect(path + ".v1.bak")
    assert schema.read_version(backup) == 1
    backup.close()


def test_open_store_descriptions(tmp_path: Path) -> None:
    """open_store understands sqlite:PATH and refuses anything else."""
    store = open_store(reactor, f"sqlite:{tmp_path / 'x.sqlite'}")
    assert isinstance(store, SQLiteStore)
    with pytest.raises(ValueError, match="unknown store"):
        open_store(reactor, "mysql://nope")


@pytest_twisted.ensureDeferred
async def test_undelivered_and_mark_delivered(store: Any) -> None:
    """Reading undelivered messages marks nothing; marking goes up to an id."""
    await _with_users(store)
    ids = [
        (await store.store_message("messi", "henderson", f"m{i}", 1.0)).id
        for i in range(5)
    ]
    await store.store_message("henderson", "messi", "other mailbox", 1.0)
    page = await store.undelivered("henderson", 0, 3)
    assert [m.text for m in page] == ["m0", "m1", "m2"]
    assert [m.text for m in await store.undelivered("henderson", ids[2], 10)] == [
        "m3",
        "m4",
    ]
    assert len(await store.undelivered("henderson", 0, 10)) == 5
    assert await store.mark_delivered("henderson", ids[1], 2.0) == 2
    assert await store.mark_delivered("henderson", ids[1], 2.0) == 0
    assert [m.text for m in await store.undelivered("henderson", 0, 10)] == [
        "m2",
        "m3",
        "m4",
    ]
    assert [m.text for m in await store.drain_inbox("henderson", 3.0)] == [
        "m2",
        "m3",
        "m4",
    ]
    assert [m.text for m in await store.undelivered("messi", 0, 10)] == [
        "other mailbox"
    ]
