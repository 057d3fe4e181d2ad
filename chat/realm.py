"""
The chat realm: what a logged-in user can do, and all of the chat's state.

The flow, step by step:

 1. A connection sends C{auth <user> <password>}. The protocol asks the
    L{Portal} to log in with a username and password; L{StoreChecker}
    verifies the argon2id hash (off the reactor thread, in turn with other
    clients: L{chat.hashing}) and yields the username, with a new hash if
    the stored one has other parameters than the server's;
    L{ChatRealm.requestAvatar} returns a L{ChatUser} for it.
 2. The protocol calls L{ChatUser.open_session}: the
    L{SessionManager} stores the new token's hash (and the new password
    hash, if any, in the same store operation) and returns the token,
    which the client presents with every later command.
 3. For C{send} and C{inbox} the protocol logs in again with that token
    (L{SessionChecker}, answered from a cache) and calls the avatar.
 4. L{ChatUser.send} stores the message; the Deferred fires only after the
    store committed it, and only then does the client hear "Message Sent"
    and is the message published to the recipient's subscriptions
    (L{chat.push}). L{ChatUser.inbox} takes the undelivered messages and
    marks them delivered in one transaction. Messages to several users (a
    list, or a group's members) are stored in one store operation, all or
    none; files travel the same way, with the file in the message.
 5. Each login passes the connection as the cred "mind": the realm counts
    the user as online while it has a connection, and the logout callable
    it returns takes the connection away again.
 6. Groups (C{creategroup}, C{joingroup}, ...) live in the store: every
    change is one store operation, so membership is never half-changed.
 7. C{logout} ends the session through L{SessionManager.end}: the token
    stops working at once, and the subscriptions made with it end.
 8. A message to C{user@other-realm} goes to L{ChatUser.send_to_realm}:
    the realm's L{chat.federation.Federation} queues it durably for that
    realm and delivers it over the link later; messages from other realms
    arrive in the same mailboxes, as from C{user@realm}.

The protocol never touches the store: it only talks to the portal and the
avatars it gets from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.callbacks import Done, as_deferred, firing
from chat.errors import (
    ChatError,
    FileTooLarge,
    NoSuchRealm,
    NoSuchUser,
    NoSuchUsers,
    RealmsDisabled,
    SessionNotFound,
    TooManyRecipients,
)
from chat.interfaces import IChatClient, IChatUser, IFanout
from chat.logs import make_logger
from chat.model import (
    DEFAULT_MAX_FILE_SIZE,
    Attachment,
    Group,
    Message,
    Page,
    Profile,
    Rehash,
    User,
    VerifiedPassword,
    plain_file_name,
    validate_group_name,
)
from chat.push import LocalFanout, Presence, Subscription
from chat.sessions import SessionManager, hash_token, user_gone
from chat.store.interfaces import IChatStore

#: The most message bytes (text and files) one inbox or history reply
#: carries; at least one message is always included. More waits for the
#: next inbox, or the next history page.
REPLY_BUDGET = 8 * 1024 * 1024

#: Default of the C{--max-recipients} option.
DEFAULT_MAX_RECIPIENTS = 100

T = TypeVar("T")

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
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
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
        rehash = None
        if isinstance(avatarId, VerifiedPassword):
            avatarId, rehash = avatarId.username, avatarId.rehash
        username = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        avatar = ChatUser(self, username, rehash)
        if mind is None:
            return IChatUser, avatar, _nothing_to_clean_up
        logout = partial(self.presence.detach, username, mind)
        if self.presence.is_attached(username, mind):
            return IChatUser, avatar, logout

        def attach(user: User) -> tuple[Any, ChatUser, Callable[[], None]]:
            self.presence.attach(username, user.full_name, mind)
            return IChatUser, avatar, logout

        return self.store.get_user(username).addCallbacks(attach, user_gone)

    def __attrs_post_init__(self) -> None:
        self.sessions.ended_listeners.append(self.end_subscriptions)

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
                    subscription.client.unsubscribed(reason)


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
    #: From a password login whose stored hash has other parameters than
    #: the server's: stored with the session it opens (issue 14).
    rehash: Rehash | None = attrs.field(default=None, eq=False, repr=False)

    log = make_logger()

    def open_session(self) -> Deferred[str]:
        return self.realm.sessions.create(self.username, self.rehash)

    def _gone(self, error: Exception) -> Exception:
        """
        A session can outlive its user by a little (see chat.sessions): a
        command from a user who no longer exists is refused like a command
        without a session.
        """
        if isinstance(error, NoSuchUser) and error.username == self.username:
            return SessionNotFound("the user no longer exists")
        return error

    def _sender_gone(self, f: Failure) -> Failure:
        return Failure(self._gone(f.value))  # type: ignore[arg-type]

    def _stored(self, d: Deferred[T]) -> Deferred[T]:
        return d.addErrback(self._sender_gone)

    def send_then(self, recipient: str, text: str, now: float, done: Done) -> None:
        fanout = self.realm.fanout

        def sent(succeeded: bool, value: Any) -> None:
            if succeeded:
                if fanout.listening(recipient):
                    fanout.publish(value)
            else:
                value = self._gone(value)
            done(succeeded, value)

        self.realm.store.store_message_then(self.username, recipient, text, now, sent)

    def send(self, recipient: str, text: str) -> Deferred[Message]:
        return as_deferred(self.send_then, recipient, text, self.realm.clock.seconds())

    def _publishing(self, done: Done) -> Done:
        """
        C{done}, after publishing the messages stored (but the sender's own
        copy of a group message) to their recipients' listeners.
        """
        fanout = self.realm.fanout

        def sent(succeeded: bool, value: Any) -> None:
            if succeeded:
                for message in value:
                    if not message.senders_copy and fanout.listening(message.recipient):
                        fanout.publish(message)
            else:
                value = self._gone(value)
            done(succeeded, value)

        return sent

    def inbox_then(self, now: float, done: Done) -> None:
        def drained(succeeded: bool, value: Any) -> None:
            if succeeded and value:
                self._delivered(value[-1].id)
            done(succeeded, value)

        self.realm.store.drain_inbox_then(self.username, now, REPLY_BUDGET, drained)

    def inbox(self) -> Deferred[list[Message]]:
        return as_deferred(self.inbox_then, self.realm.clock.seconds())

    def end_session(self, token: str) -> Deferred[None]:
        return self.realm.sessions.end(token)

    def _recipients(self, recipients: Sequence[str]) -> list[str]:
        distinct = list(dict.fromkeys(recipients))
        if len(distinct) > self.realm.max_recipients:
            raise TooManyRecipients(self.realm.max_recipients)
        return distinct

    def _attachment(self, file_name: str, content: bytes) -> Attachment:
        name = plain_file_name(file_name)
        if len(content) > self.realm.max_file_size:
            raise FileTooLarge(self.realm.max_file_size)
        return Attachment(name, content)

    def _send_many(
        self,
        recipients: Sequence[str],
        text: str,
        attachment: Attachment | None,
        now: float,
        done: Done,
    ) -> None:
        try:
            distinct = self._recipients(recipients)
        except ChatError as e:
            done(False, e)
            return
        self.realm.store.store_messages_then(
            self.username, distinct, text, now, attachment, self._publishing(done)
        )

    def send_many_then(
        self, recipients: Sequence[str], text: str, now: float, done: Done
    ) -> None:
        self._send_many(recipients, text, None, now, done)

    def send_many(
        self, recipients: Sequence[str], text: str
    ) -> Deferred[list[Message]]:
        return as_deferred(
            self.send_many_then, recipients, text, self.realm.clock.seconds()
        )

    def send_to_group_then(self, group: str, text: str, now: float, done: Done) -> None:
        self.realm.store.store_group_message_then(
            self.username, group, text, now, None, self._publishing(done)
        )

    def send_to_group(self, group: str, text: str) -> Deferred[list[Message]]:
        return as_deferred(
            self.send_to_group_then, group, text, self.realm.clock.seconds()
        )

    def send_file(
        self, recipients: Sequence[str], file_name: str, content: bytes
    ) -> Deferred[list[Message]]:
        try:
            attachment = self._attachment(file_name, content)
        except ChatError:
            return fail()
        d = as_deferred(
            self._send_many,
            recipients,
            attachment.name,
            attachment,
            self.realm.clock.seconds(),
        )

        def one_unknown(f: Failure) -> Failure:
            # To one recipient, as with send: the course's plain error.
            if isinstance(f.value, NoSuchUsers) and len(set(recipients)) == 1:
                raise NoSuchUser(f.value.usernames[0])
            return f

        return d.addErrback(one_unknown)

    def send_file_to_group(
        self, group: str, file_name: str, content: bytes
    ) -> Deferred[list[Message]]:
        try:
            attachment = self._attachment(file_name, content)
        except ChatError:
            return fail()
        d: Deferred[list[Message]] = Deferred()
        self.realm.store.store_group_message_then(
            self.username,
            group,
            attachment.name,
            self.realm.clock.seconds(),
            attachment,
            self._publishing(firing(d)),
        )
        return d

    def send_to_name_then(self, name: str, text: str, now: float, done: Done) -> None:
        self.realm.store.store_to_name_then(
            self.username, name, text, now, None, self._publishing(done)
        )

    def send_to_name(self, name: str, text: str) -> Deferred[list[Message]]:
        return as_deferred(
            self.send_to_name_then, name, text, self.realm.clock.seconds()
        )

    def send_file_to_name(
        self, name: str, file_name: str, content: bytes
    ) -> Deferred[list[Message]]:
        try:
            attachment = self._attachment(file_name, content)
        except ChatError:
            return fail()
        d: Deferred[list[Message]] = Deferred()
        self.realm.store.store_to_name_then(
            self.username,
            name,
            attachment.name,
            self.realm.clock.seconds(),
            attachment,
            self._publishing(firing(d)),
        )
        return d

    # Groups.

    def _changed(self, what: str, name: str) -> Callable[[T], T]:
        def changed(result: T) -> T:
            self.log.info(
                "{user} {what} group {group}", user=self.username, what=what, group=name
            )
            return result

        return changed

    def create_group(self, name: str, members: Sequence[str] = ()) -> Deferred[Group]:
        try:
            validate_group_name(name)
            members = self._recipients(members)
        except ChatError:
            return fail()
        d = self.realm.store.create_group(
            name, self.username, self.realm.clock.seconds(), members
        )
        return self._stored(d).addCallback(self._changed("created", name))

    def join_group(self, name: str) -> Deferred[Group]:
        d = self.realm.store.join_group(name, self.username, self.realm.clock.seconds())
        return self._stored(d).addCallback(self._changed("joined", name))

    def leave_group(self, name: str) -> Deferred[Group | None]:
        d = self.realm.store.leave_group(name, self.username)
        return d.addCallback(self._changed("left", name))

    def kick(self, name: str, username: str) -> Deferred[Group]:
        d = self.realm.store.kick_from_group(name, self.username, username)
        return d.addCallback(self._changed(f"removed {username} from", name))

    def groups(self) -> Deferred[list[Group]]:
        return self.realm.store.list_groups(self.username)

    def all_groups(self, limit: int) -> Deferred[tuple[list[Group], bool]]:
        d = self.realm.store.list_all_groups(limit + 1)
        return d.addCallback(lambda groups: (groups[:limit], len(groups) > limit))

    def all_users(self, limit: int) -> Deferred[tuple[list[Profile], bool]]:
        online = {username for username, _ in self.realm.presence.online()}

        def listed(users: list[User]) -> tuple[list[Profile], bool]:
            profiles = [
                Profile(user.username, user.full_name, user.username in online)
                for user in users[:limit]
            ]
            return profiles, len(users) > limit

        return self.realm.store.list_users(limit + 1).addCallback(listed)

    def private_inbox(self, peer: str) -> Deferred[list[Message]]:
        return self.realm.store.drain_inbox_from(
            self.username, peer, self.realm.clock.seconds(), REPLY_BUDGET
        )

    # History.

    def history(
        self, peer: str, limit: int, before_id: int | None = None
    ) -> Deferred[Page]:
        return self._stored(
            self.realm.store.conversation(
                self.username, peer, limit, before_id, REPLY_BUDGET
            )
        )

    def group_history(
        self, group: str, limit: int, before_id: int | None = None
    ) -> Deferred[Page]:
        return self.realm.store.group_history(
            self.username, group, limit, before_id, REPLY_BUDGET
        )

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

    def acknowledge_then(self, up_to_id: int, now: float, done: Done) -> None:
        """
        With subscriptions here, mark exactly what they pushed up to
        C{up_to_id}: on a cluster, a message with a lower id may commit
        after a higher one was pushed, and must not be marked unseen.
        Without any, every undelivered message up to C{up_to_id}.
        """

        def marked(succeeded: bool, value: Any) -> None:
            if succeeded:
                self._delivered(up_to_id)
            done(succeeded, value)

        store = self.realm.store
        subscriptions = self.realm.subscriptions_of(self.username)
        if subscriptions:
            pushed = sorted(
                {i for s in subscriptions for i in s.pushed_up_to(up_to_id)}
            )
            store.mark_delivered_ids_then(self.username, pushed, now, marked)
        else:
            store.mark_delivered_then(self.username, up_to_id, now, marked)

    def acknowledge(self, up_to_id: int) -> Deferred[int]:
        return as_deferred(self.acknowledge_then, up_to_id, self.realm.clock.seconds())

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
        return d.addErrback(self._sender_gone)

    def send_file_to_realm(
        self,
        realm_id: str,
        recipients: Sequence[str],
        file_name: str,
        content: bytes,
    ) -> Deferred[list[OutboundMessage]]:
        """
        Queue a file for users of another realm, by the rules of a local
        C{sendfile}: its name (L{plain_file_name}), C{--max-file-size} and
        the sender's file quota.
        """
        federation = self.realm.federation
        if federation is None:
            return fail(NoSuchRealm(realm_id))
        try:
            attachment = self._attachment(file_name, content)
        except ChatError:
            return fail()
        d = federation.send(
            self.username, realm_id, recipients, attachment.name, attachment
        )
        return d.addErrback(self._sender_gone)

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
        return d.addErrback(self._sender_gone)
