"""
The store contract for realms (IRealmStore), run against the in-memory
store, SQLite on a real file and PostgreSQL, like tests/test_store.py.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from chat.errors import (
    MailboxFull,
    NoSuchRealm,
    NoSuchUser,
    QuotaExceeded,
    RealmExists,
    RealmQueueFull,
)
from chat.links import InboundMessage, RealmLink
from chat.model import Attachment
from chat.replies import message_json
from chat.store.interfaces import IRealmStore
from chat.store.sqlite import SQLiteStore
from tests.test_store import MESSI, _with_three, _with_users
from tests.test_store import quota_store as quota_store
from tests.test_store import store as store

B = RealmLink("realm-b", "tcp:host=b:port=8889", "secret-of-realm-b-link", 1.0)
C = RealmLink("realm-c", "ssl:host=c:port=8890", "secret-of-realm-c-link", 2.0)


def inbound(uid: str, *recipients: str, text: str = "hi") -> InboundMessage:
    return InboundMessage(uid, "xavi", "Xavi Hernandez", recipients, text, 5.0)


def test_provides_interface(store: Any) -> None:
    """Every store provides IRealmStore."""
    assert verifyObject(IRealmStore, store)


@pytest_twisted.ensureDeferred
async def test_admin_flag(store: Any) -> None:
    """Users are not admins until set; the flag can be revoked; unknown users fail."""
    await _with_users(store)
    assert await store.is_admin("messi") is False
    await store.set_admin("messi", True)
    assert await store.is_admin("messi") is True
    assert await store.is_admin("henderson") is False
    await store.set_admin("messi", False)
    assert await store.is_admin("messi") is False
    with pytest.raises(NoSuchUser):
        await store.set_admin("ronaldo", True)
    with pytest.raises(NoSuchUser):
        await store.is_admin("ronaldo")


@pytest_twisted.ensureDeferred
async def test_admin_flag_does_not_outlive_the_user(store: Any) -> None:
    """A user deleted and created again is not an admin."""
    await _with_users(store)
    await store.set_admin("messi", True)
    await store.delete_user("messi")
    await store.add_user(MESSI)
    assert await store.is_admin("messi") is False


@pytest_twisted.ensureDeferred
async def test_links(store: Any) -> None:
    """Links are added once, read, listed by realm id and removed."""
    await store.add_realm_link(C)
    await store.add_realm_link(B)
    with pytest.raises(RealmExists):
        await store.add_realm_link(B)
    assert await store.get_realm_link("realm-b") == B
    assert await store.list_realm_links() == [B, C]
    assert await store.remove_realm_link("realm-b", 9.0) == []
    assert await store.list_realm_links() == [C]
    with pytest.raises(NoSuchRealm):
        await store.get_realm_link("realm-b")
    with pytest.raises(NoSuchRealm):
        await store.remove_realm_link("realm-b", 9.0)


@pytest_twisted.ensureDeferred
async def test_outbox_in_order_per_realm(store: Any) -> None:
    """Queued messages are read per realm, oldest first, and finished one by one."""
    await _with_users(store)
    await store.add_realm_link(B)
    await store.add_realm_link(C)
    for i in range(3):
        await store.queue_outbound(
            "messi", f"m{i}", float(i), [("realm-b", ("xavi",), f"u{i}")], 10
        )
    (to_c,) = await store.queue_outbound(
        "messi", "to c", 4.0, [("realm-c", ("iniesta", "puyol"), "uc")], 10
    )
    assert to_c.recipients == ("iniesta", "puyol")
    assert to_c.sender_name == "Lionel Messi"
    queued = await store.next_outbound("realm-b", 10)
    assert [(m.text, m.uid, m.recipients) for m in queued] == [
        ("m0", "u0", ("xavi",)),
        ("m1", "u1", ("xavi",)),
        ("m2", "u2", ("xavi",)),
    ]
    assert [m.text for m in await store.next_outbound("realm-b", 2)] == ["m0", "m1"]
    assert await store.outbox_size("realm-b") == 3
    assert await store.finish_outbound(queued[0].id, [], "", 9.0) is None
    assert [m.text for m in await store.next_outbound("realm-b", 10)] == ["m1", "m2"]
    assert [m.text for m in await store.next_outbound("realm-c", 10)] == ["to c"]
    assert await store.drain_inbox("messi", 10.0) == []


@pytest_twisted.ensureDeferred
async def test_queue_is_all_or_nothing(store: Any) -> None:
    """A message to several realms is queued for all of them or for none."""
    await _with_users(store)
    await store.add_realm_link(B)
    batches = [("realm-b", ("xavi",), "u1"), ("realm-z", ("pique",), "u2")]
    with pytest.raises(NoSuchRealm) as raised:
        await store.queue_outbound("messi", "hi", 1.0, batches, 10)
    assert raised.value.realm_id == "realm-z"
    assert await store.outbox_size("realm-b") == 0
    with pytest.raises(NoSuchUser):
        await store.queue_outbound("ronaldo", "hi", 1.0, batches[:1], 10)


@pytest_twisted.ensureDeferred
async def test_queue_cap(store: Any) -> None:
    """A realm's outbox holds at most max_queue messages."""
    await _with_users(store)
    await store.add_realm_link(B)
    for i in range(2):
        await store.queue_outbound("messi", "x", 1.0, [("realm-b", ("x",), f"u{i}")], 2)
    with pytest.raises(RealmQueueFull):
        await store.queue_outbound("messi", "x", 1.0, [("realm-b", ("x",), "u9")], 2)
    assert await store.outbox_size("realm-b") == 2


