"""
The in-memory store's sessions (L{chat.store.interfaces.ISessionStore}).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred

from chat.model import Rehash, Session
from chat.store.memory.state import MemoryState


class MemorySessions(MemoryState):
    """
    Sessions, by the hash of their token.
    """

    def create_session(
        self, session: Session, rehash: Rehash | None = None
    ) -> Deferred[None]:
        def create() -> None:
            user = self.require_user(session.username)
            self.sessions[session.token_hash] = session
            if rehash is not None and user.password_hash == rehash.old_hash:
                self.users[user.username] = attrs.evolve(
                    user, password_hash=rehash.new_hash
                )

        return self.answer(create)

    def get_session(self, token_hash: str) -> Deferred[Session | None]:
        return self.answer(self.sessions.get, token_hash)

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

        return self.answer(touch)

    def delete_session(self, token_hash: str) -> Deferred[None]:
        return self.answer(lambda: self.sessions.pop(token_hash, None) and None)

    def existing_sessions(self, token_hashes: Sequence[str]) -> Deferred[set[str]]:
        return self.answer(lambda: {h for h in token_hashes if h in self.sessions})

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

        return self.answer(delete)
