"""
The SQLite schema and its versions.

SCHEMA_VERSION changelog:

    1: users, sessions (token hashes), messages with delivery marks (one row
       per mailbox, with optional group and file), files (by sha256),
       chat_groups and group_members.
       Realms: an admin flag on users, realm links, the outbox for other
       realms and the ids of messages accepted from them.
    2: the undelivered messages listed in a mailbox table instead of a
       delivery mark on each message (messages never change once written);
       fewer indexes on messages (none by time: retention goes by id);
       messages_files_by_sender: file messages by sender, for the per-user
       quota of stored files (chat.store.quotas).
    3: files for other realms: realm_outbox carries file_name, file_size and
       file_sha256 (referencing files, which keeps the file until the other
       realm acknowledges the entry), with indexes by file and by sender.

PostgreSQL (L{prepare_postgres}) has the same versions, from
C{sql/postgresql/}: created or upgraded in one transaction (DDL is
transactional there), under an advisory lock so that nodes starting
together do not race.

A fresh SQLite database is created from C{sql/sqlite/v<N>.sql} in a temporary file
that is renamed into place, so a crash never leaves a half-made database.
An older database is backed up (C{<file>.v<old>.bak}) and then upgraded by
C{sql/sqlite/upgrade-to-v<k>.sql}, one transaction per step. A newer one is
refused.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from importlib import resources
from typing import TYPE_CHECKING, Any

from chat.errors import DatabaseDamaged, SchemaTooNew, StorageUnavailable, StoreReadOnly
from chat.store import sqlitefile

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 3


def _sql(name: str, dialect: str = "sqlite") -> str:
    return (
        resources.files("chat.store")
        .joinpath("sql", dialect, name)
        .read_text(encoding="utf-8")
    )


def read_version(connection: sqlite3.Connection) -> int:
    """
    The schema version of an existing database.

    @raise StorageUnavailable: if the file is not a chat database.
    @raise DatabaseDamaged: if SQLite finds it malformed.
    @raise StoreReadOnly: if it cannot be read without writing.
    """
    try:
        row = connection.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.DatabaseError as e:
        if sqlitefile.is_read_only(e):
            raise StoreReadOnly(f"cannot read the database: {e}") from None
        if sqlitefile.is_corruption(e) and "not a database" not in str(e):
            raise DatabaseDamaged(str(e)) from None
        raise StorageUnavailable(f"not a chat database: {e}") from None
    if row is None:
        raise StorageUnavailable("not a chat database: empty schema_version")
    return int(row[0])


def prepare(path: str, read_only: bool = False) -> int:
    """
    Make sure the database at C{path} exists and has the current schema;
    with C{read_only}, only check that it does.

    @return: the schema version the file had before (0 if it was created).
    @raise SchemaTooNew: if the file was written by a newer chat.
    @raise StorageUnavailable: if the file is not a chat database, or
        (L{DatabaseDamaged}) a damaged one, or (L{StoreReadOnly}) an older
        one that C{read_only} cannot upgrade.
    """
    if not os.path.exists(path) and not read_only:
        _create(path)
        return 0
    connection = sqlitefile.connect(path, read_only)
    try:
        try:
            version = read_version(connection)
        except DatabaseDamaged as e:
            raise sqlitefile.damaged(path, e) from None
        except StorageUnavailable as e:
            raise type(e)(f"{path}: {e}") from None
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{path} has schema version {version}, but this chat supports "
                f"at most {SCHEMA_VERSION}: upgrade chat, or use another --store"
            )
        if version < SCHEMA_VERSION and read_only:
            raise StoreReadOnly(
                f"{path} has schema version {version}: this chat upgrades it "
                f"to {SCHEMA_VERSION} when it first writes it (twistd chat, "
                "or a chat-admin command that writes)"
            )
        if version < SCHEMA_VERSION:
            connection.close()
            shutil.copy2(path, f"{path}.v{version}.bak")
            connection = sqlitefile.connect(path)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                _run_script(connection, _sql(f"upgrade-to-v{step}.sql"))
        return version
    finally:
        connection.close()


def _run_script(connection: sqlite3.Connection, script: str) -> None:
    """
    Run a multi-statement script in one transaction.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(script):
            connection.execute(statement)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """
    Split a script of ';'-terminated statements (no ';' inside literals).
    """
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _create(path: str) -> None:
    temporary = f"{path}.creating-{os.getpid()}"
    for leftover in (temporary, temporary + "-wal", temporary + "-shm"):
        if os.path.exists(leftover):
            os.remove(leftover)
    connection = sqlite3.connect(temporary, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        _run_script(connection, _sql(f"v{SCHEMA_VERSION}.sql"))
    finally:
        connection.close()
    os.replace(temporary, path)


#: The advisory lock key held while creating or upgrading a PostgreSQL schema.
SCHEMA_LOCK = 0x63686174  # "chat"


def prepare_postgres(connection: psycopg.Connection[Any]) -> int:
    """
    Make sure the PostgreSQL database of C{connection} (in autocommit mode)
    has the current schema.

    @return: the schema version it had before (0 if it was created).
    @raise SchemaTooNew: if a newer chat wrote the database.
    @raise StorageUnavailable: if it holds tables but no chat schema.
    """
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        exists = connection.execute(
            "SELECT to_regclass('schema_version') IS NOT NULL"
        ).fetchone()
        if not (exists and exists[0]):
            tables = connection.execute(
                "SELECT count(*) FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            ).fetchone()
            if tables and tables[0]:
                raise StorageUnavailable(
                    "not a chat database: it has tables but no schema_version"
                )
            for statement in _statements(_sql(f"v{SCHEMA_VERSION}.sql", "postgresql")):
                connection.execute(statement)
            return 0
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise StorageUnavailable("not a chat database: empty schema_version")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database has schema version {version}, but this chat "
                f"supports at most {SCHEMA_VERSION}: upgrade chat, or use "
                "another --store"
            )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _statements(_sql(f"upgrade-to-v{step}.sql", "postgresql")):
                connection.execute(statement)
        return version