@pytest_twisted.ensureDeferred
async def test_finishing_with_failures_bounces_once(store: Any) -> None:
    """Unknown recipients bounce to the sender from the postmaster, once."""
    await _with_users(store)
    await store.add_realm_link(B)
    (queued,) = await store.queue_outbound(
        "messi", "halo", 3.0, [("realm-b", ("xavi", "ronaldo"), "u1")], 10
    )
    bounce = await store.finish_outbound(queued.id, ["ronaldo"], "no such user", 7.0)
    assert bounce is not None
    assert bounce.sender == "postmaster@realm-b"
    assert bounce.sender_name == "Mail Delivery System"
    assert bounce.recipient == "messi"
    assert bounce.recipient_name == "Lionel Messi"
    assert bounce.realm == "realm-b"
    assert bounce.text == (
        "Undeliverable to ronaldo@realm-b: no such user. Your message: halo"
    )
    assert (
        await store.finish_outbound(queued.id, ["ronaldo"], "no such user", 8.0) is None
    )
    assert await store.drain_inbox("messi", 9.0) == [bounce]
    assert await store.outbox_size("realm-b") == 0


@pytest_twisted.ensureDeferred
async def test_removing_a_link_bounces_its_queue(store: Any) -> None:
    """Removing a link returns what was queued for it to the senders."""
    await _with_users(store)
    await store.add_realm_link(B)
    await store.add_realm_link(C)
    await store.queue_outbound("messi", "one", 1.0, [("realm-b", ("xavi",), "u1")], 9)
    await store.queue_outbound("henderson", "two", 1.0, [("realm-b", ("x",), "u2")], 9)
    await store.queue_outbound("messi", "three", 1.0, [("realm-c", ("x",), "u3")], 9)
    bounces = await store.remove_realm_link("realm-b", 5.0)
    assert [(m.recipient, m.text) for m in bounces] == [
        (
            "messi",
            "Undeliverable to xavi@realm-b: the link was removed. Your message: one",
        ),
        (
            "henderson",
            "Undeliverable to x@realm-b: the link was removed. Your message: two",
        ),
    ]
    assert await store.outbox_size("realm-b") == 0
    assert await store.outbox_size("realm-c") == 1


