"""
The in-memory store's groups (L{chat.store.interfaces.IGroupStore}).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred

from chat.errors import (
    AlreadyAMember,
    CannotKickSelf,
    GroupExists,
    NoSuchUsers,
    NotGroupOwner,
    TooManyGroups,
)
from chat.model import Group
from chat.store.memory.state import MemoryGroup, MemoryState


class MemoryGroups(MemoryState):
    """
    Creating, joining, leaving and listing groups.
    """

    def _check_group_quota(self, username: str) -> None:
        count = sum(1 for g in self.groups.values() if username in g.members)
        if count >= self.quotas.max_groups:
            raise TooManyGroups(username, self.quotas.max_groups)

    def create_group(
        self,
        name: str,
        owner: str,
        created_at: float,
        members: Sequence[str] = (),
    ) -> Deferred[Group]:
        def create() -> Group:
            self.require_user(owner)
            if name in self.groups:
                raise GroupExists(name)
            everyone = list(dict.fromkeys([owner, *members]))
            unknown = [member for member in everyone if member not in self.users]
            if unknown:
                raise NoSuchUsers(unknown)
            for user in everyone:
                self._check_group_quota(user)
            self.groups[name] = MemoryGroup(owner, created_at, everyone)
            return self.group_snapshot(name)

        return self.answer(create)

    def join_group(self, name: str, username: str, joined_at: float) -> Deferred[Group]:
        def join() -> Group:
            group = self.require_group(name)
            self.require_user(username)
            if username in group.members:
                raise AlreadyAMember(name, username)
            self._check_group_quota(username)
            group.members.append(username)
            return self.group_snapshot(name)

        return self.answer(join)

    def leave_group(self, name: str, username: str) -> Deferred[Group | None]:
        return self.answer(self.remove_member, name, username)

    def kick_from_group(self, name: str, by: str, username: str) -> Deferred[Group]:
        def kick() -> Group | None:
            if self.require_group(name).owner != by:
                raise NotGroupOwner(name)
            if username == by:
                raise CannotKickSelf(name)
            return self.remove_member(name, username)

        return self.answer(kick)

    def list_groups(self, username: str) -> Deferred[list[Group]]:
        return self.answer(
            lambda: [
                self.group_snapshot(name)
                for name in sorted(self.groups)
                if username in self.groups[name].members
            ]
        )

    def list_all_groups(self, limit: int) -> Deferred[list[Group]]:
        return self.answer(
            lambda: [self.group_snapshot(name) for name in sorted(self.groups)[:limit]]
        )
