"""
An in-memory L{IChatStore} for unit tests: every Deferred has already fired.

One module per domain, as in the SQL store: L{users}, L{sessions},
L{sending}, L{mailbox}, L{history}, L{groups}, L{realms}; each adds its
methods to what L{state.MemoryState} keeps.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from chat.store.interfaces import IChatStore
from chat.store.memory.groups import MemoryGroups
from chat.store.memory.history import MemoryHistory
from chat.store.memory.mailbox import MemoryMailbox
from chat.store.memory.realms import MemoryRealms
from chat.store.memory.sending import MemorySending
from chat.store.memory.sessions import MemorySessions
from chat.store.memory.state import MemoryGroup, MemoryState, Stored
from chat.store.memory.users import MemoryUsers

__all__ = ["MemoryGroup", "MemoryState", "MemoryStore", "Stored"]


@implementer(IChatStore)
class MemoryStore(
    MemoryUsers,
    MemorySessions,
    MemorySending,
    MemoryMailbox,
    MemoryHistory,
    MemoryGroups,
    MemoryRealms,
):
    """
    Keeps everything in dicts (see L{MemoryState}, whose fields are its
    arguments).
    """

    def close(self) -> Deferred[None]:
        return succeed(None)