@pytest_twisted.ensureDeferred
async def test_receive_remote_stores_and_deduplicates(store: Any) -> None:
    """A message from a realm is stored once per known recipient, and only once."""
    await _with_users(store)
    await store.add_realm_link(B)
    first = await store.receive_remote(
        "realm-b", inbound("u1", "henderson", "ronaldo", "messi"), 6.0
    )
    assert first.duplicate is False
    assert first.unknown == ("ronaldo",)
    assert [
        (m.sender, m.recipient, m.sender_name, m.recipient_name) for m in first.messages
    ] == [
        ("xavi@realm-b", "henderson", "Xavi Hernandez", "Jordan Henderson"),
        ("xavi@realm-b", "messi", "Xavi Hernandez", "Lionel Messi"),
    ]
    again = await store.receive_remote(
        "realm-b", inbound("u1", "henderson", "ronaldo", "messi"), 7.0
    )
    assert again.duplicate is True
    assert again.messages == ()
    assert again.unknown == ("ronaldo",)
    # Ids are per realm: realm-c may use the same one.
    await store.add_realm_link(C)
    other = await store.receive_remote("realm-c", inbound("u1", "henderson"), 7.0)
    assert other.duplicate is False
    drained = await store.drain_inbox("henderson", 8.0)
    assert [(m.sender, m.text, m.realm) for m in drained] == [
        ("xavi@realm-b", "hi", "realm-b"),
        ("xavi@realm-c", "hi", "realm-c"),
    ]
    assert json.loads(message_json(drained[0]))["realm"] == "realm-b"
    with pytest.raises(NoSuchRealm):
        await store.receive_remote("realm-z", inbound("u2", "henderson"), 7.0)


@pytest_twisted.ensureDeferred
async def test_forgetting_old_ids(store: Any) -> None:
    """Ids older than the cut-off are forgotten; newer ones still deduplicate."""
    await _with_users(store)
    await store.add_realm_link(B)
    await store.receive_remote("realm-b", inbound("old", "henderson"), 10.0)
    await store.receive_remote("realm-b", inbound("new", "henderson"), 20.0)
    assert await store.forget_remote_ids(15.0) == 1
    assert (
        await store.receive_remote("realm-b", inbound("new", "messi"), 21.0)
    ).duplicate
    assert not (
        await store.receive_remote("realm-b", inbound("old", "messi"), 21.0)
    ).duplicate


@pytest_twisted.ensureDeferred
async def test_realm_inbox_takes_only_that_realm(store: Any) -> None:
    """drain_realm_inbox returns one realm's undelivered messages and marks them."""
    await _with_users(store)
    await store.add_realm_link(B)
    await store.add_realm_link(RealmLink("b", "tcp:host=x:port=1", "s" * 16, 1.0))
    await store.store_message("messi", "henderson", "local", 1.0)
    await store.receive_remote("realm-b", inbound("u1", "henderson", text="b1"), 2.0)
    await store.receive_remote("b", inbound("u1", "henderson", text="short b"), 2.0)
    await store.receive_remote("realm-b", inbound("u2", "henderson", text="b2"), 3.0)
    taken = await store.drain_realm_inbox("henderson", "realm-b", 4.0)
    assert [m.text for m in taken] == ["b1", "b2"]
    assert await store.drain_realm_inbox("henderson", "realm-b", 5.0) == []
    assert [m.text for m in await store.drain_inbox("henderson", 6.0)] == [
        "local",
        "short b",
    ]
    with pytest.raises(NoSuchRealm):
        await store.drain_realm_inbox("henderson", "realm-z", 7.0)


@pytest_twisted.ensureDeferred
async def test_outbox_outlives_the_sender(store: Any) -> None:
    """A queued message is still delivered after its sender is deleted."""
    await _with_users(store)
    await store.add_realm_link(B)
    (queued,) = await store.queue_outbound(
        "messi", "bye", 1.0, [("realm-b", ("x",), "u1")], 9
    )
    await store.delete_user("messi")
    assert await store.next_outbound("realm-b", 9) == [queued]
    assert await store.finish_outbound(queued.id, ["x"], "no such user", 2.0) is None


