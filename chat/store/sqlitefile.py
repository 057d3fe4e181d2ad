"""
The SQLite database as a file: where it may be, whether this process may
write it, the lock a running server holds on it, and whether it is intact.

A SQLite database in WAL mode is the main file plus its C{-wal} file (the
latest commits, not yet copied into the main file) and C{-shm} (an index
of the C{-wal}). The C{-wal} file is part of the database: deleting it
loses commits. The server also keeps C{<file>-lock}, which only says that
a server runs on the file (and which one).

Every problem is a L{StorageUnavailable} (or subclass) with a one-line
message naming the file, for twistd and chat-admin to print as is.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from typing import IO
from urllib.parse import quote

from chat.errors import DatabaseDamaged, StorageUnavailable, StoreInUse, StoreReadOnly

#: SQLite's primary result codes for a damaged file (SQLITE_CORRUPT,
#: SQLITE_NOTADB) and for a read-only one (SQLITE_READONLY).
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
SQLITE_READONLY = 8

#: How many of quick_check's findings a refusal quotes.
SHOWN_PROBLEMS = 3


def connect(path: str, read_only: bool = False) -> sqlite3.Connection:
    """
    A connection to the database at C{path}, in autocommit mode (each
    transaction is begun explicitly), usable from one thread at a time;
    with C{read_only}, one that cannot write (and does not need to).
    """
    if read_only:
        uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
        return sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False
        )
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def lock_path(path: str) -> str:
    return f"{path}-lock"


def writable(path: str) -> bool:
    """
    Whether this process may write C{path} (a file or a folder).
    """
    return os.access(path, os.W_OK)


def check_path(path: str, *, create: bool, write: bool) -> bool:
    """
    Check that C{path} can be a database file for this use.

    @param create: whether a missing file may be created (its folder must
        exist: a mistyped path creates nothing).
    @param write: whether it will be written (a read-only file is refused).
    @return: whether the file exists.
    @raise StorageUnavailable: saying what is wrong, in one line.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise StorageUnavailable(
            f"{path} is a folder: give a file name, such as "
            f"sqlite:{os.path.join(path, 'chat.sqlite')}"
        )
    exists = os.path.exists(path)
    if not exists and not create:
        raise StorageUnavailable(
            f"no database at {path} (twistd chat creates it when it first "
            "starts, and so do chat-admin useradd and realm add)"
        )
    if not os.path.isdir(folder):
        raise StorageUnavailable(
            f"cannot open {path}: there is no folder {folder} (make it first)"
        )
    if not exists:
        if not writable(folder):
            raise StorageUnavailable(
                f"cannot create {path}: the folder {folder} is not writable"
            )
        return False
    if not os.access(path, os.R_OK):
        raise StorageUnavailable(f"cannot read {path}: permission denied")
    if write and not (writable(path) and writable(folder)):
        which = path if not writable(path) else f"its folder {folder}"
        raise StoreReadOnly(
            f"{path} is read-only ({which} is not writable): it can be read "
            "(chat-admin users, realm list, check) but not changed"
        )
    if write:
        # A reader that may not write the database (another user's
        # chat-admin users) leaves these behind, as its own: with them
        # read-only, every write fails although the file is writable.
        for companion in (path + "-wal", path + "-shm"):
            if os.path.exists(companion) and not writable(companion):
                raise StoreReadOnly(
                    f"{path} cannot be written: {companion} is not writable "
                    "(another user's chat-admin left it?); remove it while no "
                    "server runs, or run as its owner"
                )
    return True


def is_corruption(error: BaseException) -> bool:
    """
    Whether a SQLite error says the file is damaged.
    """
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(error)
    return "malformed" in text or "not a database" in text


def is_read_only(error: BaseException) -> bool:
    """
    Whether a SQLite error says the file may not be written.
    """
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == SQLITE_READONLY
    return "readonly database" in str(error)


