"""
The in-memory store's history and retention
(L{chat.store.interfaces.IHistoryStore}).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred

from chat.errors import NotAMember
from chat.model import Message, Page
from chat.store.memory.state import MemoryState
from chat.store.messages import within


class MemoryHistory(MemoryState):
    """
    Pages of conversations and groups' messages, and the purge of old ones.
    """

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
        taken, more = within(newest_first, max_bytes, limit)
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
            self.require_user(peer)
            pair = {(username, peer), (peer, username)}
            return self._page(
                lambda m: m.group is None and (m.sender, m.recipient) in pair,
                limit,
                before_id,
                max_bytes,
            )

        return self.answer(history)

    def group_history(
        self,
        username: str,
        group: str,
        limit: int,
        before_id: int | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[Page]:
        def history() -> Page:
            if username not in self.require_group(group).members:
                raise NotAMember(group, username)
            return self._page(
                lambda m: m.group == group and m.recipient == username,
                limit,
                before_id,
                max_bytes,
            )

        return self.answer(history)

    def purge_messages(self, sent_before: float, limit: int) -> Deferred[int]:
        def purge() -> int:
            old = sorted(
                (s for s in self.messages if s.message.sent_at < sent_before),
                key=lambda s: (s.message.sent_at, s.message.id),
            )[:limit]
            gone = {id(s) for s in old}
            self.messages = [s for s in self.messages if id(s) not in gone]
            return len(old)

        return self.answer(purge)