@pytest_twisted.ensureDeferred
async def test_realm_state_survives_reopening(tmp_path: Path) -> None:
    """Links, the outbox and received ids are in the file after a restart."""
    path = str(tmp_path / "chat.sqlite")
    first = SQLiteStore(reactor, path)
    first.start()
    await _with_users(first)
    await first.add_realm_link(B)
    await first.set_admin("messi", True)
    await first.queue_outbound("messi", "kept", 1.0, [("realm-b", ("x",), "u1")], 9)
    await first.receive_remote("realm-b", inbound("seen", "henderson"), 1.0)
    await first.close()
    second = SQLiteStore(reactor, path)
    second.start()
    try:
        assert await second.get_realm_link("realm-b") == B
        assert await second.is_admin("messi")
        assert [m.text for m in await second.next_outbound("realm-b", 9)] == ["kept"]
        seen = await second.receive_remote("realm-b", inbound("seen", "henderson"), 2.0)
        assert seen.duplicate
    finally:
        await second.close()
    connection = sqlite3.connect(path)
    try:
        # The unique constraint, not only the code, keeps ids unique.
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute(
                "INSERT INTO realm_inbound VALUES ('realm-b', 'seen', '[]', 3.0)"
            )
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_remote_messages_count_towards_the_mailbox(tmp_path: Path) -> None:
    """Messages from a realm are not refused, but a local send then sees them."""
    store = SQLiteStore(reactor, str(tmp_path / "chat.sqlite"), max_mailbox=2)
    store.start()
    try:
        await _with_users(store)
        await store.add_realm_link(B)
        await store.store_message("messi", "henderson", "local", 1.0)
        for uid in ("u1", "u2"):
            delivery = await store.receive_remote(
                "realm-b", inbound(uid, "henderson"), 2.0
            )
            assert len(delivery.messages) == 1
        with pytest.raises(MailboxFull):
            await store.store_message("messi", "henderson", "over", 3.0)
        drained = await store.drain_realm_inbox("henderson", "realm-b", 4.0)
        assert len(drained) == 2
        await store.store_message("messi", "henderson", "fits again", 5.0)
    finally:
        await store.close()


# Files for and from other realms (schema version 3).

NOTES = Attachment("notes.bin", bytes(range(256)) * 4)  # 1024 bytes
PHOTO = Attachment("photo.png", b"\x89PNG" * 250)  # 1000 bytes


def inbound_file(
    uid: str, *recipients: str, attachment: Attachment = NOTES
) -> InboundMessage:
    return InboundMessage(
        uid, "xavi", "Xavi Hernandez", recipients, attachment.name, 5.0, attachment
    )


@pytest_twisted.ensureDeferred
async def test_outbox_carries_files(store: Any) -> None:
    """A file queued for two realms is one entry per realm, each read back
    with the file's name and bytes, until acknowledged; a text entry still
    carries none."""
    await _with_users(store)
    await store.add_realm_link(B)
    await store.add_realm_link(C)
    await store.queue_outbound("messi", "text", 1.0, [("realm-b", ("x",), "t")], 9)
    queued = await store.queue_outbound(
        "messi",
        NOTES.name,
        2.0,
        [("realm-b", ("xavi", "pique"), "f1"), ("realm-c", ("puyol",), "f2")],
        9,
        NOTES,
    )
    assert [(m.realm_id, m.attachment) for m in queued] == [
        ("realm-b", NOTES),
        ("realm-c", NOTES),
    ]
    text, to_b = await store.next_outbound("realm-b", 9)
    assert text.attachment is None
    assert (to_b.uid, to_b.text, to_b.recipients) == (
        "f1",
        "notes.bin",
        ("xavi", "pique"),
    )
    assert to_b.attachment == NOTES
    assert to_b.attachment.content == NOTES.content
    (to_c,) = await store.next_outbound("realm-c", 9)
    assert to_c.attachment == NOTES
    await store.finish_outbound(to_b.id, [], "", 3.0)
    # The other realm's entry still has the file.
    (to_c,) = await store.next_outbound("realm-c", 9)
    assert to_c.attachment is not None
    assert to_c.attachment.content == NOTES.content
    await store.finish_outbound(to_c.id, [], "", 3.0)
    assert await store.outbox_size("realm-c") == 0


