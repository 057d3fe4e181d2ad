"""
What the SQLite store's thread remembers between transactions: the users'
full names, and how many undelivered messages each mailbox holds.

Only the store's thread reads or changes these. Every operation that
changes a user or a mailbox updates or drops what is remembered of it; when
part of a transaction is rolled back, or another process (chat-admin)
committed to the database since the last transaction (SQLite's
C{data_version} changed), everything is forgotten and read again.

A mailbox's count is C{total} undelivered messages; how many of them each
sender sent (C{by_sender}) is only read once the total reaches the
per-sender limit, since below it no sender can be over it.
"""

from __future__ import annotations

from collections.abc import Callable


class Mailbox:
    """
    The undelivered messages of one recipient: how many, and (once read) how
    many from each sender.
    """

    __slots__ = ("by_sender", "total")

    def __init__(self, total: int, by_sender: dict[str, int] | None = None) -> None:
        self.total = total
        self.by_sender = by_sender

    def add(self, sender: str) -> None:
        self.total += 1
        by_sender = self.by_sender
        if by_sender is not None:
            by_sender[sender] = by_sender.get(sender, 0) + 1


class StoreCaches:
    """
    The store thread's memory of users and mailboxes (see the module
    docstring).

    @ivar users: username to (full name, created at), for existing users.
    @ivar mailboxes: recipient to its L{Mailbox}.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self.users: dict[str, tuple[str, float]] = {}
        self.mailboxes: dict[str, Mailbox] = {}
        #: Called when everything is forgotten (tests count them).
        self.forgotten: list[Callable[[], None]] = []

    def remember_user(self, username: str, full_name: str, created_at: float) -> None:
        users = self.users
        if len(users) >= self.max_entries and username not in users:
            users.clear()
        users[username] = (full_name, created_at)

    def remember_mailbox(self, recipient: str, mailbox: Mailbox) -> None:
        mailboxes = self.mailboxes
        if len(mailboxes) >= self.max_entries and recipient not in mailboxes:
            mailboxes.clear()
        mailboxes[recipient] = mailbox

    def forget_user(self, username: str) -> None:
        self.users.pop(username, None)
        self.mailboxes.pop(username, None)

    def forget_mailbox(self, recipient: str) -> None:
        self.mailboxes.pop(recipient, None)

    def forget(self) -> None:
        """
        Forget everything: it may describe changes that were undone, or
        miss changes another process made.
        """
        self.users.clear()
        self.mailboxes.clear()
        for observer in self.forgotten:
            observer()
