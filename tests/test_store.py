"""
The store contract, run against the in-memory store and SQLite on a real
file; then what only SQLite does: group commit, faults, schema versions.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chat.errors import (
    AlreadyAMember,
    CannotKickSelf,
    GroupExists,
    MailboxFull,
    NoSuchGroup,
    NoSuchUser,
    NoSuchUsers,
    NotAMember,
    NotGroupOwner,
    QuotaExceeded,
    SchemaTooNew,
    StorageUnavailable,
    TooManyGroups,
    TooManyUnread,
    UserExists,
)
from chat.limits import Quotas
from chat.links import RealmLink
from chat.model import Attachment, Rehash, Session, User
from chat.store import open_store, schema
from chat.store.batching import Call
from chat.store.interfaces import IChatStore, IExternalChanges
from chat.store.memory import MemoryStore
from chat.store.postgres import PostgresStore
from chat.store.sqlite import SQLiteStore

MESSI = User("messi", "Lionel Messi", "Argentina", "$argon2id$fake1")
HENDERSON = User("henderson", "Jordan Henderson", "Inggris", "$argon2id$fake2")
LINEKER = User("lineker", "Gary Lineker", "Inggris", "$argon2id$fake3")
PNG = bytes(range(256)) * 5 + b"\x89PNG\r\n\x1a\n\x00"


def page_limit(pages: int) -> Call:
    """
    An operation that limits the database to C{pages} pages: a full disk.
    """
    return Call(lambda txn: txn.execute(f"PRAGMA max_page_count={pages}").fetchall())


STORES = ["memory", "sqlite", "postgresql"]


def _open(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    max_mailbox: int | None = None,
    max_per_sender: int | None = None,
    quotas: Quotas | None = None,
) -> Iterator[Any]:
    """
    The store of C{request.param}, empty, closed after the test.
    """
    limits: dict[str, int] = {}
    if max_mailbox is not None:
        limits["max_mailbox"] = max_mailbox
    if max_per_sender is not None:
        limits["max_per_sender"] = max_per_sender
    if request.param == "memory":
        yield MemoryStore(**limits, quotas=quotas or Quotas())
        return
    if request.param == "sqlite":
        opened: Any = SQLiteStore(
            reactor, str(tmp_path / "chat.sqlite"), quotas=quotas, **limits
        )
    else:
        opened = PostgresStore(
            reactor, request.getfixturevalue("postgres_db"), quotas=quotas, **limits
        )
    opened.start()
    yield opened
    pytest_twisted.blockon(opened.close())


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    yield from _open(request, tmp_path)


@pytest.fixture(params=STORES)
def small_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """
    Each store with mailboxes of 3 messages.
    """
    yield from _open(request, tmp_path, max_mailbox=3)


@pytest.fixture(params=STORES)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """
    Each store with mailboxes of 4 messages, at most 2 from one sender.
    """
    yield from _open(request, tmp_path, max_mailbox=4, max_per_sender=2)


@pytest.fixture(params=STORES)
def quota_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """
    Each store with quotas of 2 files and 1500 bytes per user, and 2 groups.
    """
    quotas = Quotas(max_files=2, max_file_bytes=1500, max_groups=2)
    yield from _open(request, tmp_path, quotas=quotas)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(reactor, str(tmp_path / "chat.sqlite"))
    store.start()
    yield store
    pytest_twisted.blockon(store.close())


async def _with_users(store: Any) -> None:
    await store.add_user(MESSI)
    await store.add_user(HENDERSON)


async def _with_three(store: Any) -> None:
    await _with_users(store)
    await store.add_user(LINEKER)


def test_provides_interface(store: Any) -> None:
    """Every store provides IChatStore."""
    assert verifyObject(IChatStore, store)


@pytest_twisted.ensureDeferred
async def test_users(store: Any) -> None:
    """Users can be added, read, listed (all, or the first few), re-hashed
    and deleted."""
    await _with_users(store)
    assert await store.get_user("messi") == MESSI
    with pytest.raises(UserExists):
        await store.add_user(MESSI)
    assert [u.username for u in await store.list_users()] == ["henderson", "messi"]
    assert await store.list_users(1) == [HENDERSON]
    await store.set_password_hash("messi", "$argon2id$new")
    assert (await store.get_user("messi")).password_hash == "$argon2id$new"
    await store.delete_user("messi")
    with pytest.raises(NoSuchUser):
        await store.get_user("messi")
    with pytest.raises(NoSuchUser):
        await store.delete_user("messi")
    with pytest.raises(NoSuchUser):
        await store.set_password_hash("messi", "x")


@implementer(IReactorTime)
class _ReactorAt:
    """
    The real reactor, whose clock says C{now}.
    """

    def __init__(self, now: float) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


@pytest_twisted.ensureDeferred
async def test_user_created_at_comes_from_the_reactor(tmp_path: Path) -> None:
    """The time a user was added is the store's reactor's clock, not the
    machine's."""
    path = str(tmp_path / "chat.sqlite")
    store = SQLiteStore(_ReactorAt(1234.5), path)  # type: ignore[arg-type]
    store.start()
    try:
        await store.add_user(MESSI)
    finally:
        await store.close()
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT username, created_at FROM users").fetchall()
    finally:
        connection.close()
    assert rows == [("messi", 1234.5)]


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
async def test_session_with_rehash_replaces_only_the_old_hash(store: Any) -> None:
    """A session stored with a rehash replaces the hash it was made from, only it."""
    await _with_users(store)
    await store.create_session(Session("h1", "messi", 1.0, 1.0))
    rehash = Rehash(MESSI.password_hash, "$argon2id$rehashed")
    await store.create_session(Session("h2", "messi", 2.0, 2.0), rehash)
    assert (await store.get_user("messi")).password_hash == "$argon2id$rehashed"
    # Unlike a new password, it ends no session.
    assert await store.get_session("h1") is not None
    assert await store.get_session("h2") is not None
    # Changed meanwhile (chat-admin passwd): the change wins.
    await store.set_password_hash("henderson", "$argon2id$admin")
    stale = Rehash(HENDERSON.password_hash, "$argon2id$late")
    await store.create_session(Session("h3", "henderson", 3.0, 3.0), stale)
    assert (await store.get_user("henderson")).password_hash == "$argon2id$admin"
    assert await store.get_session("h3") is not None


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
async def test_mailbox_full(small_store: Any) -> None:
    """A mailbox holds max_mailbox undelivered messages; reading frees it."""
    await _with_users(small_store)
    for i in range(3):
        await small_store.store_message("messi", "henderson", f"m{i}", 1.0)
    with pytest.raises(MailboxFull) as raised:
        await small_store.store_message("messi", "henderson", "m3", 2.0)
    assert raised.value.username == "henderson"
    # Only undelivered messages count, and only the recipient's.
    await small_store.store_message("henderson", "messi", "other", 2.0)
    drained = await small_store.drain_inbox("henderson", 3.0)
    assert [m.text for m in drained] == ["m0", "m1", "m2"]
    await small_store.store_message("messi", "henderson", "m4", 4.0)
    assert [m.text for m in await small_store.drain_inbox("henderson", 5.0)] == ["m4"]


