"""
Federation: authenticated, durable links between realms (chat servers).

Each server is a realm with an id (C{--realm-id}). An administrator links
two realms by configuring on each the other's realm id, an endpoint where
it can be reached, and a secret both share (C{chat-admin realm add}). A
user of one realm then writes to C{user@other-realm}, and the message goes
the way mail goes between mail servers:

 1. C{send} (or C{sendprivaterealm}, C{sendgrouprealm}) stores the message
    in the outbox for that realm (L{Federation.send}); "Message Sent" means
    it is durably queued. A file (C{sendfilerealm} and its kin, or
    C{sendfile} to C{user@realm}) is queued the same way with the file,
    which goes in the C{realm-msg} line (base64), to a realm that said in
    the handshake that it takes files.
 2. For each link, an L{OutboundLink} keeps one connection to the other
    realm with a L{ClientService<twisted.application.internet.ClientService>},
    reconnecting with exponential backoff. On each connection
    L{LinkClientProtocol} first authenticates (below), then delivers the
    outbox in order, one message in flight at a time: a message leaves the
    outbox only in the transaction that records the other realm's
    acknowledgement, so nothing is lost when either side stops, and a
    message whose acknowledgement was lost is sent again.
 3. The other realm accepts the connection like any other (on its usual
    ports, in L{chat.lines.LineConnection}). A connection that says
    C{realm-hello} is handed to an L{InboundLinkHandler}; once it has
    authenticated as a realm (L{Federation.hello},
    L{Federation.authenticate}) it gets an L{InboundLink}, and nothing
    else: no user command works on it. Each C{realm-msg} is stored in the
    recipients' mailboxes as from C{<sender>@<realm>}, where the realm is
    the one the link authenticated as (never what the message says), and
    its id is recorded in the same transaction, so a message sent again is
    acknowledged again but not delivered twice. The acknowledgement goes
    out after the commit, and names the recipients that do not exist; the
    sending realm returns the message to its sender from
    C{postmaster@<realm>} for those (a bounce).

The handshake proves to each side that the other knows the secret,
without sending it (HMAC-SHA256, see L{chat.links.proof})::

    client: realm-hello <client realm> <server realm> <client nonce>
    server: {"status":"OK","message":"realm-challenge","realm":..,
             "nonce":<server nonce>}
    client: realm-auth HMAC(secret, "client", realms, nonces)
    server: {"status":"OK","message":"Realm Authenticated","realm":..,
             "proof":HMAC(secret, "server", realms, nonces),"max_line":..}

Both nonces are fresh per connection, so a recorded handshake cannot be
replayed, and the roles differ, so a proof cannot be reflected. Over plain
TCP the link is authenticated when it starts but not protected from an
active man in the middle afterwards: across untrusted networks use C{ssl:}
or C{tls:} endpoints.

The modules, one job each:

 - L{chat.links}: the values a link is made of (links, queued and received
   messages, deliveries), the proofs, and the validation of what another
   realm sends; the store uses them too.
 - L{chat.federation.service}: L{Federation}, the realm's links as a whole
   (which links run, what users do with other realms, the handshake's
   checks), and its L{FederationSettings}.
 - L{chat.federation.outbound}: our side of a link: L{OutboundLink}
   delivers one realm's outbox over the connection of its
   L{LinkClientProtocol}.
 - L{chat.federation.inbound}: the other side: L{InboundLinkHandler} reads
   the lines of a connection that became a link, and its L{InboundLink}
   stores what it delivers.
"""

from __future__ import annotations

from chat.federation.inbound import Challenge, InboundLink, InboundLinkHandler
from chat.federation.outbound import (
    HandshakeFailed,
    LinkClientProtocol,
    LinkLost,
    OutboundLink,
)
from chat.federation.service import Federation, FederationSettings, tcp_endpoint

__all__ = [
    "Challenge",
    "Federation",
    "FederationSettings",
    "HandshakeFailed",
    "InboundLink",
    "InboundLinkHandler",
    "LinkClientProtocol",
    "LinkLost",
    "OutboundLink",
    "tcp_endpoint",
]
