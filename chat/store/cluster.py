"""
The cluster's tables and notifications in PostgreSQL: what the nodes of one
realm (L{chat.cluster}) write for each other, and what they tell each other
through C{NOTIFY}.

Tables
    C{cluster_nodes} holds one row per node with its heartbeat;
    C{cluster_presence} one row per user connected to a node (deleted with
    its node, C{ON DELETE CASCADE}). Heartbeats are compared with the
    database's clock, so that the nodes' clocks need not agree.

Link leases
    A node delivers a realm link's outbox only while it holds the link's
    lease: the session-level advisory lock C{(LEASE_CLASS,
    hashtext(realm_id))} on its cluster connection, released by PostgreSQL
    when that connection ends.

Channels and their payloads (JSON objects, each under L{MAX_PAYLOAD}
bytes; a long one is split in several)
    - L{MESSAGES_CHANNEL}: messages committed, sent by the store in the
      transaction of each batch that stored some (L{notification_payloads}):
      C{{"node", "at": <commit time>, "messages": [[id, recipient], ...]}}.
    - L{SESSIONS_CHANNEL}: a session ended (C{{"node", "session":
      <token hash>}}), or all of a user's did (C{{"node", "user":
      <username>}}).
    - L{PRESENCE_CHANNEL}: a node's users came and went
      (L{presence_payloads}), or nodes are gone (L{expired_payloads}).
    - L{OUTBOX_CHANNEL}: a message was queued for a realm link: C{{"node",
      "realm"}}, to wake the node that holds its lease.

The functions here run on a psycopg connection in autocommit mode (those
that write several statements open their own transaction); the cluster's
connections (L{chat.store.cluster_connections}) run them on their threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs
import psycopg

from chat.model import Message

#: The channel of committed messages.
MESSAGES_CHANNEL = "chat_messages"
#: The channel of sessions ended (logout), and of users whose sessions all
#: ended (password changed, user deleted).
SESSIONS_CHANNEL = "chat_sessions"
#: The channel of the nodes' users coming and going, and of nodes gone.
PRESENCE_CHANNEL = "chat_presence"
#: The channel of messages queued for another realm.
OUTBOX_CHANNEL = "chat_outbox"
#: Every channel a node listens to.
CHANNELS = (MESSAGES_CHANNEL, PRESENCE_CHANNEL, OUTBOX_CHANNEL, SESSIONS_CHANNEL)

#: PostgreSQL refuses payloads of 8000 bytes or more.
MAX_PAYLOAD = 7000

#: The first key of the advisory locks that are link leases ("link").
LEASE_CLASS = 0x6C696E6B

#: The database's clock, in seconds: heartbeats are compared with it.
_NOW = "extract(epoch FROM clock_timestamp())"


# Payloads.


def compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def notify_chunks(items: Iterable[Any], overhead: int) -> Iterator[list[Any]]:
    """
    C{items} in lists whose JSON, with C{overhead} bytes more, fits in
    L{MAX_PAYLOAD} bytes (at least one item per list).
    """
    chunk: list[Any] = []
    size = overhead
    for item in items:
        item_size = len(compact_json(item).encode()) + 1
        if chunk and size + item_size > MAX_PAYLOAD:
            yield chunk
            chunk, size = [], overhead
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


def notification_payloads(node_id: str, messages: Sequence[Message]) -> list[str]:
    """
    The C{chat_messages} payloads announcing C{messages}: JSON objects
    C{{"node": ..., "at": <commit time>, "messages": [[id, recipient],
    ...]}}, each under PostgreSQL's size limit.
    """
    head = {"node": node_id, "at": time.time()}
    entries = [[message.id, message.recipient] for message in messages]
    if not entries:
        return []
    # Usually all of them fit in one: then one JSON encoding, not one
    # per message to measure it.
    whole = compact_json({**head, "messages": entries})
    if len(whole.encode()) <= MAX_PAYLOAD:
        return [whole]
    overhead = len(compact_json({**head, "messages": []}))
    return [
        compact_json({**head, "messages": chunk})
        for chunk in notify_chunks(entries, overhead)
    ]


def presence_payloads(
    node_id: str, came: dict[str, str], went: Iterable[str], reset: bool
) -> list[str]:
    """
    The C{chat_presence} payloads for a change of this node's users:
    C{{"node", "reset", "online": [[user, full name], ...], "offline":
    [user, ...]}}, split to fit. C{reset} (in the first only) means "forget
    every user you had for this node first".
    """
    overhead = len(
        compact_json({"node": node_id, "reset": False, "online": [], "offline": []})
    )
    payloads: list[str] = []
    for chunk in notify_chunks(sorted([u, n] for u, n in came.items()), overhead):
        payloads.append(
            compact_json(
                {"node": node_id, "reset": reset, "online": chunk, "offline": []}
            )
        )
        reset = False
    for chunk in notify_chunks(sorted(went), overhead):
        payloads.append(
            compact_json(
                {"node": node_id, "reset": reset, "online": [], "offline": chunk}
            )
        )
        reset = False
    if reset:
        payloads.append(
            compact_json({"node": node_id, "reset": True, "online": [], "offline": []})
        )
    return payloads


def expired_payloads(node_id: str, expired: Iterable[str]) -> list[str]:
    """
    The C{chat_presence} payloads saying that nodes are gone:
    C{{"node", "expired": [node id, ...]}}.
    """
    overhead = len(compact_json({"node": node_id, "expired": []}))
    return [
        compact_json({"node": node_id, "expired": chunk})
        for chunk in notify_chunks(sorted(expired), overhead)
    ]


def notify(connection: psycopg.Connection[Any], channel: str, payload: str) -> None:
    """
    Send C{payload} on C{channel} (in the connection's transaction, if one
    is open: it is delivered at its commit).
    """
    connection.execute("SELECT pg_notify(%s, %s)", (channel, payload))


# Nodes and their users.


@attrs.frozen
class SyncResult:
    """
    What one write of this node's state found: whether the node's row had
    to be made again, and the dead nodes it removed.
    """

    rejoined: bool
    expired: list[str]


def sync_txn(
    connection: psycopg.Connection[Any],
    node_id: str,
    desired: dict[str, str],
    written: dict[str, str] | None,
    expire_after: float | None,
) -> SyncResult:
    """
    In one transaction: heartbeat this node's row (making it if missing),
    make its presence rows those of C{desired} (knowing that they are
    C{written}, or rewriting them all if None) and notify the change, then
    remove the nodes whose heartbeat is older than C{expire_after} seconds
    (if given) and notify that.
    """
    with connection.transaction():
        updated = connection.execute(
            f"UPDATE cluster_nodes SET heartbeat_at = {_NOW} WHERE node_id = %s",
            (node_id,),
        )
        rejoined = updated.rowcount == 0
        if rejoined:
            # New, or removed by the others as dead (with its presence).
            connection.execute(
                "INSERT INTO cluster_nodes (node_id, started_at, heartbeat_at)"
                f" VALUES (%s, {_NOW}, {_NOW}) ON CONFLICT (node_id)"
                " DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
                (node_id,),
            )
            written = None
        if written is None:
            connection.execute(
                "DELETE FROM cluster_presence WHERE node_id = %s", (node_id,)
            )
            came, went = dict(desired), []
        else:
            came = {u: n for u, n in desired.items() if written.get(u) != n}
            went = sorted(u for u in written if u not in desired)
        with connection.cursor() as cursor:
            if came:
                cursor.executemany(
                    "INSERT INTO cluster_presence (node_id, username, full_name)"
                    " VALUES (%s, %s, %s) ON CONFLICT (node_id, username)"
                    " DO UPDATE SET full_name = EXCLUDED.full_name",
                    [(node_id, u, n) for u, n in sorted(came.items())],
                )
            if went:
                cursor.execute(
                    "DELETE FROM cluster_presence"
                    " WHERE node_id = %s AND username = ANY(%s)",
                    (node_id, went),
                )
        for payload in presence_payloads(node_id, came, went, written is None):
            notify(connection, PRESENCE_CHANNEL, payload)
        expired: list[str] = []
        if expire_after is not None:
            expired = [
                row[0]
                for row in connection.execute(
                    "DELETE FROM cluster_nodes WHERE node_id <> %s"
                    f" AND heartbeat_at < {_NOW} - %s RETURNING node_id",
                    (node_id, expire_after),
                )
            ]
            for payload in expired_payloads(node_id, expired):
                notify(connection, PRESENCE_CHANNEL, payload)
    return SyncResult(rejoined, sorted(expired))


def leave_txn(connection: psycopg.Connection[Any], node_id: str) -> None:
    """
    Remove this node (and its users) and tell the others.
    """
    with connection.transaction():
        connection.execute("DELETE FROM cluster_nodes WHERE node_id = %s", (node_id,))
        for payload in expired_payloads(node_id, [node_id]):
            notify(connection, PRESENCE_CHANNEL, payload)


def presence_snapshot(connection: psycopg.Connection[Any]) -> dict[str, dict[str, str]]:
    """
    Every node's users: node id -> username -> full name.
    """
    snapshot: dict[str, dict[str, str]] = {}
    for node, username, full_name in connection.execute(
        "SELECT node_id, username, full_name FROM cluster_presence"
    ):
        snapshot.setdefault(node, {})[username] = full_name
    return snapshot


# Link leases.


def lease_txn(
    connection: psycopg.Connection[Any], wanted: Sequence[str], released: Sequence[str]
) -> list[str]:
    """
    Release the leases of C{released}, try to take those of C{wanted}.

    @return: the realms whose lease this session now holds, of C{wanted}.
    """
    for realm_id in released:
        connection.execute(
            "SELECT pg_advisory_unlock(%s, hashtext(%s))", (LEASE_CLASS, realm_id)
        )
    taken: list[str] = []
    for realm_id in wanted:
        row = connection.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LEASE_CLASS, realm_id)
        ).fetchone()
        if row is not None and row[0]:
            taken.append(realm_id)
    if not wanted and not released:
        connection.execute("SELECT 1")  # is the session (and its locks) alive?
    return taken


def notify_outbox_txn(
    connection: psycopg.Connection[Any], node_id: str, realm_id: str
) -> None:
    """
    Tell the node holding C{realm_id}'s lease that a message was queued.
    """
    payload = json.dumps({"node": node_id, "realm": realm_id})
    notify(connection, OUTBOX_CHANNEL, payload)
