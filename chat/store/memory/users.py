"""
The in-memory store's accounts (L{chat.store.interfaces.IUserStore}).
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred

from chat.errors import UserExists
from chat.model import User
from chat.store.memory.state import MemoryState


class MemoryUsers(MemoryState):
    """
    Users, their password hashes, and who is an administrator.
    """

    def add_user(self, user: User) -> Deferred[None]:
        def add() -> None:
            if user.username in self.users:
                raise UserExists(user.username)
            self.users[user.username] = user

        return self.answer(add)

    def get_user(self, username: str) -> Deferred[User]:
        return self.answer(self.require_user, username)

    def set_password_hash(self, username: str, password_hash: str) -> Deferred[None]:
        def change() -> None:
            user = self.require_user(username)
            self.users[username] = attrs.evolve(user, password_hash=password_hash)
            self._end_sessions(username)

        return self.answer(change)

    def delete_user(self, username: str) -> Deferred[None]:
        def delete() -> None:
            self.require_user(username)
            for name in [n for n, g in self.groups.items() if username in g.members]:
                self.remove_member(name, username)
            del self.users[username]
            self.admins.discard(username)
            self._end_sessions(username)
            self.messages = [
                s for s in self.messages if s.message.recipient != username
            ]

        return self.answer(delete)

    def _end_sessions(self, username: str) -> None:
        for token_hash, session in list(self.sessions.items()):
            if session.username == username:
                del self.sessions[token_hash]

    def list_users(self, limit: int | None = None) -> Deferred[list[User]]:
        return self.answer(
            lambda: sorted(self.users.values(), key=lambda u: u.username)[:limit]
        )

    def set_admin(self, username: str, is_admin: bool) -> Deferred[None]:
        def set_flag() -> None:
            self.require_user(username)
            if is_admin:
                self.admins.add(username)
            else:
                self.admins.discard(username)

        return self.answer(set_flag)

    def is_admin(self, username: str) -> Deferred[bool]:
        def check() -> bool:
            self.require_user(username)
            return username in self.admins

        return self.answer(check)
