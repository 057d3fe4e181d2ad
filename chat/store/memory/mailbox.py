"""
The in-memory store's mailbox (L{chat.store.interfaces.IMailboxStore}): a
message is in its recipient's mailbox while its C{delivered_at} is None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred

from chat.callbacks import Done
from chat.model import Message
from chat.store.memory.state import MemoryState
from chat.store.messages import within


class MemoryMailbox(MemoryState):
    """
    Draining, pushing and acknowledging undelivered messages.
    """

    def _drain_inbox(
        self, username: str, delivered_at: float, max_bytes: int | None = None
    ) -> list[Message]:
        waiting = [
            stored
            for stored in self.messages
            if stored.message.recipient == username and stored.delivered_at is None
        ]
        taken, _ = within((s.message for s in waiting), max_bytes)
        for stored in waiting[: len(taken)]:
            stored.delivered_at = delivered_at
        return taken

    def drain_inbox_then(
        self, username: str, delivered_at: float, max_bytes: int | None, done: Done
    ) -> None:
        self.answer_then(done, self._drain_inbox, username, delivered_at, max_bytes)

    def drain_inbox(
        self, username: str, delivered_at: float, max_bytes: int | None = None
    ) -> Deferred[list[Message]]:
        return self.answer(self._drain_inbox, username, delivered_at, max_bytes)

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

        return self.answer(read)

    def mark_delivered_ids_then(
        self, username: str, ids: Sequence[int], delivered_at: float, done: Done
    ) -> None:
        wanted = set(ids)
        self.answer_then(done, self._mark, username, wanted.__contains__, delivered_at)

    def mark_delivered_ids(
        self, username: str, ids: Sequence[int], delivered_at: float
    ) -> Deferred[int]:
        wanted = set(ids)
        return self.answer(self._mark, username, wanted.__contains__, delivered_at)

    def mark_delivered_then(
        self, username: str, up_to_id: int, delivered_at: float, done: Done
    ) -> None:
        self.answer_then(
            done, self._mark, username, lambda id: id <= up_to_id, delivered_at
        )

    def mark_delivered(
        self, username: str, up_to_id: int, delivered_at: float
    ) -> Deferred[int]:
        return self.answer(
            self._mark, username, lambda id: id <= up_to_id, delivered_at
        )

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

    def drain_inbox_from(
        self,
        username: str,
        sender: str,
        delivered_at: float,
        max_bytes: int | None = None,
    ) -> Deferred[list[Message]]:
        def drain() -> list[Message]:
            if "@" not in sender:
                self.require_user(sender)
            waiting = [
                stored
                for stored in self.messages
                if stored.message.recipient == username
                and stored.delivered_at is None
                and stored.message.sender == sender
                and stored.message.group is None
            ]
            taken, _ = within((s.message for s in waiting), max_bytes)
            for stored in waiting[: len(taken)]:
                stored.delivered_at = delivered_at
            return taken

        return self.answer(drain)