@pytest_twisted.ensureDeferred
async def test_mailbox_full_refuses_a_whole_list_send(small_store: Any) -> None:
    """A send to several users stores nothing if any of their mailboxes is full."""
    await _with_three(small_store)
    for i in range(3):
        await small_store.store_message("messi", "henderson", f"m{i}", 1.0)
    with pytest.raises(MailboxFull) as raised:
        await small_store.store_messages("messi", ["lineker", "henderson"], "x", 2.0)
    assert raised.value.username == "henderson"
    assert await small_store.drain_inbox("lineker", 3.0) == []
    sent = await small_store.store_messages("messi", ["lineker"], "y", 2.0)
    assert [m.recipient for m in sent] == ["lineker"]


@pytest_twisted.ensureDeferred
async def test_group_message_skips_full_mailboxes(small_store: Any) -> None:
    """A member with a full mailbox gets the group message only in history."""
    await _with_three(small_store)
    await small_store.create_group("team", "messi", 1.0)
    await small_store.join_group("team", "henderson", 1.0)
    await small_store.join_group("team", "lineker", 1.0)
    for i in range(3):
        await small_store.store_message("messi", "henderson", f"m{i}", 1.0)
    stored = await small_store.store_group_message("messi", "team", "hi all", 2.0)
    assert sorted(m.recipient for m in stored) == ["lineker", "messi"]
    history = await small_store.group_history("henderson", "team", 10)
    assert [m.text for m in history.messages] == ["hi all"]
    drained = await small_store.drain_inbox("henderson", 3.0)
    assert [m.text for m in drained] == ["m0", "m1", "m2"]
    assert [m.text for m in await small_store.drain_inbox("lineker", 3.0)] == ["hi all"]


@pytest_twisted.ensureDeferred
async def test_acknowledged_and_purged_messages_free_the_mailbox(
    small_store: Any,
) -> None:
    """Messages acknowledged (push) or purged (retention) no longer count."""
    await _with_users(small_store)
    sent = [
        await small_store.store_message("messi", "henderson", f"m{i}", float(i))
        for i in range(3)
    ]
    with pytest.raises(MailboxFull):
        await small_store.store_message("messi", "henderson", "full", 5.0)
    assert await small_store.mark_delivered("henderson", sent[0].id, 6.0) == 1
    await small_store.store_message("messi", "henderson", "after ack", 7.0)
    with pytest.raises(MailboxFull):
        await small_store.store_message("messi", "henderson", "full", 8.0)
    assert await small_store.purge_messages(2.0, 10) == 2
    await small_store.store_message("messi", "henderson", "after purge", 9.0)
    remaining = await small_store.drain_inbox("henderson", 10.0)
    assert [m.text for m in remaining] == ["m2", "after ack", "after purge"]


@pytest_twisted.ensureDeferred
async def test_mailbox_full_undoes_only_that_send(tmp_path: Path) -> None:
    """In one SQLite batch, a send to a full mailbox fails alone."""
    store = SQLiteStore(reactor, str(tmp_path / "chat.sqlite"), max_mailbox=2)
    store.start()
    try:
        await _with_users(store)
        before = store.commits
        results = await gatherResults(
            [
                store.store_message("messi", "henderson", f"m{i}", 1.0).addErrback(
                    lambda f: f.trap(MailboxFull) and "full"
                )
                for i in range(4)
            ]
            + [store.store_message("henderson", "messi", "back", 1.0)]
        )
        assert [getattr(r, "text", r) for r in results] == [
            "m0",
            "m1",
            "full",
            "full",
            "back",
        ]
        assert store.commits - before == 1
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_mailbox_counts_forget_failed_batches(tmp_path: Path) -> None:
    """A send undone by a storage error does not count towards the mailbox."""
    store = SQLiteStore(reactor, str(tmp_path / "chat.sqlite"), max_mailbox=3)
    store.start()
    try:
        await _with_users(store)
        await store.store_message("messi", "henderson", "one", 1.0)
        await store.run(
            Call(lambda txn: txn.execute("PRAGMA max_page_count=1").fetchall())
        )
        # One batch: a small send that fits, then one that fills the disk.
        small = store.store_message("messi", "henderson", "two", 1.0)
        huge = store.store_message("messi", "henderson", "x" * 20000, 1.0)
        for d in (small, huge):
            with pytest.raises(StorageUnavailable):
                await d
        await store.run(page_limit(1_000_000))
        await store.store_message("messi", "henderson", "two", 1.0)
        await store.store_message("messi", "henderson", "three", 1.0)
        with pytest.raises(MailboxFull):
            await store.store_message("messi", "henderson", "four", 1.0)
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_mailbox_counts_follow_users_made_again(tmp_path: Path) -> None:
    """A user deleted and made again elsewhere (chat-admin) starts at zero."""
    path = str(tmp_path / "chat.sqlite")
    store = SQLiteStore(reactor, path, max_mailbox=2)
    store.start()
    try:
        await _with_users(store)
        for text in ("one", "two"):
            await store.store_message("messi", "henderson", text, 1.0)
        with pytest.raises(MailboxFull):
            await store.store_message("messi", "henderson", "three", 1.0)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("PRAGMA foreign_keys=ON")
        other.execute("DELETE FROM users WHERE username = 'henderson'")
        other.execute(
            "INSERT INTO users (username, full_name, country, password_hash,"
            " created_at) VALUES ('henderson', 'J H', '', 'x', 12345.0)"
        )
        other.close()
        await store.store_message("messi", "henderson", "new", 2.0)
        assert [m.text for m in await store.drain_inbox("henderson", 3.0)] == ["new"]
    finally:
        await store.close()


