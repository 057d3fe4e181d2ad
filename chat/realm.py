"""
The chat realm: what a logged-in user can do, and all of the chat's state.

The flow, step by step:

 1. A connection sends C{auth <user> <password>}. The protocol asks the
    L{Portal} to log in with a username and password; L{StoreChecker}
    verifies the argon2id hash (off the reactor thread) and yields the
    username; L{ChatRealm.requestAvatar} returns a L{ChatUser} for it.
 2. The protocol calls L{ChatUser.open_session}: the
    L{SessionManager} stores the new token's hash and returns the token,
    which the client presents with every later command.
 3. For C{send} and C{inbox} the protocol logs in again with that token
    (L{SessionChecker}, answered from a cache) and calls the avatar.
 4. L{ChatUser.send} stores the message; the Deferred fires only after the
    store committed it, and only then does the client hear "Message Sent"
    and is the message published to the recipient's subscriptions
    (L{chat.push}). L{ChatUser.inbox} takes the undelivered messages and
    marks them delivered in one transaction.
 5. Each login passes the connection as the cred "mind": the realm counts
    the user as online while it has a connection, and the logout callable
    it returns takes the connection away again.
 6. A message to C{user@other-realm} goes to L{ChatUser.send_to_realm}:
    the realm's L{chat.federation.Federation} queues it durably for that
    realm and delivers it over the link later; messages from other realms
    arrive in the same mailboxes, as from C{user@realm}.

The protocol never touches the store: it only talks to the portal and the
avatars it gets from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.errors import NoSuchRealm, NoSuchUser, RealmsDisabled, SessionNotFound
from chat.interfaces import IChatClient, IChatStore, IChatUser, IFanout
from chat.logs import make_logger
from chat.model import Message, User
from chat.push import LocalFanout, Presence, Subscription
from chat.sessions import SessionManager, hash_token

if TYPE_CHECKING:
    from chat.federation import Federation
    from chat.links import OutboundMessage


@implementer(IRealm)
@attrs.define
class ChatRealm:
    """
    Hands out L{ChatUser} avatars and keeps the live state: who is online
    (one entry per connection, the cred "mind") and the subscriptions.
    """

    store: IChatStore
    clock: IReactorTime
    sessions: SessionManager
    fanout: IFanout = attrs.field(factory=LocalFanout)
    push_window: int = 100
    presence: Presence = attrs.field(factory=Presence)
    _subscriptions: dict[str, set[Subscription]] = attrs.field(factory=dict)
    #: Links to other realms; None on a server without them (tests).
    federation: Federation | None = None

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, ChatUser, Callable[[], None]] | Deferred[Any]:
        if IChatUser not in interfaces:
            raise NotImplementedError("ChatRealm only provides IChatUser")
        username = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        avatar = ChatUser(self, username)
        if mind is None:
            return IChatUser, avatar, _nothing_to_clean_up
        logout = partial(self.presence.detach, username, mind)
        if self.presence.is_attached(username, mind):
            return IChatUser, avatar, logout

        def attach(user: User) -> tuple[Any, ChatUser, Callable[[], None]]:
            self.presence.attach(username, user.full_name, mind)
            return IChatUser, avatar, logout

        def gone(f: Failure) -> None:
            f.trap(NoSuchUser)
            raise SessionNotFound("the user no longer exists")

        return self.store.get_user(username).addCallbacks(attach, gone)

    def subscriptions_of(self, username: str) -> list[Subscription]:
        return list(self._subscriptions.get(username, ()))

    def add_subscription(self, subscription: Subscription) -> None:
        self._subscriptions.setdefault(subscription.username, set()).add(subscription)
        self.presence.watch(subscription.client)
        subscription.start()

    def remove_subscription(self, subscription: Subscription) -> None:
        subscription.stop()
        self.presence.unwatch(subscription.client)
        subscriptions = self._subscriptions.get(subscription.username, set())
        subscriptions.discard(subscription)
        if not subscriptions:
            self._subscriptions.pop(subscription.username, None)

    def end_subscriptions(self, token_hash: str, reason: str) -> None:
        """
        Stop every subscription made with this session (it ended).
        """
        for subscriptions in list(self._subscriptions.values()):
            for subscription in list(subscriptions):
                if subscription.token_hash == token_hash:
                    self.remove_subscription(subscription)
                    subscription.client.send_event(
                        {"event": "unsubscribed", "reason": reason}
                    )


def _nothing_to_clean_up() -> None:
    """
    A login without a mind (a connection) leaves nothing to clean up.
    """


@implementer(IChatUser)
@attrs.frozen
class ChatUser:
    """
    One user, as seen by a connection that authenticated as them.
    """

    realm: ChatRealm
    username: str

    log = make_logger()

    def open_session(self) -> Deferred[str]:
        return self.realm.sessions.create(self.username)

    def send(self, recipient: str, text: str) -> Deferred[Message]:
        now = self.realm.clock.seconds()
        d = self.realm.store.store_message(self.username, recipient, text, now)

        def sent(message: Message) -> Message:
            self.log.debug(
                "Message {id} stored from {sender} to {recipient}",
                id=message.id,
                sender=self.username,
                recipient=recipient,
            )
            self.realm.fanout.publish(message)
            return message

        def sender_gone(f: Failure) -> Failure:
            # A session can outlive its user by a little (see chat.sessions);
            # a message from a user who no longer exists is refused like a
            # message without a session.
            error = f.value
            if isinstance(error, NoSuchUser) and error.username == self.username:
                raise SessionNotFound("the user no longer exists")
            return f

        return d.addCallbacks(sent, sender_gone)

    def inbox(self) -> Deferred[list[Message]]:
        d = self.realm.store.drain_inbox(self.username, self.realm.clock.seconds())

        def drained(messages: list[Message]) -> list[Message]:
            self.log.debug(
                "Inbox of {user}: {count} messages delivered",
                user=self.username,
                count=len(messages),
            )
            if messages:
                self._delivered(messages[-1].id)
            return messages

        return d.addCallback(drained)

    def subscribe(self, client: IChatClient, token: str) -> Subscription:
        subscription = Subscription(
            self.realm.store,
            self.realm.fanout,
            self.realm.clock,
            client,
            self.username,
            hash_token(token),
            self.realm.push_window,
        )
        self.realm.add_subscription(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.realm.remove_subscription(subscription)

    def acknowledge(self, up_to_id: int) -> Deferred[int]:
        now = self.realm.clock.seconds()
        d = self.realm.store.mark_delivered(self.username, up_to_id, now)

        def marked(count: int) -> int:
            self._delivered(up_to_id)
            return count

        return d.addCallback(marked)

    def _delivered(self, up_to_id: int) -> None:
        for subscription in self.realm.subscriptions_of(self.username):
            subscription.acknowledged(up_to_id)

    def online(self) -> list[tuple[str, str]]:
        return self.realm.presence.online()

    # Other realms (chat.federation).

    def send_to_realm(
        self, realm_id: str, recipients: Sequence[str], text: str
    ) -> Deferred[list[OutboundMessage]]:
        federation = self.realm.federation
        if federation is None:
            return fail(NoSuchRealm(realm_id))
        d = federation.send(self.username, realm_id, recipients, text)
        return d.addErrback(self._refused_if_gone)

    def _refused_if_gone(self, f: Failure) -> Failure:
        """
        A message from a user who no longer exists is refused like a
        message without a session (as in L{send}).
        """
        error = f.value
        if isinstance(error, NoSuchUser) and error.username == self.username:
            raise SessionNotFound("the user no longer exists")
        return f

    def realm_inbox(self, realm_id: str) -> Deferred[list[Message]]:
        federation = self.realm.federation
        if federation is None:
            return fail(NoSuchRealm(realm_id))
        return federation.realm_inbox(self.username, realm_id)

    def add_realm(self, realm_id: str, host: str, port: int) -> Deferred[str]:
        federation = self.realm.federation
        if federation is None:
            return fail(RealmsDisabled())
        d = federation.add_link(self.username, realm_id, host, port)
        return d.addErrback(self._refused_if_gone)
