"""
An in-memory L{IChatStore} for unit tests: every Deferred has already fired.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from chat.errors import (
    NoSuchRealm,
    NoSuchUser,
    RealmExists,
    RealmQueueFull,
    StorageUnavailable,
    UserExists,
)
from chat.interfaces import IChatStore, IRealmStore
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
from chat.model import Message, Session, User


@attrs.define
class _Stored:
    message: Message
    delivered_at: float | None = None


@implementer(IChatStore, IRealmStore)
@attrs.define(slots=False)
class MemoryStore:
    """
    Keeps everything in dicts. Set C{broken} to make every operation fail
    with L{StorageUnavailable}, as a full disk would.
    """

    users: dict[str, User] = attrs.field(factory=dict)
    sessions: dict[str, Session] = attrs.field(factory=dict)
    messages: list[_Stored] = attrs.field(factory=list)
    broken: bool = False
    admins: set[str] = attrs.field(factory=set)
    realm_links: dict[str, RealmLink] = attrs.field(factory=dict)
    outbox: dict[int, OutboundMessage] = attrs.field(factory=dict)
    #: (realm id, message uid) -> (JSON list of unknown recipients, time)
    realm_inbound: dict[tuple[str, str], tuple[str, float]] = attrs.field(factory=dict)
    _outbox_ids: int = 0

    def _run(self, op: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self.broken:
            return fail(StorageUnavailable("database or disk is full"))
        try:
            return succeed(op(*args))
        except Exception as e:
            return fail(e)

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

    def list_users(self) -> Deferred[list[User]]:
        return self._run(lambda: sorted(self.users.values(), key=lambda u: u.username))

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

    def store_message(
        self, sender: str, recipient: str, text: str, sent_at: float
    ) -> Deferred[Message]:
        def store() -> Message:
            from_user = self._user(sender)
            to_user = self._user(recipient)
            message = Message(
                len(self.messages) + 1,
                sender,
                recipient,
                from_user.full_name,
                to_user.full_name,
                text,
                sent_at,
            )
            self.messages.append(_Stored(message))
            return message

        return self._run(store)

    def drain_inbox(
        self, username: str, delivered_at: float
    ) -> Deferred[list[Message]]:
        def drain() -> list[Message]:
            taken = []
            for stored in self.messages:
                if stored.message.recipient == username and stored.delivered_at is None:
                    stored.delivered_at = delivered_at
                    taken.append(stored.message)
            return taken

        return self._run(drain)

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

    def mark_delivered(
        self, username: str, up_to_id: int, delivered_at: float
    ) -> Deferred[int]:
        def mark() -> int:
            count = 0
            for stored in self.messages:
                message = stored.message
                if (
                    message.recipient == username
                    and stored.delivered_at is None
                    and message.id <= up_to_id
                ):
                    stored.delivered_at = delivered_at
                    count += 1
            return count

        return self._run(mark)

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
        bounce = Message(
            len(self.messages) + 1,
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
                stored_message = Message(
                    len(self.messages) + 1,
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
