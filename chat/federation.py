"""
Federation: authenticated, durable links between realms (chat servers).

Each server is a realm with an id (C{--realm-id}). An administrator links
two realms by configuring on each the other's realm id, an endpoint where
it can be reached, and a secret both share (C{chat-admin realm add}). A
user of one realm then writes to C{user@other-realm}, and the message goes
the way mail goes between mail servers:

 1. C{send} (or C{sendprivaterealm}, C{sendgrouprealm}) stores the message
    in the outbox for that realm (L{Federation.send}); "Message Sent" means
    it is durably queued.
 2. For each link, an L{OutboundLink} keeps one connection to the other
    realm with a L{ClientService}, reconnecting with exponential backoff.
    On each connection L{LinkClientProtocol} first authenticates (below),
    then delivers the outbox in order, one message in flight at a time: a
    message leaves the outbox only in the transaction that records the
    other realm's acknowledgement, so nothing is lost when either side
    stops, and a message whose acknowledgement was lost is sent again.
 3. The other realm accepts the connection like any other (on its usual
    ports, in L{chat.lines.LineConnection}). Once the connection has
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
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from chat import commands, replies
from chat.errors import (
    BadRealmMessage,
    ChatError,
    ForgedSender,
    InvalidRealmId,
    NoSuchRealm,
    NoSuchUser,
    NotAdmin,
    RateLimited,
    RealmAuthFailed,
    RealmLinkOnly,
    RealmMismatch,
    RealmNotAuthenticated,
    StorageUnavailable,
    TooManyRealmRecipients,
)
from chat.interfaces import IDoor, IFanout, ILineHandler
from chat.limits import RateLimiter
from chat.links import (
    MAX_RECIPIENTS,
    NONCE_PATTERN,
    Delivery,
    InboundMessage,
    OutboundMessage,
    RealmLink,
    new_nonce,
    new_secret,
    proof,
    proof_matches,
    validate_realm_id,
)
from chat.logs import make_logger
from chat.model import USERNAME_PATTERN, Message
from chat.store.interfaces import IChatStore

if TYPE_CHECKING:
    from chat.cluster import LinkLeases

Reply = dict[str, object]

#: Error codes after which a message is offered again later rather than
#: returned to its sender: the other realm could not take it just now.
TEMPORARY_ERRORS = frozenset({"rate_limited", "storage_unavailable"})

#: Host names and addresses C{addrealm} accepts.
HOST_PATTERN = re.compile(r"[A-Za-z0-9:][A-Za-z0-9.:-]{0,252}")


@attrs.frozen
class FederationSettings:
    """
    The C{--realm-*} options.

    @ivar realm_id: this realm's id.
    @ivar max_queue: most messages queued per realm; more are refused.
    @ivar rate: messages per second a linked realm may send us, with
        bursts of C{burst}.
    @ivar retry_min: first reconnection delay; it doubles up to
        C{retry_max}.
    @ivar timeout: how long a handshake or a reply may take before the
        connection is dropped and made again; also how long a link may be
        idle before it is checked with a ping.
    @ivar seen_ttl: how long the ids of received messages are remembered.
    @ivar max_text: the longest text (UTF-8 bytes) accepted from a realm.
    @ivar sync_interval: how often the link table is read again, to pick up
        what C{chat-admin} changed.
    """

    realm_id: str
    max_queue: int = 10_000
    rate: float = 50.0
    burst: float = 200.0
    retry_min: float = 1.0
    retry_max: float = 60.0
    timeout: float = 30.0
    seen_ttl: float = 30 * 86400.0
    max_text: int = 16 * 1024
    sync_interval: float = 30.0

    @property
    def max_line(self) -> int:
        """
        The longest line an authenticated link may send: a message's JSON,
        where escaping may make the text up to six times longer.
        """
        return 6 * self.max_text + 16 * 1024


def tcp_endpoint(host: str, port: int) -> str:
    """
    The client endpoint string for C{addrealm <realm> <host> <port>}.

    @raise ValueError: for a malformed host or port.
    """
    if HOST_PATTERN.fullmatch(host) is None:
        raise ValueError(f"not a host name or address: {host!r}")
    if not 0 < port < 65536:
        raise ValueError(f"not a port: {port}")
    escaped = host.replace(":", "\\:")  # IPv6 colons, in endpoint syntax
    return f"tcp:host={escaped}:port={port}"


class LinkLost(Exception):
    """
    The link's connection was lost before the reply arrived.
    """


class HandshakeFailed(Exception):
    """
    The other realm did not complete the handshake, or could not prove it
    knows the secret.
    """


@attrs.frozen
class Challenge:
    """
    The state of an incoming handshake between C{realm-hello} and
    C{realm-auth}.
    """

    client_realm: str
    server_realm: str
    client_nonce: str
    server_nonce: str


@attrs.frozen
class InboundLink:
    """
    What an authenticated incoming link may do: deliver messages from
    users of C{realm_id}, and nothing else.
    """

    federation: Federation
    realm_id: str
    server_proof: str = attrs.field(repr=False)

    log = make_logger()

    def deliver(self, payload: object) -> Deferred[Reply]:
        """
        Store one message of the linked realm.

        @return: fires with the acknowledgement, after the commit; fails
            with L{RateLimited}, L{BadRealmMessage}, L{ForgedSender},
            L{NoSuchRealm} (the link was removed) or L{StorageUnavailable}.
        """
        federation = self.federation
        wait = federation.limiter.consume(self.realm_id)
        if wait:
            return fail(RateLimited(wait))
        try:
            message = InboundMessage.from_payload(
                payload, federation.settings.max_text, federation.clock.seconds()
            )
        except (BadRealmMessage, ForgedSender) as e:
            self.log.warn(
                "Refused a message from realm {realm}: {kind}: {why}",
                realm=self.realm_id,
                kind=type(e).__name__,
                why=str(e),
            )
            return fail()
        d = federation.store.receive_remote(
            self.realm_id, message, federation.clock.seconds()
        )

        def received(delivery: Delivery) -> Reply:
            for stored in delivery.messages:
                federation.fanout.publish(stored)
            self.log.debug(
                "Message {uid} from {sender}@{realm}: {count} delivered,"
                " unknown {unknown}, duplicate {duplicate}",
                uid=message.uid,
                sender=message.sender,
                realm=self.realm_id,
                count=len(delivery.messages),
                unknown=list(delivery.unknown),
                duplicate=delivery.duplicate,
            )
            return replies.ok(
                message="Delivered",
                id=message.uid,
                delivered=len(delivery.messages),
                unknown=list(delivery.unknown),
                duplicate=delivery.duplicate,
            )

        return d.addCallback(received)


#: What a connection that became a link may send.
LINK_VERBS = frozenset({"realm-hello", "realm-auth", "realm-msg", "ping", "quit"})


@implementer(ILineHandler)
class InboundLinkHandler:
    """
    The lines of a connection that said C{realm-hello}: it proves with
    C{realm-auth} that it knows the link's secret
    (L{Federation.authenticate}), and may then only send C{realm-msg},
    which its L{InboundLink} stores (and C{ping} and C{quit}). It never
    logs in as a user.

    The door (L{chat.lines.LineConnection}) keeps framing and limiting the
    connection; this takes the place of its user's dispatcher.
    """

    log = make_logger()

    def __init__(
        self, federation: Federation, door: IDoor, challenge: Challenge, peer: str
    ) -> None:
        self._federation = federation
        self._door = door
        self._challenge: Challenge | None = challenge
        self._peer = peer
        self.link: InboundLink | None = None

    @property
    def listening(self) -> bool:
        # An authenticated link has keepalives of its own.
        return self.link is not None

    def connection_lost(self) -> None:
        self._challenge = None

    def dispatch(self, line: bytes, now: float) -> bytes | None:
        from chat.dispatch import BYE, PONG, error_reply

        try:
            command = commands.parse(line)
        except commands.BadCommand as e:
            return e.reply_bytes()
        verb = command.verb
        try:
            if verb not in LINK_VERBS:
                raise RealmLinkOnly()
            if verb == "realm-hello":
                raise RealmLinkOnly("one realm-hello per connection")
            if verb == "ping":
                return PONG
            if verb == "quit":
                self._door.close()
                return BYE
            if verb == "realm-auth":
                assert isinstance(command, commands.RealmAuth)
                self._authenticate(command.proof)
                return None
            assert isinstance(command, commands.RealmMsg)
            if self.link is None:
                raise RealmNotAuthenticated("realm-msg before realm-auth")
            self.link.deliver(command.payload).addCallbacks(
                lambda reply: self._door.answer(replies.dumps(reply)),
                lambda f: self._door.answer(error_reply(f.value, verb, self._peer)),
            )
            return None
        except Exception as e:
            return error_reply(e, verb, self._peer)

    def _authenticate(self, given: str) -> None:
        from chat.dispatch import error_reply

        challenge, self._challenge = self._challenge, None
        if challenge is None:
            raise RealmNotAuthenticated("realm-auth without realm-hello")
        federation = self._federation

        def authenticated(link: InboundLink) -> None:
            self.link = link
            self._door.logged_in()
            max_line = federation.settings.max_line
            self._door.set_max_line(max_line)
            self.log.info(
                "Realm {realm} authenticated from {peer}",
                realm=link.realm_id,
                peer=self._peer,
            )
            self._door.answer(
                replies.dumps(
                    replies.ok(
                        message="Realm Authenticated",
                        realm=federation.realm_id,
                        proof=link.server_proof,
                        max_line=max_line,
                    )
                )
            )

        def refused(f: Failure) -> None:
            if not f.check(RealmAuthFailed):
                error = f.value
                assert isinstance(error, Exception)
                self._door.answer(error_reply(error, "realm-auth", self._peer))
                return
            self.log.warn(
                "Realm authentication failed for {realm} from {peer}: {why}",
                realm=challenge.client_realm,
                peer=self._peer,
                why=f.value,
            )
            self._door.close()
            self._door.answer(
                replies.dumps(
                    replies.error("realm authentication failed", "realm_auth_failed")
                )
            )

        federation.authenticate(challenge, given).addCallbacks(authenticated, refused)


class LinkClientProtocol(LineReceiver):
    """
    Our side of a connection to another realm: the handshake, then the
    requests of its L{OutboundLink}, each answered in order.

    Every request must be answered within the link's timeout, and an idle
    link is checked with a C{ping} as often; a link that stops answering is
    dropped (and made again by the L{ClientService}).
    """

    delimiter = replies.DELIMITER
    MAX_LENGTH = 1024 * 1024
    log = make_logger()

    def __init__(self, link: OutboundLink) -> None:
        self.link = link
        federation = link.federation
        self.clock = federation.clock
        self.timeout = federation.settings.timeout
        self.authenticated = False
        #: The longest line the other realm accepts on a link, as it said.
        self.peer_max_line: int | None = None
        self._nonce = new_nonce()
        self._pending: deque[Deferred[Reply]] = deque()
        self._deadline: IDelayedCall | None = None
        self._keepalive: IDelayedCall | None = None
        self._lost = False

    def connectionMade(self) -> None:
        d = ensureDeferred(self._handshake())
        d.addErrback(self._handshake_failed)

    async def _handshake(self) -> None:
        federation = self.link.federation
        me, peer = federation.realm_id, self.link.realm_id
        secret = self.link.link.secret
        reply = await self.request(f"realm-hello {me} {peer} {self._nonce}")
        if reply.get("status") != "OK":
            raise HandshakeFailed(f"realm-hello refused: {reply.get('message')}")
        if reply.get("realm") != peer:
            raise HandshakeFailed(f"the server is realm {reply.get('realm')!r}")
        server_nonce = reply.get("nonce")
        if not isinstance(server_nonce, str) or not NONCE_PATTERN.fullmatch(
            server_nonce
        ):
            raise HandshakeFailed("malformed challenge")
        mine = proof(secret, "client", me, peer, self._nonce, server_nonce)
        reply = await self.request(f"realm-auth {mine}")
        if reply.get("status") != "OK":
            raise HandshakeFailed(f"realm-auth refused: {reply.get('message')}")
        theirs = proof(secret, "server", me, peer, self._nonce, server_nonce)
        if not proof_matches(theirs, reply.get("proof")):
            raise HandshakeFailed("the server did not prove that it knows the secret")
        max_line = reply.get("max_line")
        if isinstance(max_line, int) and max_line > 0:
            self.peer_max_line = max_line
        self.authenticated = True
        self._arm_keepalive()
        self.link.authenticated(self)

    def _handshake_failed(self, f: Failure) -> None:
        if f.check(HandshakeFailed):
            why = str(f.value)
        elif f.check(LinkLost):
            why = "the connection closed during the handshake"
        else:
            self.log.failure("Unexpected error in a realm handshake", f)
            why = "internal error"
        self.link.handshake_failed(why)
        if not self._lost:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def request(self, line: str) -> Deferred[Reply]:
        """
        Send one request line.

        @return: fires with its reply (OK or ERROR); fails with L{LinkLost}.
        """
        if self._lost:
            return fail(LinkLost())
        d: Deferred[Reply] = Deferred()
        self._pending.append(d)
        self.transport.write(line.encode("utf-8") + b"\r\n")  # type: ignore[union-attr]
        if self._deadline is None:
            self._deadline = self.clock.callLater(self.timeout, self._timed_out)
        self._arm_keepalive()
        return d

    def deliver(self, message: OutboundMessage) -> Deferred[Reply]:
        """
        Offer one queued message.
        """
        payload = json.dumps(
            message.to_payload(), separators=(",", ":"), ensure_ascii=False
        )
        line = f"realm-msg {payload}"
        if (
            self.peer_max_line is not None
            and len(line.encode("utf-8")) + 1 > self.peer_max_line
        ):
            # The other realm would drop the connection, again and again:
            # refuse the message here instead.
            return succeed(replies.error("message too long", "too_long"))
        return self.request(line)

    def lineReceived(self, line: bytes) -> None:
        try:
            frame = json.loads(line)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            self.log.warn(
                "Realm {realm} sent a malformed reply; reconnecting",
                realm=self.link.realm_id,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if "event" in frame and "status" not in frame:
            return
        if not self._pending:
            return
        d = self._pending.popleft()
        self._cancel(self._deadline)
        self._deadline = None
        if self._pending:
            self._deadline = self.clock.callLater(self.timeout, self._timed_out)
        self._arm_keepalive()
        d.callback(frame)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _timed_out(self) -> None:
        self._deadline = None
        self.log.warn(
            "Realm {realm} did not answer within {timeout}s; reconnecting",
            realm=self.link.realm_id,
            timeout=self.timeout,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _arm_keepalive(self) -> None:
        self._cancel(self._keepalive)
        self._keepalive = None
        if self.authenticated and not self._lost:
            self._keepalive = self.clock.callLater(self.timeout, self._ping)

    def _ping(self) -> None:
        self._keepalive = None
        if self._pending:
            self._arm_keepalive()
            return
        self.request("ping").addErrback(lambda f: None)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel(self._deadline)
        self._cancel(self._keepalive)
        self._deadline = self._keepalive = None
        pending, self._pending = self._pending, deque()
        for d in pending:
            d.errback(LinkLost())
        self.link.disconnected(self)


class LinkClientFactory(Factory):
    noisy = False  # OutboundLink logs what matters about each attempt.

    def __init__(self, link: OutboundLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> LinkClientProtocol:
        return LinkClientProtocol(self.link)


@attrs.define(eq=False)
class OutboundLink:
    """
    Delivers the outbox of one linked realm over a connection kept by a
    L{ClientService}.

    @ivar handshake_failures: consecutive connections whose handshake
        failed; they lengthen the backoff like refused connections do (the
        L{ClientService} only counts the latter).
    @ivar delivered: messages acknowledged since the start (statistics).
    """

    federation: Federation
    link: RealmLink
    handshake_failures: int = 0
    delivered: int = 0
    service: ClientService | None = None
    _protocol: LinkClientProtocol | None = None
    _pumping: bool = False
    _dirty: bool = False
    _retry: IDelayedCall | None = None

    log = make_logger()

    @property
    def realm_id(self) -> str:
        return self.link.realm_id

    @property
    def connected(self) -> bool:
        """
        Whether an authenticated connection is up.
        """
        return self._protocol is not None

    def start(self) -> None:
        endpoint = self.federation.connect(self.link.endpoint)
        self.service = ClientService(
            endpoint,
            LinkClientFactory(self),
            retryPolicy=self.retry_delay,
            clock=self.federation.clock,
        )
        self.service.startService()

    def stop(self) -> Deferred[None]:
        self._cancel_retry()
        service, self.service = self.service, None
        if service is None:
            return succeed(None)
        return service.stopService()

    def retry_delay(self, attempt: int) -> float:
        """
        Seconds to wait before connecting again: C{retry_min} doubling up
        to C{retry_max}, plus up to a quarter more at random (so that many
        realms do not all come back at once).
        """
        settings = self.federation.settings
        failures = max(attempt, self.handshake_failures, 1)
        delay = min(settings.retry_max, settings.retry_min * 2 ** min(failures - 1, 60))
        return delay * (1 + 0.25 * self.federation.jitter())

    # Told by the connection.

    def authenticated(self, protocol: LinkClientProtocol) -> None:
        self.handshake_failures = 0
        self._protocol = protocol
        self.log.info("Link to realm {realm} is up", realm=self.realm_id)
        self._cancel_retry()
        self.pump()

    def handshake_failed(self, why: str) -> None:
        self.handshake_failures += 1
        self.log.warn(
            "Link to realm {realm}: handshake failed ({count} in a row): {why}",
            realm=self.realm_id,
            count=self.handshake_failures,
            why=why,
        )

    def disconnected(self, protocol: LinkClientProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            self.log.info("Link to realm {realm} is down", realm=self.realm_id)

    # Delivering the outbox.

    def wake(self) -> None:
        """
        New messages were queued.
        """
        if self._pumping:
            self._dirty = True
        else:
            self.pump()

    def pump(self) -> None:
        """
        Deliver queued messages while the link is up.
        """
        protocol = self._protocol
        if self._pumping or protocol is None or self._retry is not None:
            return
        self._pumping = True
        d = ensureDeferred(self._deliver_queued(protocol))
        d.addErrback(
            lambda f: self.log.failure(
                "Unexpected error delivering to realm {realm}", f, realm=self.realm_id
            )
        )
        d.addBoth(self._pumped, protocol)

    def _pumped(self, _: object, protocol: LinkClientProtocol) -> None:
        self._pumping = False
        if self._protocol is not None and (
            self._protocol is not protocol or self._dirty
        ):
            self.pump()

    async def _deliver_queued(self, protocol: LinkClientProtocol) -> None:
        federation = self.federation
        store = federation.store
        while self._protocol is protocol:
            self._dirty = False
            try:
                batch = await store.next_outbound(self.realm_id, 1)
            except StorageUnavailable as e:
                self._retry_later(federation.settings.retry_min, str(e))
                return
            if not batch:
                if self._dirty:
                    continue
                return
            message = batch[0]
            if self._protocol is not protocol:
                return
            try:
                reply = await protocol.deliver(message)
            except LinkLost:
                # Offered again on the next connection; the other realm
                # ignores it if it had stored it already.
                return
            outcome = self._outcome(message, reply)
            if outcome is None:
                protocol.transport.abortConnection()  # type: ignore[union-attr]
                return
            if isinstance(outcome, float):
                self._retry_later(outcome, str(reply.get("message")))
                return
            failed, reason = outcome
            try:
                bounce = await store.finish_outbound(
                    message.id, failed, reason, federation.clock.seconds()
                )
            except StorageUnavailable as e:
                self._retry_later(federation.settings.retry_min, str(e))
                return
            self.delivered += 1
            if bounce is not None:
                federation.fanout.publish(bounce)
            self.log.debug(
                "Message {uid} delivered to realm {realm} (unknown: {failed})",
                uid=message.uid,
                realm=self.realm_id,
                failed=failed,
            )

    def _outcome(
        self, message: OutboundMessage, reply: Reply
    ) -> tuple[list[str], str] | float | None:
        """
        What a reply to C{realm-msg} means: the recipients to bounce and
        why (none when delivered), the seconds to wait before offering the
        message again, or None for a reply that makes no sense.
        """
        if reply.get("status") == "OK":
            if reply.get("id") != message.uid:
                self.log.warn(
                    "Realm {realm} acknowledged {got!r} instead of {uid}; reconnecting",
                    realm=self.realm_id,
                    got=reply.get("id"),
                    uid=message.uid,
                )
                return None
            unknown = reply.get("unknown")
            named = unknown if isinstance(unknown, list) else []
            return [r for r in message.recipients if r in named], "no such user"
        code = reply.get("code")
        if code in TEMPORARY_ERRORS:
            wait = reply.get("retry_after_ms")
            if isinstance(wait, int) and 0 < wait <= 3_600_000:
                return wait / 1000.0
            return float(self.federation.settings.retry_min)
        self.log.warn(
            "Realm {realm} refused message {uid}: {why} ({code}); returned to sender",
            realm=self.realm_id,
            uid=message.uid,
            why=reply.get("message"),
            code=code,
        )
        return list(
            message.recipients
        ), f"refused by {self.realm_id} ({reply.get('message')})"

    def _retry_later(self, delay: float, why: str) -> None:
        self.log.info(
            "Delivery to realm {realm} paused for {delay}s: {why}",
            realm=self.realm_id,
            delay=round(delay, 3),
            why=why,
        )
        self._cancel_retry()
        self._retry = self.federation.clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.pump()

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None


def _new_uid() -> str:
    return str(uuid.uuid4())


@attrs.define(eq=False)
class Federation:
    """
    This realm's links: the outgoing connections, the handshake of incoming
    ones, and what users do with other realms.

    @ivar connect: makes the client endpoint of a link from its endpoint
        string (C{clientFromString} on the reactor, in a server).
    @ivar jitter: a random number in [0, 1), for the backoff.
    @ivar leases: with several nodes on one database (L{chat.cluster}), says
        which links this node delivers: it runs only those whose lease it
        holds (and calls L{lease_gained} and L{lease_lost}). None runs
        every link (one node).
    """

    settings: FederationSettings
    store: IChatStore
    clock: IReactorTime
    fanout: IFanout
    connect: Callable[[str], IStreamClientEndpoint]
    jitter: Callable[[], float] = random.random
    new_uid: Callable[[], str] = _new_uid
    links: dict[str, OutboundLink] = attrs.field(factory=dict)
    leases: LinkLeases | None = None
    limiter: RateLimiter = attrs.field(init=False)
    #: The links this realm has, by realm id, as last read.
    _wanted: dict[str, RealmLink] = attrs.field(factory=dict, init=False)
    _loops: list[LoopingCall] = attrs.field(factory=list, init=False)
    _running: bool = attrs.field(default=False, init=False)

    log = make_logger()

    def __attrs_post_init__(self) -> None:
        self.limiter = RateLimiter(self.clock, self.settings.rate, self.settings.burst)

    @property
    def realm_id(self) -> str:
        return self.settings.realm_id

    # Lifecycle.

    def start(self) -> None:
        """
        Connect every configured link, re-read the links every
        C{sync_interval}, and forget old message ids every hour.
        """
        self._running = True
        for interval, job in (
            (self.settings.sync_interval, self.sync),
            (3600.0, self.forget_old_ids),
        ):
            loop = LoopingCall(job)
            loop.clock = self.clock
            loop.start(interval, now=True).addErrback(
                lambda f: self.log.failure("A federation task stopped", f)
            )
            self._loops.append(loop)

    def stop(self) -> Deferred[Any]:
        """
        Stop every link.

        @return: fires once their connections are closed.
        """
        self._running = False
        self._wanted = {}
        loops, self._loops = self._loops, []
        for loop in loops:
            if loop.running:
                loop.stop()
        links, self.links = list(self.links.values()), {}
        return DeferredList([link.stop() for link in links])

    def sync(self) -> Deferred[None]:
        """
        Start links added since, stop links removed since, and restart
        links whose endpoint or secret changed.
        """

        def failed(f: Failure) -> None:
            self.log.warn("Could not read the realm links: {why}", why=f.value)

        return self.store.list_realm_links().addCallbacks(self._reconcile, failed)

    def _reconcile(self, links: list[RealmLink]) -> None:
        if not self._running:
            return
        wanted = {
            link.realm_id: link for link in links if link.realm_id != self.realm_id
        }
        self._wanted = wanted
        for realm_id, outbound in list(self.links.items()):
            if wanted.get(realm_id) != outbound.link:
                del self.links[realm_id]
                outbound.stop()
                self.log.info("Link to realm {realm} stopped", realm=realm_id)
        if self.leases is not None:
            self.leases.want(wanted)
        for realm_id, link in wanted.items():
            if realm_id not in self.links and self._may_deliver(realm_id):
                self._start_link(link)

    def _may_deliver(self, realm_id: str) -> bool:
        return self.leases is None or self.leases.holds(realm_id)

    # Leases (several nodes).

    def lease_gained(self, realm_id: str) -> None:
        """
        This node now delivers to C{realm_id}.
        """
        link = self._wanted.get(realm_id)
        if self._running and link is not None and realm_id not in self.links:
            self._start_link(link)

    def lease_lost(self, realm_id: str) -> None:
        """
        Another node may deliver to C{realm_id} now: stop at once.
        """
        outbound = self.links.pop(realm_id, None)
        if outbound is not None:
            outbound.stop()
            self.log.info("Link to realm {realm} stopped", realm=realm_id)

    def wake(self, realm_id: str) -> None:
        """
        Messages may have been queued for C{realm_id} (by another node).
        """
        outbound = self.links.get(realm_id)
        if outbound is not None:
            outbound.wake()

    def _start_link(self, link: RealmLink) -> None:
        outbound = OutboundLink(self, link)
        try:
            outbound.start()
        except Exception as e:
            self.log.error(
                "Cannot link to realm {realm}: bad endpoint {endpoint!r}: {why}",
                realm=link.realm_id,
                endpoint=link.endpoint,
                why=e,
            )
            return
        self.links[link.realm_id] = outbound
        self.log.info(
            "Linking to realm {realm} at {endpoint}",
            realm=link.realm_id,
            endpoint=link.endpoint,
        )

    def forget_old_ids(self) -> Deferred[int]:
        d = self.store.forget_remote_ids(self.clock.seconds() - self.settings.seen_ttl)

        def failed(f: Failure) -> int:
            self.log.warn("Could not forget old message ids: {why}", why=f.value)
            return 0

        return d.addErrback(failed)

    # What users do.

    def send(
        self, sender: str, realm_id: str, recipients: Sequence[str], text: str
    ) -> Deferred[list[OutboundMessage]]:
        """
        Queue a message from a local user for users of other realms: each
        recipient is a username of C{realm_id}, or a C{user@realm} address.

        @return: fires with one queued message per realm, once committed;
            fails with L{NoSuchRealm}, L{NoSuchUser} (a malformed username),
            L{TooManyRealmRecipients}, L{chat.errors.RealmQueueFull} or
            L{StorageUnavailable}.
        """
        try:
            batches = self._batches(realm_id, recipients)
        except ChatError:
            return fail()
        d = self.store.queue_outbound(
            sender, text, self.clock.seconds(), batches, self.settings.max_queue
        )
        return d.addCallback(self._queued)

    def _batches(
        self, realm_id: str, recipients: Sequence[str]
    ) -> list[tuple[str, tuple[str, ...], str]]:
        by_realm: dict[str, dict[str, None]] = {}
        for recipient in recipients:
            username, at, realm = recipient.partition("@")
            realm = realm if at else realm_id
            if realm == self.realm_id:
                raise NoSuchRealm(realm)
            try:
                validate_realm_id(realm)
            except InvalidRealmId:
                raise NoSuchRealm(realm) from None
            if USERNAME_PATTERN.fullmatch(username) is None:
                raise NoSuchUser(recipient)
            by_realm.setdefault(realm, {})[username] = None
        if not by_realm:
            raise NoSuchUser("")
        if sum(len(users) for users in by_realm.values()) > MAX_RECIPIENTS:
            raise TooManyRealmRecipients(MAX_RECIPIENTS)
        return [
            (realm, tuple(users), self.new_uid()) for realm, users in by_realm.items()
        ]

    def _queued(self, queued: list[OutboundMessage]) -> list[OutboundMessage]:
        for message in queued:
            self.log.debug(
                "Message {uid} from {sender} queued for {count} users of realm {realm}",
                uid=message.uid,
                sender=message.sender,
                count=len(message.recipients),
                realm=message.realm_id,
            )
            link = self.links.get(message.realm_id)
            if link is not None:
                link.wake()
            elif self.leases is not None and message.realm_id in self._wanted:
                # Another node delivers to that realm: wake it.
                self.leases.queued(message.realm_id)
            elif self._running:
                # Added by chat-admin since the last sync.
                self.sync()
        return queued

    def realm_inbox(self, username: str, realm_id: str) -> Deferred[list[Message]]:
        return self.store.drain_realm_inbox(username, realm_id, self.clock.seconds())

    def add_link(
        self, admin: str, realm_id: str, host: str, port: int
    ) -> Deferred[str]:
        """
        Link to a realm at C{host}:C{port} with a new random secret, if
        C{admin} is an administrator.

        @return: fires with the secret; fails with L{NotAdmin},
            L{InvalidRealmId}, L{chat.errors.RealmExists} or
            L{NoSuchUser} (C{admin} is gone).
        """

        async def add() -> str:
            # Administrators first: nobody else learns anything from this.
            if not await self.store.is_admin(admin):
                raise NotAdmin()
            validate_realm_id(realm_id)
            if realm_id == self.realm_id:
                raise InvalidRealmId("that is the id of this realm")
            try:
                endpoint = tcp_endpoint(host, port)
            except ValueError as e:
                raise InvalidRealmId(str(e)) from None
            secret = new_secret()
            link = RealmLink(realm_id, endpoint, secret, self.clock.seconds())
            await self.store.add_realm_link(link)
            self.log.info(
                "{admin} linked realm {realm} at {endpoint}",
                admin=admin,
                realm=realm_id,
                endpoint=endpoint,
            )
            if self._running and realm_id not in self.links:
                self._wanted[realm_id] = link
                if self.leases is not None:
                    self.leases.want(self._wanted)
                if self._may_deliver(realm_id):
                    self._start_link(link)
            return secret

        return ensureDeferred(add())

    # What incoming links do.

    def hello(
        self, client_realm: str, server_realm: str, client_nonce: str
    ) -> Challenge:
        """
        Answer C{realm-hello} with a challenge (no secret is needed yet, so
        this tells nobody which realms are linked).

        @raise RealmMismatch: if the hello is meant for another realm.
        """
        if server_realm != self.realm_id:
            raise RealmMismatch(server_realm)
        return Challenge(client_realm, server_realm, client_nonce, new_nonce())

    def authenticate(self, challenge: Challenge, given: str) -> Deferred[InboundLink]:
        """
        Check C{realm-auth}'s proof.

        @return: fires with the link's L{InboundLink}; fails with
            L{RealmAuthFailed} for an unknown realm or a wrong proof alike.
        """
        d = self.store.get_realm_link(challenge.client_realm)
        nonces = (challenge.client_nonce, challenge.server_nonce)
        realms = (challenge.client_realm, challenge.server_realm)

        def check(link: RealmLink) -> InboundLink:
            expected = proof(link.secret, "client", *realms, *nonces)
            if not proof_matches(expected, given):
                raise RealmAuthFailed("wrong proof")
            return InboundLink(
                self, link.realm_id, proof(link.secret, "server", *realms, *nonces)
            )

        def unknown(f: Failure) -> InboundLink:
            f.trap(NoSuchRealm)
            raise RealmAuthFailed("no link to that realm")

        return d.addCallbacks(check, unknown)
