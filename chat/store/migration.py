"""
The SQL of C{chat-admin migrate} (L{chat.migrate}, which runs the steps and
tells the user): reading a SQLite chat store, read-only, as one snapshot
(L{open_source}, L{source_snapshot}), and writing it into an empty
PostgreSQL database in one transaction (L{connect_target},
L{target_transaction}): the target checked and locked
(L{prepare_target}), each table copied with C{COPY} (L{copy_table}), the
identity sequences moved past the copied ids (L{advance_identities}), and
the figures of both sides compared (L{compare}).

Ids are copied unchanged (clients deduplicate by message id and
acknowledge by id); the cluster tables, which only PostgreSQL has, stay
empty.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
import psycopg
from psycopg import sql
from psycopg.abc import Query

from chat.errors import ChatError
from chat.store import schema
from chat.store.postgres import connect, safe_url

#: The SQLite store being read.
Source = sqlite3.Connection
#: The PostgreSQL database being written.
Target = psycopg.Connection[Any]


@attrs.frozen
class Table:
    """
    A table to copy, with its columns (the same in both schemas).

    @ivar identity: its C{id} is an identity column in PostgreSQL, whose
        sequence must be moved past the copied ids.
    @ivar chunk: rows read from SQLite at a time.
    """

    name: str
    columns: tuple[str, ...]
    identity: bool = False
    chunk: int = 5000


#: Every table with data, in an order that satisfies the foreign keys.
TABLES = (
    Table(
        "users",
        ("username", "full_name", "country", "password_hash", "created_at", "is_admin"),
    ),
    # Up to --max-file-size each (1 MiB by default): a few at a time.
    Table("files", ("sha256", "size", "content"), chunk=8),
    Table("sessions", ("token_hash", "username", "created_at", "last_seen_at")),
    Table(
        "messages",
        (
            "id",
            "sender",
            "recipient",
            "sender_name",
            "recipient_name",
            "body",
            "sent_at",
            "group_name",
            "file_name",
            "file_size",
            "file_sha256",
        ),
        identity=True,
    ),
    Table("mailbox", ("recipient", "message_id", "sender")),
    Table("chat_groups", ("name", "owner", "created_at")),
    Table(
        "group_members",
        ("id", "group_name", "username", "joined_at"),
        identity=True,
    ),
    Table("realm_links", ("realm_id", "endpoint", "secret", "created_at")),
    Table(
        "realm_outbox",
        (
            "id",
            "realm_id",
            "message_uid",
            "sender",
            "sender_name",
            "recipients",
            "body",
            "sent_at",
            "file_name",
            "file_size",
            "file_sha256",
        ),
        identity=True,
    ),
    Table("realm_inbound", ("realm_id", "message_uid", "unknown", "received_at")),
)

#: PostgreSQL-only tables, left empty (a target with rows there is in use).
CLUSTER_TABLES = ("cluster_nodes", "cluster_presence")

#: Every table of the PostgreSQL schema.
CHAT_TABLES = frozenset(
    ["schema_version", *CLUSTER_TABLES, *(table.name for table in TABLES)]
)

#: Further checks, the same query on both sides: (label, query).
CHECKS = (
    ("messages: highest id", "SELECT max(id) FROM messages"),
    ("messages: undelivered", "SELECT count(*) FROM mailbox"),
    ("group_members: highest id", "SELECT max(id) FROM group_members"),
    ("realm_outbox: highest id", "SELECT max(id) FROM realm_outbox"),
    ("files: bytes", "SELECT coalesce(sum(length(content)), 0) FROM files"),
)

#: Seconds to wait for a lock on the target (a server using it holds some).
LOCK_TIMEOUT = 10


class MigrationError(ChatError):
    """
    The migration was refused or failed; the target was not changed.
    """


@attrs.frozen
class Count:
    """
    One figure compared between the source and the target.
    """

    label: str
    source: Any
    target: Any

    @property
    def equal(self) -> bool:
        return bool(self.source == self.target)


# Errors.


def hide_password(error: BaseException, url: str) -> str:
    """
    The message of C{error} on one line, without the password of C{url}.
    """
    message = " ".join(str(error).split())
    password = urlsplit(url).password
    if password:
        message = message.replace(password, "***")
    return message


def url_problem(url: str) -> str | None:
    """
    What libpq finds wrong with the URI C{url} (without its password), or
    None if it can parse it.
    """
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as e:
        return hide_password(e, url)
    return None


@contextmanager
def database_errors(path: str, url: str) -> Iterator[None]:
    """
    Turn what either database raises during the copy into a
    L{MigrationError} saying that nothing was written.
    """
    try:
        yield
    except psycopg.errors.LockNotAvailable:
        raise MigrationError(
            f"{safe_url(url)} is in use (by a chat server?): stop it, or "
            "migrate into a new, empty database; nothing was written"
        ) from None
    except psycopg.Error as e:
        raise MigrationError(
            f"migration failed, nothing was written to {safe_url(url)}: "
            f"{hide_password(e, url)}"
        ) from None
    except sqlite3.Error as e:
        raise MigrationError(
            f"cannot read {path}, nothing was written to {safe_url(url)}: {e}"
        ) from None


# The source.


def open_source(path: str) -> Source:
    """
    Open the SQLite store at C{path} read-only, after checking it is a chat
    database with the current schema version.

    @raise MigrationError: if it is missing, not a chat database, or of
        another version.
    """
    if not os.path.isfile(path):
        raise MigrationError(f"{path}: no such file")
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        try:
            version = schema.read_version(connection)
        except ChatError as e:
            raise MigrationError(f"{path}: {e}") from None
        if version < schema.SCHEMA_VERSION:
            raise MigrationError(
                f"{path} has schema version {version}, but this chat migrates "
                f"version {schema.SCHEMA_VERSION}: start this chat once on it "
                f"(twistd -n chat --store sqlite:{path}) to upgrade it, stop "
                "it, then migrate"
            )
        if version > schema.SCHEMA_VERSION:
            raise MigrationError(
                f"{path} has schema version {version}, written by a newer chat "
                f"than this one (version {schema.SCHEMA_VERSION}): migrate it "
                "with the chat-admin of that chat"
            )
    except BaseException:
        connection.close()
        raise
    return connection


@contextmanager
def source_snapshot(source: Source) -> Iterator[None]:
    """
    One read transaction: everything read inside is one consistent
    snapshot, even if a server still writes to the file.
    """
    source.execute("BEGIN")
    try:
        yield
    finally:
        source.execute("ROLLBACK")


def check_source(source: Source, path: str) -> dict[str, int]:
    """
    Check that every table of the source has the expected columns.

    @return: the row count of each table, by name.
    @raise MigrationError: if a table's columns differ.
    """
    for table in TABLES:
        columns = {row[1] for row in source.execute(f"PRAGMA table_info({table.name})")}
        if columns != set(table.columns):
            raise MigrationError(
                f"{path}: table {table.name} has columns {sorted(columns)}, "
                f"expected {sorted(table.columns)}"
            )
    return {
        table.name: source.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0]
        for table in TABLES
    }


def source_rows(source: Source, table: Table) -> Iterator[Sequence[Sequence[Any]]]:
    """
    The rows of C{table}, read C{table.chunk} at a time.
    """
    order = " ORDER BY id" if table.identity else ""
    cursor = source.execute(
        f"SELECT {', '.join(table.columns)} FROM {table.name}{order}"
    )
    try:
        while rows := cursor.fetchmany(table.chunk):
            yield rows
    finally:
        cursor.close()


# The target.


def connect_target(url: str) -> Target:
    """
    Connect to the PostgreSQL database at C{url}.

    @raise MigrationError: if it cannot be reached.
    """
    try:
        return connect(url)
    except ChatError as e:
        raise MigrationError(str(e)) from None


def target_transaction(target: Target) -> AbstractContextManager[Any]:
    """
    The migration's one transaction on the target (a context manager): it
    commits at the end, and rolls back if anything is raised inside.
    """
    return target.transaction()


def _target_columns(target: Target, table: str) -> set[str]:
    rows = target.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall()
    return {row[0] for row in rows}


def prepare_target(target: Target, url: str) -> None:
    """
    Inside the migration's transaction: refuse a target with tables that
    are not chat's, create the chat schema if it is missing, lock its
    tables and refuse it if any has rows.

    @raise MigrationError: if the target is refused.
    """
    target.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}s'")
    rows = target.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema()"
    ).fetchall()
    foreign = sorted({row[0] for row in rows} - CHAT_TABLES)
    if foreign:
        raise MigrationError(
            f"{safe_url(url)} has tables that are not chat's ({', '.join(foreign)}): "
            "migrate into a new, empty database"
        )
    try:
        schema.prepare_postgres(target)
    except ChatError as e:
        raise MigrationError(f"{safe_url(url)}: {e}") from None
    names = sorted(CHAT_TABLES)
    target.execute(
        sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier(name) for name in names)
        )
    )
    used = [
        name
        for name in names
        if name != "schema_version"
        and _one(
            target,
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(name)),
        )
    ]
    if used:
        raise MigrationError(
            f"{safe_url(url)} is not empty ({', '.join(used)} have rows): "
            "migrate into a new, empty database"
        )
    for table in TABLES:
        columns = _target_columns(target, table.name)
        if columns != set(table.columns):
            raise MigrationError(
                f"{safe_url(url)}: table {table.name} has columns "
                f"{sorted(columns)}, expected {sorted(table.columns)}"
            )


def _one(target: Target, query: Query) -> Any:
    row = target.execute(query).fetchone()
    assert row is not None
    return row[0]


def copy_table(
    source: Source, target: Target, table: Table, advance: Callable[[int], None]
) -> None:
    """
    Copy every row of C{table} with C{COPY ... FROM STDIN}, telling
    C{advance} how many rows each chunk held.
    """
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(sql.Identifier(column) for column in table.columns),
    )
    with target.cursor() as cursor, cursor.copy(statement) as copy:
        for rows in source_rows(source, table):
            for row in rows:
                copy.write_row(row)
            advance(len(rows))


def advance_identities(target: Target) -> None:
    """
    Move each identity sequence past the highest copied id (to 1 for an
    empty table), so that new rows get new ids.
    """
    for table in TABLES:
        if table.identity:
            target.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({name}, 'id'),"
                    " coalesce(max(id), 0) + 1, false) FROM {table}"
                ).format(name=sql.Literal(table.name), table=sql.Identifier(table.name))
            )


def compare(
    source: Source, target: Target, source_counts: dict[str, int]
) -> list[Count]:
    """
    The row count of every table and the L{CHECKS}, on both sides.
    """
    counts = [
        Count(
            table.name,
            source_counts[table.name],
            _one(
                target,
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.name)),
            ),
        )
        for table in TABLES
    ]
    for label, query in CHECKS:
        (expected,) = source.execute(query).fetchone()
        counts.append(Count(label, expected, _one(target, query)))
    return counts