def damaged(path: str, error: BaseException | str) -> DatabaseDamaged:
    """
    The error that refuses a damaged database, saying what to do.
    """
    return DatabaseDamaged(
        f"{path} is damaged ({error}): restore it from a backup (the file "
        f"and its -wal file together); chat-admin --store sqlite:{path} check "
        "lists the damage"
    )


def integrity_problems(connection: sqlite3.Connection, quick: bool) -> list[str]:
    """
    What SQLite's C{quick_check} (or the slower, more thorough
    C{integrity_check}, which also checks that every index matches its
    table) finds wrong in the database; empty if nothing.
    """
    pragma = "quick_check" if quick else "integrity_check"
    try:
        rows = connection.execute(f"PRAGMA {pragma}").fetchall()
    except sqlite3.DatabaseError as e:
        if is_corruption(e):
            return [str(e)]
        raise
    problems = [str(row[0]) for row in rows]
    return [] if problems == ["ok"] else problems


def check_integrity(path: str) -> None:
    """
    Refuse a damaged database (SQLite's C{quick_check}: reads every page,
    about a second per gigabyte).

    @raise DatabaseDamaged: if it is damaged.
    """
    connection = connect(path)
    try:
        problems = integrity_problems(connection, quick=True)
    finally:
        connection.close()
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        if more > 0:
            shown += f"; and {more} more"
        raise damaged(path, f"SQLite quick_check: {shown}")


class ServerLock:
    """
    The lock a chat server holds on its database for as long as it runs,
    so that a second server on the same file is refused (two servers on
    one SQLite file would each think it alone delivers each message).

    An advisory lock (C{flock}) on C{<file>-lock}, which holds the pid of
    the server: the kernel releases it when the process ends, however it
    ends, so a crash never leaves a stale lock. chat-admin C{migrate},
    which must not run beside a server, takes it shared.
    """

    def __init__(self, path: str) -> None:
        self.database = path
        self.path = lock_path(path)
        self._file: IO[str] | None = None
        self._exclusive = False
        self._created = False

    def acquire(self, exclusive: bool = True) -> None:
        """
        Take the lock: exclusive for a server, shared otherwise.

        @raise StoreInUse: if a server holds it (naming its pid).
        @raise StorageUnavailable: if the lock file cannot be made.
        """
        self._created = exclusive and not os.path.exists(self.path)
        try:
            if exclusive:
                file = open(self.path, "a+", encoding="ascii")
            else:
                file = open(self.path, encoding="ascii")
        except FileNotFoundError:
            if exclusive:
                raise StorageUnavailable(f"cannot create {self.path}") from None
            return  # no server ever ran here: nothing to share
        except OSError as e:
            raise StorageUnavailable(f"cannot open {self.path}: {e.strerror}") from None
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(file.fileno(), mode | fcntl.LOCK_NB)
        except OSError as e:
            file.seek(0)
            holder = file.read().strip()
            file.close()
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise StorageUnavailable(
                    f"cannot lock {self.path}: {e.strerror}"
                ) from None
            pid = int(holder) if holder.isdigit() else None
            who = f"pid {pid}" if pid is not None else "another process"
            raise StoreInUse(
                f"{self.database} is in use by a chat server ({who}): stop it "
                "first, or use another --store",
                pid,
            ) from None
        self._file = file
        self._exclusive = exclusive
        if exclusive:
            self.write_pid()

    def write_pid(self) -> None:
        """
        Say which process holds the lock (again, after a fork).
        """
        if self._file is not None and self._exclusive:
            self._file.truncate(0)
            self._file.write(f"{os.getpid()}\n")
            self._file.flush()

    def release(self, refused: bool = False) -> None:
        """
        Let go of the lock (the kernel does it too when the process ends).

        @param refused: the server refused the file: remove the lock file
            if it made it, leaving the folder as it was.
        """
        if self._file is None:
            return
        if self._exclusive:
            self._file.truncate(0)
            if refused and self._created:
                os.remove(self.path)
        self._file.close()
        self._file = None
