"""
Stores: where chat state lives. C{open_store} turns a C{--store} value into
an L{IChatStore}.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorFromThreads

from chat.store.sqlite import SQLiteStore

STORE_HELP = "sqlite:PATH (a file, created on first start)"


def open_store(reactor: IReactorFromThreads, description: str) -> SQLiteStore:
    """
    Open the store named by C{description}, e.g. C{sqlite:chat.sqlite}.

    @raise ValueError: for a description this version does not understand.
    @raise chat.errors.SchemaTooNew: if a newer chat wrote the database.
    """
    kind, _, where = description.partition(":")
    if kind == "sqlite" and where:
        return SQLiteStore(reactor, where)
    raise ValueError(f"unknown store {description!r}; expected {STORE_HELP}")
