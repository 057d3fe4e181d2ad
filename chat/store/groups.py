"""
The store's operations on groups: every change is one operation, so
membership is never half-changed. The owner is always a member; when the
owner leaves, the longest-standing member becomes the owner, and a group
whose last member leaves is deleted.
"""

from __future__ import annotations

import attrs

from chat.errors import (
    AlreadyAMember,
    CannotKickSelf,
    GroupExists,
    NoSuchGroup,
    NoSuchUsers,
    NotAMember,
    NotGroupOwner,
)
from chat.model import Group
from chat.store.batching import Operation, Transaction, column
from chat.store.quotas import check_group_quota
from chat.store.users import full_names, require_user


def require_group(txn: Transaction, name: str) -> tuple[str, float]:
    """
    The group's owner and creation time.

    @raise NoSuchGroup: if there is no such group.
    """
    row = txn.execute(
        "SELECT owner, created_at FROM chat_groups WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise NoSuchGroup(name)
    return row[0], row[1]


def load_group(txn: Transaction, name: str) -> Group:
    owner, created_at = require_group(txn, name)
    members = tuple(
        column(
            txn.execute(
                "SELECT username FROM group_members WHERE group_name = ? ORDER BY id",
                (name,),
            )
        )
    )
    return Group(name, owner, members, created_at)


def is_member(txn: Transaction, name: str, username: str) -> bool:
    return (
        txn.execute(
            "SELECT 1 FROM group_members WHERE group_name = ? AND username = ?",
            (name, username),
        ).fetchone()
        is not None
    )


def leave_group(txn: Transaction, name: str, username: str) -> Group | None:
    """
    C{username} leaves the group; the result is the group after it, or
    None if it was the last member (the group is deleted).

    @raise NotAMember: if C{username} is not a member.
    """
    group = load_group(txn, name)
    if username not in group.members:
        raise NotAMember(name, username)
    txn.execute(
        "DELETE FROM group_members WHERE group_name = ? AND username = ?",
        (name, username),
    )
    remaining = [member for member in group.members if member != username]
    if not remaining:
        txn.execute("DELETE FROM chat_groups WHERE name = ?", (name,))
        return None
    if group.owner == username:
        txn.execute(
            "UPDATE chat_groups SET owner = ? WHERE name = ?", (remaining[0], name)
        )
    return load_group(txn, name)


@attrs.define(eq=False)
class CreateGroup(Operation):
    """
    A group owned by C{owner}, its first member, with C{members} joined
    after it in that order (duplicates and the owner dropped).

    @raise GroupExists: if the name is taken.
    @raise NoSuchUsers: naming every member that does not exist (then
        nothing is created).
    @raise TooManyGroups: if the owner, or a member, belongs to as many
        groups as the quota allows (L{chat.store.quotas}).
    """

    checks_first = True

    name: str
    owner: str
    created_at: float
    members: tuple[str, ...] = ()

    def run(self, txn: Transaction) -> Group:
        name, owner = self.name, self.owner
        require_user(txn, owner)
        if (
            txn.execute("SELECT 1 FROM chat_groups WHERE name = ?", (name,)).fetchone()
            is not None
        ):
            raise GroupExists(name)
        everyone = list(dict.fromkeys([owner, *self.members]))
        known = full_names(txn, everyone[1:])
        unknown = [member for member in everyone[1:] if member not in known]
        if unknown:
            raise NoSuchUsers(unknown)
        for user in everyone:
            check_group_quota(txn, user)
        txn.execute(
            "INSERT INTO chat_groups (name, owner, created_at) VALUES (?, ?, ?)",
            (name, owner, self.created_at),
        )
        for member in everyone:
            txn.execute(
                "INSERT INTO group_members (group_name, username, joined_at)"
                " VALUES (?, ?, ?)",
                (name, member, self.created_at),
            )
        return Group(name, owner, tuple(everyone), self.created_at)


@attrs.define(eq=False)
class JoinGroup(Operation):
    """
    @raise AlreadyAMember: if the user is a member already.
    @raise TooManyGroups: if the user belongs to as many groups as the
        quota allows (L{chat.store.quotas}).
    """

    checks_first = True

    name: str
    username: str
    joined_at: float

    def run(self, txn: Transaction) -> Group:
        require_group(txn, self.name)
        require_user(txn, self.username)
        if is_member(txn, self.name, self.username):
            raise AlreadyAMember(self.name, self.username)
        check_group_quota(txn, self.username)
        txn.execute(
            "INSERT INTO group_members (group_name, username, joined_at)"
            " VALUES (?, ?, ?)",
            (self.name, self.username, self.joined_at),
        )
        return load_group(txn, self.name)


@attrs.define(eq=False)
class LeaveGroup(Operation):
    checks_first = True

    name: str
    username: str

    def run(self, txn: Transaction) -> Group | None:
        return leave_group(txn, self.name, self.username)


@attrs.define(eq=False)
class KickFromGroup(Operation):
    """
    @raise NotGroupOwner: unless C{by} owns the group.
    @raise CannotKickSelf: if the owner names itself.
    """

    checks_first = True

    name: str
    by: str
    username: str

    def run(self, txn: Transaction) -> Group:
        owner, _ = require_group(txn, self.name)
        if owner != self.by:
            raise NotGroupOwner(self.name)
        if self.username == self.by:
            raise CannotKickSelf(self.name)
        left = leave_group(txn, self.name, self.username)
        assert left is not None  # the owner is still in it
        return left


@attrs.define(eq=False)
class ListGroups(Operation):
    """
    The groups a user is a member of, by name.
    """

    checks_first = True

    username: str

    def run(self, txn: Transaction) -> list[Group]:
        names = column(
            txn.execute(
                "SELECT group_name FROM group_members WHERE username = ?"
                " ORDER BY group_name",
                (self.username,),
            )
        )
        return [load_group(txn, name) for name in names]


@attrs.define(eq=False)
class ListAllGroups(Operation):
    """
    The first C{limit} groups of the server, by name: one statement, however
    many groups (a round trip each would hold the store's thread).
    """

    checks_first = True

    limit: int

    def run(self, txn: Transaction) -> list[Group]:
        found: dict[str, tuple[str, float, list[str]]] = {}
        for name, owner, created_at, member in txn.execute(
            "SELECT g.name, g.owner, g.created_at, m.username FROM"
            " (SELECT name, owner, created_at FROM chat_groups"
            " ORDER BY name LIMIT ?) AS g"
            " JOIN group_members m ON m.group_name = g.name"
            " ORDER BY g.name, m.id",
            (self.limit,),
        ):
            group = found.get(name)
            if group is None:
                found[name] = (owner, created_at, [member])
            else:
                group[2].append(member)
        return [
            Group(name, owner, tuple(members), created_at)
            for name, (owner, created_at, members) in found.items()
        ]
