"""
Presence across the nodes: who is online on any node, from this node's
connections and the other nodes' C{chat_presence} notifications; watchers
hear of a user only when their state for the whole cluster changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from chat.push import Presence


@attrs.define
class ClusterPresence(Presence):
    """
    Who is online on any node: this node's connections (as L{Presence}),
    and the other nodes' users as their notifications tell.

    Watchers hear of a user when their state for the whole cluster
    changes: a user who connects to a second node is already online.

    @ivar node_id: this node's id (its own notifications are ignored).
    @ivar changed: called when this node's set of users changed (to write
        it to the database).
    """

    node_id: str = ""
    changed: Callable[[], None] = attrs.field(default=lambda: None)
    _remote: dict[str, dict[str, str]] = attrs.field(factory=dict)

    def _came_online(self, username: str, full_name: str) -> None:
        if self._remote_name(username) is None:
            self._announce(username, full_name, True)
        self.changed()

    def _went_offline(self, username: str, full_name: str) -> None:
        remote = self._remote_name(username)
        if remote is None:
            self._announce(username, full_name, False)
        self.changed()

    def _remote_name(self, username: str) -> str | None:
        for users in self._remote.values():
            name = users.get(username)
            if name is not None:
                return name
        return None

    def _name(self, username: str) -> str | None:
        local = self._online.get(username)
        return local.full_name if local is not None else self._remote_name(username)

    def online(self) -> list[tuple[str, str]]:
        everyone: dict[str, str] = {}
        for users in self._remote.values():
            everyone.update(users)
        everyone.update(self.local())
        return sorted(everyone.items())

    def remote_users(self) -> dict[str, dict[str, str]]:
        """
        The other nodes' users, as known here.
        """
        return {node: dict(users) for node, users in self._remote.items()}

    def _changing(self, usernames: Iterable[str], change: Callable[[], None]) -> None:
        """
        Apply C{change} to the remote map and announce the users among
        C{usernames} whose state for the cluster it changed.
        """
        before = {username: self._name(username) for username in usernames}
        change()
        for username, was in before.items():
            now = self._name(username)
            if (was is None) != (now is None):
                self._announce(username, now or was or "", now is not None)

    def load(self, snapshot: dict[str, dict[str, str]]) -> None:
        """
        Replace the remote map with a snapshot of C{cluster_presence}.
        """
        snapshot = {
            node: dict(users)
            for node, users in snapshot.items()
            if node != self.node_id and users
        }
        affected = {u for users in self._remote.values() for u in users}
        affected.update(u for users in snapshot.values() for u in users)

        def replace() -> None:
            self._remote = snapshot

        self._changing(sorted(affected), replace)

    def node_changed(
        self, node: str, came: dict[str, str], went: Iterable[str], reset: bool
    ) -> None:
        """
        Node C{node} says these users came and went (and, with C{reset},
        that it has no others).
        """
        if node == self.node_id:
            return
        went = list(went)
        previous = self._remote.get(node, {})
        affected = set(came) | set(went) | (set(previous) if reset else set())

        def change() -> None:
            users = {} if reset else dict(self._remote.get(node, {}))
            for username in went:
                users.pop(username, None)
            users.update(came)
            if users:
                self._remote[node] = users
            else:
                self._remote.pop(node, None)

        self._changing(sorted(affected), change)

    def nodes_gone(self, nodes: Iterable[str]) -> None:
        """
        These nodes stopped, or were found dead: their users are gone.
        """
        nodes = [node for node in nodes if node in self._remote]
        affected = {u for node in nodes for u in self._remote[node]}

        def drop() -> None:
            for node in nodes:
                self._remote.pop(node, None)

        self._changing(sorted(affected), drop)
