"""
The store's operations for links to other realms (L{chat.federation}):
the links, the outbox of messages for other realms, the messages received
from them, and the bounces back to senders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from chat.errors import NoSuchRealm, NoSuchUser, RealmExists, RealmQueueFull
from chat.links import (
    POSTMASTER,
    POSTMASTER_NAME,
    Delivery,
    InboundMessage,
    OutboundMessage,
    RealmLink,
    address,
    bounce_text,
)
from chat.model import Attachment, Message
from chat.store.batching import Operation, Transaction, chunks, marks
from chat.store.files import (
    file_columns,
    file_contents,
    forget_unused_files,
    keep_file,
)
from chat.store.mailbox import IN_MAILBOX, MAILBOX_COLUMNS, take_from_mailbox
from chat.store.messages import insert_messages, message_values, to_messages

_OUTBOX_COLUMNS = (
    "id, message_uid, realm_id, sender, sender_name, recipients, body, sent_at,"
    " file_name, file_sha256"
)


def require_link(txn: Transaction, realm_id: str) -> RealmLink:
    """
    @raise NoSuchRealm: if there is no link to C{realm_id}.
    """
    row = txn.execute(
        "SELECT realm_id, endpoint, secret, created_at FROM realm_links"
        " WHERE realm_id = ?",
        (realm_id,),
    ).fetchone()
    if row is None:
        raise NoSuchRealm(realm_id)
    return RealmLink(*row)


def _outbound(
    row: Sequence[Any], contents: dict[str, bytes] | None = None
) -> OutboundMessage:
    """
    An outbox row (L{_OUTBOX_COLUMNS}) as a message; with its file, from
    C{contents} (by sha256; none given: without the file's bytes).
    """
    (
        outbox_id,
        uid,
        realm_id,
        sender,
        sender_name,
        recipients,
        body,
        sent_at,
        file_name,
        file_sha256,
    ) = row
    attachment = None
    if file_sha256 is not None and contents is not None:
        attachment = Attachment(file_name, contents[file_sha256])
    return OutboundMessage(
        outbox_id,
        uid,
        realm_id,
        sender,
        sender_name,
        tuple(json.loads(recipients)),
        body,
        sent_at,
        attachment,
    )


def _outbox_files(rows: Sequence[Sequence[Any]]) -> list[str]:
    return [row[-1] for row in rows if row[-1] is not None]


def _outbox_size(txn: Transaction, realm_id: str) -> int:
    (count,) = txn.execute(
        "SELECT count(*) FROM realm_outbox WHERE realm_id = ?", (realm_id,)
    ).fetchone()
    return int(count)


def _drop_mailboxes(txn: Transaction, messages: Sequence[Message]) -> None:
    """
    Forget the counts of the mailboxes these messages went to: messages
    from realms and bounces are not limited by a mailbox's size, but must
    not be missed by its count.
    """
    if txn.caches is not None:
        for message in messages:
            txn.caches.forget_mailbox(message.recipient)


def _bounce(
    txn: Transaction,
    queued: OutboundMessage,
    failed: Sequence[str],
    reason: str,
    now: float,
) -> Message | None:
    """
    Tell the sender of C{queued} that it did not reach C{failed}; nothing
    if the sender no longer exists.
    """
    row = txn.execute(
        "SELECT full_name FROM users WHERE username = ?", (queued.sender,)
    ).fetchone()
    if row is None:
        return None
    sender = address(POSTMASTER, queued.realm_id)
    text = bounce_text(queued.realm_id, failed, reason, queued.text)
    values = (sender, queued.sender, POSTMASTER_NAME, row[0], text, now)
    (new_id,) = insert_messages(txn, [(*values, None, None, None, None)])
    bounce = Message(new_id, *values)
    _drop_mailboxes(txn, [bounce])
    return bounce


@attrs.define(eq=False)
class AddRealmLink(Operation):
    """
    @raise RealmExists: if there is a link to that realm already.
    """

    checks_first = True

    link: RealmLink

    def run(self, txn: Transaction) -> None:
        link = self.link
        cursor = txn.execute(
            "INSERT INTO realm_links (realm_id, endpoint, secret, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (realm_id) DO NOTHING",
            (link.realm_id, link.endpoint, link.secret, link.created_at),
        )
        if cursor.rowcount == 0:
            raise RealmExists(link.realm_id)


@attrs.define(eq=False)
class GetRealmLink(Operation):
    checks_first = True

    realm_id: str

    def run(self, txn: Transaction) -> RealmLink:
        return require_link(txn, self.realm_id)


@attrs.define(eq=False)
class ListRealmLinks(Operation):
    checks_first = True

    def run(self, txn: Transaction) -> list[RealmLink]:
        rows = txn.execute(
            "SELECT realm_id, endpoint, secret, created_at FROM realm_links"
            " ORDER BY realm_id"
        ).fetchall()
        return [RealmLink(*row) for row in rows]


@attrs.define(eq=False)
class RemoveRealmLink(Operation):
    """
    Remove a link; what waited in its outbox goes back to the senders as
    bounces, which are the result.
    """

    checks_first = True
    stores_messages = True

    realm_id: str
    now: float

    def run(self, txn: Transaction) -> list[Message]:
        require_link(txn, self.realm_id)
        rows = txn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM realm_outbox WHERE realm_id = ?"
            " ORDER BY id",
            (self.realm_id,),
        ).fetchall()
        bounces = []
        for row in rows:
            queued = _outbound(row)
            bounce = _bounce(
                txn, queued, queued.recipients, "the link was removed", self.now
            )
            if bounce is not None:
                bounces.append(bounce)
        txn.execute("DELETE FROM realm_outbox WHERE realm_id = ?", (self.realm_id,))
        txn.execute("DELETE FROM realm_links WHERE realm_id = ?", (self.realm_id,))
        forget_unused_files(txn, set(_outbox_files(rows)))
        return bounces


@attrs.define(eq=False)
class QueueOutbound(Operation):
    """
    Queue a message for other realms: one outbox entry per realm, each
    C{(realm id, recipients there, message uid)} of C{batches}. A file
    (C{attachment}; C{text} is then its name) is stored once in C{files},
    which each entry references until it is acknowledged; it counts in
    the sender's quota of stored files meanwhile (L{chat.store.quotas}).

    @raise NoSuchUser: if the sender does not exist.
    @raise NoSuchRealm: if a realm is not linked.
    @raise RealmQueueFull: if a realm's outbox holds C{max_queue} already.
    @raise QuotaExceeded: if a new file would take the sender past their
        quota.
    """

    sender: str
    text: str
    sent_at: float
    batches: list[tuple[str, tuple[str, ...], str]]
    max_queue: int
    attachment: Attachment | None = None

    def run(self, txn: Transaction) -> list[OutboundMessage]:
        row = txn.execute(
            "SELECT full_name FROM users WHERE username = ?", (self.sender,)
        ).fetchone()
        if row is None:
            raise NoSuchUser(self.sender)
        (sender_name,) = row
        for realm_id, _, _ in self.batches:
            require_link(txn, realm_id)
            if _outbox_size(txn, realm_id) >= self.max_queue:
                raise RealmQueueFull(realm_id, self.max_queue)
        attachment = self.attachment
        if attachment is not None:
            keep_file(txn, self.sender, attachment)
        queued = []
        for realm_id, recipients, uid in self.batches:
            (new_id,) = txn.execute(
                "INSERT INTO realm_outbox (message_uid, realm_id, sender,"
                " sender_name, recipients, body, sent_at, file_name, file_size,"
                " file_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    uid,
                    realm_id,
                    self.sender,
                    sender_name,
                    json.dumps(list(recipients)),
                    self.text,
                    self.sent_at,
                    *file_columns(attachment),
                ),
            ).fetchone()
            queued.append(
                OutboundMessage(
                    new_id,
                    uid,
                    realm_id,
                    self.sender,
                    sender_name,
                    tuple(recipients),
                    self.text,
                    self.sent_at,
                    attachment,
                )
            )
        return queued


@attrs.define(eq=False)
class NextOutbound(Operation):
    checks_first = True

    realm_id: str
    limit: int

    def run(self, txn: Transaction) -> list[OutboundMessage]:
        rows = txn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM realm_outbox WHERE realm_id = ?"
            " ORDER BY id LIMIT ?",
            (self.realm_id, self.limit),
        ).fetchall()
        contents = file_contents(txn, _outbox_files(rows))
        return [_outbound(row, contents) for row in rows]


@attrs.define(eq=False)
class OutboxSize(Operation):
    checks_first = True

    realm_id: str

    def run(self, txn: Transaction) -> int:
        return _outbox_size(txn, self.realm_id)


@attrs.define(eq=False)
class FinishOutbound(Operation):
    """
    The other realm acknowledged an outbox entry: remove it, and bounce it
    to its sender for the recipients that C{failed}; the result is the
    bounce, if any.
    """

    checks_first = True
    stores_messages = True

    outbox_id: int
    failed: list[str]
    reason: str
    now: float

    def run(self, txn: Transaction) -> Message | None:
        row = txn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM realm_outbox WHERE id = ?",
            (self.outbox_id,),
        ).fetchone()
        if row is None:
            return None
        txn.execute("DELETE FROM realm_outbox WHERE id = ?", (self.outbox_id,))
        forget_unused_files(txn, _outbox_files([row]))
        if not self.failed:
            return None
        return _bounce(txn, _outbound(row), self.failed, self.reason, self.now)


@attrs.define(eq=False)
class ReceiveRemote(Operation):
    """
    Store a message from another realm in its recipients' mailboxes, once:
    a message whose uid was seen is acknowledged again, not stored again.
    A file is stored as a local one is: once in C{files}, within the quota
    of its sender (C{user@realm}, as its messages name them here).

    @raise NoSuchRealm: if the realm is not linked.
    @raise QuotaExceeded: if a new file would take the sender past their
        quota here (nothing is stored, nor the id remembered).
    """

    # The quota is checked after the id is recorded: a savepoint undoes it.
    checks_first = False
    stores_messages = True

    realm_id: str
    message: InboundMessage
    received_at: float

    def run(self, txn: Transaction) -> Delivery:
        realm_id, message = self.realm_id, self.message
        require_link(txn, realm_id)
        cursor = txn.execute(
            "INSERT INTO realm_inbound (realm_id, message_uid, unknown, received_at)"
            " VALUES (?, ?, '[]', ?) ON CONFLICT (realm_id, message_uid) DO NOTHING",
            (realm_id, message.uid, self.received_at),
        )
        if cursor.rowcount == 0:
            (unknown,) = txn.execute(
                "SELECT unknown FROM realm_inbound WHERE realm_id = ?"
                " AND message_uid = ?",
                (realm_id, message.uid),
            ).fetchone()
            return Delivery((), tuple(json.loads(unknown)), True)
        recipients = list(message.recipients)
        names: dict[str, str] = {}
        for chunk in chunks(recipients):
            names.update(
                txn.execute(
                    "SELECT username, full_name FROM users WHERE username IN"
                    f" ({marks(len(chunk))})",
                    chunk,
                ).fetchall()
            )
        sender = address(message.sender, realm_id)
        attachment = message.attachment
        values = [
            message_values(
                (sender, message.sender_name),
                (r, names[r]),
                message.text,
                message.sent_at,
                None,
                attachment,
            )
            for r in recipients
            if r in names
        ]
        content = None
        if attachment is not None and values:
            keep_file(txn, sender, attachment)
            content = attachment.content
        stored: list[Message] = []
        if values:
            ids = insert_messages(txn, values)
            stored = [
                Message._make((i, *row, content))
                for i, row in zip(ids, values, strict=True)
            ]
        _drop_mailboxes(txn, stored)
        unknown = tuple(r for r in recipients if r not in names)
        if unknown:
            txn.execute(
                "UPDATE realm_inbound SET unknown = ? WHERE realm_id = ?"
                " AND message_uid = ?",
                (json.dumps(list(unknown)), realm_id, message.uid),
            )
        return Delivery(tuple(stored), unknown, False)


def _from_realm_pattern(realm_id: str) -> str:
    escaped = realm_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%@{escaped}"


@attrs.define(eq=False)
class DrainRealmInbox(Operation):
    """
    Take a user's undelivered messages from one realm (the course's
    C{getrealminbox}).

    @raise NoSuchRealm: if the realm is not linked.
    """

    checks_first = True

    username: str
    realm_id: str
    delivered_at: float

    def run(self, txn: Transaction) -> list[Message]:
        require_link(txn, self.realm_id)
        if txn.caches is not None:
            txn.caches.forget_mailbox(self.username)
        pattern = _from_realm_pattern(self.realm_id)
        rows = txn.execute(
            f"SELECT {MAILBOX_COLUMNS} FROM {IN_MAILBOX} WHERE b.recipient = ?"
            " AND b.sender LIKE ? ESCAPE '\\' ORDER BY b.message_id"
            + txn.for_update(" OF b"),
            (self.username, pattern),
        ).fetchall()
        take_from_mailbox(txn, self.username, [row[0] for row in rows])
        return to_messages(txn, rows)


@attrs.define(eq=False)
class ForgetRemoteIds(Operation):
    checks_first = True

    before: float

    def run(self, txn: Transaction) -> int:
        cursor = txn.execute(
            "DELETE FROM realm_inbound WHERE received_at < ?", (self.before,)
        )
        return int(cursor.rowcount)
