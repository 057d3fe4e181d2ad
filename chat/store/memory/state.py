"""
What the in-memory store keeps (L{MemoryState}): plain dicts and lists that
each domain's methods (the other modules of this package) read and change,
and the lookups several domains share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from chat.callbacks import Done
from chat.errors import (
    NoSuchGroup,
    NoSuchUser,
    NotAMember,
    QuotaExceeded,
    StorageUnavailable,
)
from chat.limits import DEFAULT_MAX_MAILBOX, Quotas
from chat.links import OutboundMessage, RealmLink
from chat.model import Attachment, Group, Message, Session, User


@attrs.define
class Stored:
    """
    A stored message, and when it was delivered (None while it is in its
    recipient's mailbox).
    """

    message: Message
    delivered_at: float | None = None


@attrs.define
class MemoryGroup:
    """
    A group as the in-memory store keeps it.
    """

    owner: str
    created_at: float
    #: Longest-standing first.
    members: list[str]


@attrs.define(slots=False)
class MemoryState:
    """
    Keeps everything in dicts. Set C{broken} to make every operation fail
    with L{StorageUnavailable}, as a full disk would. A recipient holds at
    most C{max_mailbox} undelivered messages; each user may keep what
    C{quotas} allows (the rules of L{chat.store.quotas}).
    """

    users: dict[str, User] = attrs.field(factory=dict)
    sessions: dict[str, Session] = attrs.field(factory=dict)
    messages: list[Stored] = attrs.field(factory=list)
    groups: dict[str, MemoryGroup] = attrs.field(factory=dict)
    broken: bool = False
    _last_id: int = 0
    admins: set[str] = attrs.field(factory=set)
    realm_links: dict[str, RealmLink] = attrs.field(factory=dict)
    outbox: dict[int, OutboundMessage] = attrs.field(factory=dict)
    #: (realm id, message uid) -> (JSON list of unknown recipients, time)
    realm_inbound: dict[tuple[str, str], tuple[str, float]] = attrs.field(factory=dict)
    _outbox_ids: int = 0
    max_mailbox: int = DEFAULT_MAX_MAILBOX
    #: The most undelivered messages per recipient from one sender (None:
    #: as many as C{max_mailbox}).
    max_per_sender: int | None = None
    quotas: Quotas = attrs.field(factory=Quotas)

    def answer(self, op: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run C{op} at once: a Deferred that has fired with its result, or
        failed with its error (L{StorageUnavailable} if C{broken}).
        """
        if self.broken:
            return fail(StorageUnavailable("database or disk is full"))
        try:
            return succeed(op(*args))
        except Exception as e:
            return fail(e)

    def answer_then(self, done: Done, op: Callable[..., Any], *args: Any) -> None:
        """
        Run C{op} at once and tell C{done} how it went.
        """
        if self.broken:
            done(False, StorageUnavailable("database or disk is full"))
            return
        try:
            value = op(*args)
        except Exception as e:
            done(False, e)
        else:
            done(True, value)

    def next_message_id(self) -> int:
        """
        The id of a new message.
        """
        self._last_id += 1
        return self._last_id

    def next_outbox_id(self) -> int:
        """
        The id of a new message in the outbox to other realms.
        """
        self._outbox_ids += 1
        return self._outbox_ids

    def require_user(self, username: str) -> User:
        """
        @raise NoSuchUser: if there is no such user.
        """
        try:
            return self.users[username]
        except KeyError:
            raise NoSuchUser(username) from None

    def _files_of(self, username: str) -> dict[str, int]:
        """
        The size of each distinct file (by sha256) the messages
        C{username} sent still carry, stored or in the outbox for another
        realm.
        """
        sizes = {
            s.message.file_sha256: s.message.file_size or 0
            for s in self.messages
            if s.message.sender == username and s.message.file_sha256 is not None
        }
        for queued in self.outbox.values():
            if queued.sender == username and queued.attachment is not None:
                sizes[queued.attachment.sha256] = queued.attachment.size
        return sizes

    def file_usage(self, username: str) -> tuple[int, int]:
        """
        How many distinct files the messages C{username} sent still carry,
        and their bytes (as L{chat.store.quotas.file_usage}).
        """
        sizes = self._files_of(username)
        return len(sizes), sum(sizes.values())

    def _check_file_quota(self, sender: str, attachment: Attachment) -> None:
        """
        As L{chat.store.quotas.check_file_quota}.
        """
        sizes = self._files_of(sender)
        if attachment.sha256 in sizes:
            return
        if len(sizes) + 1 > self.quotas.max_files:
            raise QuotaExceeded("files", self.quotas.max_files)
        if sum(sizes.values()) + attachment.size > self.quotas.max_file_bytes:
            raise QuotaExceeded("bytes", self.quotas.max_file_bytes)

    def require_group(self, name: str) -> MemoryGroup:
        """
        @raise NoSuchGroup: if there is no such group.
        """
        try:
            return self.groups[name]
        except KeyError:
            raise NoSuchGroup(name) from None

    def group_snapshot(self, name: str) -> Group:
        """
        The group C{name} as it is now.
        """
        group = self.require_group(name)
        return Group(name, group.owner, tuple(group.members), group.created_at)

    def remove_member(self, name: str, username: str) -> Group | None:
        """
        Take C{username} out of a group (leaving, kicked, or deleted): the
        longest-standing remaining member becomes the owner if it was; a
        group left empty is deleted (then None).

        @raise NotAMember: if it is not a member.
        """
        group = self.require_group(name)
        if username not in group.members:
            raise NotAMember(name, username)
        group.members.remove(username)
        if not group.members:
            del self.groups[name]
            return None
        if group.owner == username:
            group.owner = group.members[0]
        return self.group_snapshot(name)
