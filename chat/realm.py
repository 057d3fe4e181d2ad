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
    store committed it, and only then does the client hear "Message Sent".
    L{ChatUser.inbox} takes the undelivered messages and marks them
    delivered in one transaction.

The protocol never touches the store: it only talks to the portal and the
avatars it gets from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.errors import NoSuchUser, SessionNotFound
from chat.interfaces import IChatStore, IChatUser
from chat.logs import make_logger
from chat.model import Message
from chat.sessions import SessionManager


@implementer(IRealm)
@attrs.define
class ChatRealm:
    """
    Hands out L{ChatUser} avatars.
    """

    store: IChatStore
    clock: IReactorTime
    sessions: SessionManager

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, ChatUser, Callable[[], None]]:
        if IChatUser not in interfaces:
            raise NotImplementedError("ChatRealm only provides IChatUser")
        username = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        return IChatUser, ChatUser(self, username), _nothing_to_clean_up


def _nothing_to_clean_up() -> None:
    """
    Avatars hold no per-connection state yet, so logging out is a no-op.
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
            return messages

        return d.addCallback(drained)