async def test_store_messages_to_several(store: Any) -> None:
    """One message to several users: one row per distinct recipient."""
    await _with_three(store)
    sent = await store.store_messages(
        "messi", ["henderson", "messi", "henderson", "lineker"], "all", 5.0
    )
    assert [(m.recipient, m.recipient_name) for m in sent] == [
        ("henderson", "Jordan Henderson"),
        ("messi", "Lionel Messi"),
        ("lineker", "Gary Lineker"),
    ]
    assert len({m.id for m in sent}) == 3
    assert all(m.group is None and m.file_name is None for m in sent)
    for username in ("henderson", "messi", "lineker"):
        drained = await store.drain_inbox(username, 6.0)
        assert [(m.sender, m.text, m.sent_at) for m in drained] == [
            ("messi", "all", 5.0)
        ]


@pytest_twisted.ensureDeferred
async def test_store_messages_all_or_none(store: Any) -> None:
    """Unknown recipients are all named, and nothing is stored for anyone."""
    await _with_three(store)
    with pytest.raises(NoSuchUsers) as raised:
        await store.store_messages(
            "messi", ["henderson", "ronaldo", "lineker", "pele"], "x", 1.0
        )
    assert raised.value.usernames == ["ronaldo", "pele"]
    with pytest.raises(NoSuchUser) as unknown_sender:
        await store.store_messages("ronaldo", ["henderson"], "x", 1.0)
    assert unknown_sender.value.username == "ronaldo"
    assert await store.drain_inbox("henderson", 2.0) == []
    assert await store.drain_inbox("lineker", 2.0) == []


@pytest_twisted.ensureDeferred
async def test_existing_sessions(store: Any) -> None:
    """A store says which of many sessions still exist, after a new password
    ended some of them (as chat-admin passwd does in another process)."""
    await _with_users(store)
    for i in range(600):
        await store.create_session(Session(f"m{i}", "messi", 1.0, 1.0))
    await store.create_session(Session("h1", "henderson", 1.0, 1.0))
    hashes = [f"m{i}" for i in range(600)] + ["h1", "never"]
    assert await store.existing_sessions(hashes) == {*hashes[:601]}
    await store.set_password_hash("messi", "$argon2id$new")
    assert await store.existing_sessions(hashes) == {"h1"}
    assert await store.existing_sessions([]) == set()


@pytest_twisted.ensureDeferred
async def test_external_changes_count_writes_of_other_processes(
    sqlite_store: SQLiteStore,
) -> None:
    """The SQLite store counts the times another connection (chat-admin)
    committed to the file, not its own writes."""
    assert verifyObject(IExternalChanges, sqlite_store)
    first = await sqlite_store.external_changes()
    await _with_users(sqlite_store)
    assert await sqlite_store.external_changes() == first
    other = sqlite3.connect(sqlite_store.path, isolation_level=None)
    other.execute("UPDATE users SET country = 'Inggris Raya'")
    other.close()
    second = await sqlite_store.external_changes()
    assert second == first + 1
    assert await sqlite_store.external_changes() == second


@pytest_twisted.ensureDeferred
async def test_external_changes_ride_along_a_batch(
    sqlite_store: SQLiteStore,
) -> None:
    """Asked while a batch is in flight, the count comes with the next batch
    of other operations: no transaction of its own."""
    await _with_users(sqlite_store)
    before = await sqlite_store.external_changes()
    await deferLater(reactor, 0, lambda: None)  # out of the store's callback
    commits = sqlite_store.commits
    gate = threading.Event()
    held = sqlite_store.run(Call(lambda txn: gate.wait(10)))
    asked = sqlite_store.external_changes()
    sent = sqlite_store.store_message("messi", "henderson", "hi", 1.0)
    gate.set()
    assert await held is True
    assert await asked == before
    await sent
    assert sqlite_store.commits == commits + 2


@pytest_twisted.ensureDeferred
async def test_external_changes_after_close(tmp_path: Path) -> None:
    """A closed store answers storage unavailable, and does not reopen."""
    store = SQLiteStore(reactor, str(tmp_path / "chat.sqlite"))
    store.start()
    await store.external_changes()
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.external_changes()


@pytest_twisted.ensureDeferred
async def test_file_messages(store: Any) -> None:
    """A file comes out of the inbox byte-identical, with its metadata."""
    await _with_three(store)
    attachment = Attachment("photo.png", PNG)
    sent = await store.store_messages(
        "messi", ["henderson", "lineker"], "photo.png", 3.0, attachment
    )
    assert [m.file_sha256 for m in sent] == [attachment.sha256] * 2
    (got,) = await store.drain_inbox("henderson", 4.0)
    assert got.file_content == PNG
    assert (got.file_name, got.file_size, got.file_sha256, got.text) == (
        "photo.png",
        len(PNG),
        attachment.sha256,
        "photo.png",
    )
    (other,) = await store.drain_inbox("lineker", 4.0)
    assert other.file_content == PNG


