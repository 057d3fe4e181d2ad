"""
The store's operations on login sessions (only the sha256 of a token is
ever stored; see L{chat.sessions}).
"""

from __future__ import annotations

import attrs

from chat.errors import NoSuchUser
from chat.model import Session
from chat.store.batching import Operation, Transaction


@attrs.define(eq=False)
class CreateSession(Operation):
    checks_first = True

    session: Session

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
