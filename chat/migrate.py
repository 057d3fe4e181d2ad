"""
Copy a SQLite chat store into an empty PostgreSQL database
(C{chat-admin migrate --from sqlite:PATH --to postgresql://...}).

The SQLite file is opened read-only and read in one transaction, so the
copy is one consistent snapshot even if a server still writes to it (but
what it writes afterwards is not copied: stop the server first). The
PostgreSQL side is one transaction: the schema is created (if the database
is empty), every table is copied with C{COPY} in foreign-key order, the
identity sequences are moved past the copied ids, and the row counts are
compared, all before the commit. Any failure, a target that is not empty,
or counts that differ roll everything back: the target is left as it was.

Ids are copied unchanged (clients deduplicate by message id and
acknowledge by id); the cluster tables, which only PostgreSQL has, stay
empty.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import attrs
import psycopg
from psycopg import sql
from psycopg.abc import Query

from chat.errors import ChatError
from chat.store import schema
from chat.store.postgres import connect, is_postgres_url, safe_url


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


# Arguments.


def source_path(value: str) -> str:
    """
    The path of C{--from sqlite:PATH}.

    @raise ValueError: for anything else.
    """
    kind, _, path = value.partition(":")
    if kind != "sqlite" or not path:
        raise ValueError(f"--from must be sqlite:PATH, not {value!r}")
    return path


def target_url(value: str) -> str:
    """
    Check C{--to}: a libpq URI, C{postgresql://USER@HOST:PORT/DBNAME}.

    @raise ValueError: for anything else (the message hides a password).
    """
    if not is_postgres_url(value):
        raise ValueError(
            "--to must be a postgresql://USER@HOST:PORT/DBNAME URL, "
            f"not {safe_url(value)!r}"
        )
    try:
        psycopg.conninfo.conninfo_to_dict(value)
    except psycopg.Error as e:
        message = _hide(e, value)
        raise ValueError(f"invalid --to URL {safe_url(value)}: {message}") from None
    return value


def _hide(error: BaseException, url: str) -> str:
    """
    The message of C{error} on one line, without the password of C{url}.
    """
    message = " ".join(str(error).split())
    password = urlsplit(url).password
    if password:
        message = message.replace(password, "***")
    return message


# Progress.


class Progress:
    """
    Progress on C{stream}: on a terminal, a bar per table updated in place;
    otherwise one line per table once it is copied.
    """

    width = 30
    interval = 0.1

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._label_width = max(len(table.name) for table in TABLES)
        self._table = ""
        self._total = 0
        self._done = 0
        self._shown = 0.0

    def start(self, table: str, total: int) -> None:
        self._table, self._total, self._done, self._shown = table, total, 0, 0.0
        if self.tty:
            self._draw()

    def advance(self, rows: int) -> None:
        self._done += rows
        if self.tty and time.monotonic() - self._shown >= self.interval:
            self._draw()

    def finish(self) -> None:
        if self.tty:
            self._draw()
            self.stream.write("\n")
        else:
            rows = "row" if self._done == 1 else "rows"
            self.stream.write(f"copied {self._table}: {self._done:,} {rows}\n")
        self.stream.flush()

    def _draw(self) -> None:
        fraction = self._done / self._total if self._total else 1.0
        filled = round(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\r{self._table:<{self._label_width}} [{bar}] "
            f"{self._done:,}/{self._total:,} {fraction:4.0%}"
        )
        self.stream.flush()
        self._shown = time.monotonic()


# The migration.


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


def open_source(path: str) -> sqlite3.Connection:
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


def _source_columns(source: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in source.execute(f"PRAGMA table_info({table})")}


def _target_columns(target: psycopg.Connection[Any], table: str) -> set[str]:
    rows = target.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall()
    return {row[0] for row in rows}


def prepare_target(target: psycopg.Connection[Any], url: str) -> None:
    """
    Inside the migration's transaction: refuse a target with tables that
    are not chat's, create the chat schema if it is missing, lock its
    tables and refuse it if any has rows.
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


def _one(target: psycopg.Connection[Any], query: Query) -> Any:
    row = target.execute(query).fetchone()
    assert row is not None
    return row[0]


def _rows(source: sqlite3.Connection, table: Table) -> Iterator[Sequence[Any]]:
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


def copy_table(
    source: sqlite3.Connection,
    target: psycopg.Connection[Any],
    table: Table,
    total: int,
    progress: Progress,
) -> None:
    """
    Copy every row of C{table} with C{COPY ... FROM STDIN}.
    """
    progress.start(table.name, total)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(sql.Identifier(column) for column in table.columns),
    )
    with target.cursor() as cursor, cursor.copy(statement) as copy:
        for rows in _rows(source, table):
            for row in rows:
                copy.write_row(row)
            progress.advance(len(rows))
    progress.finish()