def _file(name: str, size: int) -> Attachment:
    return Attachment(name, name.encode() * (size // len(name)))


@pytest_twisted.ensureDeferred
async def test_file_quota_counts_distinct_files_still_stored(quota_store: Any) -> None:
    """A user may keep 2 distinct files: the same file again, to others or a
    group, costs nothing more; a third is refused with nothing stored."""
    store = quota_store
    await _with_three(store)
    a, b, c = _file("a", 400), _file("b", 400), _file("c", 400)
    await store.store_messages("messi", ["henderson"], "a", 1.0, a)
    await store.store_messages("messi", ["henderson", "lineker"], "a", 2.0, a)
    await store.create_group("team", "messi", 2.0)
    await store.join_group("team", "henderson", 2.0)
    await store.store_group_message("messi", "team", "a", 3.0, a)
    await store.store_messages("messi", ["lineker"], "b", 4.0, b)
    with pytest.raises(QuotaExceeded) as refused:
        await store.store_messages("messi", ["henderson"], "c", 5.0, c)
    assert (refused.value.quota, refused.value.limit) == ("files", 2)
    with pytest.raises(QuotaExceeded):
        await store.store_group_message("messi", "team", "c", 5.0, c)
    # Still allowed: a file messi has stored already; c from someone else.
    await store.store_messages("messi", ["lineker"], "b", 6.0, b)
    await store.store_messages("henderson", ["messi"], "c", 6.0, c)
    inbox = await store.drain_inbox("henderson", 7.0)
    assert [m.file_name for m in inbox] == ["a", "a", "a"]
    assert [m.file_name for m in await store.drain_inbox("messi", 7.0)] == ["c"]


@pytest_twisted.ensureDeferred
async def test_file_quota_counts_bytes(quota_store: Any) -> None:
    """A new file that would take a user past 1500 bytes is refused."""
    store = quota_store
    await _with_users(store)
    await store.store_messages("messi", ["henderson"], "a", 1.0, _file("a", 1000))
    with pytest.raises(QuotaExceeded) as refused:
        await store.store_messages("messi", ["henderson"], "b", 2.0, _file("b", 600))
    assert (refused.value.quota, refused.value.limit) == ("bytes", 1500)
    await store.store_messages("messi", ["henderson"], "b", 3.0, _file("b", 500))
    assert len(await store.drain_inbox("henderson", 4.0)) == 2


@pytest_twisted.ensureDeferred
async def test_file_quota_frees_with_the_messages(quota_store: Any) -> None:
    """A file stops counting once no message of the user carries it: after
    retention purged them, or their recipient was deleted."""
    store = quota_store
    await _with_three(store)
    await store.store_messages("messi", ["henderson"], "a", 1.0, _file("a", 400))
    await store.store_messages("messi", ["lineker"], "b", 5.0, _file("b", 400))
    with pytest.raises(QuotaExceeded):
        await store.store_messages("messi", ["lineker"], "c", 6.0, _file("c", 400))
    await store.purge_messages(2.0, 100)
    await store.store_messages("messi", ["lineker"], "c", 6.0, _file("c", 400))
    with pytest.raises(QuotaExceeded):
        await store.store_messages("messi", ["lineker"], "d", 7.0, _file("d", 400))
    await store.delete_user("lineker")
    await store.store_messages("messi", ["henderson"], "d", 8.0, _file("d", 400))
    await store.store_messages("messi", ["henderson"], "e", 8.0, _file("e", 400))


@pytest_twisted.ensureDeferred
async def test_group_quota(quota_store: Any) -> None:
    """A user may belong to 2 groups, as owner or member; a third is refused
    until they leave one."""
    store = quota_store
    await _with_three(store)
    await store.create_group("one", "messi", 1.0)
    await store.create_group("two", "henderson", 1.0)
    await store.join_group("two", "messi", 1.0)
    with pytest.raises(TooManyGroups) as refused:
        await store.create_group("three", "messi", 2.0)
    assert refused.value.limit == 2
    await store.create_group("three", "lineker", 2.0)
    with pytest.raises(TooManyGroups):
        await store.join_group("three", "messi", 2.0)
    assert [g.name for g in await store.list_groups("messi")] == ["one", "two"]
    assert [g.members for g in await store.list_groups("lineker")] == [("lineker",)]
    await store.leave_group("one", "messi")
    joined = await store.join_group("three", "messi", 3.0)
    assert joined.members == ("lineker", "messi")


@pytest_twisted.ensureDeferred
async def test_drain_inbox_byte_budget(store: Any) -> None:
    """A byte budget stops the drain early, at least one message; the rest waits."""
    await _with_users(store)
    big = Attachment("big.bin", b"x" * 1000)
    for i in range(3):
        await store.store_messages("messi", ["henderson"], "big.bin", float(i), big)
    await store.store_message("messi", "henderson", "text", 9.0)
    first = await store.drain_inbox("henderson", 10.0, 1500)
    assert [m.sent_at for m in first] == [0.0]
    # Each file message counts its text too: 7 + 1000 bytes.
    second = await store.drain_inbox("henderson", 10.0, 2015)
    assert [m.sent_at for m in second] == [1.0, 2.0]
    tiny = await store.drain_inbox("henderson", 10.0, 1)
    assert [m.text for m in tiny] == ["text"]
    assert await store.drain_inbox("henderson", 10.0, 1) == []


@pytest_twisted.ensureDeferred
async def test_group_lifecycle(store: Any) -> None:
    """Create, join, list, leave: ownership passes on; empty groups go away."""
    await _with_three(store)
    created = await store.create_group("team", "messi", 1.0)
    assert (created.name, created.owner, created.members) == (
        "team",
        "messi",
        ("messi",),
    )
    with pytest.raises(GroupExists):
        await store.create_group("team", "henderson", 2.0)
    with pytest.raises(NoSuchUser):
        await store.create_group("other", "ronaldo", 2.0)
    await store.join_group("team", "lineker", 2.0)
    joined = await store.join_group("team", "henderson", 3.0)
    assert joined.members == ("messi", "lineker", "henderson")
    with pytest.raises(AlreadyAMember):
        await store.join_group("team", "henderson", 4.0)
    with pytest.raises(NoSuchGroup):
        await store.join_group("nope", "henderson", 4.0)
    await store.create_group("alpha", "henderson", 5.0)
    listed = await store.list_groups("henderson")
    assert [(g.name, g.owner, g.members) for g in listed] == [
        ("alpha", "henderson", ("henderson",)),
        ("team", "messi", ("messi", "lineker", "henderson")),
    ]
    assert [g.name for g in await store.list_groups("messi")] == ["team"]
    left = await store.leave_group("team", "messi")
    assert (left.owner, left.members) == ("lineker", ("lineker", "henderson"))
    with pytest.raises(NotAMember):
        await store.leave_group("team", "messi")
    assert await store.leave_group("alpha", "henderson") is None
    with pytest.raises(NoSuchGroup):
        await store.join_group("alpha", "messi", 6.0)
    with pytest.raises(NoSuchGroup):
        await store.leave_group("alpha", "henderson")
    assert [g.name for g in await store.list_groups("henderson")] == ["team"]


@pytest_twisted.ensureDeferred
async def test_create_group_with_members(store: Any) -> None:
    """Members given at creation join after the owner, all or none."""
    await _with_three(store)
    created = await store.create_group(
        "team", "messi", 1.0, ["lineker", "messi", "henderson", "lineker"]
    )
    assert created.members == ("messi", "lineker", "henderson")
    assert [g.name for g in await store.list_groups("henderson")] == ["team"]
    with pytest.raises(NoSuchUsers) as refused:
        await store.create_group("other", "messi", 2.0, ["ghost", "lineker", "pele"])
    assert refused.value.usernames == ["ghost", "pele"]
    assert [g.name for g in await store.list_groups("lineker")] == ["team"]
    with pytest.raises(AlreadyAMember):
        await store.join_group("team", "lineker", 3.0)


@pytest_twisted.ensureDeferred
async def test_list_all_groups(store: Any) -> None:
    """Every group, by name, up to a limit."""
    await _with_three(store)
    assert await store.list_all_groups(10) == []
    for name, owner in [("zeta", "messi"), ("alpha", "lineker"), ("mid", "messi")]:
        await store.create_group(name, owner, 1.0)
    listed = await store.list_all_groups(10)
    assert [(g.name, g.owner, g.members) for g in listed] == [
        ("alpha", "lineker", ("lineker",)),
        ("mid", "messi", ("messi",)),
        ("zeta", "messi", ("messi",)),
    ]
    assert [g.name for g in await store.list_all_groups(2)] == ["alpha", "mid"]
    await store.join_group("mid", "lineker", 2.0)
    await store.join_group("mid", "henderson", 3.0)
    await store.leave_group("mid", "messi")
    await store.join_group("alpha", "messi", 4.0)
    listed = await store.list_all_groups(2)
    assert [(g.name, g.owner, g.members) for g in listed] == [
        ("alpha", "lineker", ("lineker", "messi")),
        ("mid", "lineker", ("lineker", "henderson")),
    ]
    assert listed[1] == (await store.list_groups("henderson"))[0]


@pytest_twisted.ensureDeferred
async def test_store_to_name(store: Any) -> None:
    """One bare name is the user of that name if there is one, or else the
    group of that name; neither is an unknown user, and nothing is stored."""
    await _with_three(store)
    await store.create_group("team", "messi", 1.0, ["henderson"])
    await store.create_group("lineker", "messi", 1.0)
    (to_user,) = await store.store_to_name("messi", "lineker", "to the user", 2.0)
    assert (to_user.recipient, to_user.group) == ("lineker", None)
    own, other = await store.store_to_name("messi", "team", "to the group", 3.0)
    assert own.senders_copy and own.group == "team"
    assert (other.recipient, other.group) == ("henderson", "team")
    (filed,) = await store.store_to_name(
        "henderson", "messi", "f.txt", 4.0, Attachment("f.txt", PNG)
    )
    assert (filed.file_name, filed.file_content) == ("f.txt", PNG)
    with pytest.raises(NoSuchUsers) as neither:
        await store.store_to_name("messi", "ghost", "hi", 5.0)
    assert neither.value.usernames == ["ghost"]
    with pytest.raises(NotAMember):
        await store.store_to_name("lineker", "team", "hi", 5.0)
    with pytest.raises(NoSuchUser):
        await store.store_to_name("pele", "team", "hi", 5.0)
    inbox = await store.drain_inbox("henderson", 6.0)
    assert [m.text for m in inbox] == ["to the group"]
    assert [m.text for m in await store.drain_inbox("lineker", 6.0)] == ["to the user"]
    assert [m.text for m in await store.drain_inbox("messi", 6.0)] == ["f.txt"]


@pytest_twisted.ensureDeferred
async def test_drain_inbox_from_one_sender(store: Any) -> None:
    """Only one sender's private messages are taken, once; the rest stay."""
    await _with_three(store)
    await store.create_group("team", "messi", 1.0, ["henderson"])
    await store.store_message("messi", "henderson", "one", 1.0)
    await store.store_message("lineker", "henderson", "other", 2.0)
    await store.store_group_message("messi", "team", "group", 3.0)
    await store.store_messages(
        "messi", ["henderson"], "f.txt", 4.0, Attachment("f.txt", PNG)
    )
    taken = await store.drain_inbox_from("henderson", "messi", 5.0)
    assert [(m.text, m.file_content) for m in taken] == [
        ("one", None),
        ("f.txt", PNG),
    ]
    assert await store.drain_inbox_from("henderson", "messi", 6.0) == []
    assert await store.drain_inbox_from("henderson", "pele@realm-b", 6.0) == []
    with pytest.raises(NoSuchUser):
        await store.drain_inbox_from("henderson", "pele", 6.0)
    rest = await store.drain_inbox("henderson", 7.0)
    assert [m.text for m in rest] == ["other", "group"]


@pytest_twisted.ensureDeferred
async def test_kick_from_group(store: Any) -> None:
    """Only the owner kicks, not themselves, and only members."""
    await _with_three(store)
    await store.create_group("team", "messi", 1.0)
    await store.join_group("team", "henderson", 2.0)
    with pytest.raises(NotGroupOwner):
        await store.kick_from_group("team", "henderson", "messi")
    with pytest.raises(CannotKickSelf):
        await store.kick_from_group("team", "messi", "messi")
    with pytest.raises(NotAMember) as raised:
        await store.kick_from_group("team", "messi", "lineker")
    assert raised.value.username == "lineker"
    with pytest.raises(NoSuchGroup):
        await store.kick_from_group("nope", "messi", "henderson")
    kicked = await store.kick_from_group("team", "messi", "henderson")
    assert kicked.members == ("messi",)
    assert await store.list_groups("henderson") == []


@pytest_twisted.ensureDeferred
async def test_group_messages(store: Any) -> None:
    """A group message reaches the members of the moment, the sender's copy
    only its history."""
    await _with_three(store)
    await store.create_group("team", "messi", 1.0)
    await store.join_group("team", "henderson", 2.0)
    sent = await store.store_group_message("messi", "team", "before", 3.0)
    assert [(m.recipient, m.group) for m in sent] == [
        ("messi", "team"),
        ("henderson", "team"),
    ]
    await store.join_group("team", "lineker", 4.0)
    await store.store_group_message("henderson", "team", "after", 5.0)
    assert [m.text for m in await store.drain_inbox("lineker", 6.0)] == ["after"]
    assert [(m.text, m.group) for m in await store.drain_inbox("messi", 6.0)] == [
        ("after", "team")
    ]
    assert [m.text for m in await store.drain_inbox("henderson", 6.0)] == ["before"]
    await store.leave_group("team", "lineker")
    with pytest.raises(NotAMember):
        await store.store_group_message("lineker", "team", "x", 7.0)
    with pytest.raises(NoSuchGroup):
        await store.store_group_message("messi", "nope", "x", 7.0)


@pytest_twisted.ensureDeferred
async def test_group_file_message(store: Any) -> None:
    """A file to a group carries both the group and the file."""
    await _with_users(store)
    await store.create_group("team", "messi", 1.0)
    await store.join_group("team", "henderson", 2.0)
    attachment = Attachment("a.png", PNG)
    await store.store_group_message("messi", "team", "a.png", 3.0, attachment)
    (got,) = await store.drain_inbox("henderson", 4.0)
    assert (got.group, got.file_name, got.file_content) == ("team", "a.png", PNG)


@pytest_twisted.ensureDeferred
async def test_conversation_history(store: Any) -> None:
    """The conversation of two users, both ways, newest first, paged by id."""
    await _with_three(store)
    ids = []
    for i in range(5):
        sender, recipient = ("messi", "henderson") if i % 2 else ("henderson", "messi")
        ids.append((await store.store_message(sender, recipient, f"m{i}", i)).id)
    await store.store_message("messi", "lineker", "other", 10.0)
    await store.create_group("team", "messi", 1.0)
    await store.join_group("team", "henderson", 1.0)
    await store.store_group_message("messi", "team", "in group", 11.0)
    await store.drain_inbox("henderson", 12.0)
    page = await store.conversation("messi", "henderson", 3)
    assert [m.text for m in page.messages] == ["m4", "m3", "m2"]
    assert page.more
    older = await store.conversation("messi", "henderson", 3, page.messages[-1].id)
    assert [m.text for m in older.messages] == ["m1", "m0"]
    assert not older.more
    same = await store.conversation("henderson", "messi", 10)
    assert [m.id for m in same.messages] == ids[::-1]
    assert not same.more
    assert (await store.conversation("messi", "henderson", 2, ids[0])).messages == ()
    with pytest.raises(NoSuchUser):
        await store.conversation("messi", "ronaldo", 10)


@pytest_twisted.ensureDeferred
async def test_conversation_with_self(store: Any) -> None:
    """Notes to oneself form their own conversation, each message once."""
    await _with_users(store)
    await store.store_messages("messi", ["messi", "henderson"], "note", 1.0)
    page = await store.conversation("messi", "messi", 10)
    assert [(m.sender, m.recipient) for m in page.messages] == [("messi", "messi")]


@pytest_twisted.ensureDeferred
async def test_history_byte_budget(store: Any) -> None:
    """A history page stops at the byte budget, with at least one message."""
    await _with_users(store)
    big = Attachment("big.bin", b"y" * 1000)
    for i in range(3):
        await store.store_messages("messi", ["henderson"], "big.bin", float(i), big)
    page = await store.conversation("henderson", "messi", 10, None, 1500)
    assert [m.sent_at for m in page.messages] == [2.0]
    assert page.more
    assert page.messages[0].file_content == b"y" * 1000
    rest = await store.conversation("henderson", "messi", 10, page.messages[0].id, 5000)
    assert [m.sent_at for m in rest.messages] == [1.0, 0.0]
    assert not rest.more


@pytest_twisted.ensureDeferred
async def test_group_history(store: Any) -> None:
    """A member sees the group's messages in its mailbox, sent or received."""
    await _with_three(store)
    await store.create_group("team", "messi", 1.0)
    await store.join_group("team", "henderson", 1.0)
    await store.store_group_message("messi", "team", "one", 2.0)
    await store.store_group_message("henderson", "team", "two", 3.0)
    await store.store_messages("messi", ["henderson"], "private", 4.0)
    await store.join_group("team", "lineker", 5.0)
    await store.store_group_message("lineker", "team", "three", 6.0)
    for member in ("messi", "henderson"):
        page = await store.group_history(member, "team", 10)
        assert [m.text for m in page.messages] == ["three", "two", "one"]
        assert {m.recipient for m in page.messages} == {member}
    late = await store.group_history("lineker", "team", 10)
    assert [m.text for m in late.messages] == ["three"]
    first = await store.group_history("messi", "team", 1)
    assert [m.text for m in first.messages] == ["three"] and first.more
    await store.leave_group("team", "lineker")
    with pytest.raises(NotAMember):
        await store.group_history("lineker", "team", 10)
    with pytest.raises(NoSuchGroup):
        await store.group_history("messi", "nope", 10)


@pytest_twisted.ensureDeferred
async def test_purge_messages(store: Any) -> None:
    """Messages sent before the cutoff go, delivered or not, oldest first."""
    await _with_users(store)
    for i in range(4):
        await store.store_message("messi", "henderson", f"m{i}", float(i))
    await store.drain_inbox("henderson", 3.5)
    await store.store_message("messi", "henderson", "m4", 4.0)
    await store.store_message("henderson", "messi", "new", 10.0)
    assert await store.purge_messages(4.0, 3) == 3
    assert await store.purge_messages(4.0, 3) == 1
    assert await store.purge_messages(4.0, 3) == 0
    page = await store.conversation("messi", "henderson", 10)
    assert [m.text for m in page.messages] == ["new", "m4"]
    assert [m.text for m in await store.drain_inbox("henderson", 11.0)] == ["m4"]


@pytest_twisted.ensureDeferred
async def test_deleting_user_leaves_groups(store: Any) -> None:
    """A deleted owner hands its groups on; a group it was alone in goes."""
    await _with_users(store)
    await store.create_group("team", "messi", 1.0)
    await store.join_group("team", "henderson", 2.0)
    await store.create_group("solo", "messi", 3.0)
    await store.delete_user("messi")
    (team,) = await store.list_groups("henderson")
    assert (team.name, team.owner, team.members) == (
        "team",
        "henderson",
        ("henderson",),
    )
    with pytest.raises(NoSuchGroup):
        await store.join_group("solo", "henderson", 4.0)


@pytest_twisted.ensureDeferred
async def test_message_ids_never_repeat(store: Any) -> None:
    """After deletions, a new message's id is above every stored one."""
    await _with_users(store)
    await store.store_message("messi", "henderson", "a", 1.0)
    kept = await store.store_message("henderson", "messi", "b", 2.0)
    await store.purge_messages(1.5, 10)
    later = await store.store_message("messi", "henderson", "c", 3.0)
    assert later.id > kept.id


async def _count(path: str, table: str) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_files_stored_once_and_deleted_with_last_message(
    sqlite_store: SQLiteStore,
) -> None:
    """A file's bytes are stored once however often sent, and go with the last
    message that uses them (retention or the recipient's deletion)."""
    await _with_three(sqlite_store)
    attachment = Attachment("a.png", PNG)
    await sqlite_store.store_messages(
        "messi", ["henderson", "lineker"], "a.png", 1.0, attachment
    )
    await sqlite_store.store_messages("lineker", ["messi"], "a.png", 5.0, attachment)
    await sqlite_store.store_messages(
        "messi", ["lineker"], "b", 1.0, Attachment("b", b"other")
    )
    path = sqlite_store.path
    assert await _count(path, "files") == 2
    assert await _count(path, "messages") == 4
    await sqlite_store.delete_user("lineker")
    # "b" was only in lineker's mailbox; a.png is still in two.
    assert await _count(path, "files") == 1
    await sqlite_store.purge_messages(2.0, 100)
    assert await _count(path, "files") == 1
    await sqlite_store.purge_messages(6.0, 100)
    assert await _count(path, "files") == 0
    assert await _count(path, "messages") == 0


@pytest_twisted.ensureDeferred
async def test_refused_group_send_undoes_only_itself(
    sqlite_store: SQLiteStore,
) -> None:
    """In one batch, a refused multi-send stores nothing and spares the rest."""
    await _with_three(sqlite_store)
    before = sqlite_store.commits
    results = await gatherResults(
        [
            sqlite_store.store_messages("messi", ["henderson"], "a", 1.0),
            sqlite_store.store_messages(
                "messi", ["lineker", "ronaldo"], "b", 1.0
            ).addErrback(lambda f: f.trap(NoSuchUsers) and "refused"),
            sqlite_store.store_messages("messi", ["lineker"], "c", 1.0),
        ]
    )
    assert sqlite_store.commits - before == 1
    assert results[1] == "refused"
    assert [m.text for m in await sqlite_store.drain_inbox("lineker", 2.0)] == ["c"]


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
        await store.run(
            Call(lambda txn: txn.execute("PRAGMA max_page_count=1").fetchall())
        )
        with pytest.raises(StorageUnavailable):
            await store.store_message("messi", "henderson", "x" * 20000, 1.0)
        assert await _count_messages(path) == 0
        await store.run(page_limit(1_000_000))
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
    txn = store._connect()
    assert txn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert txn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert txn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    store._close_txn()


def test_schema_created_fresh(tmp_path: Path) -> None:
    """A missing file is created at the current schema version, atomically."""
    (tmp_path / "sub").mkdir()
    path = str(tmp_path / "sub" / "chat.sqlite")
    assert schema.prepare(path) == 0
    assert os.listdir(tmp_path / "sub") == ["chat.sqlite"]
    connection = sqlite3.connect(path)
    assert schema.read_version(connection) == schema.SCHEMA_VERSION
    tables = {
        r[0]
        for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {
        "users",
        "sessions",
        "messages",
        "files",
        "chat_groups",
        "group_members",
        "schema_version",
    } <= tables
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
    old, new = schema.SCHEMA_VERSION, schema.SCHEMA_VERSION + 1
    steps: list[str] = []
    monkeypatch.setattr(schema, "SCHEMA_VERSION", new)

    def fake_sql(name: str) -> str:
        steps.append(name)
        return (
            "CREATE TABLE extra (x INTEGER);"
            f" UPDATE schema_version SET version = {new};"
        )

    monkeypatch.setattr(schema, "_sql", fake_sql)
    assert schema.prepare(path) == old
    assert steps == [f"upgrade-to-v{new}.sql"]
    assert os.path.exists(path + f".v{old}.bak")
    connection = sqlite3.connect(path)
    assert schema.read_version(connection) == new
    connection.close()
    backup = sqlite3.connect(path + f".v{old}.bak")
    assert schema.read_version(backup) == old
    backup.close()


@pytest_twisted.ensureDeferred
async def test_upgrade_to_v2_keeps_every_undelivered_message(tmp_path: Path) -> None:
    """A version 1 database (delivery marks on messages) upgrades to the
    mailbox table: the undelivered messages are exactly what inbox returns,
    the delivered ones stay in history."""
    path = str(tmp_path / "chat.sqlite")
    old = sqlite3.connect(path, isolation_level=None)
    for statement in schema._statements(schema._sql("v1.sql")):
        old.execute(statement)
    for user in (MESSI, HENDERSON):
        old.execute(
            "INSERT INTO users (username, full_name, country, password_hash,"
            " created_at) VALUES (?, ?, ?, ?, 0)",
            (user.username, user.full_name, user.country, user.password_hash),
        )
    for text, delivered in [("read", 5.0), ("unread 1", None), ("unread 2", None)]:
        old.execute(
            "INSERT INTO messages (sender, recipient, sender_name, recipient_name,"
            " body, sent_at, delivered_at) VALUES"
            " ('messi', 'henderson', 'M', 'H', ?, 1.0, ?)",
            (text, delivered),
        )
    old.close()
    assert schema.prepare(path) == 1
    store = SQLiteStore(reactor, path)
    store.start()
    try:
        drained = await store.drain_inbox("henderson", 9.0)
        assert [m.text for m in drained] == ["unread 1", "unread 2"]
        page = await store.conversation("henderson", "messi", 10)
        assert [m.text for m in page.messages] == ["unread 2", "unread 1", "read"]
    finally:
        await store.close()


def _schema_of(path: str) -> list[tuple[str, str, str]]:
    connection = sqlite3.connect(path)
    try:
        return sorted(
            connection.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
            ).fetchall()
        )
    finally:
        connection.close()


def test_schema_upgrade_from_v1_equals_fresh(tmp_path: Path) -> None:
    """A version 1 database, upgraded step by step, has the fresh schema and
    keeps its rows."""
    old = str(tmp_path / "old.sqlite")
    connection = sqlite3.connect(old, isolation_level=None)
    schema._run_script(connection, schema._sql("v1.sql"))
    connection.execute(
        "INSERT INTO users (username, full_name, password_hash, created_at)"
        " VALUES ('messi', 'Lionel Messi', 'x', 1.0)"
    )
    connection.close()
    assert schema.prepare(old) == 1
    fresh = str(tmp_path / "fresh.sqlite")
    schema.prepare(fresh)
    assert _schema_of(old) == _schema_of(fresh)
    connection = sqlite3.connect(old)
    assert schema.read_version(connection) == schema.SCHEMA_VERSION
    assert connection.execute("SELECT username FROM users").fetchall() == [("messi",)]
    connection.close()


def test_schema_upgrade_from_v2_equals_fresh(tmp_path: Path) -> None:
    """A version 2 database upgrades to version 3 (files in the realm
    outbox): the fresh schema, its outbox rows kept, without a file."""
    old = str(tmp_path / "old.sqlite")
    connection = sqlite3.connect(old, isolation_level=None)
    schema._run_script(connection, schema._sql("v2.sql"))
    connection.execute(
        "INSERT INTO users (username, full_name, password_hash, created_at)"
        " VALUES ('messi', 'Lionel Messi', 'x', 1.0)"
    )
    connection.execute(
        "INSERT INTO realm_links VALUES ('realm-b', 'tcp:host=b:port=1', 's', 1.0)"
    )
    connection.execute(
        "INSERT INTO realm_outbox (realm_id, message_uid, sender, sender_name,"
        " recipients, body, sent_at) VALUES ('realm-b', 'u1', 'messi',"
        " 'Lionel Messi', '[\"xavi\"]', 'queued before', 1.0)"
    )
    connection.close()
    assert schema.prepare(old) == 2
    assert os.path.exists(old + ".v2.bak")
    fresh = str(tmp_path / "fresh.sqlite")
    schema.prepare(fresh)
    assert _schema_of(old) == _schema_of(fresh)
    connection = sqlite3.connect(old)
    assert schema.read_version(connection) == 3
    assert connection.execute(
        "SELECT message_uid, body, file_name, file_size, file_sha256 FROM realm_outbox"
    ).fetchall() == [("u1", "queued before", None, None, None)]
    connection.close()


@pytest_twisted.ensureDeferred
async def test_upgraded_v2_outbox_delivers_and_takes_files(tmp_path: Path) -> None:
    """After the upgrade, a text queued before reads back without a file,
    and files can be queued."""
    path = str(tmp_path / "chat.sqlite")
    connection = sqlite3.connect(path, isolation_level=None)
    schema._run_script(connection, schema._sql("v2.sql"))
    connection.close()
    store = SQLiteStore(reactor, path)
    store.start()
    try:
        await _with_users(store)
        await store.add_realm_link(
            RealmLink("realm-b", "tcp:host=b:port=1", "secret-of-the-link", 1.0)
        )
        await store.queue_outbound("messi", "t", 1.0, [("realm-b", ("x",), "u1")], 9)
        photo = Attachment("p.png", PNG)
        await store.queue_outbound(
            "messi", "p.png", 1.0, [("realm-b", ("x",), "u2")], 9, photo
        )
        text, file = await store.next_outbound("realm-b", 9)
        assert text.attachment is None
        assert file.attachment == photo
    finally:
        await store.close()


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


@pytest_twisted.ensureDeferred
async def test_mark_delivered_ids(store: Any) -> None:
    """Marking by ids marks exactly those of the user's undelivered ones."""
    await _with_users(store)
    ids = [
        (await store.store_message("messi", "henderson", f"m{i}", 1.0)).id
        for i in range(4)
    ]
    other = await store.store_message("henderson", "messi", "not hers", 1.0)
    assert (
        await store.mark_delivered_ids("henderson", [ids[1], ids[3], other.id], 2.0)
        == 2
    )
    assert await store.mark_delivered_ids("henderson", [ids[1]], 2.0) == 0
    assert await store.mark_delivered_ids("henderson", [], 2.0) == 0
    left = await store.undelivered("henderson", 0, 10)
    assert [m.text for m in left] == ["m0", "m2"]
    assert [m.text for m in await store.undelivered("messi", 0, 10)] == ["not hers"]


@pytest_twisted.ensureDeferred
async def test_one_sender_cannot_fill_a_mailbox(shared_store: Any) -> None:
    """A sender with its share of a mailbox undelivered is refused with
    TooManyUnread; other senders still get through, up to the mailbox's
    size; reading the mailbox makes room again."""
    store = shared_store
    await _with_three(store)
    for text in ("one", "two"):
        await store.store_message("messi", "henderson", text, 1.0)
    with pytest.raises(TooManyUnread) as refused:
        await store.store_message("messi", "henderson", "three", 1.0)
    assert (refused.value.username, refused.value.limit) == ("henderson", 2)
    with pytest.raises(TooManyUnread):
        await store.store_messages("messi", ["henderson", "lineker"], "both", 1.0)
    for text in ("a", "b"):
        await store.store_message("lineker", "henderson", text, 1.0)
    with pytest.raises(MailboxFull):
        await store.store_message("lineker", "henderson", "c", 1.0)
    drained = await store.drain_inbox("henderson", 2.0)
    assert [m.text for m in drained] == ["one", "two", "a", "b"]
    await store.store_message("messi", "henderson", "again", 3.0)


@pytest_twisted.ensureDeferred
async def test_a_bad_operation_fails_alone(sqlite_store: SQLiteStore) -> None:
    """An operation raising anything but a storage error (here a value
    SQLite cannot hold) fails alone: the others of its batch commit."""
    store = sqlite_store
    await _with_users(store)

    def overflow(txn: Any) -> None:
        txn.execute("SELECT ?", (2**70,))

    results = await gatherResults(
        [
            store.store_message("messi", "henderson", "before", 1.0),
            store.run(Call(overflow)).addErrback(lambda f: f.trap(OverflowError)),
            store.mark_delivered("henderson", 2**62, 2.0),
            store.store_message("henderson", "messi", "after", 1.0),
        ]
    )
    assert results[0].text == "before" and results[3].text == "after"
    assert results[1] is OverflowError
    assert results[2] == 1


@pytest_twisted.ensureDeferred
async def test_bulk_sends_get_their_own_ids(sqlite_store: SQLiteStore) -> None:
    """Many sends in one batch are inserted at once and each gets the id of
    its own row."""
    store = sqlite_store
    await _with_three(store)
    sent = await gatherResults(
        [
            store.store_message("messi", to, f"{to} {i}", 1.0)
            for i in range(30)
            for to in ("henderson", "lineker")
        ]
    )
    ids = [m.id for m in sent]
    assert len(set(ids)) == 60
    by_id = {m.id: m.text for m in await store.messages_by_id(ids)}
    assert by_id == {m.id: m.text for m in sent}


@pytest_twisted.ensureDeferred
async def test_changes_by_another_process_are_seen(tmp_path: Path) -> None:
    """A user deleted by another process (chat-admin) is not remembered by
    the store's thread: sends to it are refused as to no such user."""
    path = str(tmp_path / "chat.sqlite")
    store = SQLiteStore(reactor, path)
    store.start()
    try:
        await _with_users(store)
        await store.store_message("messi", "henderson", "hi", 1.0)
        other = sqlite3.connect(path)
        other.execute("PRAGMA foreign_keys=ON")
        other.execute("DELETE FROM users WHERE username = 'henderson'")
        other.commit()
        other.close()
        with pytest.raises(NoSuchUser):
            await store.store_message("messi", "henderson", "gone", 1.0)
    finally:
        await store.close()
