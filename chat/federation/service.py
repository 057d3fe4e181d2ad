"""
The federation service: this realm's links as a whole.

L{Federation} reads the link table (again every C{sync_interval}, to pick
up what C{chat-admin} changed) and runs an L{OutboundLink} per link (with
several nodes, per link whose lease this node holds); it queues what users
send to other realms and wakes the link that delivers it; and it answers
the handshake of incoming links (L{Federation.hello},
L{Federation.authenticate}), giving each an L{InboundLink}. Its settings
are the C{--realm-*} options (L{FederationSettings}). How a message
travels is told in L{chat.federation}.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from chat.errors import (
    ChatError,
    InvalidRealmId,
    NoSuchRealm,
    NoSuchUser,
    NotAdmin,
    RealmAuthFailed,
    RealmMismatch,
    TooManyRealmRecipients,
)
from chat.federation.inbound import Challenge, InboundLink
from chat.federation.outbound import OutboundLink
from chat.interfaces import IFanout
from chat.limits import RateLimiter
from chat.links import (
    MAX_RECIPIENTS,
    OutboundMessage,
    RealmLink,
    new_nonce,
    new_secret,
    proof,
    proof_matches,
    validate_realm_id,
)
from chat.logs import make_logger
from chat.model import (
    DEFAULT_MAX_FILE_SIZE,
    USERNAME_PATTERN,
    Attachment,
    Message,
    base64_length,
)
from chat.store.interfaces import IChatStore

if TYPE_CHECKING:
    from chat.cluster import LinkLeases


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
    @ivar max_file_size: the largest file (bytes) accepted from a realm, as
        C{--max-file-size} is for a local C{sendfile}.
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
    max_file_size: int = DEFAULT_MAX_FILE_SIZE

    @property
    def max_line(self) -> int:
        """
        The longest line an authenticated link may send: a message's JSON,
        where escaping may make the text up to six times longer, with the
        base64 of a file of C{max_file_size} bytes, and room for the rest.
        """
        return 6 * self.max_text + base64_length(self.max_file_size) + 16 * 1024


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
        self,
        sender: str,
        realm_id: str,
        recipients: Sequence[str],
        text: str,
        attachment: Attachment | None = None,
    ) -> Deferred[list[OutboundMessage]]:
        """
        Queue a message from a local user for users of other realms: each
        recipient is a username of C{realm_id}, or a C{user@realm} address.
        A file (C{attachment}, whose name is then C{text}) is queued with
        it, within the sender's file quota (L{chat.store.quotas}).

        @return: fires with one queued message per realm, once committed;
            fails with L{NoSuchRealm}, L{NoSuchUser} (a malformed username),
            L{TooManyRealmRecipients}, L{chat.errors.RealmQueueFull},
            L{chat.errors.QuotaExceeded} or L{StorageUnavailable}.
        """
        try:
            batches = self._batches(realm_id, recipients)
        except ChatError:
            return fail()
        d = self.store.queue_outbound(
            sender,
            text,
            self.clock.seconds(),
            batches,
            self.settings.max_queue,
            attachment,
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
