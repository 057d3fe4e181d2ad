"""
Stores: where chat state lives. C{open_store} turns a C{--store} value into
an L{chat.store.interfaces.IChatStore}.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorFromThreads

from chat.errors import StorageUnavailable
from chat.limits import DEFAULT_MAX_MAILBOX, Quotas
from chat.store import postgres, schema, sqlitefile
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
    server: bool = False,
    check: bool = False,
    read_only: bool = False,
) -> SQLStore:
    """
    Open the store named by C{description}, e.g. C{sqlite:chat.sqlite} or
    C{postgresql://chat@db.example.com/chat}, holding at most
    C{max_mailbox} undelivered messages per recipient (and C{max_per_sender}
    of them from one sender; by default C{max_mailbox}), and what C{quotas}
    allows per user (the defaults if None). C{node_id} names this node in a
    cluster sharing a PostgreSQL database.

    For a SQLite file: C{server} holds its lock while the store is open
    (one server per file), C{check} refuses it if it is damaged, and
    C{read_only} opens it for reading only (never creating it).

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
            server=server,
            check=check,
            read_only=read_only,
        )
    raise ValueError(f"unknown store {description!r}; expected {STORE_HELP}")


def _sqlite_path(description: str) -> str | None:
    kind, _, where = description.partition(":")
    return where if kind == "sqlite" and where else None


def preflight(description: str, *, write: bool, create: bool) -> None:
    """
    Check, before anything is asked or done, that the store named by
    C{description} can be opened to be read (or, with C{write}, written;
    with C{create}, created if missing): for a SQLite file, its folder and
    permissions.

    @raise StorageUnavailable: saying what is wrong.
    """
    path = _sqlite_path(description)
    if path is not None:
        sqlitefile.check_path(path, create=create, write=write)


def check_store(description: str) -> list[str]:
    """
    What is wrong with the database of the store named by C{description}:
    empty if nothing. For SQLite, everything SQLite's C{integrity_check}
    finds (every page, every index against its table) and the schema
    version; for PostgreSQL (which checks its own pages), that it can be
    reached and has this chat's schema.

    @raise ValueError: for a description this version does not understand.
    @raise StorageUnavailable: if it cannot be read at all.
    """
    path = _sqlite_path(description)
    if path is None:
        if not is_postgres_url(description):
            raise ValueError(f"unknown store {description!r}; expected {STORE_HELP}")
        version = postgres.schema_version(description)
        if version is None:
            return ["no chat schema (a server creates it when it first starts)"]
        return _version_problems(version)
    sqlitefile.check_path(path, create=False, write=False)
    connection = sqlitefile.connect(path, read_only=True)
    try:
        problems = sqlitefile.integrity_problems(connection, quick=False)
        if problems:
            return problems
        return _version_problems(schema.read_version(connection))
    except StorageUnavailable as e:
        return [str(e)]
    finally:
        connection.close()


def _version_problems(version: int) -> list[str]:
    if version > schema.SCHEMA_VERSION:
        return [
            f"schema version {version}, newer than this chat's "
            f"({schema.SCHEMA_VERSION})"
        ]
    return []
