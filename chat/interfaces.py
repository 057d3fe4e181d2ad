"""
The seams between the protocol, the realm and the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

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