def advance_identities(target: psycopg.Connection[Any]) -> None:
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
    source: sqlite3.Connection,
    target: psycopg.Connection[Any],
    source_counts: dict[str, int],
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


def report(counts: list[Count], stdout: TextIO) -> None:
    width = max(len(count.label) for count in counts)
    print(f"{'':<{width}}  {'sqlite':>12}  {'postgresql':>12}", file=stdout)
    for count in counts:
        mark = "" if count.equal else "  DIFFERENT"
        print(
            f"{count.label:<{width}}  {_figure(count.source):>12}  "
            f"{_figure(count.target):>12}{mark}",
            file=stdout,
        )


def _figure(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def migrate(
    path: str,
    url: str,
    stdout: TextIO,
    stderr: TextIO,
    progress: Progress | None = None,
) -> list[Count]:
    """
    Copy the SQLite store at C{path} into the empty PostgreSQL database at
    C{url}, in one transaction; print the counts to C{stdout} and progress
    to C{stderr}.

    @return: the figures compared, all equal.
    @raise MigrationError: if the migration was refused or failed; the
        target is then unchanged.
    """
    if progress is None:
        progress = Progress(stderr)
    if safe_url(url) != url:
        print(
            "chat-admin: warning: a password in the URL can be seen by other "
            "users of this machine; use PGPASSWORD or ~/.pgpass instead",
            file=stderr,
        )
    started = time.monotonic()
    source = open_source(path)
    try:
        try:
            target = connect(url)
        except ChatError as e:
            raise MigrationError(str(e)) from None
        try:
            counts = _migrate(source, target, path, url, stdout, progress)
        except psycopg.errors.LockNotAvailable:
            raise MigrationError(
                f"{safe_url(url)} is in use (by a chat server?): stop it, or "
                "migrate into a new, empty database; nothing was written"
            ) from None
        except psycopg.Error as e:
            raise MigrationError(
                f"migration failed, nothing was written to {safe_url(url)}: "
                f"{_hide(e, url)}"
            ) from None
        except sqlite3.Error as e:
            raise MigrationError(
                f"cannot read {path}, nothing was written to {safe_url(url)}: {e}"
            ) from None
        finally:
            target.close()
    finally:
        source.close()
    rows = sum(count.source for count in counts[: len(TABLES)])
    print(
        f"migrated {rows:,} rows from {path} to {safe_url(url)} in "
        f"{time.monotonic() - started:.1f} s; every count matches",
        file=stdout,
    )
    return counts


def _migrate(
    source: sqlite3.Connection,
    target: psycopg.Connection[Any],
    path: str,
    url: str,
    stdout: TextIO,
    progress: Progress,
) -> list[Count]:
    source.execute("BEGIN")
    try:
        for table in TABLES:
            columns = _source_columns(source, table.name)
            if columns != set(table.columns):
                raise MigrationError(
                    f"{path}: table {table.name} has columns {sorted(columns)}, "
                    f"expected {sorted(table.columns)}"
                )
        source_counts = {
            table.name: source.execute(f"SELECT count(*) FROM {table.name}").fetchone()[
                0
            ]
            for table in TABLES
        }
        with target.transaction():
            prepare_target(target, url)
            for table in TABLES:
                copy_table(source, target, table, source_counts[table.name], progress)
            advance_identities(target)
            counts = compare(source, target, source_counts)
            report(counts, stdout)
            different = [count.label for count in counts if not count.equal]
            if different:
                raise MigrationError(
                    f"the copy differs ({', '.join(different)}); nothing was "
                    f"written to {safe_url(url)}"
                )
    finally:
        source.execute("ROLLBACK")
    return counts
