"""
History: the messages kept after delivery, read back a page at a time
(newest first, within a budget of bytes), and deleted once they are older
than the retention (L{chat.retention}).
"""

from __future__ import annotations

from typing import Any

import attrs

from chat.errors import NotAMember
from chat.model import Page
from chat.store.batching import Operation, Transaction, chunks, marks
from chat.store.files import forget_unused_files
from chat.store.groups import is_member, require_group
from chat.store.mailbox import take_from_mailbox
from chat.store.messages import MESSAGE_COLUMNS, to_messages, within
from chat.store.users import require_user

_NO_ID_LIMIT = 2**63 - 1


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
