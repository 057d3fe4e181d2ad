"""
Stores: where chat state lives. C{open_store} turns a C{--store} value into
an L{IChatStore}.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorFromThreads

from chat.limits import DEFAULT_MAX_MAILBOX
from chat.store.sqlite import SQLiteStore

STORE_HELP = "sqlite:PATH (a file, created on first start)"


def open_store(
    reactor: IReactorFromThreads,
    description: str,
    *,
    max_mailbox: int = DEFAULT_MAX_MAILBOX,
) -> SQLiteStore:
    """
    Open the store named by C{description}, e.g. C{sqlite:chat.sqlite},
    holding at most C{max_mailbox} undelivered messages per recipient.

    @raise ValueError: for a description this version does not understand.
    @raise chat.errors.SchemaTooNew: if a newer chat wrote the database.
    """
    kind, _, where = description.partition(":")
    if kind == "sqlite" and where:
        return SQLiteStore(reactor, where, max_mailbox=max_mailbox)
    raise ValueError(f"unknown store {description!r}; expected {STORE_HELP}")
