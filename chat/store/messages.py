"""
The messages table: the columns of a stored message, reading rows into
L{Message}s, and inserting messages. The operations on messages live by
what they do: L{chat.store.sending} stores them, L{chat.store.mailbox}
delivers them, L{chat.store.history} reads them back and deletes the old.

A message is stored once per recipient, and never changes; while it is
undelivered it is also listed in its recipient's mailbox (the C{mailbox}
table), and delivering it (C{inbox}, C{ack}) takes it out of there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import attrs

from chat.model import Attachment, Message
from chat.store.batching import Operation, Outcome, Transaction, chunks, marks
from chat.store.files import file_columns, file_contents

R = TypeVar("R", bound=Sequence[Any])

MESSAGE_COLUMNS = (
    "id, sender, recipient, sender_name, recipient_name, body, sent_at,"
    " group_name, file_name, file_size, file_sha256"
)
#: Positions in a row of MESSAGE_COLUMNS.
ID, SENDER, RECIPIENT, BODY, FILE_SIZE, FILE_SHA256 = 0, 1, 2, 5, 9, 10

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
    rows: Iterable[R], max_bytes: int | None, limit: int | None = None
) -> tuple[list[R], bool]:
    """
    The first rows (at most C{limit}) whose text and file bytes together
    stay within C{max_bytes}, but at least one; and whether any row was
    left out. A row is one of L{MESSAGE_COLUMNS}, or a L{Message}, whose
    fields come in the same order (the in-memory store pages with this
    too).
    """
    taken: list[R] = []
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


# Inserting.


def insert_messages(
    txn: Transaction,
    rows: list[tuple[Any, ...]],
    undelivered: Sequence[bool] | None = None,
) -> list[int]:
    """
    Insert messages (each the values of L{_INSERT}, as L{message_values}
    makes them) and list them in their recipients' mailboxes (all of them,
    or those C{undelivered} says); return their new ids, in order. One
    statement per table for all of them.
    """
    if txn.dialect == "postgresql":
        if undelivered is None or all(undelivered):
            # A round trip away: both tables in one statement.
            return _insert_postgres(txn, rows, into_mailboxes=True)
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


def _insert_postgres(
    txn: Transaction, rows: list[tuple[Any, ...]], into_mailboxes: bool = False
) -> list[int]:
    """
    Insert C{rows} in one statement (and, with C{into_mailboxes}, list each
    in its recipient's mailbox in the same statement); return their ids.
    """
    columns = [list(values) for values in zip(*rows, strict=True)]
    # %b: the arrays go in PostgreSQL's binary format. In the text format
    # psycopg searches every element for characters to escape, with a
    # regular expression each: that was a third of this thread's time.
    insert = (
        "INSERT INTO messages (sender, recipient, sender_name,"
        " recipient_name, body, sent_at, group_name, file_name, file_size,"
        " file_sha256)"
        " SELECT s, r, sn, rn, b, t, g, fn, fs, fh FROM unnest("
        "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[],"
        " %b::float8[], %b::text[], %b::text[], %b::bigint[], %b::text[])"
        " WITH ORDINALITY AS u (s, r, sn, rn, b, t, g, fn, fs, fh, n)"
        " ORDER BY n"
    )
    if into_mailboxes:
        sql = (
            f"WITH new AS ({insert} RETURNING id, recipient, sender),"
            " boxed AS (INSERT INTO mailbox (recipient, message_id, sender)"
            " SELECT recipient, id, sender FROM new)"
            " SELECT id FROM new"
        )
    else:
        sql = insert + " RETURNING id"
    returned = txn.connection.execute(sql, columns).fetchall()
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
            " SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[])",
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


def message_values(
    sender: tuple[str, str],
    recipient: tuple[str, str],
    text: str,
    sent_at: float,
    group: str | None,
    attachment: Attachment | None,
) -> tuple[Any, ...]:
    """
    The values of L{insert_messages} for one copy of a message: the
    sender's and the recipient's (username, full name).
    """
    return (
        sender[0],
        recipient[0],
        sender[1],
        recipient[1],
        text,
        sent_at,
        group,
        *file_columns(attachment),
    )


# Reading.


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
