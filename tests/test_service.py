"""
The chat service's lifecycle: the open-file limit at start, and a stop
that finishes the store's in-flight commits.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from chat import service as service_module
from chat.build import Settings
from chat.checkers import Argon2Hasher
from chat.errors import StorageUnavailable
from chat.limits import Limits
from chat.service import DEMO_PASSWORD, SPARE_FILES, ChatService, ensure_demo_users
from chat.store.memory import MemoryStore
from chat.store.sqlite import SQLiteStore
from tests.helpers import FAST_ARGON2, InlineHasher, result_of


def make_service(
    tmp_path: Path, endpoints: tuple[str, ...] = (), **settings: Any
) -> ChatService:
    store = SQLiteStore(reactor, str(tmp_path / "chat.sqlite"))
    return ChatService(
        reactor,
        store,
        list(endpoints),
        Settings(**settings),
        hasher=Argon2Hasher(reactor, hasher=FAST_ARGON2),
        demo=True,
    )


@pytest_twisted.ensureDeferred
async def test_stop_finishes_in_flight_commits(tmp_path: Path) -> None:
    """Stopping while sends are in flight commits them all, then refuses more."""
    # Without ports to stop listening on, the store is closed at once, while
    # one batch is in flight and the next one still queued.
    service = make_service(tmp_path)
    service.startService()
    await service.ready
    store = service.store
    sends = [
        store.store_message("messi", "henderson", f"m{i}", 1.0) for i in range(300)
    ]
    assert store._in_flight is not None and store._pending
    done: list[object] = []
    for d in sends:
        d.addBoth(lambda result: done.append(result) or result)
    stopping = service.stopService()
    done_when_stopped: list[int] = []
    stopping.addCallback(lambda _: done_when_stopped.append(len(done)))
    await stopping
    assert done_when_stopped == [300]
    messages = await gatherResults(sends)
    assert [m.text for m in messages] == [f"m{i}" for i in range(300)]
    with pytest.raises(StorageUnavailable):
        await store.store_message("messi", "henderson", "late", 1.0)
    connection = sqlite3.connect(tmp_path / "chat.sqlite")
    count = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
    connection.close()
    assert count == 300


def test_connections_fit_the_open_file_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the system allows fewer open files, fewer connections are accepted."""
    wanted: list[int] = []

    def fake_raise(target: int) -> int:
        wanted.append(target)
        return 500

    monkeypatch.setattr(service_module, "raise_open_file_limit", fake_raise)
    service = make_service(tmp_path, limits=Limits(max_connections=1000))
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        service._ensure_open_files()
    finally:
        globalLogPublisher.removeObserver(events)
    assert wanted == [1000 + SPARE_FILES]
    assert service.factory.connections.max_total == 500 - SPARE_FILES
    assert any("open-file limit" in e.get("log_format", "") for e in events)


def test_connections_within_the_open_file_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With enough open files, max-connections stays as configured."""
    monkeypatch.setattr(service_module, "raise_open_file_limit", lambda n: n)
    service = make_service(tmp_path, limits=Limits(max_connections=1000))
    service._ensure_open_files()
    assert service.factory.connections.max_total == 1000


class HashCounter(InlineHasher):
    """
    An L{InlineHasher} that counts the hashes it makes.
    """

    def __init__(self) -> None:
        self.hashed = 0

    def hash(self, password: str) -> Deferred[str]:
        self.hashed += 1
        return super().hash(password)


def test_demo_users_share_one_hash() -> None:
    """--demo creates the three course users with one hash of their shared
    password, and creates only the ones that are missing."""
    store = MemoryStore()
    hasher = HashCounter()
    result_of(Deferred.fromCoroutine(ensure_demo_users(store, hasher)))
    users = result_of(store.list_users())
    assert [u.username for u in users] == ["henderson", "lineker", "messi"]
    assert hasher.hashed == 1
    assert len({u.password_hash for u in users}) == 1
    assert result_of(hasher.verify(users[0].password_hash, DEMO_PASSWORD))
    result_of(store.delete_user("lineker"))
    result_of(Deferred.fromCoroutine(ensure_demo_users(store, hasher)))
    assert hasher.hashed == 2
    assert len(result_of(store.list_users())) == 3
