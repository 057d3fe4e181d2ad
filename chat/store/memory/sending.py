"""
The in-memory store's sending (L{chat.store.interfaces.IMessageStore}), with
the rules of L{chat.store.sending}: mailbox limits and file quotas.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred

from chat.callbacks import Done
from chat.errors import (
    MailboxFull,
    NoSuchUsers,
    NotAMember,
    TooManyUnread,
)
from chat.model import Attachment, Message, User
from chat.store.memory.state import MemoryState, Stored


class MemorySending(MemoryState):
    """
    Storing messages for users, groups and names.
    """

    def _add(
        self,
        sender: User,
        recipient: User,
        text: str,
        sent_at: float,
        group: str | None = None,
        attachment: Attachment | None = None,
        delivered_at: float | None = None,
    ) -> Message:
        message = Message(
            self.next_message_id(),
            sender.username,
            recipient.username,
            sender.full_name,
            recipient.full_name,
            text,
            sent_at,
            group,
            *Attachment.fields(attachment),
        )
        self.messages.append(Stored(message, delivered_at))
        return message

    def _refusal(self, recipient: str, sender: str) -> Exception | None:
        """
        Why the mailbox of C{recipient} takes no more from C{sender}, or
        None if it takes one (as in L{chat.store.mailbox}).
        """
        total = from_sender = 0
        for s in self.messages:
            if s.message.recipient == recipient and s.delivered_at is None:
                total += 1
                from_sender += s.message.sender == sender
        if total >= self.max_mailbox:
            return MailboxFull(recipient)
        per_sender = (
            self.max_mailbox if self.max_per_sender is None else self.max_per_sender
        )
        if from_sender >= per_sender:
            return TooManyUnread(recipient, per_sender)
        return None

    def _store_message(
        self, sender: str, recipient: str, text: str, sent_at: float
    ) -> Message:
        from_user, to_user = self.require_user(sender), self.require_user(recipient)
        refused = self._refusal(recipient, sender)
        if refused is not None:
            raise refused
        return self._add(from_user, to_user, text, sent_at)

    def store_message_then(
        self, sender: str, recipient: str, text: str, sent_at: float, done: Done
    ) -> None:
        self.answer_then(done, self._store_message, sender, recipient, text, sent_at)

    def store_message(
        self, sender: str, recipient: str, text: str, sent_at: float
    ) -> Deferred[Message]:
        return self.answer(self._store_message, sender, recipient, text, sent_at)

    def _store_messages(
        self,
        sender: str,
        recipients: Sequence[str],
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> list[Message]:
        from_user = self.require_user(sender)
        distinct = list(dict.fromkeys(recipients))
        missing = [r for r in distinct if r not in self.users]
        if missing:
            raise NoSuchUsers(missing)
        for recipient in distinct:
            refused = self._refusal(recipient, sender)
            if refused is not None:
                raise refused
        if attachment is not None:
            self._check_file_quota(sender, attachment)
        return [
            self._add(from_user, self.users[r], text, sent_at, None, attachment)
            for r in distinct
        ]

    def store_messages_then(
        self,
        sender: str,
        recipients: Sequence[str],
        text: str,
        sent_at: float,
        attachment: Attachment | None,
        done: Done,
    ) -> None:
        self.answer_then(
            done, self._store_messages, sender, recipients, text, sent_at, attachment
        )

    def store_messages(
        self,
        sender: str,
        recipients: Sequence[str],
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        return self.answer(
            self._store_messages, sender, recipients, text, sent_at, attachment
        )

    def store_group_message_then(
        self,
        sender: str,
        group: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None,
        done: Done,
    ) -> None:
        self.answer_then(
            done, self._store_group_message, sender, group, text, sent_at, attachment
        )

    def store_group_message(
        self,
        sender: str,
        group: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        return self.answer(
            self._store_group_message, sender, group, text, sent_at, attachment
        )

    def _store_group_message(
        self,
        sender: str,
        group: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> list[Message]:
        members = self.require_group(group).members
        if sender not in members:
            raise NotAMember(group, sender)
        if attachment is not None:
            self._check_file_quota(sender, attachment)
        from_user = self.users[sender]
        stored = [
            self._add(from_user, from_user, text, sent_at, group, attachment, sent_at)
        ]
        for member in members:
            if member == sender:
                continue
            # A member whose mailbox refuses it gets the message as
            # delivered, for the group's history, and it is not returned,
            # so nobody pushes it (as L{chat.store.sending} does).
            refused = self._refusal(member, sender) is not None
            message = self._add(
                from_user,
                self.users[member],
                text,
                sent_at,
                group,
                attachment,
                sent_at if refused else None,
            )
            if not refused:
                stored.append(message)
        return stored

    def _store_to_name(
        self,
        sender: str,
        name: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> list[Message]:
        self.require_user(sender)
        if name in self.users or name not in self.groups:
            return self._store_messages(sender, [name], text, sent_at, attachment)
        return self._store_group_message(sender, name, text, sent_at, attachment)

    def store_to_name_then(
        self,
        sender: str,
        name: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None,
        done: Done,
    ) -> None:
        self.answer_then(
            done, self._store_to_name, sender, name, text, sent_at, attachment
        )

    def store_to_name(
        self,
        sender: str,
        name: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        return self.answer(self._store_to_name, sender, name, text, sent_at, attachment)
