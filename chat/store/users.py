"""
The store's operations on accounts: users, their password hashes, and who
is an administrator.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from chat.errors import NoSuchUser, UserExists
from chat.model import User
from chat.store.batching import Operation, Transaction, chunks, column, marks

_USER_COLUMNS = "username, full_name, country, password_hash"


def full_names(
    txn: Transaction, usernames: Iterable[str]
) -> dict[str, tuple[str, float]]:
    """
    The full name and creation time of each of C{usernames} that exists
    (remembered by the store's thread where it can).
    """
    caches = txn.caches
    found: dict[str, tuple[str, float]] = {}
    missing: list[str] = []
    if caches is None:
        missing = list(dict.fromkeys(usernames))
    else:
        users = caches.users
        for username in usernames:
            known = users.get(username)
            if known is not None:
                found[username] = known
            elif username not in found:
                missing.append(username)
        missing = list(dict.fromkeys(missing))
    for chunk in chunks(missing):
        for username, full_name, created_at in txn.execute(
            "SELECT username, full_name, created_at FROM users"
            f" WHERE username IN ({marks(len(chunk))})",
            chunk,
        ):
            found[username] = (full_name, created_at)
            if caches is not None:
                caches.remember_user(username, full_name, created_at)
    return found


def require_user(txn: Transaction, username: str) -> None:
    """
    @raise NoSuchUser: if C{username} does not exist.
    """
    if username not in full_names(txn, (username,)):
        raise NoSuchUser(username)


@attrs.define(eq=False)
class AddUser(Operation):
    """
    A new user, created at C{created_at}.

    @raise UserExists: if a user of that name exists.
    """

    checks_first = True

    user: User
    created_at: float

    def run(self, txn: Transaction) -> None:
        user = self.user
        cursor = txn.execute(
            "INSERT INTO users (username, full_name, country, password_hash,"
            " created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (username) DO NOTHING",
            (
                user.username,
                user.full_name,
                user.country,
                user.password_hash,
                self.created_at,
            ),
        )
        if cursor.rowcount == 0:
            raise UserExists(user.username)
        if txn.caches is not None:
            txn.caches.forget_user(user.username)


@attrs.define(eq=False)
class GetUser(Operation):
    checks_first = True

    username: str

    def run(self, txn: Transaction) -> User:
        row = txn.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (self.username,)
        ).fetchone()
        if row is None:
            raise NoSuchUser(self.username)
        return User(*row)


@attrs.define(eq=False)
class SetPasswordHash(Operation):
    """
    A new password: every session of the user ends.
    """

    checks_first = True
    ends_sessions = "user"

    username: str
    password_hash: str

    def run(self, txn: Transaction) -> None:
        cursor = txn.execute(
            "UPDATE users SET password_hash = ? WHERE username = ?",
            (self.password_hash, self.username),
        )
        if cursor.rowcount == 0:
            raise NoSuchUser(self.username)
        txn.execute("DELETE FROM sessions WHERE username = ?", (self.username,))


@attrs.define(eq=False)
class DeleteUser(Operation):
    """
    Delete a user, its mailbox, its sessions and its group memberships
    (groups it owned pass to the longest-standing member).
    """

    ends_sessions = "user"

    username: str

    def run(self, txn: Transaction) -> None:
        from chat.store.files import forget_unused_files
        from chat.store.groups import leave_group

        username = self.username
        groups = column(
            txn.execute(
                "SELECT group_name FROM group_members WHERE username = ?", (username,)
            )
        )
        for group in groups:
            leave_group(txn, group, username)
        files = column(
            txn.execute(
                "SELECT DISTINCT file_sha256 FROM messages"
                " WHERE recipient = ? AND file_sha256 IS NOT NULL",
                (username,),
            )
        )
        cursor = txn.execute("DELETE FROM users WHERE username = ?", (username,))
        if cursor.rowcount == 0:
            raise NoSuchUser(username)
        if txn.caches is not None:
            txn.caches.forget_user(username)
        forget_unused_files(txn, files)


@attrs.define(eq=False)
class ListUsers(Operation):
    """
    Every user, or the first C{limit}, by username.
    """

    checks_first = True

    limit: int | None = None

    def run(self, txn: Transaction) -> list[User]:
        if self.limit is None:
            cursor = txn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY username")
        else:
            cursor = txn.execute(
                f"SELECT {_USER_COLUMNS} FROM users ORDER BY username LIMIT ?",
                (self.limit,),
            )
        return [User(*row) for row in cursor.fetchall()]


@attrs.define(eq=False)
class SetAdmin(Operation):
    checks_first = True

    username: str
    is_admin: bool

    def run(self, txn: Transaction) -> None:
        cursor = txn.execute(
            "UPDATE users SET is_admin = ? WHERE username = ?",
            (int(self.is_admin), self.username),
        )
        if cursor.rowcount == 0:
            raise NoSuchUser(self.username)


@attrs.define(eq=False)
class IsAdmin(Operation):
    checks_first = True

    username: str

    def run(self, txn: Transaction) -> bool:
        row = txn.execute(
            "SELECT is_admin FROM users WHERE username = ?", (self.username,)
        ).fetchone()
        if row is None:
            raise NoSuchUser(self.username)
        return bool(row[0])