@pytest_twisted.ensureDeferred
async def test_outbox_files_count_in_the_senders_quota(quota_store: Any) -> None:
    """A file waiting for another realm counts in its sender's quota (2
    files, 1500 bytes) like a stored one: the same file again is free, a new
    one past the quota is refused with nothing queued; once acknowledged,
    it stops counting."""
    store = quota_store
    await _with_users(store)
    await store.add_realm_link(B)
    (first,) = await store.queue_outbound(
        "messi", NOTES.name, 1.0, [("realm-b", ("xavi",), "f1")], 9, NOTES
    )
    await store.queue_outbound(
        "messi", NOTES.name, 1.0, [("realm-b", ("pique",), "f2")], 9, NOTES
    )
    with pytest.raises(QuotaExceeded) as raised:
        await store.queue_outbound(
            "messi", PHOTO.name, 1.0, [("realm-b", ("xavi",), "f3")], 9, PHOTO
        )
    assert raised.value.quota == "bytes"
    assert await store.outbox_size("realm-b") == 2
    # Locally too: the outbox's file is part of what messi has stored.
    with pytest.raises(QuotaExceeded):
        await store.store_messages("messi", ["henderson"], "p", 1.0, PHOTO)
    # Another sender's quota is their own.
    await store.queue_outbound(
        "henderson", PHOTO.name, 1.0, [("realm-b", ("xavi",), "f4")], 9, PHOTO
    )
    second = (await store.next_outbound("realm-b", 9))[1]
    await store.finish_outbound(first.id, [], "", 2.0)
    with pytest.raises(QuotaExceeded):
        await store.queue_outbound(
            "messi", PHOTO.name, 1.0, [("realm-b", ("xavi",), "f5")], 9, PHOTO
        )
    await store.finish_outbound(second.id, [], "", 2.0)
    await store.queue_outbound(
        "messi", PHOTO.name, 1.0, [("realm-b", ("xavi",), "f6")], 9, PHOTO
    )


@pytest_twisted.ensureDeferred
async def test_a_bounced_file_is_a_text_to_its_sender(store: Any) -> None:
    """A file that could not be delivered comes back as a bounce naming it,
    without the file; removing a link bounces queued files the same way."""
    await _with_users(store)
    await store.add_realm_link(B)
    await store.add_realm_link(C)
    (queued,) = await store.queue_outbound(
        "messi", NOTES.name, 1.0, [("realm-b", ("ronaldo",), "f1")], 9, NOTES
    )
    bounce = await store.finish_outbound(queued.id, ["ronaldo"], "no such user", 2.0)
    assert bounce is not None
    assert bounce.text == (
        "Undeliverable to ronaldo@realm-b: no such user. Your message: notes.bin"
    )
    assert bounce.file_sha256 is None
    await store.queue_outbound(
        "messi", PHOTO.name, 1.0, [("realm-c", ("puyol",), "f2")], 9, PHOTO
    )
    (removed,) = await store.remove_realm_link("realm-c", 3.0)
    assert removed.text.endswith("Your message: photo.png")
    assert removed.file_sha256 is None


@pytest_twisted.ensureDeferred
async def test_receive_remote_file(store: Any) -> None:
    """A file from a realm is stored for each known recipient as a local
    file message from user@realm (name, size, sha256, bytes), once."""
    await _with_users(store)
    await store.add_realm_link(B)
    first = await store.receive_remote(
        "realm-b", inbound_file("f1", "henderson", "ronaldo", "messi"), 6.0
    )
    assert first.unknown == ("ronaldo",)
    assert [
        (m.sender, m.recipient, m.text, m.file_name, m.file_size, m.file_sha256)
        for m in first.messages
    ] == [
        ("xavi@realm-b", r, "notes.bin", "notes.bin", 1024, NOTES.sha256)
        for r in ("henderson", "messi")
    ]
    assert all(m.file_content == NOTES.content for m in first.messages)
    again = await store.receive_remote(
        "realm-b", inbound_file("f1", "henderson", "ronaldo", "messi"), 7.0
    )
    assert again.duplicate and again.messages == ()
    (drained,) = await store.drain_inbox("henderson", 8.0)
    assert drained.file_content == NOTES.content
    shown = json.loads(message_json(drained))
    assert shown["from"] == "xavi@realm-b"
    assert shown["realm"] == "realm-b"
    assert shown["file_name"] == "notes.bin"
    assert shown["file_size"] == 1024
    assert shown["file_sha256"] == NOTES.sha256
    assert base64.b64decode(shown["file_content"]) == NOTES.content
    (taken,) = await store.drain_realm_inbox("messi", "realm-b", 8.0)
    assert taken.file_content == NOTES.content


