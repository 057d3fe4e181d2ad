"""
The outbound side of a link: our connection to another realm, and the
delivery of the outbox queued for it.

An L{OutboundLink} keeps one connection to its realm with a
L{ClientService} (which reconnects with backoff). On each connection a
L{LinkClientProtocol} does the handshake (the client's half; the whole is
in L{chat.federation}) and then carries the link's requests, each answered
in order. Once it has authenticated, the link delivers its outbox through
it one message at a time, and takes a message out of the outbox only in
the transaction that records the other realm's acknowledgement.
"""

from __future__ import annotations

import json
from collections import deque
from enum import Enum
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from chat import replies
from chat.errors import StorageUnavailable
from chat.links import (
    NONCE_PATTERN,
    OutboundMessage,
    RealmLink,
    new_nonce,
    proof,
    proof_matches,
)
from chat.logs import make_logger

if TYPE_CHECKING:
    from chat.federation.service import Federation

Reply = dict[str, object]

#: Error codes after which a message is offered again later rather than
#: returned to its sender: the other realm could not take it just now.
TEMPORARY_ERRORS = frozenset({"rate_limited", "storage_unavailable"})


class LinkLost(Exception):
    """
    The link's connection was lost before the reply arrived.
    """


class HandshakeFailed(Exception):
    """
    The other realm did not complete the handshake, or could not prove it
    knows the secret.
    """


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
        #: Whether the other realm said it takes files in realm-msg (an
        #: older one does not, and would keep only the file's name).
        self.peer_files = False
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
        self.peer_files = reply.get("files") is True
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
        if message.attachment is not None and not self.peer_files:
            # An older realm would store the file's name as a text: refuse
            # the message here (it goes back to its sender).
            return succeed(
                replies.error(
                    "files are not sent to that realm", "realm_files_unsupported"
                )
            )
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


class DeliveryState(Enum):
    """
    Where an L{OutboundLink} is in delivering its outbox.
    """

    #: Not delivering: the outbox was empty when last read, or the link is
    #: down.
    IDLE = "idle"
    #: Reading the outbox and offering its messages, one at a time, on the
    #: connection that was up when it started.
    DELIVERING = "delivering"
    #: Delivering, and messages were queued (L{OutboundLink.wake}) since
    #: the outbox was last read: it is read again before going idle.
    WOKEN = "woken"
    #: Waiting before offering the next message: the other realm could not
    #: take it just now (a temporary error), or our store was unavailable.
    #: A timer ends the pause.
    PAUSED = "paused"


@attrs.define(eq=False)
class OutboundLink:
    """
    Delivers the outbox of one linked realm over a connection kept by a
    L{ClientService}.

    Its L{DeliveryState}::

        IDLE --pump, while an authenticated connection is up--> DELIVERING
        DELIVERING --wake--> WOKEN
        WOKEN --the outbox is read again--> DELIVERING
        DELIVERING --the outbox is empty--> IDLE
        DELIVERING, WOKEN --the connection is lost or replaced, a reply
            makes no sense, or an unexpected error--> IDLE
        DELIVERING, WOKEN --a temporary error, or the store is
            unavailable--> PAUSED
        PAUSED --the pause is over, a connection authenticates, or
            stop--> IDLE

    It pumps again when it goes IDLE from WOKEN or with another connection
    up, when a pause is over, and when a connection authenticates. Waking
    it while IDLE pumps; while PAUSED does nothing (the pause ends in a
    pump).

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
    state: DeliveryState = attrs.field(default=DeliveryState.IDLE, init=False)
    #: The timer that ends a pause.
    _retry: IDelayedCall | None = attrs.field(default=None, init=False)

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
        self._resume()
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
        self._resume()
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
        if self.state is DeliveryState.IDLE:
            self.pump()
        elif self.state is DeliveryState.DELIVERING:
            self.state = DeliveryState.WOKEN

    def pump(self) -> None:
        """
        Deliver queued messages while the link is up.
        """
        protocol = self._protocol
        if self.state is not DeliveryState.IDLE or protocol is None:
            return
        self.state = DeliveryState.DELIVERING
        d = ensureDeferred(self._deliver_queued(protocol))
        d.addErrback(
            lambda f: self.log.failure(
                "Unexpected error delivering to realm {realm}", f, realm=self.realm_id
            )
        )
        d.addBoth(self._delivery_ended, protocol)

    def _delivery_ended(self, _: object, protocol: LinkClientProtocol) -> None:
        if self.state is DeliveryState.PAUSED:
            return
        woken = self.state is DeliveryState.WOKEN
        self.state = DeliveryState.IDLE
        if self._protocol is not None and (self._protocol is not protocol or woken):
            self.pump()

    async def _deliver_queued(self, protocol: LinkClientProtocol) -> None:
        federation = self.federation
        store = federation.store
        while self._protocol is protocol:
            # WOKEN -> DELIVERING: this read sees what was queued so far;
            # a wake from here on may be for messages it does not see.
            self.state = DeliveryState.DELIVERING
            try:
                batch = await store.next_outbound(self.realm_id, 1)
            except StorageUnavailable as e:
                self._retry_later(federation.settings.retry_min, str(e))
                return
            if not batch:
                if self.state is DeliveryState.WOKEN:
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
        self.state = DeliveryState.PAUSED
        self._retry = self.federation.clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._resume()
        self.pump()

    def _resume(self) -> None:
        """
        End a pause, if paused.
        """
        if self.state is DeliveryState.PAUSED:
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            self._retry = None
            self.state = DeliveryState.IDLE
