"""
The mailbox: each user's undelivered messages, which the C{mailbox} table
lists by recipient. Storing a message puts it in (L{chat.store.sending});
delivering it (C{inbox}; or pushing it, then its acknowledgement) takes it
out.

A mailbox holds at most C{max_mailbox} messages, and at most
C{max_per_sender} of them from any one sender, so that one sender cannot
fill it for everyone; both are checked inside the inserting transaction
(L{mailbox_refuses}), on counts that the SQLite store's thread remembers
(L{chat.store.caches}).

Draining (L{DrainInbox}) has a bulk form for the many drains that one batch
holds under load: on PostgreSQL, a round trip away, three statements for
all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from chat.errors import MailboxFull, TooManyUnread
from chat.model import Message
from chat.store.batching import Operation, Outcome, Transaction, chunks, marks
from chat.store.caches import Mailbox
from chat.store.messages import (
    ID,
    MESSAGE_COLUMNS,
    RECIPIENT,
    to_messages,
    within,
)
from chat.store.users import full_names, require_user

#: The columns of a mailbox's messages, read through the mailbox.
MAILBOX_COLUMNS = ", ".join(f"m.{name}" for name in MESSAGE_COLUMNS.split(", "))
#: A mailbox's messages: "FROM {IN_MAILBOX} WHERE b.recipient = ?".
IN_MAILBOX = "mailbox b JOIN messages m ON m.id = b.message_id"


def _counted(recipient: str) -> str:
    """
    PostgreSQL: how many messages the mailbox of C{recipient} (a column)
    holds, counted up to the limit (a parameter) and no further.
    """
    return (
        "(SELECT count(*) FROM (SELECT 1 FROM mailbox"
        f" WHERE recipient = {recipient} LIMIT %s) AS m)"
    )


def mailboxes(txn: Transaction, recipients: Iterable[str]) -> dict[str, Mailbox]:
    """
    The undelivered messages of each of C{recipients} (remembered by the
    store's thread where it can).
    """
    caches = txn.caches
    found: dict[str, Mailbox] = {}
    limit = txn.max_mailbox
    if txn.dialect == "postgresql":
        # A round trip away: all the mailboxes in one query.
        wanted = sorted(set(recipients))
        if wanted:
            for recipient, count in txn.connection.execute(
                f"SELECT r, {_counted('r')} FROM unnest(%b::text[]) AS r",
                (limit, wanted),
            ):
                found[recipient] = Mailbox(count)
        return found
    for recipient in recipients:
        if recipient in found:
            continue
        mailbox = None if caches is None else caches.mailboxes.get(recipient)
        if mailbox is None:
            # One range of the mailbox's key, stopping at the limit.
            (count,) = txn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM mailbox"
                " WHERE recipient = ? LIMIT ?) AS box",
                (recipient, limit),
            ).fetchone()
            mailbox = Mailbox(count)
            if caches is not None:
                caches.remember_mailbox(recipient, mailbox)
        found[recipient] = mailbox
    return found


def names_and_mailboxes(
    txn: Transaction, usernames: Iterable[str], recipients: Iterable[str]
) -> tuple[dict[str, tuple[str, float]], dict[str, Mailbox]]:
    """
    What sending needs to know first: the full name and creation time of
    each of C{usernames} that exists (L{full_names}), and the mailbox of
    each of C{recipients} that exists (L{mailboxes}). On PostgreSQL, one
    round trip for both.
    """
    names: dict[str, tuple[str, float]]
    if txn.dialect != "postgresql":
        names = full_names(txn, usernames)
        return names, mailboxes(txn, [r for r in recipients if r in names])
    names = {}
    boxes: dict[str, Mailbox] = {}
    for username, full_name, created_at, count in txn.connection.execute(
        "SELECT u.username, u.full_name, u.created_at,"
        " CASE WHEN u.username = ANY(%b::text[])"
        f" THEN {_counted('u.username')} END"
        " FROM users u WHERE u.username = ANY(%b::text[])",
        (sorted(set(recipients)), txn.max_mailbox, sorted(set(usernames))),
    ):
        names[username] = (full_name, created_at)
        if count is not None:
            boxes[username] = Mailbox(count)
    return names, boxes


def _from_sender(
    txn: Transaction, recipient: str, mailbox: Mailbox, sender: str
) -> int:
    """
    How many undelivered messages of C{mailbox} C{sender} sent (read from
    the database the first time it is asked).
    """
    by_sender = mailbox.by_sender
    if by_sender is None:
        by_sender = mailbox.by_sender = dict(
            txn.execute(
                "SELECT sender, count(*) FROM mailbox WHERE recipient = ?"
                " GROUP BY sender",
                (recipient,),
            ).fetchall()
        )
    return by_sender.get(sender, 0)


def mailbox_refuses(
    txn: Transaction, recipient: str, mailbox: Mailbox, sender: str
) -> Exception | None:
    """
    Why C{mailbox} takes no more messages from C{sender}, or None if it
    takes one.
    """
    if mailbox.total >= txn.max_mailbox:
        return MailboxFull(recipient)
    per_sender = txn.max_per_sender
    if (
        mailbox.total >= per_sender
        and _from_sender(txn, recipient, mailbox, sender) >= per_sender
    ):
        return TooManyUnread(recipient, per_sender)
    return None


def _drop_mailbox(txn: Transaction, recipient: str) -> None:
    if txn.caches is not None:
        txn.caches.forget_mailbox(recipient)


# Delivering.


def take_from_mailbox(txn: Transaction, recipient: str, ids: Sequence[int]) -> int:
    """
    Take exactly the messages C{ids} out of C{recipient}'s mailbox (those
    still in it): they are delivered. Returns how many were.
    """
    taken = 0
    for chunk in chunks(ids):
        cursor = txn.execute(
            "DELETE FROM mailbox WHERE recipient = ?"
            f" AND message_id IN ({marks(len(chunk))})",
            (recipient, *chunk),
        )
        taken += cursor.rowcount
    return taken


@attrs.define(eq=False)
class DrainInbox(Operation):
    """
    Take a user's undelivered messages, oldest first, up to C{max_bytes}
    of text and files (at least one), out of the mailbox: they are
    delivered. The result is the messages taken.
    """

    checks_first = True
    bulk = True

    username: str
    delivered_at: float
    max_bytes: int | None = None

    def run(self, txn: Transaction) -> list[Message]:
        _drop_mailbox(txn, self.username)
        cursor = txn.execute(
            f"SELECT {MAILBOX_COLUMNS} FROM {IN_MAILBOX} WHERE b.recipient = ?"
            " ORDER BY b.message_id" + txn.for_update(" OF b"),
            (self.username,),
        )
        rows, _ = within(cursor, self.max_bytes)
        cursor.close()
        # Exactly the rows read (and locked): on PostgreSQL each statement
        # sees the commits made since the last, so "id <= the last id read"
        # could take a lower id that another node committed meanwhile,
        # unreturned.
        take_from_mailbox(txn, self.username, [row[ID] for row in rows])
        return to_messages(txn, rows)

    @classmethod
    def run_many(
        cls, txn: Transaction, operations: Sequence[Operation]
    ) -> list[Outcome]:
        drains: Sequence[DrainInbox] = operations  # type: ignore[assignment]
        if txn.dialect != "postgresql":
            # Statements cost no round trip here: each drain on its own.
            return [(True, drain.run(txn)) for drain in drains]
        return _drain_many_postgres(txn, drains)


def _drain_many_postgres(
    txn: Transaction, drains: Sequence[DrainInbox]
) -> list[Outcome]:
    """
    Several drains at once, each taking what it would alone, in order: one
    query locking the mailboxes' messages, one delete, and one query for
    their files. With the database a round trip away, statements per
    operation are what cost.
    """
    usernames = sorted({drain.username for drain in drains})
    # The mailboxes' entries first (locked), then their messages by id: two
    # plain index scans, whatever the planner knows of the tables' sizes.
    boxed = txn.connection.execute(
        # One plain index scan per mailbox (not a bitmap scan of all of
        # them): it marks the index entries of delivered (deleted) rows dead
        # as it passes them, so the next reads skip them until vacuum.
        "SELECT b.message_id FROM unnest(%b::text[]) AS r (name), LATERAL"
        " (SELECT message_id FROM mailbox WHERE recipient = r.name"
        " ORDER BY message_id FOR UPDATE) AS b",
        (usernames,),
    ).fetchall()
    waiting: dict[str, list[Sequence[Any]]] = {name: [] for name in usernames}
    if boxed:
        for row in txn.connection.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages"
            " WHERE id = ANY(%b::bigint[]) ORDER BY id",
            ([message_id for (message_id,) in boxed],),
        ):
            waiting[row[RECIPIENT]].append(row)
    taken: list[list[Sequence[Any]]] = []
    for drain in drains:
        rows, _ = within(waiting[drain.username], drain.max_bytes)
        waiting[drain.username] = waiting[drain.username][len(rows) :]
        taken.append(rows)
    delivered = [row for rows in taken for row in rows]
    if delivered:
        txn.connection.execute(
            "DELETE FROM mailbox USING unnest(%b::text[], %b::bigint[]) AS u (r, i)"
            " WHERE mailbox.recipient = u.r AND mailbox.message_id = u.i",
            ([row[RECIPIENT] for row in delivered], [row[ID] for row in delivered]),
        )
    messages = iter(to_messages(txn, delivered))
    return [(True, [next(messages) for _ in rows]) for rows in taken]


@attrs.define(eq=False)
class DrainInboxFrom(Operation):
    """
    L{DrainInbox} for the private messages (not a group's) from C{sender}
    only: a user here, or C{user@realm}.

    @raise NoSuchUser: if C{sender} is a local name that does not exist.
    """

    checks_first = True

    username: str
    sender: str
    delivered_at: float
    max_bytes: int | None = None

    def run(self, txn: Transaction) -> list[Message]:
        if "@" not in self.sender:
            require_user(txn, self.sender)
        _drop_mailbox(txn, self.username)
        cursor = txn.execute(
            f"SELECT {MAILBOX_COLUMNS} FROM {IN_MAILBOX} WHERE b.recipient = ?"
            " AND b.sender = ? AND m.group_name IS NULL ORDER BY b.message_id"
            + txn.for_update(" OF b"),
            (self.username, self.sender),
        )
        rows, _ = within(cursor, self.max_bytes)
        cursor.close()
        take_from_mailbox(txn, self.username, [row[ID] for row in rows])
        return to_messages(txn, rows)


@attrs.define(eq=False)
class Undelivered(Operation):
    """
    A user's undelivered messages after C{after_id}, oldest first, at most
    C{limit} (for pushing; they stay in the mailbox).
    """

    checks_first = True

    username: str
    after_id: int
    limit: int

    def run(self, txn: Transaction) -> list[Message]:
        rows = txn.execute(
            f"SELECT {MAILBOX_COLUMNS} FROM {IN_MAILBOX} WHERE b.recipient = ?"
            " AND b.message_id > ? ORDER BY b.message_id LIMIT ?",
            (self.username, self.after_id, self.limit),
        ).fetchall()
        return to_messages(txn, rows)


@attrs.define(eq=False)
class MarkDelivered(Operation):
    """
    Take a user's messages up to C{up_to_id} out of the mailbox: they are
    delivered. The result is how many.
    """

    checks_first = True

    username: str
    up_to_id: int
    delivered_at: float

    def run(self, txn: Transaction) -> int:
        _drop_mailbox(txn, self.username)
        cursor = txn.execute(
            "DELETE FROM mailbox WHERE recipient = ? AND message_id <= ?",
            (self.username, self.up_to_id),
        )
        return int(cursor.rowcount)


@attrs.define(eq=False)
class MarkDeliveredIds(Operation):
    """
    Take exactly the messages C{ids} of a user out of the mailbox (those
    still in it): they are delivered. The result is how many.
    """

    checks_first = True

    username: str
    ids: list[int]
    delivered_at: float

    def run(self, txn: Transaction) -> int:
        _drop_mailbox(txn, self.username)
        return take_from_mailbox(txn, self.username, self.ids)
