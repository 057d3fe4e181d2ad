"""
What the server needs to notice sessions ended by another process (the
SQL both databases run; see L{chat.store.operations}).

C{chat-admin passwd} and C{userdel} delete a user's sessions in the
database, in another process. With PostgreSQL the server hears of it at
once (C{NOTIFY chat_sessions}, L{chat.cluster}); with SQLite it asks
SQLite, a few times a second and at almost no cost, whether another
process has written the file (L{data_version_txn}, run on the store's
thread between batches), and if one has, which of the sessions it has
cached still exist (L{existing_sessions_txn}, an operation like any other).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Most values bound in one IN (...) list.
_CHUNK = 500


def existing_sessions_txn(connection: Any, token_hashes: Sequence[str]) -> set[str]:
    """
    Which of C{token_hashes} are sessions that still exist.
    """
    found: set[str] = set()
    hashes = list(token_hashes)
    for start in range(0, len(hashes), _CHUNK):
        chunk = hashes[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        found.update(
            row[0]
            for row in connection.execute(
                f"SELECT token_hash FROM sessions WHERE token_hash IN ({marks})",
                chunk,
            )
        )
    return found


def data_version_txn(connection: Any) -> int:
    """
    SQLite's count of commits by other connections to the file: it changes
    when, and only when, another process (C{chat-admin}) wrote to it.
    """
    (version,) = connection.execute("PRAGMA data_version").fetchone()
    return int(version)
