"""
The seams between the protocol, the realm and the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from chat.links import (
        Delivery,
        InboundMessage,
        OutboundMessage,
        RealmLink,
    )
    from chat.model import Message, Session, User
    from chat.push import Subscription


class IChatUser(Interface):
    """
    The avatar of one authenticated user; what a connection may do.
    """

    username = Attribute("The user's name, a str.")

    def open_session() -> Deferred[str]:
        """
        Start a new session for this user.

        @return: fires with the new token (a uuid4 string); fails with
            L{chat.errors.StorageUnavailable}.
        """

    def send(recipient: str, text: str) -> Deferred[Message]:
        """
        Store a private message; fires only after it has been committed.

        @return: fires with the stored L{Message}; fails with
            L{chat.errors.NoSuchUser} for an unknown recipient,
            L{chat.errors.SessionNotFound} if this user was deleted, or
            L{chat.errors.StorageUnavailable}.
        """

    def inbox() -> Deferred[list[Message]]:
        """
        Take every undelivered message of this user, oldest first, marking
        them delivered in the same transaction.

        @return: fires with the messages after the commit; fails with
            L{chat.errors.StorageUnavailable} (then nothing was marked).
        """

    def subscribe(client: IChatClient, token: str) -> Subscription:
        """
        Push this user's messages (and presence changes) to C{client} until
        L{unsubscribe}, or until the session of C{token} ends.
        """

    def unsubscribe(subscription: Subscription) -> None:
        """
        Stop a subscription.
        """

    def acknowledge(up_to_id: int) -> Deferred[int]:
        """
        Mark this user's messages up to C{up_to_id} delivered.

        @return: fires with how many were marked.
        """

    def online() -> list[tuple[str, str]]:
        """
        (username, full name) of every user with a live connection.
        """

    def send_to_realm(
        realm_id: str, recipients: Sequence[str], text: str
    ) -> Deferred[list[OutboundMessage]]:
        """
        Queue a message for users of another realm (C{recipients} are
        usernames there, or C{user@realm} addresses of further realms).
        Fires once the message is durably in the outbox; it is delivered
        later, and a recipient that does not exist there comes back as a
        bounce in this user's inbox.

        @return: fires with one queued message per realm; fails with
            L{chat.errors.NoSuchRealm} if no link to a realm is configured,
            L{chat.errors.RealmQueueFull}, L{chat.errors.NoSuchUser} for a
            malformed username, or L{chat.errors.StorageUnavailable}.
        """

    def realm_inbox(realm_id: str) -> Deferred[list[Message]]:
        """
        Like L{inbox}, but only the messages from users of C{realm_id}.

        @return: fails with L{chat.errors.NoSuchRealm} if no link to that
            realm is configured.
        """

    def add_realm(realm_id: str, host: str, port: int) -> Deferred[str]:
        """
        Link this realm to another (administrators only), with a new random
        secret.

        @return: fires with the secret, for the other realm's administrator;
            fails with L{chat.errors.NotAdmin}, L{chat.errors.RealmExists}.
        """


class IChatClient(Interface):
    """
    The mind of a connection: what the realm can push to it.
    """

    def send_event(event: dict[str, object]) -> None:
        """
        Deliver one event (a JSON object with an C{"event"} key).
        """


class IFanout(Interface):
    """
    Tells listeners that messages were committed for their users.

    In one process this is a dict of listeners; with several nodes on one
    database it is fed by the database's notifications as well.
    """

    def listen(username: str, listener: Callable[[Message], None]) -> None:
        """
        Call C{listener} with each message committed for C{username}.
        """

    def unlisten(username: str, listener: Callable[[Message], None]) -> None:
        """
        Stop calling C{listener} (a no-op if it was not listening).
        """

    def publish(message: Message) -> None:
        """
        Announce a committed message to its recipient's listeners.
        """


class IPasswordHasher(Interface):
    """
    Slow password hashing, kept off the reactor thread.
    """

    def hash(password: str) -> Deferred[str]:
        """
        @return: fires with a PHC string (argon2id).
        """

    def verify(password_hash: str, password: str) -> Deferred[bool]:
        """
        @return: fires with whether C{password} matches C{password_hash}.
        """


class IChatStore(Interface):
    """
    Durable chat state. Every method returns a L{Deferred} that fires after
    the change (if any) has been committed, and fails with
    L{chat.errors.StorageUnavailable} when the storage could not do it.
    """

    def add_user(user: User) -> Deferred[None]:
        """
        @return: fails with L{chat.errors.UserExists}.
        """

    def get_user(username: str) -> Deferred[User]:
        """
        @return: fires with the L{User}; fails with L{chat.errors.NoSuchUser}.
        """

    def set_password_hash(username: str, password_hash: str) -> Deferred[None]:
        """
        Replace a password hash and end every session of that user.

        @return: fails with L{chat.errors.NoSuchUser}.
        """

    def delete_user(username: str) -> Deferred[None]:
        """
        Delete a user, its sessions and its mailbox. Messages it sent to
        others stay in their mailboxes.

        @return: fails with L{chat.errors.NoSuchUser}.
        """

    def list_users() -> Deferred[list[User]]:
        """
        @return: fires with every user, ordered by username.
        """

    def create_session(session: Session) -> Deferred[None]:
        """
        @return: fails with L{chat.errors.NoSuchUser} if the user is gone.
        """

    def get_session(token_hash: str) -> Deferred[Session | None]:
        """
        @return: fires with the L{Session}, or None if there is none.
        """

    def touch_session(token_hash: str, last_seen_at: float) -> Deferred[bool]:
        """
        Record activity on a session.

        @return: fires with False if the session no longer exists.
        """

    def delete_session(token_hash: str) -> Deferred[None]:
        """
        End a session (a no-op if it does not exist).
        """

    def delete_expired_sessions(
        idle_since: float, created_since: float
    ) -> Deferred[int]:
        """
        Delete sessions last seen before C{idle_since} or created before
        C{created_since}.

        @return: fires with how many were deleted.
        """

    def store_message(
        sender: str, recipient: str, text: str, sent_at: float
    ) -> Deferred[Message]:
        """
        Store a private message in the recipient's mailbox.

        @return: fires with the stored L{Message} after the commit; fails
            with L{chat.errors.NoSuchUser} naming whichever of sender or
            recipient does not exist.
        """

    def drain_inbox(username: str, delivered_at: float) -> Deferred[list[Message]]:
        """
        Return the user's undelivered messages, oldest first, and mark them
        delivered in the same transaction. Each message is returned by
        exactly one call.
        """

    def undelivered(
        username: str, after_id: int, limit: int
    ) -> Deferred[list[Message]]:
        """
        Read (without marking) up to C{limit} undelivered messages of the
        user with ids above C{after_id}, oldest first.
        """

    def mark_delivered(
        username: str, up_to_id: int, delivered_at: float
    ) -> Deferred[int]:
        """
        Mark every undelivered message of the user with an id up to
        C{up_to_id} delivered.

        @return: fires with how many were marked.
        """

    def close() -> Deferred[None]:
        """
        Finish in-flight work and release the storage.
        """


class IRealmStore(Interface):
    """
    Durable state of the links to other realms (federation). Like
    L{IChatStore}, every method fires after its commit and fails with
    L{chat.errors.StorageUnavailable} when the storage could not do it.
    """

    def set_admin(username: str, is_admin: bool) -> Deferred[None]:
        """
        Grant or revoke the administrator flag.

        @return: fails with L{chat.errors.NoSuchUser}.
        """

    def is_admin(username: str) -> Deferred[bool]:
        """
        @return: fires with whether the user is an administrator; fails
            with L{chat.errors.NoSuchUser}.
        """

    def add_realm_link(link: RealmLink) -> Deferred[None]:
        """
        @return: fails with L{chat.errors.RealmExists}.
        """

    def get_realm_link(realm_id: str) -> Deferred[RealmLink]:
        """
        @return: fails with L{chat.errors.NoSuchRealm}.
        """

    def list_realm_links() -> Deferred[list[RealmLink]]:
        """
        @return: fires with every link, ordered by realm id.
        """

    def remove_realm_link(realm_id: str, now: float) -> Deferred[list[Message]]:
        """
        Delete a link. Messages still queued for that realm are returned to
        their senders as bounces, in the same transaction.

        @return: fires with the bounces stored; fails with
            L{chat.errors.NoSuchRealm}.
        """

    def queue_outbound(
        sender: str,
        text: str,
        sent_at: float,
        batches: Sequence[tuple[str, tuple[str, ...], str]],
        max_queue: int,
    ) -> Deferred[list[OutboundMessage]]:
        """
        Queue one message for each C{(realm_id, recipients, uid)} batch, all
        or none, with the sender's full name as of now.

        @return: fires with the queued messages; fails with
            L{chat.errors.NoSuchRealm} if a realm has no link,
            L{chat.errors.RealmQueueFull} if a realm already has
            C{max_queue} messages queued, L{chat.errors.NoSuchUser} if the
            sender does not exist.
        """

    def next_outbound(realm_id: str, limit: int) -> Deferred[list[OutboundMessage]]:
        """
        Read (without removing) the oldest C{limit} queued messages of a
        realm, in queue order.
        """

    def outbox_size(realm_id: str) -> Deferred[int]:
        """
        @return: fires with how many messages are queued for the realm.
        """

    def finish_outbound(
        outbox_id: int, failed: Sequence[str], reason: str, now: float
    ) -> Deferred[Message | None]:
        """
        Remove a delivered (or refused) message from the outbox. If
        C{failed} names recipients it could not reach, store a bounce from
        C{postmaster@<realm>} in the sender's inbox in the same transaction,
        saying C{reason}. Nothing happens if the message is no longer
        queued (it was finished before), so finishing twice bounces once.

        @return: fires with the bounce stored, or None.
        """

    def receive_remote(
        realm_id: str, message: InboundMessage, received_at: float
    ) -> Deferred[Delivery]:
        """
        Store a message from a user of another realm in the mailboxes of
        its recipients that exist here, as from C{<sender>@<realm_id>}, and
        remember its id: a message whose id was accepted from that realm
        before is not stored again.

        @return: fires with the L{Delivery}; fails with
            L{chat.errors.NoSuchRealm} if no link to that realm is
            configured (any more).
        """

    def drain_realm_inbox(
        username: str, realm_id: str, delivered_at: float
    ) -> Deferred[list[Message]]:
        """
        Like L{IChatStore.drain_inbox}, but only the messages from users of
        C{realm_id}.

        @return: fails with L{chat.errors.NoSuchRealm} if no link to that
            realm is configured.
        """

    def forget_remote_ids(before: float) -> Deferred[int]:
        """
        Forget the ids of messages accepted from other realms before
        C{before}.

        @return: fires with how many were forgotten.
        """
