"""
A cluster: several C{twistd chat} nodes on one PostgreSQL database serve
one realm. Each node keeps its own connections; the database carries what
the nodes must know of each other. The SQL, the notification payloads and
the connections they go through are the store's (L{chat.store.cluster},
L{chat.store.cluster_connections}, reached through
L{chat.interfaces.IClusterStore}); this package decides what to write and
what to do with what it hears.

The modules, one job each:

    - L{chat.cluster.node}: L{Cluster}, this node's part: builds the others,
      starts and stops them, and keeps the LISTEN connection up;
    - L{chat.cluster.router}: hands each notification to the part it
      concerns;
    - L{chat.cluster.fanout}: pushes the messages other nodes committed;
    - L{chat.cluster.presence}: who is online on any node;
    - L{chat.cluster.membership}: this node's heartbeat and users, written
      to the database;
    - L{chat.cluster.leases}: which realm links this node delivers.

Live push across nodes
    The store sends C{pg_notify('chat_messages', ...)} in the transaction
    of each batch that stored messages, with the ids and recipients only
    (L{chat.interfaces.IClusterStore}). Every node LISTENs on one dedicated
    connection; a node that hears of messages committed by another node
    for users subscribed to it reads those rows (C{messages_by_id}) and
    publishes them to its local subscriptions (L{PostgresFanout}). A
    notification is delivered only after the commit, so the rows are
    there to read.

Nothing missed
    When the LISTEN connection is lost, notifications sent meanwhile are
    lost with it. Once it is made again (with backoff), every local
    subscription re-reads its undelivered messages from the store
    (C{resync}): what was committed before the new LISTEN is read, what is
    committed after it is notified.

Presence
    Each node heartbeats its row in C{cluster_nodes} and keeps one row per
    locally connected user in C{cluster_presence}, sending a
    C{chat_presence} notification in the same transaction as each change
    (L{Membership}). Other nodes keep a map of remote users, loaded on the
    LISTEN connection when it is (re)made and kept up to date by those
    notifications; they tell their watchers only when a user's state for
    the whole cluster changes (L{ClusterPresence}). Each heartbeat also
    deletes the nodes whose heartbeat is older than three intervals (their
    presence rows go with them) and notifies the others: the users of a
    node that crashed go offline everywhere within about four heartbeats.
    Only a node whose own heartbeats went through for those three
    intervals removes others, so that after an outage of the database the
    first node back does not remove the rest. A node that stops cleanly
    deletes its own row.

Federation
    Each node's L{chat.federation.Federation} accepts links from other
    realms and queues outgoing messages, but only the node holding a
    link's lease delivers its outbox (L{LinkLeases}): an advisory lock on
    the node's cluster connection, tried every heartbeat. PostgreSQL
    releases it when that connection ends, so another node takes the link
    over when its holder dies. A node that queues a message for a link it
    does not hold wakes the holder with a C{chat_outbox} notification.

Sessions
    Each node caches the sessions it resolved (L{chat.sessions}). The store
    notifies C{chat_sessions} when a session ends (logout) or all of a
    user's do (new password, user deleted); the other nodes drop them from
    their caches at once. One missed while the LISTEN connection was down
    still ends within the session cache's touch interval.

The nodes' writes (heartbeats, presence, leases) go through a connection of
their own on a thread of their own, and the LISTEN connection is watched by
another thread: never the reactor's.
"""

from chat.cluster.fanout import PostgresFanout
from chat.cluster.leases import LinkLeases
from chat.cluster.membership import DEFAULT_HEARTBEAT, EXPIRE_BEATS, Membership
from chat.cluster.node import Cluster, new_node_id
from chat.cluster.presence import ClusterPresence
from chat.cluster.router import Router

__all__ = [
    "DEFAULT_HEARTBEAT",
    "EXPIRE_BEATS",
    "Cluster",
    "ClusterPresence",
    "LinkLeases",
    "Membership",
    "PostgresFanout",
    "Router",
    "new_node_id",
]
