"""
Message retention: with C{--retention}, messages (delivered or not) older
than that are deleted periodically, with the files no message uses any
more. Without it, messages are kept forever.

Each purge deletes at most C{batch} messages per store operation and
repeats until none are left, so a large backlog never holds one long
transaction in front of the sends queued behind it.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from chat.logs import make_logger
from chat.store.interfaces import IHistoryStore


@attrs.define
class MessagePurger:
    """
    Deletes messages older than C{retention} seconds every C{interval}
    seconds (by default the retention, at most an hour).
    """

    store: IHistoryStore
    clock: IReactorTime
    retention: float
    interval: float | None = None
    batch: int = 10_000
    _loop: LoopingCall | None = attrs.field(default=None, init=False)

    log = make_logger()

    def start(self) -> None:
        interval = self.interval or min(self.retention, 3600.0)
        self._loop = LoopingCall(self.purge)
        self._loop.clock = self.clock
        self._loop.start(interval, now=True).addErrback(
            lambda f: self.log.failure("Message purger stopped", f)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def purge(self) -> Deferred[int]:
        """
        Delete every message sent more than C{retention} seconds ago.

        @return: fires with how many were deleted (0 if the store failed:
            the next run tries again).
        """
        return ensureDeferred(self._purge())

    async def _purge(self) -> int:
        cutoff = self.clock.seconds() - self.retention
        total = 0
        try:
            while True:
                deleted = await self.store.purge_messages(cutoff, self.batch)
                total += deleted
                if deleted < self.batch:
                    break
        except Exception as e:
            self.log.warn("Could not purge old messages: {why}", why=e)
        if total:
            self.log.info("Deleted {count} messages past retention", count=total)
        return total
