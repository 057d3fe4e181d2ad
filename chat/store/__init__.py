"""
Stores: where chat state lives. C{open_store} turns a C{--store} value into
an L{chat.store.interfaces.IChatStore}.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorFromThreads

from chat.limits import DEFAULT_MAX_MAILBOX, Quotas
from chat.store.postgres import PostgresStore, is_postgres_url
from chat.store.sql import SQLStore
from chat.store.sqlite import SQLiteStore

STORE_HELP = (
    "sqlite:PATH (a file, created on first start) or "
    "postgresql://USER@HOST:PORT/DBNAME (password from PGPASSWORD, "
    "~/.pgpass or passfile=)"
)


def valid_store(description: str) -> bool:
    """
    Whether C{description} names a store this version can open.
    """
    kind, _, where = description.partition(":")
    return (kind == "sqlite" and bool(where)) or is_postgres_url(description)


def open_store(
    reactor: IReactorFromThreads,
    description: str,
    *,
    max_mailbox: int = DEFAULT_MAX_MAILBOX,
    max_per_sender: int | None = None,
    quotas: Quotas | None = None,
    node_id: str = "",
) -> SQLStore:
    """
    Open the store named by C{description}, e.g. C{sqlite:chat.sqlite} or
    C{postgresql://chat@db.example.com/chat}, holding at most
    C{max_mailbox} undelivered messages per recipient (and C{max_per_sender}
    of them from one sender; by default C{max_mailbox}), and what C{quotas}
    allows per user (the defaults if None). C{node_id} names this node in a
    cluster sharing a PostgreSQL database.

    @raise ValueError: for a description this version does not understand.
    @raise chat.errors.SchemaTooNew: if a newer chat wrote the database.
    @raise chat.errors.StorageUnavailable: if the database cannot be
        reached or is not a chat database.
    """
    if is_postgres_url(description):
        return PostgresStore(
            reactor,
            description,
            max_mailbox=max_mailbox,
            node_id=node_id,
            max_per_sender=max_per_sender,
            quotas=quotas,
        )
    kind, _, where = description.partition(":")
    if kind == "sqlite" and where:
        return SQLiteStore(
            reactor,
            where,
            max_mailbox=max_mailbox,
            max_per_sender=max_per_sender,
            quotas=quotas,
        )
    raise ValueError(f"unknown store {description!r}; expected {STORE_HELP}")
