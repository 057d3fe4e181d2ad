"""
Sending: storing a message (or a file) for one user, for several, for a
group's members, or for a name that is a user's or else a group's.

Each copy goes in its recipient's mailbox (L{chat.store.mailbox}), whose
limits are checked in the same transaction. A group's message to a member
whose mailbox is full (for that sender) is stored outside the mailbox
instead (delivered, in the group's history): one member who never reads
must not stop the group.

The hot operation (L{StoreMessage}) has a bulk form for the many that one
batch holds under load: one insert of all the batch's messages, names and
counts read once per batch (and remembered by the SQLite store's thread,
L{chat.store.caches}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from chat.errors import NoSuchGroup, NoSuchUser, NoSuchUsers, NotAMember
from chat.model import Attachment, Message
from chat.store.batching import Operation, Outcome, Transaction
from chat.store.files import keep_file
from chat.store.groups import require_group
from chat.store.mailbox import mailbox_refuses, mailboxes, names_and_mailboxes
from chat.store.messages import insert_messages, message_values
from chat.store.users import full_names


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
        names, boxes = names_and_mailboxes(
            txn,
            [name for op in sends for name in (op.sender, op.recipient)],
            [op.recipient for op in sends],
        )
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
            keep_file(txn, sender, self.attachment)
        from_sender = (sender, names[sender][0])
        rows = []
        for recipient in recipients:
            boxes[recipient].add(sender)
            rows.append(
                message_values(
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
        sender, group, sent_at = self.sender, self.group, self.sent_at
        require_group(txn, group)
        member_names = dict(members(txn, group))
        if sender not in member_names:
            raise NotAMember(group, sender)
        if self.attachment is not None:
            keep_file(txn, sender, self.attachment)
        from_sender = (sender, member_names[sender])
        others = [member for member in member_names if member != sender]
        boxes = mailboxes(txn, others)
        rows = [
            message_values(
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
                message_values(
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