@pytest_twisted.ensureDeferred
async def test_receive_remote_file_within_the_senders_quota(quota_store: Any) -> None:
    """A remote sender (user@realm) has this realm's file quota, as a local
    one: past it the whole message is refused, nothing stored and its id not
    remembered; the same file again is free, as are files for nobody here."""
    store = quota_store
    await _with_users(store)
    await store.add_realm_link(B)
    await store.receive_remote("realm-b", inbound_file("f1", "henderson"), 1.0)
    await store.receive_remote("realm-b", inbound_file("f2", "messi"), 1.0)
    for _ in range(2):
        with pytest.raises(QuotaExceeded):
            await store.receive_remote(
                "realm-b", inbound_file("f3", "henderson", attachment=PHOTO), 1.0
            )
    nobody = await store.receive_remote(
        "realm-b", inbound_file("f4", "ronaldo", attachment=PHOTO), 1.0
    )
    assert nobody.unknown == ("ronaldo",)
    assert [m.file_name for m in await store.drain_inbox("henderson", 2.0)] == [
        "notes.bin"
    ]
    # Another user of that realm has a quota of their own.
    other = InboundMessage(
        "f5", "pique", "Gerard Pique", ("henderson",), PHOTO.name, 5.0, PHOTO
    )
    assert len((await store.receive_remote("realm-b", other, 1.0)).messages) == 1


@pytest_twisted.ensureDeferred
async def test_files_in_the_outbox_outlive_their_messages(store: Any) -> None:
    """Retention and deleted accounts delete files no message uses any more,
    but never one an outbox entry still needs: it is delivered whole later."""
    await _with_three(store)
    await store.add_realm_link(B)
    await store.store_messages("messi", ["henderson"], NOTES.name, 1.0, NOTES)
    await store.queue_outbound(
        "messi", NOTES.name, 1.0, [("realm-b", ("xavi",), "f1")], 9, NOTES
    )
    await store.store_messages("lineker", ["henderson"], PHOTO.name, 1.0, PHOTO)
    await store.queue_outbound(
        "lineker", PHOTO.name, 1.0, [("realm-b", ("xavi",), "f2")], 9, PHOTO
    )
    assert await store.purge_messages(5.0, 100) == 2
    await store.delete_user("henderson")
    first, second = await store.next_outbound("realm-b", 9)
    assert first.attachment is not None and second.attachment is not None
    assert first.attachment.content == NOTES.content
    assert second.attachment.content == PHOTO.content
    await store.finish_outbound(first.id, [], "", 6.0)
    await store.finish_outbound(second.id, [], "", 6.0)
    assert await store.outbox_size("realm-b") == 0


@pytest_twisted.ensureDeferred
async def test_acknowledged_files_are_deleted(tmp_path: Path) -> None:
    """SQLite: a file stored for the outbox alone is deleted when the last
    entry needing it is acknowledged or bounced, not before; one a message
    still carries stays."""
    path = str(tmp_path / "chat.sqlite")
    store = SQLiteStore(reactor, path)
    store.start()

    def files() -> set[str]:
        with sqlite3.connect(path) as connection:
            return {row[0] for row in connection.execute("SELECT sha256 FROM files")}

    try:
        await _with_users(store)
        await store.add_realm_link(B)
        await store.add_realm_link(C)
        await store.store_messages("messi", ["henderson"], PHOTO.name, 1.0, PHOTO)
        for attachment in (NOTES, PHOTO):
            await store.queue_outbound(
                "messi",
                attachment.name,
                1.0,
                [("realm-b", ("x",), f"{attachment.name}-b")],
                9,
                attachment,
            )
        await store.queue_outbound(
            "messi", NOTES.name, 1.0, [("realm-c", ("x",), "n-c")], 9, NOTES
        )
        to_notes, to_photo = await store.next_outbound("realm-b", 9)
        await store.finish_outbound(to_notes.id, [], "", 2.0)
        assert files() == {NOTES.sha256, PHOTO.sha256}
        await store.finish_outbound(to_photo.id, ["x"], "no such user", 2.0)
        assert files() == {NOTES.sha256, PHOTO.sha256}
        await store.remove_realm_link("realm-c", 3.0)
        assert files() == {PHOTO.sha256}
    finally:
        await store.close()
