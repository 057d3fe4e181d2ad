"""
The notification channels, routed: what the LISTEN connection hears (the
presence snapshot when it is made, then each notification) goes to the
part of this node it concerns: the fan-out, presence, membership, the
federation or the session cache. The channels and their payloads are the
store's (L{chat.store.cluster}).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from chat.logs import make_logger
from chat.store.cluster import (
    MESSAGES_CHANNEL,
    OUTBOX_CHANNEL,
    PRESENCE_CHANNEL,
    SESSIONS_CHANNEL,
)

if TYPE_CHECKING:
    from chat.cluster.fanout import PostgresFanout
    from chat.cluster.membership import Membership
    from chat.cluster.presence import ClusterPresence
    from chat.federation import Federation
    from chat.sessions import SessionManager


class Router:
    """
    Hands what the LISTEN connection hears to this node's parts.

    @ivar federation: the federation whose links other nodes wake, if any.
    @ivar sessions: the session cache whose sessions other nodes end, if any.
    """

    log = make_logger()

    def __init__(
        self,
        node_id: str,
        fanout: PostgresFanout,
        presence: ClusterPresence,
        membership: Membership,
    ) -> None:
        self.node_id = node_id
        self.fanout = fanout
        self.presence = presence
        self.membership = membership
        self.federation: Federation | None = None
        self.sessions: SessionManager | None = None

    def caught_up(self, snapshot: dict[str, dict[str, str]]) -> None:
        """
        LISTEN is in effect again, with every node's users as of now
        (node -> username -> full name): replace the remote users with
        them, and read what may have been missed while not listening
        (messages, and the sessions other nodes ended meanwhile).
        """
        self.presence.load(snapshot)
        self.fanout.resync()
        sessions = self.sessions
        if sessions is not None:
            d = sessions.revalidate("ended on another node")
            d.addErrback(
                lambda f: self.log.warn(
                    "Could not check the cached sessions: {why}", why=f.value
                )
            )
        federation = self.federation
        if federation is not None:
            for realm_id in list(federation.links):
                federation.wake(realm_id)

    def notified(self, channel: str, text: str) -> None:
        """
        A notification on C{channel}: a malformed one is logged and
        ignored.
        """
        try:
            payload = json.loads(text)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
            if channel == MESSAGES_CHANNEL:
                self.fanout.committed(payload)
            elif channel == PRESENCE_CHANNEL:
                self._presence(payload)
            elif channel == OUTBOX_CHANNEL:
                self._outbox(payload)
            elif channel == SESSIONS_CHANNEL:
                self._sessions(payload)
        except (ValueError, TypeError, AttributeError) as e:
            self.log.warn(
                "Ignored a malformed {channel} notification: {why}",
                channel=channel,
                why=e,
            )

    def _presence(self, payload: dict[str, Any]) -> None:
        node = payload.get("node")
        if node == self.node_id or not isinstance(node, str):
            return
        expired = payload.get("expired")
        if isinstance(expired, list):
            if self.node_id in expired:
                self.log.warn(
                    "Node {other} found this node ({node}) dead: joining again",
                    other=node,
                    node=self.node_id,
                )
                self.membership.rejoin()
            self.presence.nodes_gone(str(n) for n in expired if n != self.node_id)
            return
        came = {str(u): str(n) for u, n in payload.get("online", ())}
        went = [str(u) for u in payload.get("offline", ())]
        self.presence.node_changed(node, came, went, bool(payload.get("reset")))

    def _outbox(self, payload: dict[str, Any]) -> None:
        federation = self.federation
        realm_id = payload.get("realm")
        if (
            federation is not None
            and payload.get("node") != self.node_id
            and isinstance(realm_id, str)
        ):
            federation.wake(realm_id)

    def _sessions(self, payload: dict[str, Any]) -> None:
        sessions = self.sessions
        if sessions is None or payload.get("node") == self.node_id:
            return
        token_hash, username = payload.get("session"), payload.get("user")
        if isinstance(token_hash, str):
            sessions.ended_elsewhere(token_hash, "logged out on another node")
        if isinstance(username, str):
            sessions.user_changed_elsewhere(
                username, "password changed or user deleted"
            )
