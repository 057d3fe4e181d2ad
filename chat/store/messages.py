"""
The store's operations on messages: sending (to one user, several, a
group), draining a mailbox, pushing and acknowledging, history, retention.

A message is stored once per recipient, and never changes; while it is
undelivered it is also listed in its recipient's mailbox (the C{mailbox}
table), and delivering it (C{inbox}, C{ack}) takes it out of there. A
mailbox holds at most C{max_mailbox} messages, and at most
C{max_per_sender} of them from any one sender, so that one sender cannot
fill it for everyone; both are checked inside the inserting transaction.
A group's message to a member whose mailbox is full (for that sender) is
stored outside the mailbox instead (delivered, in the group's history):
one member who never reads must not stop the group.

The hot operations (L{StoreMessage}, L{DrainInbox}) have bulk forms for
the many that one batch holds under load: one insert of all the batch's
messages, names and counts read once per batch (and remembered by the
SQLite store's thread, L{chat.store.caches}).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from chat.errors import (
    MailboxFull,
    NoSuchGroup,
    NoSuchUser,
    NoSuchUsers,
    NotAMember,
    TooManyUnread,
)
from chat.model import Attachment, Message, Page
from chat.store.batching import (
    Operation,
    Outcome,
    Transaction,
    chunks,
    marks,
)
from chat.store.caches import Mailbox
from chat.store.files import file_contents, forget_unused_files, store_file
from chat.store.quotas import check_file_quota
from chat.store.users import full_names, require_user

MESSAGE_COLUMNS = (
    "id, sender, recipient, sender_name, recipient_name, body, sent_at,"
    " group_name, file_name, file_size, file_sha256"
)
#: Positions in a row of MESSAGE_COLUMNS.
ID, SENDER, RECIPIENT, BODY, FILE_SIZE, FILE_SHA256 = 0, 1, 2, 5, 9, 10
#: The columns of a mailbox's messages, read through the mailbox.
MAILBOX_COLUMNS = ", ".join(f"m.{name}" for name in MESSAGE_COLUMNS.split(", "))
#: A mailbox's messages: "FROM {IN_MAILBOX} WHERE b.recipient = ?".
IN_MAILBOX = "mailbox b JOIN messages m ON m.id = b.message_id"

_NO_ID_LIMIT = 2**63 - 1

#: The values of one message, in this order (those of L{Message} after
#: its C{id} and before its file's content).
_INSERT = (
    "INSERT INTO messages (sender, recipient, sender_name, recipient_name,"
    " body, sent_at, group_name, file_name, file_size, file_sha256)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INTO_MAILBOX = "INSERT INTO mailbox (recipient, message_id, sender) VALUES "


def within(
    rows: Iterable[Sequence[Any]], max_bytes: int | None, limit: int | None = None
) -> tuple[list[Sequence[Any]], bool]:
    """
    The first rows (at most C{limit}) whose text and file bytes together
    stay within C{max_bytes}, but at least one; and whether any row was
    left out.
    """
    taken: list[Sequence[Any]] = []
    total = 0
    for row in rows:
        if limit is not None and len(taken) == limit:
            return taken, True
        size = len(row[BODY]) + (row[FILE_SIZE] or 0)
        if taken and max_bytes is not None and total + size > max_bytes:
            return taken, True
        taken.append(row)
        total += size
    return taken, False


def to_messages(txn: Transaction, rows: Sequence[Sequence[Any]]) -> list[Message]:
    """
    Messages from rows of L{MESSAGE_COLUMNS}, with their files' content.
    """
    hashes = [row[FILE_SHA256] for row in rows if row[FILE_SHA256]]
    if not hashes:
        return [Message(*row) for row in rows]
    contents = file_contents(txn, hashes)
    return [Message._make((*row, contents.get(row[FILE_SHA256]))) for row in rows]


# Mailboxes.


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
                "SELECT r, (SELECT count(*) FROM (SELECT 1 FROM mailbox"
                " WHERE recipient = r LIMIT %s) AS m)"
                " FROM unnest(%s::text[]) AS r",
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


# Inserting.


def insert_messages(
    txn: Transaction,
    rows: list[tuple[Any, ...]],
    undelivered: Sequence[bool] | None = None,
) -> list[int]:
    """
    Insert messages (each the values of L{_INSERT}) and list them in their
    recipients' mailboxes (all of them, or those C{undelivered} says);
    return their new ids, in order. One statement per table for all of
    them.
    """
    if txn.dialect == "postgresql":
        ids = _insert_postgres(txn, rows)
    elif len(rows) == 1:
        (new_id,) = txn.execute(_INSERT + " RETURNING id", rows[0]).fetchone()
        ids = [new_id]
    else:
        ids = _insert_sqlite(txn, rows)
    boxed = [
        (row[1], new_id, row[0])
        for new_id, row, keep in zip(
            ids, rows, undelivered or [True] * len(rows), strict=True
        )
        if keep
    ]
    if boxed:
        _into_mailboxes(txn, boxed)
    return ids


def _insert_sqlite(txn: Transaction, rows: list[tuple[Any, ...]]) -> list[int]:
    # One statement per chunk of rows, not one step per row as executemany
    # takes (each step lets go of the GIL and takes it back: the reactor
    # thread and this one would take turns a hundred times per batch).
    ids: list[int] = []
    for chunk in chunks(rows, _ROWS_PER_INSERT):
        count = len(chunk)
        txn.execute(_many(_INSERT, _ROW, count), [v for row in chunk for v in row])
        # SQLite gives a new row the largest rowid so far plus one, and this
        # transaction is the only writer: the rows got consecutive ids.
        (last,) = txn.execute("SELECT last_insert_rowid()").fetchone()
        ids.extend(range(last - count + 1, last + 1))
    return ids


def _insert_postgres(txn: Transaction, rows: list[tuple[Any, ...]]) -> list[int]:
    columns = [list(values) for values in zip(*rows, strict=True)]
    returned = txn.connection.execute(
        "INSERT INTO messages (sender, recipient, sender_name,"
        " recipient_name, body, sent_at, group_name, file_name, file_size,"
        " file_sha256)"
        " SELECT s, r, sn, rn, b, t, g, fn, fs, fh FROM unnest("
        "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::float8[], %s::text[], %s::text[], %s::bigint[], %s::text[])"
        " WITH ORDINALITY AS u (s, r, sn, rn, b, t, g, fn, fs, fh, n)"
        " ORDER BY n RETURNING id",
        columns,
    ).fetchall()
    # Identity values are drawn in the order the rows are inserted.
    return sorted(new_id for (new_id,) in returned)


def _into_mailboxes(txn: Transaction, boxed: list[tuple[str, int, str]]) -> None:
    """
    List messages in mailboxes: (recipient, message id, sender) each.
    """
    if txn.dialect == "postgresql":
        recipients, ids, senders = (list(c) for c in zip(*boxed, strict=True))
        txn.connection.execute(
            "INSERT INTO mailbox (recipient, message_id, sender)"
            " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[])",
            (recipients, ids, senders),
        )
        return
    for chunk in chunks(boxed, _ROWS_PER_INSERT):
        txn.execute(
            _many(_INTO_MAILBOX, "(?, ?, ?)", len(chunk)),
            [v for row in chunk for v in row],
        )


#: Rows in one multi-row INSERT: at most 10 values each, well under
#: SQLite's limit of 32,766 bound values.
_ROWS_PER_INSERT = 500
_MANY: dict[tuple[str, int], str] = {}


def _many(insert: str, row: str, count: int) -> str:
    """
    C{insert} for C{count} rows of C{row}'s marks.
    """
    sql = _MANY.get((insert, count))
    if sql is None:
        head = insert.partition(" VALUES ")[0] + " VALUES "
        sql = _MANY[(insert, count)] = head + ", ".join([row] * count)
    return sql


@attrs.define(eq=False)
class StoreMessage(Operation):
    """
    A message from C{sender} to C{recipient}; the result is the stored
    L{Message}.

    @raise NoSuchUser: if the sender or the recipient does not exist.
    @raise MailboxFull: if the recipient's mailbox is full.
    @raise TooManyUnread: if it is full for this sender.
    """

    checks_first = True
    stores_messages = True
    bulk = True

    sender: str
    recipient: str
    text: str
    sent_at: float

    def run(self, txn: Transaction) -> Message:
        ((succeeded, value),) = self.run_many(txn, [self])
        if not succeeded:
            raise value
        return value

    @classmethod
    def run_many(
        cls, txn: Transaction, operations: Sequence[Operation]
    ) -> list[Outcome]:
        sends: Sequence[StoreMessage] = operations  # type: ignore[assignment]
        names = full_names(
            txn, [name for op in sends for name in (op.sender, op.recipient)]
        )
        boxes = mailboxes(txn, [op.recipient for op in sends if op.recipient in names])
        outcomes: list[Outcome] = []
        accepted: list[int] = []
        rows: list[tuple[Any, ...]] = []
        for op in sends:
            sender, recipient = op.sender, op.recipient
            if sender not in names:
                outcomes.append((False, NoSuchUser(sender)))
                continue
            if recipient not in names:
                outcomes.append((False, NoSuchUser(recipient)))
                continue
            mailbox = boxes[recipient]
            refused = mailbox_refuses(txn, recipient, mailbox, sender)
            if refused is not None:
                outcomes.append((False, refused))
                continue
            mailbox.add(sender)
            accepted.append(len(outcomes))
            outcomes.append((True, None))
            rows.append(
                (
                    sender,
                    recipient,
                    names[sender][0],
                    names[recipient][0],
                    op.text,
                    op.sent_at,
                    None,
                    None,
                    None,
                    None,
                )
            )
        if rows:
            ids = insert_messages(txn, rows)
            for position, new_id, row in zip(accepted, ids, rows, strict=True):
                outcomes[position] = (True, Message(new_id, *row[:6]))
        return outcomes


def _insert_one(
    txn: Transaction,
    sender: tuple[str, str],
    recipient: tuple[str, str],
    text: str,
    sent_at: float,
    group: str | None,
    attachment: Attachment | None,
) -> tuple[Any, ...]:
    """
    The values of L{_INSERT} for one copy of a message.
    """
    if attachment is None:
        file_fields: tuple[Any, ...] = (None, None, None)
    else:
        file_fields = (attachment.name, attachment.size, attachment.sha256)
    return (
        sender[0],
        recipient[0],
        sender[1],
        recipient[1],
        text,
        sent_at,
        group,
        *file_fields,
    )


def _stored(
    txn: Transaction,
    rows: list[tuple[Any, ...]],
    attachment: Attachment | None,
    undelivered: Sequence[bool] | None = None,
) -> list[Message]:
    """
    Insert C{rows} (in their mailboxes, or those C{undelivered} says) and
    return them as messages (with the file's content).
    """
    ids = insert_messages(txn, rows, undelivered)
    content = None if attachment is None else attachment.content
    return [
        Message._make((new_id, *row, content))
        for new_id, row in zip(ids, rows, strict=True)
    ]


@attrs.define(eq=False)
class StoreMessages(Operation):
    """
    One message (or file) to several users: all stored, or none.

    @raise NoSuchUser: if the sender does not exist.
    @raise NoSuchUsers: naming the recipients that do not exist.
    @raise MailboxFull: if any recipient's mailbox is full.
    @raise TooManyUnread: if any is full for this sender.
    @raise QuotaExceeded: if a new file would take the sender past their
        quota (L{chat.store.quotas}).
    """

    checks_first = True
    stores_messages = True

    sender: str
    recipients: list[str]
    text: str
    sent_at: float
    attachment: Attachment | None = None

    def run(self, txn: Transaction) -> list[Message]:
        return self.store(txn, full_names(txn, [self.sender, *self.recipients]))

    def store(
        self, txn: Transaction, names: dict[str, tuple[str, float]]
    ) -> list[Message]:
        """
        L{run}, given the full names of the sender and the recipients that
        exist (L{full_names}).
        """
        sender = self.sender
        recipients = list(dict.fromkeys(self.recipients))
        if sender not in names:
            raise NoSuchUser(sender)
        missing = [r for r in recipients if r not in names]
        if missing:
            raise NoSuchUsers(missing)
        boxes = mailboxes(txn, recipients)
        # All or nothing: any full mailbox refuses the whole send.
        for recipient in recipients:
            refused = mailbox_refuses(txn, recipient, boxes[recipient], sender)
            if refused is not None:
                raise refused
        if self.attachment is not None:
            check_file_quota(txn, sender, self.attachment)
            store_file(txn, self.attachment)
        from_sender = (sender, names[sender][0])
        rows = []
        for recipient in recipients:
            boxes[recipient].add(sender)
            rows.append(
                _insert_one(
                    txn,
                    from_sender,
                    (recipient, names[recipient][0]),
                    self.text,
                    self.sent_at,
                    None,
                    self.attachment,
                )
            )
        return _stored(txn, rows, self.attachment)


def members(txn: Transaction, group: str) -> list[tuple[str, str]]:
    """
    The members of a group with their full names, longest-standing first.
    """
    return txn.execute(
        "SELECT m.username, u.full_name FROM group_members m"
        " JOIN users u ON u.username = m.username"
        " WHERE m.group_name = ? ORDER BY m.id",
        (group,),
    ).fetchall()


@attrs.define(eq=False)
class StoreGroupMessage(Operation):
    """
    One message (or file) to every member of a group; the result is each
    copy stored, the sender's own (already delivered, for its history)
    first. A member whose mailbox is full gets a copy kept as delivered,
    which is not returned (nobody pushes it).

    @raise NoSuchGroup: if the group does not exist.
    @raise NotAMember: if the sender is not a member.
    @raise QuotaExceeded: if a new file would take the sender past their
        quota (L{chat.store.quotas}).
    """

    checks_first = True
    stores_messages = True

    sender: str
    group: str
    text: str
    sent_at: float
    attachment: Attachment | None = None

    def run(self, txn: Transaction) -> list[Message]:
        from chat.store.groups import require_group

        sender, group, sent_at = self.sender, self.group, self.sent_at
        require_group(txn, group)
        member_names = dict(members(txn, group))
        if sender not in member_names:
            raise NotAMember(group, sender)
        if self.attachment is not None:
            check_file_quota(txn, sender, self.attachment)
            store_file(txn, self.attachment)
        from_sender = (sender, member_names[sender])
        others = [member for member in member_names if member != sender]
        boxes = mailboxes(txn, others)
        rows = [
            _insert_one(
                txn,
                from_sender,
                from_sender,
                self.text,
                sent_at,
                group,
                self.attachment,
            )
        ]
        # The sender's own copy is delivered (for its history of the group).
        kept = [False]
        for member in others:
            mailbox = boxes[member]
            takes = mailbox_refuses(txn, member, mailbox, sender) is None
            if takes:
                mailbox.add(sender)
            rows.append(
                _insert_one(
                    txn,
                    from_sender,
                    (member, member_names[member]),
                    self.text,
                    sent_at,
                    group,
                    self.attachment,
                )
            )
            kept.append(takes)
        stored = _stored(txn, rows, self.attachment, kept)
        # The sender's copy first, then the copies in mailboxes.
        return [stored[0]] + [
            message for message, keep in zip(stored, kept, strict=True) if keep
        ]


@attrs.define(eq=False)
class StoreToName(Operation):
    """
    One message (or file) to C{name}, a single name given without the
    C{#} of a group: to the user of that name if there is one (as
    L{StoreMessages}), or else to the group of that name (as
    L{StoreGroupMessage}). The course family writes C{sendgroup <token>
    team hi} for C{#team}; deciding here, in the same transaction, costs no
    round trip, and a send to a user no statement, more than L{StoreMessages}.

    @raise NoSuchUser: if the sender does not exist.
    @raise NoSuchUsers: naming C{name} if it is neither a user nor a group.
    """

    checks_first = True
    stores_messages = True

    sender: str
    name: str
    text: str
    sent_at: float
    attachment: Attachment | None = None

    def run(self, txn: Transaction) -> list[Message]:
        sender, name = self.sender, self.name
        names = full_names(txn, [sender, name])
        if sender not in names:
            raise NoSuchUser(sender)
        if name in names:
            to_user = StoreMessages(
                sender, [name], self.text, self.sent_at, self.attachment
            )
            return to_user.store(txn, names)
        to_group = StoreGroupMessage(
            sender, name, self.text, self.sent_at, self.attachment
        )
        try:
            # Nothing is written before the group is found.
            return to_group.run(txn)
        except NoSuchGroup:
            raise NoSuchUsers([name]) from None


# Reading and delivering.


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
        "SELECT b.message_id FROM unnest(%s::text[]) AS r (name), LATERAL"
        " (SELECT message_id FROM mailbox WHERE recipient = r.name"
        " ORDER BY message_id FOR UPDATE) AS b",
        (usernames,),
    ).fetchall()
    waiting: dict[str, list[Sequence[Any]]] = {name: [] for name in usernames}
    if boxed:
        for row in txn.connection.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ANY(%s) ORDER BY id",
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
            "DELETE FROM mailbox USING unnest(%s::text[], %s::bigint[]) AS u (r, i)"
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


def _page(
    txn: Transaction,
    conditions: list[tuple[str, tuple[Any, ...]]],
    limit: int,
    before_id: int | None,
    max_bytes: int | None,
) -> Page:
    """
    The newest messages matching any of C{conditions} (each a WHERE clause
    and its arguments, disjoint, each served by an index in id order).
    """
    below = _NO_ID_LIMIT if before_id is None else before_id
    branches = [
        f"SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM messages"
        f" WHERE {where} AND id < ? ORDER BY id DESC LIMIT ?) AS branch"
        for where, _ in conditions
    ]
    arguments = [a for _, args in conditions for a in (*args, below, limit + 1)]
    cursor = txn.execute(
        " UNION ALL ".join(branches) + " ORDER BY id DESC LIMIT ?",
        (*arguments, limit + 1),
    )
    rows, more = within(cursor, max_bytes, limit)
    cursor.close()
    return Page(tuple(to_messages(txn, rows)), more)


_CONVERSATION = "recipient = ? AND sender = ? AND group_name IS NULL"


@attrs.define(eq=False)
class Conversation(Operation):
    """
    One page of the private messages between a user and a peer, newest
    first.

    @raise NoSuchUser: if the peer does not exist.
    """

    checks_first = True

    username: str
    peer: str
    limit: int
    before_id: int | None = None
    max_bytes: int | None = None

    def run(self, txn: Transaction) -> Page:
        require_user(txn, self.peer)
        conditions = [(_CONVERSATION, (self.peer, self.username))]
        if self.peer != self.username:
            conditions.append((_CONVERSATION, (self.username, self.peer)))
        return _page(txn, conditions, self.limit, self.before_id, self.max_bytes)


@attrs.define(eq=False)
class GroupHistory(Operation):
    """
    One page of a group's messages as a member received them, newest first.

    @raise NoSuchGroup: if the group does not exist.
    @raise NotAMember: if the user is not a member.
    """

    checks_first = True

    username: str
    group: str
    limit: int
    before_id: int | None = None
    max_bytes: int | None = None

    def run(self, txn: Transaction) -> Page:
        from chat.store.groups import is_member, require_group

        require_group(txn, self.group)
        if not is_member(txn, self.group, self.username):
            raise NotAMember(self.group, self.username)
        return _page(
            txn,
            [("recipient = ? AND group_name = ?", (self.username, self.group))],
            self.limit,
            self.before_id,
            self.max_bytes,
        )


@attrs.define(eq=False)
class PurgeMessages(Operation):
    """
    Delete up to C{limit} of the oldest messages sent before C{sent_before}
    (and the files no message uses any more); the result is how many.

    Messages are found by id, not by an index of their times (one index
    less to write with every message): ids grow with the time messages are
    stored, so the last id sent before the moment is found by bisection,
    and the messages up to it that were sent before it are deleted. A
    message whose time is out of step with its id (from another realm's
    clock) goes when the ids around it do.
    """

    sent_before: float
    limit: int

    def run(self, txn: Transaction) -> int:
        last = _last_id_before(txn, self.sent_before)
        if last is None:
            return 0
        rows = txn.execute(
            "SELECT id, recipient, file_sha256 FROM messages WHERE id <= ?"
            " AND sent_at < ? ORDER BY id LIMIT ?",
            (last, self.sent_before, self.limit),
        ).fetchall()
        boxes: dict[str, list[int]] = {}
        for message_id, recipient, _ in rows:
            boxes.setdefault(recipient, []).append(message_id)
        for recipient, ids in boxes.items():
            take_from_mailbox(txn, recipient, ids)
        for chunk in chunks([row[0] for row in rows]):
            txn.execute(
                f"DELETE FROM messages WHERE id IN ({marks(len(chunk))})", chunk
            )
        forget_unused_files(txn, list({row[2] for row in rows if row[2]}))
        if rows and txn.caches is not None:
            txn.caches.forget()  # undelivered messages may have gone too
        return len(rows)


def _last_id_before(txn: Transaction, moment: float) -> int | None:
    """
    The last message id (by bisection over ids, as if times grew with ids)
    sent before C{moment}; None if the first was not.
    """
    low, high = txn.execute("SELECT min(id), max(id) FROM messages").fetchone()
    if low is None:
        return None
    found = None
    while low <= high:
        middle = (low + high) // 2
        row = txn.execute(
            "SELECT id, sent_at FROM messages WHERE id >= ? ORDER BY id LIMIT 1",
            (middle,),
        ).fetchone()
        if row is None or row[0] > high:
            high = middle - 1
        elif row[1] < moment:
            found = row[0]
            low = row[0] + 1
        else:
            high = middle - 1
    return found


@attrs.define(eq=False)
class MessagesById(Operation):
    """
    Messages (delivered or not) by id, in id order: what other nodes'
    notifications announce (L{chat.cluster}).
    """

    checks_first = True

    ids: list[int]

    def run(self, txn: Transaction) -> list[Message]:
        rows: list[Sequence[Any]] = []
        for chunk in chunks(self.ids):
            rows.extend(
                txn.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages"
                    f" WHERE id IN ({marks(len(chunk))})",
                    chunk,
                ).fetchall()
            )
        rows.sort(key=lambda row: row[ID])
        return to_messages(txn, rows)


def new_messages(
    batch: Sequence[Operation], outcomes: Sequence[Outcome]
) -> list[Message]:
    """
    The undelivered messages the operations of C{batch} stored (not a
    sender's own, already delivered, copy of a group message).
    """
    from chat.links import Delivery

    stored: list[Message] = []
    for operation, (succeeded, value) in zip(batch, outcomes, strict=True):
        if not succeeded or not operation.stores_messages or value is None:
            continue
        if isinstance(value, Delivery):
            found: Iterable[Message] = value.messages
        elif isinstance(value, Message):
            found = (value,)
        else:
            found = value
        stored.extend(m for m in found if not m.senders_copy)
    return stored
