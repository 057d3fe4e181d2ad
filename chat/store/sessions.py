"""
The store's operations on login sessions (only the sha256 of a token is
ever stored; see L{chat.sessions}).

C{chat-admin passwd} and C{userdel} delete a user's sessions in the
database, in another process. With PostgreSQL the server hears of it at
once (C{NOTIFY chat_sessions}, L{chat.cluster}); with SQLite it asks the
store a few times a second whether another process has written the file
(L{ExternalChanges}, which costs no statement: each batch reads SQLite's
C{data_version} as it begins), and if one has, which of the sessions it has
cached still exist (L{ExistingSessions}).
"""

from __future__ import annotations

import attrs

from chat.errors import NoSuchUser
from chat.model import Rehash, Session
from chat.store.batching import Operation, Transaction, chunks, column, marks


@attrs.define(eq=False)
class CreateSession(Operation):
    """
    Store a new session; with C{rehash}, also replace the user's password
    hash, only if it is still the one the password was checked against (a
    password set meanwhile, C{chat-admin passwd}, wins). Ends no session.
    """

    checks_first = True

    session: Session
    rehash: Rehash | None = None

    def run(self, txn: Transaction) -> None:
        session = self.session
        cursor = txn.execute(
            "INSERT INTO sessions (token_hash, username, created_at, last_seen_at)"
            " SELECT ?, username, ?, ? FROM users WHERE username = ?",
            (
                session.token_hash,
                session.created_at,
                session.last_seen_at,
                session.username,
            ),
        )
        if cursor.rowcount == 0:
            raise NoSuchUser(session.username)
        rehash = self.rehash
        if rehash is not None:
            txn.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?"
                " AND password_hash = ?",
                (rehash.new_hash, session.username, rehash.old_hash),
            )


@attrs.define(eq=False)
class GetSession(Operation):
    checks_first = True

    token_hash: str

    def run(self, txn: Transaction) -> Session | None:
        row = txn.execute(
            "SELECT token_hash, username, created_at, last_seen_at FROM sessions"
            " WHERE token_hash = ?",
            (self.token_hash,),
        ).fetchone()
        return None if row is None else Session(*row)


@attrs.define(eq=False)
class TouchSession(Operation):
    """
    Record activity; the result says whether the session still exists.
    """

    checks_first = True

    token_hash: str
    last_seen_at: float

    def run(self, txn: Transaction) -> bool:
        cursor = txn.execute(
            "UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?"
            " AND last_seen_at < ?",
            (self.last_seen_at, self.token_hash, self.last_seen_at),
        )
        if cursor.rowcount:
            return True
        return (
            txn.execute(
                "SELECT 1 FROM sessions WHERE token_hash = ?", (self.token_hash,)
            ).fetchone()
            is not None
        )


@attrs.define(eq=False)
class DeleteSession(Operation):
    checks_first = True
    ends_sessions = "session"

    token_hash: str

    def run(self, txn: Transaction) -> None:
        txn.execute("DELETE FROM sessions WHERE token_hash = ?", (self.token_hash,))


@attrs.define(eq=False)
class DeleteExpiredSessions(Operation):
    checks_first = True

    idle_since: float
    created_since: float

    def run(self, txn: Transaction) -> int:
        cursor = txn.execute(
            "DELETE FROM sessions WHERE last_seen_at < ? OR created_at < ?",
            (self.idle_since, self.created_since),
        )
        return int(cursor.rowcount)


@attrs.define(eq=False)
class ExistingSessions(Operation):
    """
    Which of C{token_hashes} are sessions that still exist.
    """

    checks_first = True

    token_hashes: list[str]

    def run(self, txn: Transaction) -> set[str]:
        found: set[str] = set()
        for chunk in chunks(self.token_hashes):
            found.update(
                column(
                    txn.execute(
                        "SELECT token_hash FROM sessions"
                        f" WHERE token_hash IN ({marks(len(chunk))})",
                        chunk,
                    )
                )
            )
        return found


@attrs.define(eq=False)
class ExternalChanges(Operation):
    """
    How many times the store has seen that another process committed to
    the database (L{chat.store.interfaces.IExternalChanges}), as of the start of
    this batch: read there, so nothing to run here.
    """

    checks_first = True

    def run(self, txn: Transaction) -> int:
        return txn.external_changes
