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

This module is the tool: its arguments, its flow and what it prints. The
SQL it runs is the store's (L{chat.store.migration}).
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from chat.store.migration import (
    TABLES,
    Count,
    MigrationError,
    Source,
    Target,
    advance_identities,
    check_source,
    compare,
    connect_target,
    copy_table,
    database_errors,
    open_source,
    prepare_target,
    source_snapshot,
    target_transaction,
    url_problem,
)
from chat.store.postgres import is_postgres_url, safe_url

#: What the tool offers (L{MigrationError} and L{Count} are the store's).
__all__ = [
    "Count",
    "MigrationError",
    "Progress",
    "migrate",
    "report",
    "source_path",
    "target_url",
]


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
    problem = url_problem(value)
    if problem is not None:
        raise ValueError(f"invalid --to URL {safe_url(value)}: {problem}")
    return value


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


# The migration.


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
        target = connect_target(url)
        try:
            with database_errors(path, url):
                counts = _migrate(source, target, path, url, stdout, progress)
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
    source: Source,
    target: Target,
    path: str,
    url: str,
    stdout: TextIO,
    progress: Progress,
) -> list[Count]:
    with source_snapshot(source):
        source_counts = check_source(source, path)
        with target_transaction(target):
            prepare_target(target, url)
            for table in TABLES:
                progress.start(table.name, source_counts[table.name])
                copy_table(source, target, table, progress.advance)
                progress.finish()
            advance_identities(target)
            counts = compare(source, target, source_counts)
            report(counts, stdout)
            different = [count.label for count in counts if not count.equal]
            if different:
                raise MigrationError(
                    f"the copy differs ({', '.join(different)}); nothing was "
                    f"written to {safe_url(url)}"
                )
    return counts
