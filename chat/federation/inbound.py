"""
The inbound side of a link: a connection from another realm.

A connection that says C{realm-hello} (L{chat.dispatch.Dispatcher}) hands
its lines to an L{InboundLinkHandler}: the handshake's second step
(C{realm-auth}, checked by L{Federation.authenticate}), then only
C{realm-msg}, C{ping} and C{quit}. Each C{realm-msg} goes to the link's
L{InboundLink}, which checks it, stores it in the recipients' mailboxes
and answers with the acknowledgement after the commit. The handshake and
the delivery rules are in L{chat.federation}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from zope.interface import implementer

from chat import commands, replies
from chat.errors import (
    BadRealmMessage,
    FileTooLarge,
    ForgedSender,
    RateLimited,
    RealmAuthFailed,
    RealmLinkOnly,
    RealmNotAuthenticated,
)
from chat.interfaces import IDoor, ILineHandler
from chat.links import Delivery, InboundMessage
from chat.logs import make_logger
from chat.replies import BYE, PONG, error_reply

if TYPE_CHECKING:
    from chat.federation.service import Federation

Reply = dict[str, object]


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
            L{NoSuchRealm} (the link was removed), L{FileTooLarge} or
            L{QuotaExceeded} (a file: by the rules of a local one) or
            L{StorageUnavailable}.
        """
        federation = self.federation
        settings = federation.settings
        wait = federation.limiter.consume(self.realm_id)
        if wait:
            return fail(RateLimited(wait))
        try:
            message = InboundMessage.from_payload(
                payload,
                settings.max_text,
                federation.clock.seconds(),
                settings.max_file_size,
            )
        except (BadRealmMessage, ForgedSender, FileTooLarge) as e:
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
                        # This realm takes files in realm-msg (version 3).
                        files=True,
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
