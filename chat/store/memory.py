"""
An in-memory L{IChatStore} for unit tests: every Deferred has already fired.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from chat.errors import NoSuchUser, StorageUnavailable, UserExists
from chat.interfaces import IChatStore
from chat.model import Message, Session, User


@attrs.define
class _Stored:
    message: Message
    delivered_at: float | None = None


@implementer(IChatStore)
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
