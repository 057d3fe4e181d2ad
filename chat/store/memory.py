"""
An in-memory L{IChatStore} for unit tests: every Deferred has already fired.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from chat.callbacks import Done
from chat.errors import (
    AlreadyAMember,
    CannotKickSelf,
    GroupExists,
    MailboxFull,
    NoSuchGroup,
    NoSuchRealm,
    NoSuchUser,
    NoSuchUsers,
    NotAMember,
    NotGroupOwner,
    QuotaExceeded,
    RealmExists,
    RealmQueueFull,
    StorageUnavailable,
    TooManyGroups,
    TooManyUnread,
    UserExists,
)
from chat.interfaces import IChatStore, IRealmStore
from chat.limits import DEFAULT_MAX_MAILBOX, Quotas
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
from chat.model import Attachment, Group, Message, Page, Session, User


@attrs.define
class _Stored:
    message: Message
    delivered_at: float | None = None


@attrs.define
class _Group:
    owner: str
    created_at: float
    #: Longest-standing first.
    members: list[str]


def _within(
    messages: Iterable[Message], max_bytes: int | None, limit: int | None = None
) -> tuple[list[Message], bool]:
    """
    The first messages (at most C{limit}) whose text and file bytes stay
    within C{max_bytes}, but at least one; and whether any was left out.
    """
    taken: list[Message] = []
    total = 0
    for message in messages:
        if limit is not None and len(taken) == limit:
            return taken, True
        size = len(message.text) + (message.file_size or 0)
        if taken and max_bytes is not None and total + size > max_bytes:
            return taken, True
        taken.append(message)
        total += size
    return taken, False


@implementer(IChatStore, IRealmStore)
@attrs.define(slots=False)
class MemoryStore:
    """
    Keeps everything in dicts. Set C{broken} to make every operation fail
    with L{StorageUnavailable}, as a full disk would. A recipient holds at
    most C{max_mailbox} undelivered messages; each user may keep what
    C{quotas} allows (the rules of L{chat.store.quotas}).
    """

    users: dict[str, User] = attrs.field(factory=dict)
    sessions: dict[str, Session] = attrs.field(factory=dict)
    messages: list[_Stored] = attrs.field(factory=list)
    groups: dict[str, _Group] = attrs.field(factory=dict)
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

    def _run(self, op: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self.broken:
            return fail(StorageUnavailable("database or disk is full"))
        try:
            return succeed(op(*args))
        except Exception as e:
            return fail(e)

    def _call(self, done: Done, op: Callable[..., Any], *args: Any) -> None:
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

    def add_user(self, user: User) -> Deferred[None]:
        def add() -> None:
            if user.username in self.users:
                raise UserExists(user.username)
            self.users[user.username] = user

        return self._run(add)

    def get_user(self, username: str) -> Deferred[User]:
        return self._run(self._user, username)

    def _user(self, username: str) -> User:
        try:
            return self.users[username]
        except KeyError:
            raise NoSuchUser(username) from None

    def set_password_hash(self, username: str, password_hash: str) -> Deferred[None]:
        def change() -> None:
            user = self._user(username)
            self.users[username] = attrs.evolve(user, password_hash=password_hash)
            self._end_sessions(username)

        return self._run(change)

    def delete_user(self, username: str) -> Deferred[None]:
        def delete() -> None:
            self._user(username)
            for name in [n for n, g in self.groups.items() if username in g.members]:
                self._leave(name, username)
            del self.users[username]
            self.admins.discard(username)
            self._end_sessions(username)
            self.messages = [
                s for s in self.messages if s.message.recipient != username
            ]

        return self._run(delete)

    def _end_sessions(self, username: str) -> None:
        for token_hash, session in list(self.sessions.items()):
            if session.username == username:
                del self.sessions[token_hash]

    def list_users(self, limit: int | None = None) -> Deferred[list[User]]:
        return self._run(
            lambda: sorted(self.users.values(), key=lambda u: u.username)[:limit]
        )

    def create_session(self, session: Session) -> Deferred[None]:
        def create() -> None:
            self._user(session.username)
            self.sessions[session.token_hash] = session

        return self._run(create)

    def get_session(self, token_hash: str) -> Deferred[Session | None]:
        return self._run(self.sessions.get, token_hash)

    def touch_session(self, token_hash: str, last_seen_at: float) -> Deferred[bool]:
        def touch() -> bool:
            session = self.sessions.get(token_hash)
            if session is None:
                return False
            if session.last_seen_at < last_seen_at:
                self.sessions[token_hash] = attrs.evolve(
                    session, last_seen_at=last_seen_at
                )
            return True

        return self._run(touch)

    def delete_session(self, token_hash: str) -> Deferred[None]:
        return self._run(lambda: self.sessions.pop(token_hash, None) and None)

    def existing_sessions(self, token_hashes: Sequence[str]) -> Deferred[set[str]]:
        return self._run(lambda: {h for h in token_hashes if h in self.sessions})

    def delete_expired_sessions(
        self, idle_since: float, created_since: float
    ) -> Deferred[int]:
        def delete() -> int:
            expired = [
                token_hash
                for token_hash, s in self.sessions.items()
                if s.last_seen_at < idle_since or s.created_at < created_since
            ]
            for token_hash in expired:
                del self.sessions[token_hash]
            return len(expired)

        return self._run(delete)

    # Messages.

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
        self._last_id += 1
        message = Message(
            self._last_id,
            sender.username,
            recipient.username,
            sender.full_name,
            recipient.full_name,
            text,
            sent_at,
            group,
            *(
                (None, None, None, None)
                if attachment is None
                else (
                    attachment.name,
                    attachment.size,
                    attachment.sha256,
                    attachment.content,
                )
            ),
        )
        self.messages.append(_Stored(message, delivered_at))
        return message

    def file_usage(self, username: str) -> tuple[int, int]:
        """
        How many distinct files the messages C{username} sent still carry,
        and their bytes (as L{chat.store.quotas.file_usage}).
        """
        sizes = {
            s.message.file_sha256: s.message.file_size or 0
            for s in self.messages
            if s.message.sender == username and s.message.file_sha256 is not None
        }
        return len(sizes), sum(sizes.values())

    def _check_file_quota(self, sender: str, attachment: Attachment) -> None:
        if any(
            s.message.sender == sender and s.message.file_sha256 == attachment.sha256
            for s in self.messages
        ):
            return
        count, size = self.file_usage(sender)
        if count + 1 > self.quotas.max_files:
            raise QuotaExceeded("files", self.quotas.max_files)
        if size + attachment.size > self.quotas.max_file_bytes:
            raise QuotaExceeded("bytes", self.quotas.max_file_bytes)

    def _check_group_quota(self, username: str) -> None:
        count = sum(1 for g in self.groups.values() if username in g.members)
        if count >= self.quotas.max_groups:
            raise TooManyGroups(username, self.quotas.max_groups)

    def _refusal(self, recipient: str, sender: str) -> Exception | None:
        """
        Why the mailbox of C{recipient} takes no more from C{sender}, or
        None if it takes one (as in L{chat.store.messages}).
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
        from_user, to_user = self._user(sender), self._user(recipient)
        refused = self._refusal(recipient, sender)
        if refused is not None:
            raise refused
        return self._add(from_user, to_user, text, sent_at)

    def store_message_then(
        self, sender: str, recipient: str, text: str, sent_at: float, done: Done
    ) -> None:
        self._call(done, self._store_message, sender, recipient, text, sent_at)

    def store_message(
        self, sender: str, recipient: str, text: str, sent_at: float
    ) -> Deferred[Message]:
        return self._run(self._store_message, sender, recipient, text, sent_at)

    def _store_messages(
        self,
        sender: str,
        recipients: Sequence[str],
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> list[Message]:
        from_user = self._user(sender)
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
        self._call(
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
        return self._run(
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
        self._call(
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
        return self._run(
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
        members = self._group(group).members
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
            if self._refusal(member, sender) is not None:
                # Kept as delivered, for the member's group history, and
                # not returned, so nobody pushes it (as in SQLiteStore).
                self._add(
                    from_user,
                    self.users[member],
                    text,
                    sent_at,
                    group,
                    attachment,
                    sent_at,
                )
            else:
                stored.append(
                    self._add(
                        from_user,
                        self.users[member],
                        text,
                        sent_at,
                        group,
                        attachment,
                    )
                )
        return stored

    def _store_to_name(
        self,
        sender: str,
        name: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> list[Message]:
        self._user(sender)
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
        self._call(done, self._store_to_name, sender, name, text, sent_at, attachment)

    def store_to_name(
        self,
        sender: str,
        name: str,
        text: str,
        sent_at: float,
        attachment: Attachment | None = None,
    ) -> Deferred[list[Message]]:
        return self._run(self._store_to_name, sender, name, text, sent_at, attachment)

    def _drain_inbox(
        self, username: str, delivered_at: float, max_bytes: int | None = None
    ) -> list[Message]:
        waiting = [
            stored
            for stored in self.messages
            if stored.message.recipient == username and stored.delivered_at is None
        ]
        taken, _ = _within((s.message for s in waiting), max_bytes)
        for stored in waiting[: len(taken)]:
            stored.delivered_at = delivered_at
        return taken

    def drain_inbox_then(
        self, username: str, delivered_at: float, max_bytes: int | None, done: Done
    ) -> None:
        self._call(done, self._drain_inbox, username, delivered_at, max_bytes)

    def drain_inbox(
        self, username: str, delivered_at: float, max_bytes: int | None = None
    ) -> Deferred[list[Message]]:
        return self._run(self._drain_inbox, username, delivered_at, max_bytes)

    def undelivered(
        self, username: str, after_id: int, limit: int
    ) -> Deferred[list[Message]]:
        def read() -> list[Message]:
            found = [
                stored.message
                for stored in self.messages
                if stored.message.recipient == username
                and stored.delivered_at is None
                and stored.message.id > after_id
            ]
            return found[:limit]

        return self._run(read)

    def mark_delivered_ids_then(
        self, username: str, ids: Sequence[int], delivered_at: float, done: Done
    ) -> None:
        wanted = set(ids)
        self._call(done, self._mark, username, wanted.__contains__, delivered_at)

    def mark_delivered_ids(
        self, username: str, ids: Sequence[int], delivered_at: float
    ) -> Deferred[int]:
        wanted = set(ids)
        return self._run(self._mark, username, wanted.__contains__, delivered_at)

    def mark_delivered_then(
        self, username: str, up_to_id: int, delivered_at: float, done: Done
    ) -> None:
        self._call(done, self._mark, username, lambda id: id <= up_to_id, delivered_at)

    def mark_delivered(
        self, username: str, up_to_id: int, delivered_at: float
    ) -> Deferred[int]:
        return self._run(self._mark, username, lambda id: id <= up_to_id, delivered_at)

    def _mark(
        self, username: str, chosen: Callable[[int], bool], delivered_at: float
    ) -> int:
        """
        Mark the user's undelivered messages whose ids are C{chosen}
        delivered; return how many.
        """
        count = 0
        for stored in self.messages:
            message = stored.message
            if (
                message.recipient == username
                and stored.delivered_at is None
                and chosen(message.id)
            ):
                stored.delivered_at = delivered_at
                count += 1
        return count

    # Groups.

    def _group(self, name: str) -> _Group:
        try:
            return self.groups[name]
        except KeyError:
            raise NoSuchGroup(name) from None

    def _snapshot(self, name: str) -> Group:
        group = self._group(name)
        return Group(name, group.owner, tuple(group.members), group.created_at)

    def _leave(self, name: str, username: str) -> Group | None:
        group = self._group(name)
        if username not in group.members:
            raise NotAMember(name, username)
        group.members.remove(username)
        if not group.members:
            del self.groups[name]
            return None
        if group.owner == username:
            group.owner = group.members[0]
        return self._snapshot(name)

    def create_group(
        self,
        name: str,
        owner: str,
        created_at: float,
        members: Sequence[str] = (),
    ) -> Deferred[Group]:
        def create() -> Group:
            self._user(owner)
            if name in self.groups:
                raise GroupExists(name)
            everyone = list(dict.fromkeys([owner, *members]))
            unknown = [member for member in everyone if member not in self.users]
            if unknown:
                raise NoSuchUsers(unknown)
            for user in everyone:
                self._check_group_quota(user)
            self.groups[name] = _Group(owner, created_at, everyone)
            return self._snapshot(name)

        return self._run(create)

    def join_group(self, name: str, username: str, joined_at: float) -> Deferred[Group]:
        def join() -> Group:
            group = self._group(name)
            self._user(username)
            if username in group.members:
                raise AlreadyAMember(name, username)
            self._check_group_quota(username)
            group.members.append(username)
            return self._snapshot(name)

        return self._run(join)

    def leave_group(self, name: str, username: str) -> Deferred[Group | None]:
        return self._run(self._leave, name, username)

    def kick_from_group(self, name: str, by: str, username: str) -> Deferred[Group]:
        def kick() -> Group | None:
            if self._group(name).owner != by:
                raise NotGroupOwner(name)
            if username == by:
                raise CannotKickSelf(name)
            return self._leave(name, username)

        return self._run(kick)

    def list_groups(self, username: str) -> Deferred[list[Group]]:
        return self._run(
            lambda: [
                self._snapshot(name)
                for name in sorted(self.groups)
                if username in self.groups[name].members
            ]
        )

    def list_all_groups(self, limit: int) -> Deferred[list[Group]]:
        return self._run(
            lambda: [self._snapshot(name) for name in sorted(self.groups)[:limit]]
        )

    def drain_inbox_from(
        self,
        username: str,
        sender: str,
        delivered_at: float,
        max_bytes: int | None = None,
    ) -> Deferred[list[Message]]:
        def drain() -> list[Message]:
            if "@" not in sender:
                self._user(sender)
            waiting = [
                stored
                for stored in self.messages
                if stored.message.recipient == username
                and stored.delivered_at is None
                and stored.message.sender == sender
                and stored.message.group is None
            ]
            taken, _ = _within((s.message for s in waiting), max_bytes)
            for stored in waiting[: len(taken)]:
                stored.delivered_at = delivered_at
            return taken

        return self._run(drain)

    # History.

    def _page(
        self,
        matches: Callable[[Message], bool],
        limit: int,
        before_id: int | None,
        max_bytes: int | None,
    ) -> Page:
        newest_first = (
            s.message
            for s in reversed(self.messages)
            if (before_id is None or s.message.id < before_id) and matches(s.message)
        )
        taken, more = _within(newest_first, max_bytes, limit)
        return Page(tuple(taken), more)

    def conversation(
        self,
        username: str,
        peer: str,
        limit: int,
        before_id: int | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[Page]:
        def history() -> Page:
            self._user(peer)
            pair = {(username, peer), (peer, username)}
            return self._page(
                lambda m: m.group is None and (m.sender, m.recipient) in pair,
                limit,
                before_id,
                max_bytes,
            )

        return self._run(history)

    def group_history(
        self,
        username: str,
        group: str,
        limit: int,
        before_id: int | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[Page]:
        def history() -> Page:
            if username not in self._group(group).members:
                raise NotAMember(group, username)
            return self._page(
                lambda m: m.group == group and m.recipient == username,
                limit,
                before_id,
                max_bytes,
            )

        return self._run(history)

    def purge_messages(self, sent_before: float, limit: int) -> Deferred[int]:
        def purge() -> int:
            old = sorted(
                (s for s in self.messages if s.message.sent_at < sent_before),
                key=lambda s: (s.message.sent_at, s.message.id),
            )[:limit]
            gone = {id(s) for s in old}
            self.messages = [s for s in self.messages if id(s) not in gone]
            return len(old)

        return self._run(purge)

    def close(self) -> Deferred[None]:
        return succeed(None)

    # IRealmStore.

    def set_admin(self, username: str, is_admin: bool) -> Deferred[None]:
        def set_flag() -> None:
            self._user(username)
            if is_admin:
                self.admins.add(username)
            else:
                self.admins.discard(username)

        return self._run(set_flag)

    def is_admin(self, username: str) -> Deferred[bool]:
        def check() -> bool:
            self._user(username)
            return username in self.admins

        return self._run(check)

    def add_realm_link(self, link: RealmLink) -> Deferred[None]:
        def add() -> None:
            if link.realm_id in self.realm_links:
                raise RealmExists(link.realm_id)
            self.realm_links[link.realm_id] = link

        return self._run(add)

    def get_realm_link(self, realm_id: str) -> Deferred[RealmLink]:
        return self._run(self._link, realm_id)

    def _link(self, realm_id: str) -> RealmLink:
        try:
            return self.realm_links[realm_id]
        except KeyError:
            raise NoSuchRealm(realm_id) from None

    def list_realm_links(self) -> Deferred[list[RealmLink]]:
        return self._run(
            lambda: [self.realm_links[r] for r in sorted(self.realm_links)]
        )

    def remove_realm_link(self, realm_id: str, now: float) -> Deferred[list[Message]]:
        def remove() -> list[Message]:
            self._link(realm_id)
            bounces = []
            for outbox_id, queued in sorted(self.outbox.items()):
                if queued.realm_id != realm_id:
                    continue
                del self.outbox[outbox_id]
                bounce = self._bounce(
                    queued, queued.recipients, "the link was removed", now
                )
                if bounce is not None:
                    bounces.append(bounce)
            del self.realm_links[realm_id]
            return bounces

        return self._run(remove)

    def queue_outbound(
        self,
        sender: str,
        text: str,
        sent_at: float,
        batches: Sequence[tuple[str, tuple[str, ...], str]],
        max_queue: int,
    ) -> Deferred[list[OutboundMessage]]:
        def queue() -> list[OutboundMessage]:
            user = self._user(sender)
            for realm_id, _, _ in batches:
                self._link(realm_id)
                if self._outbox_size(realm_id) >= max_queue:
                    raise RealmQueueFull(realm_id, max_queue)
            queued = []
            for realm_id, recipients, uid in batches:
                self._outbox_ids += 1
                message = OutboundMessage(
                    self._outbox_ids,
                    uid,
                    realm_id,
                    sender,
                    user.full_name,
                    tuple(recipients),
                    text,
                    sent_at,
                )
                self.outbox[message.id] = message
                queued.append(message)
            return queued

        return self._run(queue)

    def next_outbound(
        self, realm_id: str, limit: int
    ) -> Deferred[list[OutboundMessage]]:
        def read() -> list[OutboundMessage]:
            found = [
                m for _, m in sorted(self.outbox.items()) if m.realm_id == realm_id
            ]
            return found[:limit]

        return self._run(read)

    def _outbox_size(self, realm_id: str) -> int:
        return sum(1 for m in self.outbox.values() if m.realm_id == realm_id)

    def outbox_size(self, realm_id: str) -> Deferred[int]:
        return self._run(self._outbox_size, realm_id)

    def _bounce(
        self, queued: OutboundMessage, failed: Sequence[str], reason: str, now: float
    ) -> Message | None:
        user = self.users.get(queued.sender)
        if user is None:
            return None
        self._last_id += 1
        bounce = Message(
            self._last_id,
            address(POSTMASTER, queued.realm_id),
            queued.sender,
            POSTMASTER_NAME,
            user.full_name,
            bounce_text(queued.realm_id, failed, reason, queued.text),
            now,
        )
        self.messages.append(_Stored(bounce))
        return bounce

    def finish_outbound(
        self, outbox_id: int, failed: Sequence[str], reason: str, now: float
    ) -> Deferred[Message | None]:
        def finish() -> Message | None:
            queued = self.outbox.pop(outbox_id, None)
            if queued is None or not failed:
                return None
            return self._bounce(queued, failed, reason, now)

        return self._run(finish)

    def receive_remote(
        self, realm_id: str, message: InboundMessage, received_at: float
    ) -> Deferred[Delivery]:
        def receive() -> Delivery:
            self._link(realm_id)
            key = (realm_id, message.uid)
            seen = self.realm_inbound.get(key)
            if seen is not None:
                return Delivery((), tuple(json.loads(seen[0])), True)
            sender = address(message.sender, realm_id)
            stored = []
            unknown = []
            for recipient in message.recipients:
                user = self.users.get(recipient)
                if user is None:
                    unknown.append(recipient)
                    continue
                self._last_id += 1
                stored_message = Message(
                    self._last_id,
                    sender,
                    recipient,
                    message.sender_name,
                    user.full_name,
                    message.text,
                    message.sent_at,
                )
                self.messages.append(_Stored(stored_message))
                stored.append(stored_message)
            self.realm_inbound[key] = (json.dumps(unknown), received_at)
            return Delivery(tuple(stored), tuple(unknown), False)

        return self._run(receive)

    def drain_realm_inbox(
        self, username: str, realm_id: str, delivered_at: float
    ) -> Deferred[list[Message]]:
        def drain() -> list[Message]:
            self._link(realm_id)
            taken = []
            for stored in self.messages:
                message = stored.message
                if (
                    message.recipient == username
                    and stored.delivered_at is None
                    and message.realm == realm_id
                ):
                    stored.delivered_at = delivered_at
                    taken.append(message)
            return taken

        return self._run(drain)

    def forget_remote_ids(self, before: float) -> Deferred[int]:
        def forget() -> int:
            old = [k for k, (_, at) in self.realm_inbound.items() if at < before]
            for key in old:
                del self.realm_inbound[key]
            return len(old)

        return self._run(forget)
